"""conversion/convert_ferret_ui.py: tiny checkpoints in the original Ferret-UI layout, converted and run.

Two tiny checkpoints, built offline: a Gemma one (tied embeddings, no `lm_head.weight`, a CLIP copy inside the
checkpoint that differs from the tower `mm_vision_tower` names, pinpoints and `im_region_fea_token` in its config) and
a Llama-3 one (untied, no CLIP weights, no pinpoints and no `im_region_fea_token` in its config, so the converter uses
Ferret-UI's five grids and the tokenizer's id). The numerical parity with Apple's code is in `test_parity_ferret_ui.py`;
here: the weight mapping, the settings the converter chooses, and its refusals.
"""

import json
import re
import warnings

import pytest
import torch
from test_compose_ferret_v2 import FAMILIES, PATCH, SIDE, bpe_tokenizer, load_script, random_image, write_clip
from transformers import CLIPVisionConfig, CLIPVisionModel, GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretProcessor
from transformers_ferret.chat_templates import FERRET_UI_SYSTEM_PROMPT
from transformers_ferret.region_utils import normalize_region

from tiny_models import (
    IMAGE_TOKEN_ID,
    NUM_IMAGE_TOKENS,
    REGION_TOKEN_ID,
    prompt_ids,
    random_region_points,
    tiny_ferret_model,
)

HIDDEN, VISION_WIDTH = 32, 16
TEXT_FIELDS = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-6,
                   initializer_range=0.02, attention_bias=False, attention_dropout=0.0)  # fmt: skip
# Ferret-UI's pinpoints, (width, height), for 28 px tiles: grids 2x1, 1x2, 2x2, 1x3, 3x1 (rows x cols)
PINPOINTS_WH = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]


def _sampler_and_projector(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random non-trivial tensors under Ferret-UI's projector and sampler keys (Conv1d kernels kept 3-D)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    width = VISION_WIDTH
    tensors = {
        "model.mm_projector.0.weight": randn(HIDDEN, width), "model.mm_projector.0.bias": randn(HIDDEN),
        "model.mm_projector.2.weight": randn(HIDDEN, HIDDEN), "model.mm_projector.2.bias": randn(HIDDEN),
        "model.region_geo_sampler.flatten_projector.weight": randn(width, width * 32) * 0.05,
        "model.region_geo_sampler.flatten_projector.bias": randn(width),
        "model.region_geo_sampler.dim_projector.weight": randn(HIDDEN, width),
        "model.region_geo_sampler.dim_projector.bias": randn(HIDDEN),
    }  # fmt: skip
    for stage in (0, 1):
        prefix = "model.region_geo_sampler"
        tensors.update({
            f"{prefix}.diff_projector_list.{stage}.weight": randn(width + 2, width + 2),
            f"{prefix}.diff_projector_list.{stage}.bias": randn(width + 2),
            f"{prefix}.agg_projector_list.{stage}.net.0.weight": randn(width, 2 * (width + 2), 1),
            f"{prefix}.agg_projector_list.{stage}.net.0.bias": randn(width),
            f"{prefix}.agg_projector_list.{stage}.norm.weight": 1 + randn(width) * 0.1,
            f"{prefix}.agg_projector_list.{stage}.norm.bias": randn(width),
        })  # fmt: skip
    return tensors


def write_ferret_ui(folder, backbone: str) -> dict:
    """A tiny Ferret-UI checkpoint folder; returns its state dict, config and tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    family = "gemma" if backbone == "gemma" else "llama3"
    special_tokens, named_tokens, _ = FAMILIES[family]
    tokenizer = bpe_tokenizer(special_tokens, **named_tokens)
    tokenizer.add_tokens(["<region_fea>"], special_tokens=True)  # as Ferret-UI's initialize_vision_tokenizer
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in named_tokens.items()}
    text = dict(TEXT_FIELDS, vocab_size=len(tokenizer), bos_token_id=ids["bos_token"], eos_token_id=ids["eos_token"],
                pad_token_id=ids.get("pad_token"))  # fmt: skip
    torch.manual_seed(7)
    if backbone == "gemma":  # a transformers-4 style Gemma config
        text.update(hidden_act="gelu", hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0,
                    rope_scaling=None, tie_word_embeddings=True)  # fmt: skip
        language_model = GemmaForCausalLM(GemmaConfig(**text))
        config = dict(text, model_type="ferret_gemma", architectures=["FerretGemmaForCausalLM"])
    else:  # a transformers-4 style Llama-3 config
        text.update(hidden_act="silu", rope_theta=500000.0, rope_scaling=None, tie_word_embeddings=False,
                    pretraining_tp=1, mlp_bias=False)  # fmt: skip
        language_model = LlamaForCausalLM(LlamaConfig(**text))
        config = dict(text, model_type="ferret_llama", architectures=["FerretLlamaForCausalLM"])
    config.update(
        mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=VISION_WIDTH,
        mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_use_im_start_end=False, mm_use_im_patch_token=False,
        mm_projector_lr=None, image_aspect_ratio="anyres", region_geo_sampler=True, sampler_pooler_mode="max",
        use_mm_proj=True, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, tokenizer_model_max_length=4096,
        tokenizer_padding_side="right", use_cache=False, torch_dtype="float32", transformers_version="4.39.0",
    )  # fmt: skip
    if backbone == "gemma":
        region_id = tokenizer.convert_tokens_to_ids("<region_fea>")
        config.update(image_grid_pinpoints=PINPOINTS_WH, im_region_fea_token=region_id)
    weights = dict(language_model.state_dict())
    if backbone == "gemma":
        del weights["lm_head.weight"]  # tied: a transformers-4 safetensors checkpoint has no lm_head
        torch.manual_seed(8)  # a stored CLIP different from the --vision-tower one: Ferret-UI never reads it
        tower_config = CLIPVisionConfig(image_size=SIDE, patch_size=PATCH, hidden_size=VISION_WIDTH,
                                        intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
        tower = CLIPVisionModel(tower_config)
        weights.update({f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in tower.state_dict().items()})
    weights.update(_sampler_and_projector(torch.Generator().manual_seed(9)))
    weights = {name: tensor.contiguous() for name, tensor in weights.items()}
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)
    return {"weights": weights, "config": config, "tokenizer": tokenizer, "text": text}


def _expected_name(name: str) -> str:
    """Our name of an original Ferret-UI key (written independently of the converter's table)."""
    for pattern, replacement in [
        (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
        (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
        (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
        (r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower."),
        (r"^model\.region_geo_sampler\.diff_projector_list\.(\d)\.",
         r"model.region_sampler.layers.\1.neighbor_projection."),
        (r"^model\.region_geo_sampler\.agg_projector_list\.(\d)\.net\.0\.", r"model.region_sampler.layers.\1.fusion."),
        (r"^model\.region_geo_sampler\.agg_projector_list\.(\d)\.norm\.", r"model.region_sampler.layers.\1.norm."),
        (r"^model\.region_geo_sampler\.flatten_projector\.", "model.region_sampler.flatten_projection."),
        (r"^model\.region_geo_sampler\.dim_projector\.", "model.region_sampler.output_projection."),
        (r"^lm_head\.", "lm_head."),
    ]:  # fmt: skip
        if re.search(pattern, name):
            return re.sub(pattern, replacement, name)
    raise AssertionError(name)


def convert(model_path, output_dir, clip_dir, *extra: str) -> list[str]:
    """Runs the converter's command line; returns the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_script("convert_ferret_ui").main([
            "--model-path", str(model_path), "--output-dir", str(output_dir), "--vision-tower", str(clip_dir), *extra,
        ])  # fmt: skip
    return [str(warning.message) for warning in caught]


class Converted:
    def __init__(self, backbone: str, root):
        self.backbone = backbone
        self.clip_dir = write_clip(root / "clip")
        self.original = write_ferret_ui(root / "ferret_ui", backbone)
        self.output_dir = root / "converted"
        self.warnings = convert(root / "ferret_ui", self.output_dir, self.clip_dir)
        self.model = FerretForConditionalGeneration.from_pretrained(self.output_dir).eval()
        self.processor = FerretProcessor.from_pretrained(self.output_dir)


@pytest.fixture(scope="module", params=["gemma", "llama3"])
def converted(request, tmp_path_factory) -> Converted:
    return Converted(request.param, tmp_path_factory.mktemp(request.param))


def test_every_tensor_is_mapped_with_equal_values(converted):
    ours = converted.model.state_dict()
    original = converted.original["weights"]
    vocab = len(converted.original["tokenizer"])
    for name, tensor in original.items():
        if name.startswith("model.vision_tower."):
            continue  # not converted: the tower is the one mm_vision_tower names (below)
        new_name = _expected_name(name)
        value = ours[new_name]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:vocab]
        if name.endswith("net.0.weight"):
            tensor = tensor.squeeze(-1)
        assert torch.equal(value, tensor), name
    converted_names = {_expected_name(name) for name in original if not name.startswith("model.vision_tower.")}
    if converted.backbone == "gemma":  # tied: lm_head is the embedding matrix
        assert converted.model.lm_head.weight.data_ptr() == ours["model.language_model.embed_tokens.weight"].data_ptr()
        converted_names.add("lm_head.weight")
    clip = CLIPVisionModel.from_pretrained(converted.clip_dir)  # the --vision-tower one, for both
    for name, tensor in clip.state_dict().items():
        assert torch.equal(ours[f"model.vision_tower.{name}"], tensor), name
        converted_names.add(f"model.vision_tower.{name}")
    assert converted_names == set(ours)  # nothing else in the model, nothing left at its initial value


def test_image_token_row_and_generation_config(converted):
    config, tokenizer = converted.model.config, converted.processor.tokenizer
    vocab = len(converted.original["tokenizer"])
    assert config.region_token_id == tokenizer.convert_tokens_to_ids("<region_fea>") == vocab - 1
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == vocab
    embeddings = converted.model.get_input_embeddings().weight
    expected = converted.original["weights"]["model.embed_tokens.weight"].mean(0)
    torch.testing.assert_close(embeddings[vocab], expected, rtol=0, atol=1e-6)
    if converted.backbone == "llama3":
        assert converted.model.lm_head.weight[vocab].abs().sum() == 0
    generation_config = converted.model.generation_config
    assert generation_config.suppress_tokens == [config.image_token_id]
    turn_end = "<end_of_turn>" if converted.backbone == "gemma" else "<|eot_id|>"
    assert tokenizer.convert_tokens_to_ids(turn_end) in generation_config.eos_token_id


def test_config_describes_ferret_ui(converted):
    config = converted.model.config
    assert config.tile_vision_config is None and not hasattr(converted.model.model, "tile_vision_tower")
    # (width, height) -> [height, width]: 2x1, 1x2, 2x2, 1x3, 3x1 grids of 28 px tiles (Ferret-UI's five, no 1x1)
    assert config.image_grid_pinpoints == [[56, 28], [28, 56], [56, 56], [28, 84], [84, 28]]
    assert sorted(config.image_grids) == [(1, 2), (1, 3), (2, 1), (2, 2), (3, 1)]
    assert config.global_upsample_mode == "nearest" and config.sampler_transposed_read
    assert config.tile_size == SIDE and config.tile_patch_size == PATCH and config.max_num_tiles == 4
    assert config.projector_type == "mlp2x_gelu" and config.sampler_pooler_mode == "max"
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.text_config.model_type == ("gemma" if converted.backbone == "gemma" else "llama")
    assert config.text_config.use_cache
    if converted.backbone == "llama3":
        assert config.text_config.rope_parameters["rope_theta"] == 500000.0
    image_processor = converted.processor.image_processor
    assert image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    assert list(image_processor.tile_image_mean) == list(image_processor.image_mean) == [0.1, 0.2, 0.3]
    assert list(image_processor.tile_image_std) == list(image_processor.image_std) == [0.4, 0.5, 0.6]
    assert converted.processor.tile_patch_size == PATCH


def test_text_logits_equal_the_backbones(converted):
    text = converted.original["text"]
    if converted.backbone == "gemma":
        backbone = GemmaForCausalLM(GemmaConfig(**text))
    else:
        backbone = LlamaForCausalLM(LlamaConfig(**text))
    weights = {name: tensor for name, tensor in converted.original["weights"].items() if not name.startswith("model.")
               or name.startswith(("model.embed_tokens", "model.layers", "model.norm"))}  # fmt: skip
    backbone.load_state_dict(weights, strict=False)
    backbone.tie_weights()
    backbone.eval()
    vocab = len(converted.original["tokenizer"])
    input_ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = converted.model(input_ids=input_ids).logits, backbone(input_ids=input_ids).logits
    assert (ours[..., :vocab] - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("grid", [(2, 1), (1, 2), (2, 2), (1, 3), (3, 1)], ids=lambda grid: f"{grid[0]}x{grid[1]}")
def test_image_tokens_per_grid_are_global_plus_tiles(converted, grid):
    rows, cols = grid
    image = random_image(rows * SIDE, cols * SIDE, seed=rows * 10 + cols)
    inputs = converted.processor(images=image, text="<image>\nWhat is <region>?", regions=[(3, 4, 20, 25)],
                                 return_tensors="pt")  # fmt: skip
    assert inputs["image_grids"].tolist() == [[rows, cols]]
    tokens_per_view = (SIDE // PATCH) ** 2  # 576 for 336 px CLIP-L/14
    expected = tokens_per_view * (1 + rows * cols)
    assert int((inputs["input_ids"] == converted.model.config.image_token_id).sum()) == expected
    with torch.no_grad():
        features = converted.model.get_image_features(
            inputs["pixel_values"], inputs["pixel_values_tiles"], inputs["image_grids"]
        )
        output = converted.model(**inputs)
    assert features.pooler_output[0].shape[0] == expected
    assert features.region_maps.shape[-2:] == (rows * SIDE // PATCH, cols * SIDE // PATCH)
    assert torch.isfinite(output.logits).all()


def test_chat_forward_and_generate_with_a_region(converted):
    image = random_image(30, 90, seed=3)
    conversation = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": "What is <region>?"}]}]  # fmt: skip
    prompt = converted.processor.apply_chat_template(conversation, add_generation_prompt=True)
    after_system = "<start_of_turn>user" if converted.backbone == "gemma" else "<|eot_id|>"
    assert FERRET_UI_SYSTEM_PROMPT + after_system in prompt
    inputs = converted.processor(images=image, text=prompt, regions=[(50, 5, 80, 25)], return_tensors="pt",
                                 add_special_tokens=False)  # fmt: skip
    with torch.no_grad():
        output = converted.model(**inputs)
        generated = converted.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.region_hidden_states.shape == (1, 1, HIDDEN) and torch.isfinite(output.logits).all()
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_non_ferret_ui_configs_are_refused(tmp_path):
    converter = load_script("convert_ferret_ui")
    base = {"mm_vision_tower": "clip", "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial"}
    converter.check_original_config(base)
    with pytest.raises(ValueError, match="anyres"):
        converter.check_original_config(dict(base, image_aspect_ratio="square_nocrop"))
    with pytest.raises(ValueError, match="spatial"):
        converter.check_original_config(dict(base, mm_patch_merge_type="spatial_unpad"))
    with pytest.raises(ValueError, match="ferret_gemma.*ferret_llama"):
        converter.backbone_type({"model_type": "ferret_mpt", "architectures": ["FerretMptForCausalLM"]})
    assert converter.grid_pinpoints({}, 336) == [[672, 336], [336, 672], [672, 672], [336, 1008], [1008, 336]]


# ---- what transformers 4.39 did implicitly, written as explicit settings ---------------------------------------------


def test_settings_that_reproduce_the_original(converted):
    config, processor = converted.model.config, converted.processor
    # Gemma: transformers 4.39 multiplied the whole inputs_embeds (image and region features too) by sqrt(hidden)
    assert config.multimodal_embedding_scale == (HIDDEN**0.5 if converted.backbone == "gemma" else 1.0)
    # Ferret-UI's coordinate rule int(v * (1000.0 / S)), saved with the processor: 19 of 38 is 499, not 500
    assert processor.coordinate_rule == "ferret_ui"
    saved = json.loads((converted.output_dir / "processor_config.json").read_text())
    assert saved["coordinate_rule"] == "ferret_ui"
    image = random_image(38, 38, seed=5)
    inputs = processor(images=image, text="<image>\n<region>", regions=[(19, 19)], add_special_tokens=False)
    assert "[499, 499] <region_fea>" in processor.tokenizer.decode(inputs["input_ids"][0])
    # Llama-3: the original's system text starts with a literal <|begin_of_text|> and its tokenizer adds one
    conversation = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    ids = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    bos = processor.tokenizer.bos_token_id
    assert ids["input_ids"][0][:3].count(bos) == (2 if converted.backbone == "llama3" else 1)


def test_vision_tower_is_the_one_mm_vision_tower_names_and_a_differing_stored_copy_is_announced(converted, tmp_path):
    stored = "model.vision_tower.vision_tower.vision_model."
    differing = [message for message in converted.warnings if "vision tower weights differ" in message]
    if converted.backbone == "llama3":  # no stored copy: nothing to announce, and nothing to take
        assert differing == []
        with pytest.raises(ValueError, match="holds no vision tower weights"):
            convert(converted.output_dir.parent / "ferret_ui", tmp_path / "out", converted.clip_dir,
                    "--vision-tower-weights", "checkpoint")  # fmt: skip
        return
    assert len(differing) == 1 and "largest difference" in differing[0] and "Ferret-UI never reads" in differing[0]
    # asked for, the stored copy is converted instead (and announced the same way)
    caught = convert(converted.output_dir.parent / "ferret_ui", tmp_path / "out", converted.clip_dir,
                     "--vision-tower-weights", "checkpoint")  # fmt: skip
    assert any("Using the checkpoint's copy" in message for message in caught)
    model = FerretForConditionalGeneration.from_pretrained(tmp_path / "out")
    ours = model.state_dict()
    for name, tensor in converted.original["weights"].items():
        if name.startswith(stored):
            assert torch.equal(ours[_expected_name(name)], tensor), name


def test_missing_vision_tower_names_mm_vision_tower(tmp_path):
    write_ferret_ui(tmp_path / "ferret_ui", "llama3")
    config = json.loads((tmp_path / "ferret_ui" / "config.json").read_text())
    config["mm_vision_tower"] = str(tmp_path / "no_such_clip")
    (tmp_path / "ferret_ui" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mm_vision_tower.*--vision-tower"):
        load_script("convert_ferret_ui").main(
            ["--model-path", str(tmp_path / "ferret_ui"), "--output-dir", str(tmp_path / "out")]
        )


@pytest.mark.parametrize("extra_rows", [3, -2], ids=["tokenizer_smaller", "tokenizer_larger"])
def test_tokenizer_of_another_size_than_the_embedding_matrix_is_refused_naming_both(tmp_path, extra_rows):
    original = write_ferret_ui(tmp_path / "ferret_ui", "llama3")
    clip_dir = write_clip(tmp_path / "clip")
    weights = dict(original["weights"])
    rows = len(original["tokenizer"]) + extra_rows
    generator = torch.Generator().manual_seed(0)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        grown = torch.randn(max(rows, weights[name].shape[0]), HIDDEN, generator=generator)
        grown[: weights[name].shape[0]] = weights[name]
        weights[name] = grown[:rows].contiguous()
    torch.save(weights, tmp_path / "ferret_ui" / "pytorch_model.bin")
    config = json.loads((tmp_path / "ferret_ui" / "config.json").read_text())
    (tmp_path / "ferret_ui" / "config.json").write_text(json.dumps(dict(config, vocab_size=rows)))
    tokens = len(original["tokenizer"])
    with pytest.raises(ValueError, match=rf"tokenizer has {tokens} tokens.*embedding matrix has {rows} rows"):
        convert(tmp_path / "ferret_ui", tmp_path / "refused", clip_dir)
    # asked for, the matrix is resized to the tokenizer as Ferret-UI's loader resizes it, with a warning
    caught = convert(tmp_path / "ferret_ui", tmp_path / "out", clip_dir, "--resize-embeddings-to-tokenizer")
    assert any(f"{tokens} tokens" in message and "Resizing" in message for message in caught)
    model = FerretForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert model.config.text_config.vocab_size == tokens + 1  # + <image>
    kept = min(rows, tokens)
    assert torch.equal(model.lm_head.weight[:kept], weights["lm_head.weight"][:kept])


def test_multimodal_embedding_scale_scales_image_and_region_features_only():
    with pytest.raises(ValueError, match="multimodal_embedding_scale"):
        FerretConfig(multimodal_embedding_scale=0.0)
    with pytest.raises(ValueError, match="multimodal_embedding_scale"):
        FerretConfig(multimodal_embedding_scale=float("inf"))
    inputs = {
        "input_ids": torch.tensor([prompt_ids(2)]), "pixel_values": torch.randn(1, 3, 28, 28),
        "region_points": random_region_points(2).unsqueeze(0), "region_counts": torch.tensor([2]),
    }  # fmt: skip
    embeds = {}
    for scale in (1.0, 2.5):
        model = tiny_ferret_model(multimodal_embedding_scale=scale)
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs, scale=scale: embeds.update({scale: kwargs["inputs_embeds"]}), with_kwargs=True
        )
        with torch.no_grad():
            model(**inputs)
        hook.remove()
    ids = inputs["input_ids"][0]
    image, region = ids == IMAGE_TOKEN_ID, ids == REGION_TOKEN_ID
    assert int(image.sum()) == NUM_IMAGE_TOKENS and int(region.sum()) == 2
    torch.testing.assert_close(embeds[2.5][0, image | region], 2.5 * embeds[1.0][0, image | region])
    assert torch.equal(embeds[2.5][0, ~(image | region)], embeds[1.0][0, ~(image | region)])


def test_coordinate_rule_of_region_text():
    assert normalize_region((19, 10), (38, 38))[1] == "[500, 263]"
    assert normalize_region((19, 10), (38, 38), "ferret_ui")[1] == "[499, 263]"
    assert normalize_region({"box": (0, 19, 37, 19)}, (38, 38), "ferret_ui")[1] == "[0, 499, 973, 499]"
    with pytest.raises(ValueError, match="coordinate_rule"):
        FerretProcessor(image_processor=None, tokenizer=_tokenizer_with_ferret_tokens(), coordinate_rule="ferret_v2")


def _tokenizer_with_ferret_tokens():
    special_tokens, named_tokens, _ = FAMILIES["llama3"]
    tokenizer = bpe_tokenizer(special_tokens, **named_tokens)
    tokenizer.add_tokens(["<image>", "<region_fea>"], special_tokens=True)
    return tokenizer
