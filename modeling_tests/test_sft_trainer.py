"""TRL SFTTrainer on GRIT-format data with FerretDataCollator: training runs, overfits, LoRA, stages."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_processor, tiny_ferret_config, tiny_ferret_v2_config

from transformers_ferret import FerretForConditionalGeneration, FerretImageProcessorPil, FerretProcessor
from transformers_ferret.training.collator import FerretDataCollator
from transformers_ferret.training.grit import load_grit, mask_to_rle
from transformers_ferret.training.stages import apply_training_stage

import peft  # noqa: E402  (test dependencies: .[dev])
import trl  # noqa: E402

TEXT_CONFIG = {"model_type": "llama", "vocab_size": 502, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0,
               "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230)}


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=16)


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


def _model(v2=False, seed=0):
    config_fn = tiny_ferret_v2_config if v2 else tiny_ferret_config
    config = config_fn(text_config=TEXT_CONFIG, image_token_index=501, region_token_index=500)
    torch.manual_seed(seed)
    return FerretForConditionalGeneration(config)


def _grit_dataset(folder, num_samples, seed=0):
    """GRIT JSON + image files: an ellipse (with its mask) and a box (no mask) on noise, two questions each."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(num_samples):
        height, width = (int(v) for v in rng.integers(40, 80, size=2))
        pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        ellipse_colour, box_colour = rng.choice(list(COLOURS), size=2, replace=False)
        rows, cols = np.mgrid[:height, :width]
        centre, radii = (width * 0.3, height * 0.35), (width * 0.2, height * 0.25)
        mask = ((cols - centre[0]) / radii[0]) ** 2 + ((rows - centre[1]) / radii[1]) ** 2 <= 1
        pixels[mask] = COLOURS[ellipse_colour]
        ys, xs = np.nonzero(mask)
        ellipse_box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        box = [int(width * 0.6), int(height * 0.6), width - 3, height - 3]
        pixels[box[1] : box[3] + 1, box[0] : box[2] + 1] = COLOURS[box_colour]
        Image.fromarray(pixels).save(folder / f"{index}.png")
        records.append(
            {
                "image": f"{index}.png",
                "image_w": width,
                "image_h": height,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is the object <bbox_location0>?"},
                    {"from": "gpt", "value": f"a {ellipse_colour} ellipse"},
                    {"from": "human", "value": f"Where is the {box_colour} box? And <bbox_location0>?"},
                    {"from": "gpt", "value": f"The {box_colour} box <bbox_location0>, the ellipse <bbox_location1>."},
                ],
                "box_x1y1x2y2": [[ellipse_box], [], [box], [box, ellipse_box]],
                "masks": [[mask_to_rle(mask)], [], [None], [None, mask_to_rle(mask)]],
            }
        )
    (folder / "train.json").write_text(json.dumps(records))
    return load_grit(folder / "train.json", folder)


def _config(tmp_path, max_steps, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=2, learning_rate=1e-3,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, activation_checkpointing=False, max_length=None, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, seed=0, disable_tqdm=True,
    )  # fmt: skip
    kwargs.update(overrides)
    return trl.SFTConfig(**kwargs)


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_three_steps_with_regions_and_masks(tmp_path, processor):
    dataset = _grit_dataset(tmp_path, 4)
    model = _model()
    apply_training_stage(model, "v1-stage2")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    regions_seen = []
    model.model.region_sampler.register_forward_hook(
        lambda module, args, output: regions_seen.append(output.shape[:2].numel())
    )
    trainer = trl.SFTTrainer(
        model=model, args=_config(tmp_path, 3), train_dataset=dataset, processing_class=processor,
        data_collator=FerretDataCollator(processor),
    )  # fmt: skip
    trainer.train()
    losses = _losses(trainer)
    assert trainer.state.global_step == 3 and len(losses) == 3 and all(np.isfinite(losses))
    assert regions_seen == [2 * 2] * 3  # two referred regions per sample, two samples per batch
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter.detach())
        assert changed != name.startswith("model.vision_tower"), name  # CLIP frozen, everything else trained


def test_overfits_two_samples(tmp_path, processor):
    dataset = _grit_dataset(tmp_path, 2, seed=1)
    model = _model()
    trainer = trl.SFTTrainer(
        model=model, args=_config(tmp_path, 50, learning_rate=5e-3), train_dataset=dataset,
        processing_class=processor, data_collator=FerretDataCollator(processor),
    )  # fmt: skip
    trainer.train()
    losses = _losses(trainer)
    print(f"overfitting 2 samples: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_trls_own_collator_and_fused_loss_never_count_image_placeholders(tmp_path, processor, lora):
    """TRL's default VLM collator copies `input_ids` into `labels`, `<image>` positions included, and its `SFTTrainer`
    computes the loss itself from the hidden states (a fused LM head that replaces the model's forward). The model's
    labels hook still sets those positions to -100 first: the loss equals that of labels without them (with LoRA too,
    whose wrapper calls the model as a module)."""
    rng = np.random.default_rng(0)
    chats = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                           {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
              "images": [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))]}
             for question, answer in (("What is this?", "a red square"), ("Colour?", "green"))]  # fmt: skip
    lora_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = trl.SFTTrainer(model=_model(), args=_config(tmp_path, 1), train_dataset=datasets.Dataset.from_list(chats),
                             processing_class=processor, peft_config=lora_config if lora else None)  # fmt: skip
    batch = trainer.data_collator(chats)
    image_token_id = trainer.model.config.image_token_id
    assert (batch["labels"] == image_token_id).sum() > 0  # TRL's collator does supervise them
    without = dict(batch, labels=batch["labels"].masked_fill(batch["labels"] == image_token_id, -100))
    with torch.no_grad():
        loss, expected = trainer.compute_loss(trainer.model, dict(batch)), trainer.compute_loss(trainer.model, without)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_lora_only_on_the_language_model_save_load_and_merge(tmp_path, processor):
    dataset = _grit_dataset(tmp_path, 4)
    model = _model()
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
                           modules_to_save=["multi_modal_projector", "region_sampler"])  # fmt: skip
    trainer = trl.SFTTrainer(
        model=model, args=_config(tmp_path, 3, learning_rate=1e-2), train_dataset=dataset,
        processing_class=processor, data_collator=FerretDataCollator(processor), peft_config=lora,
    )  # fmt: skip
    peft_model = trainer.model
    adapted = {name for name, module in peft_model.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer)}
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    all_linear = {name for name, module in _model().named_modules() if isinstance(module, torch.nn.Linear)}
    assert {name for name in all_linear if "vision_tower" in name and name.rsplit(".", 1)[-1] in projections}
    expected = {
        f"base_model.model.{name}"
        for name in all_linear
        if name.startswith("model.language_model.") and name.rsplit(".", 1)[-1] in projections
    }
    assert adapted == expected and len(adapted) == 2 * 7
    assert not any("vision_tower" in name for name, _ in peft_model.named_modules() if "lora_" in name)
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert all(
        "lora_" in name or ".modules_to_save." in name for name in trainable
    ) and any("region_sampler.modules_to_save" in name for name in trainable)
    assert any("multi_modal_projector.modules_to_save" in name for name in trainable)

    trainer.train()
    assert all(np.isfinite(_losses(trainer)))
    assert any(parameter.abs().sum() > 0 for name, parameter in peft_model.named_parameters() if "lora_B" in name)

    batch = FerretDataCollator(processor, seed=5)([dataset[0], dataset[1]])
    batch.pop("labels")
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(**batch).logits

    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(_model(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, unmerged, atol=1e-5, rtol=0)

    merged = peft_model.merge_and_unload()
    assert isinstance(merged, FerretForConditionalGeneration)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, unmerged, atol=1e-5, rtol=0)


def test_ferret_v2_stage2_with_gradient_checkpointing(tmp_path, tokenizer):
    config = tiny_ferret_v2_config(text_config=TEXT_CONFIG, image_token_index=501, region_token_index=500)
    image_processor = FerretImageProcessorPil(
        size={"height": 28, "width": 28}, image_grid_pinpoints=config.image_grid_pinpoints, tile_size=28
    )
    processor = FerretProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                tile_patch_size=14, num_region_points=16)  # fmt: skip
    model = _model(v2=True)
    apply_training_stage(model, "v2-stage2")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    trainer = trl.SFTTrainer(
        model=model, args=_config(tmp_path, 2, activation_checkpointing=True, learning_rate=1e-2),
        train_dataset=_grit_dataset(tmp_path, 2), processing_class=processor,
        data_collator=FerretDataCollator(processor),
    )  # fmt: skip
    trainer.train()
    assert all(np.isfinite(_losses(trainer)))
    trained_modules = ("model.multi_modal_projector", "model.tile_projector", "model.region_sampler")
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter.detach())
        if not name.startswith(trained_modules):
            assert not changed, name
    assert all(
        not torch.equal(before[name], parameter.detach())
        for name, parameter in model.named_parameters()
        if name.startswith(trained_modules) and name.endswith("weight")
    )
