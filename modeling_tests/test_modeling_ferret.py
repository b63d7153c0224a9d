"""Behaviour of FerretModel / FerretForConditionalGeneration on tiny random configs: outputs, generation, loss,
save/load; bad or unusual inputs get clear errors instead of deep shape errors or silent NaN, degenerate regions and
half precision stay finite; and loading never unpickles (see docs/robustness.md)."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import (
    IMAGE_TOKEN_ID,
    NUM_POINTS,
    REGION_TOKEN_ID,
    batch_inputs,
    make_sample,
    tiny_ferret_config,
    tiny_ferret_model,
    tiny_processor,
)
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretModel
from transformers_ferret.modeling_ferret import IMAGE_TOKEN_LOGIT, mask_image_token_logits


@pytest.fixture(scope="module")
def model():
    return tiny_ferret_model()


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_region_features_replace_region_token_embeddings_in_order(model):
    inputs = batch_inputs([make_sample(2, seed=3)])
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        output = model(**inputs)
    hook.remove()
    embeds = captured["inputs_embeds"][0]
    region_rows = (inputs["input_ids"][0] == REGION_TOKEN_ID).nonzero().squeeze(-1)
    image_rows = (inputs["input_ids"][0] == IMAGE_TOKEN_ID).nonzero().squeeze(-1)
    assert output.region_hidden_states.shape == (1, 2, model.config.text_config.hidden_size)  # one row of 2 slots
    torch.testing.assert_close(embeds[region_rows], output.region_hidden_states[0], rtol=0, atol=0)
    torch.testing.assert_close(embeds[image_rows], output.image_hidden_states, rtol=0, atol=0)
    # the two regions differ, so their features differ, and swapping their points swaps the features
    swapped = dict(inputs, region_points=inputs["region_points"].flip(1))
    with torch.no_grad():
        swapped_output = model(**swapped)
    torch.testing.assert_close(swapped_output.region_hidden_states, output.region_hidden_states.flip(1))
    assert not torch.allclose(output.region_hidden_states[0, 0], output.region_hidden_states[0, 1])


def test_outputs_carry_the_image_encoder_outputs_as_get_image_features_returns_them(model):
    """transformers 5.25's multimodal outputs: `image_outputs` (per-image projected features + the tower's states)."""
    inputs = batch_inputs([make_sample(1, seed=1), make_sample(2, seed=2)])
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
        features = model.model.get_image_features(inputs["pixel_values"])
        plain = model(**inputs)
    image_outputs = output.image_outputs
    assert len(image_outputs.pooler_output) == 2
    torch.testing.assert_close(torch.cat(image_outputs.pooler_output), output.image_hidden_states, rtol=0, atol=0)
    for ours, reference in zip(image_outputs.pooler_output, features.pooler_output):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert len(image_outputs.hidden_states) == model.config.vision_config.num_hidden_layers + 1  # asked for
    assert plain.image_outputs.hidden_states is None  # not asked for
    with torch.no_grad():
        assert model(**{key: value for key, value in inputs.items() if "pixel" not in key and "region" not in key},
                     ).image_outputs is None  # fmt: skip


def test_base_model_forward_does_all_multimodal_work(model):
    """TRL calls only the base model and reads last_hidden_state: regions must change it."""
    inputs = batch_inputs([make_sample(1, seed=1)])
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
        moved = model.model(**dict(inputs, region_points=inputs["region_points"] * 0.5)).last_hidden_state
    torch.testing.assert_close(mask_image_token_logits(model.lm_head(hidden), IMAGE_TOKEN_ID), _logits(model, inputs))
    region_position = int((inputs["input_ids"][0] == REGION_TOKEN_ID).nonzero()[0])
    assert torch.allclose(hidden[0, :region_position], moved[0, :region_position])
    assert not torch.allclose(hidden[0, region_position:], moved[0, region_position:])


def test_left_padded_batch_equals_single_samples(model):
    samples = [make_sample(2, seed=5, text_len=9), make_sample(0, seed=6), make_sample(1, seed=7, text_len=4)]
    batch = batch_inputs(samples, padding_side="left")
    with torch.no_grad():
        batched = model.generate(**batch, max_new_tokens=6, do_sample=False)
        batched_logits = model(**batch).logits
    length = batch["input_ids"].shape[1]
    for row, sample in enumerate(samples):
        single = batch_inputs([sample])
        with torch.no_grad():
            single_tokens = model.generate(**single, max_new_tokens=6, do_sample=False)
            single_logits = model(**single).logits[0]
        assert batched[row, length:].tolist() == single_tokens[0, len(sample["ids"]) :].tolist()
        torch.testing.assert_close(batched_logits[row, -len(sample["ids"]) :], single_logits, atol=1e-4, rtol=1e-4)


def test_generate_with_cache_equals_generate_without_cache(model):
    inputs = batch_inputs([make_sample(2, seed=8), make_sample(1, seed=9)])
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_generate_logs_no_deprecation_warning(model):
    """transformers 5.25 renamed `past_key_values` to `cache` and logs a deprecation warning (once per process) when
    a model takes or reads the old name; a plain `generate` must not trigger it."""
    import logging as std_logging

    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # the warning is logged once per process: forget earlier tests' calls
    records = []
    handler = std_logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        with torch.no_grad():
            model.generate(**batch_inputs([make_sample(2, seed=8)]), max_new_tokens=4, do_sample=False, use_cache=True)
            model(**batch_inputs([make_sample(1, seed=9)]), use_cache=True).cache  # what our own code reads
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert [record.getMessage() for record in records if "deprecated" in record.getMessage()] == []


def test_a_decode_step_with_the_cache_given_by_hand_equals_the_full_forward(model):
    inputs = batch_inputs([make_sample(2, seed=8)])
    next_token = torch.tensor([[5]])
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        step = model(input_ids=next_token, attention_mask=attention_mask, cache=prefill.cache)
        full = model(**{**inputs, "input_ids": torch.cat([inputs["input_ids"], next_token], 1), "attention_mask": attention_mask})
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-4)


def test_regions_and_image_are_encoded_at_prefill_only(model):
    inputs = batch_inputs([make_sample(2, seed=10)])
    calls = {"sampler": 0, "vision": 0}
    hooks = [
        model.model.region_sampler.register_forward_hook(lambda *a: calls.__setitem__("sampler", calls["sampler"] + 1)),
        model.model.vision_tower.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1)),
    ]
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    for hook in hooks:
        hook.remove()
    assert output.shape[1] == inputs["input_ids"].shape[1] + 5
    assert calls == {"sampler": 1, "vision": 1}


def _hook_base_model(kind: str, base_model: torch.nn.Module, seen: list):
    """Attach a hook of `kind` that records every call of `base_model`; returns its remover."""
    if kind == "torch forward hook":
        return base_model.register_forward_hook(lambda module, args, output: seen.append(module)).remove
    if kind == "global forward hook":
        handle = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: seen.append(module) if module is base_model else None
        )
        return handle.remove
    if kind == "subclass overriding forward":  # as a wrapper class (FSDP1, a compiled module) would be
        original_class = type(base_model)

        class Recording(original_class):
            def forward(self, *args, **kwargs):
                seen.append(self)
                return super().forward(*args, **kwargs)

        base_model.__class__ = Recording
        return lambda: setattr(base_model, "__class__", original_class)
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    class Recorder(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            seen.append(module)
            return args, kwargs

    add_hook_to_module(base_model, Recorder())
    return lambda: remove_hook_from_module(base_model)


@pytest.mark.parametrize(
    "kind", ["torch forward hook", "global forward hook", "accelerate hook", "subclass overriding forward"]
)
def test_decode_steps_skip_the_base_model_only_when_nothing_hooks_it(monkeypatch, kind):
    """A decode step runs the language model without going through `FerretModel.forward` (which would only hand it
    the embeddings), with bit-identical scores and tokens; a hook on the base model (torch's, a global one,
    accelerate's) or a class whose `forward` is not Ferret's keeps every step on the long way, so it sees each step."""
    model = tiny_ferret_model()  # its own: removing accelerate's hook leaves `forward` set on the instance
    inputs = batch_inputs([make_sample(2, seed=8)])
    base_calls, original_forward = [], FerretModel.forward

    def counted_forward(self, *args, **kwargs):
        base_calls.append(kwargs.get("pixel_values") is not None)
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(FerretModel, "forward", counted_forward)

    def generate():
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True)  # fmt: skip

    short = generate()
    assert base_calls == [True]  # the image + region prefill only
    base_calls.clear()
    seen = []
    remove = _hook_base_model(kind, model.model, seen)
    try:
        hooked = generate()
    finally:
        remove()
    assert base_calls == [True, False, False, False, False] and seen == [model.model] * 5
    assert short.sequences.tolist() == hooked.sequences.tolist()
    for short_scores, hooked_scores in zip(short.scores, hooked.scores, strict=True):
        torch.testing.assert_close(short_scores, hooked_scores, rtol=0, atol=0)


def test_beam_search_and_num_return_sequences_with_regions(model):
    inputs = batch_inputs([make_sample(2, seed=11), make_sample(1, seed=12)])
    with torch.no_grad():
        beams = model.generate(**inputs, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
        sampled = model.generate(**inputs, max_new_tokens=4, do_sample=True, num_return_sequences=3)
    assert beams.shape[0] == 4 and sampled.shape[0] == 6
    # the best beam of a greedy-width-1 search equals greedy decoding
    with torch.no_grad():
        one_beam = model.generate(**inputs, max_new_tokens=4, num_beams=1, do_sample=False)
        greedy = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert one_beam.tolist() == greedy.tolist()


def test_inputs_embeds_path_equals_input_ids_path(model):
    inputs = batch_inputs([make_sample(1, seed=13)])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        from_ids = model(**inputs).logits
        from_embeds = model(**{**inputs, "input_ids": None, "inputs_embeds": embeds}).logits
    torch.testing.assert_close(from_embeds, from_ids)


def test_loss_never_counts_image_or_region_placeholder_positions():
    """Labels copied from `input_ids` (as TRL's default collator makes them) give the loss of the same labels with
    every `<image>` and region-token position set to -100: placeholders carry features, not text to predict."""
    model = tiny_ferret_model(seed=1)
    inputs = batch_inputs([make_sample(2, seed=15), make_sample(1, seed=16)])
    ids = inputs["input_ids"]
    placeholders = (ids == IMAGE_TOKEN_ID) | (ids == REGION_TOKEN_ID)
    assert placeholders.sum() > (~placeholders).sum() / 4  # the check below would be weak without many of them
    with torch.no_grad():
        copied = model(**inputs, labels=ids.clone())
        masked = model(**inputs, labels=ids.masked_fill(placeholders, -100))
        logits = copied.logits[:, :-1].flatten(0, 1)
        counted_all = torch.nn.functional.cross_entropy(logits, ids[:, 1:].flatten())
    torch.testing.assert_close(copied.loss, masked.loss, rtol=0, atol=0)
    assert abs(copied.loss - counted_all) > 1e-3  # the placeholders would change the loss if they counted


def test_loss_uses_labels_and_backpropagates_to_sampler_and_projector():
    model = tiny_ferret_model(seed=1).train()
    inputs = batch_inputs([make_sample(1, seed=14)])
    labels = inputs["input_ids"].clone()
    labels[:, :-3] = -100
    output = model(**inputs, labels=labels)
    shifted = output.logits[:, :-1].flatten(0, 1)
    text_labels = labels.masked_fill(labels == REGION_TOKEN_ID, -100)  # the region token among the last 3 is not text
    assert (text_labels[:, 1:] != -100).sum() == 2
    expected = torch.nn.functional.cross_entropy(shifted, text_labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    for name in ("region_sampler.layers.0.fusion.weight", "region_sampler.flatten_projection.weight",
                 "multi_modal_projector.linear_1.weight", "vision_tower.encoder.layers.0.mlp.fc1.weight"):  # fmt: skip
        gradient = model.model.get_parameter(name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name


@pytest.mark.parametrize("projector_type", ["linear", "mlp2x_gelu"])
def test_save_load_and_auto_class_round_trip(tmp_path, projector_type):
    model = tiny_ferret_model(seed=2, projector_type=projector_type)
    inputs = batch_inputs([make_sample(2, seed=15)])
    expected = _logits(model, inputs)
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), FerretConfig)
    for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM):
        reloaded = auto_class.from_pretrained(tmp_path).eval()
        assert isinstance(reloaded, FerretForConditionalGeneration)
        torch.testing.assert_close(_logits(reloaded, inputs), expected, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, FerretModel)
    with torch.no_grad():
        base_logits = mask_image_token_logits(model.lm_head(base(**inputs).last_hidden_state), IMAGE_TOKEN_ID)
        torch.testing.assert_close(base_logits, expected, rtol=0, atol=0)


def test_mean_pooling_and_orientation_flag_change_region_features():
    inputs = batch_inputs([make_sample(1, seed=16)])
    reference = tiny_ferret_model(seed=3)
    for override in ({"sampler_pooler_mode": "mean"}, {"sampler_transposed_read": True}):
        variant = tiny_ferret_model(seed=3, **override)
        with torch.no_grad():
            assert not torch.allclose(variant(**inputs).region_hidden_states, reference(**inputs).region_hidden_states)


def test_every_parameter_is_initialised_by_init_weights():
    config = tiny_ferret_config()
    with torch.device("meta"):
        model = FerretForConditionalGeneration(config)
    model = model.to_empty(device="cpu")
    model.init_weights()
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all() and parameter.abs().max() < 10, name


# ---- bad input: clear errors naming the argument -------------------------------------------------------------


def test_region_token_count_mismatch_raises(model):
    inputs = batch_inputs([make_sample(2, seed=17)])
    with pytest.raises(ValueError, match="region_counts"):
        model(**dict(inputs, region_counts=torch.tensor([1])))


def test_region_tokens_without_region_points_raise(model):
    inputs = batch_inputs([make_sample(1, seed=18)])
    del inputs["region_points"], inputs["region_counts"]
    with pytest.raises(ValueError, match="region_points"):
        model(**inputs)


def test_region_points_without_image_raise(model):
    inputs = batch_inputs([make_sample(1, seed=19)])
    del inputs["pixel_values"]
    with pytest.raises(ValueError, match="pixel_values"):
        model(**inputs)


def test_regions_on_sample_without_image_tokens_raise(model):
    inputs = batch_inputs([make_sample(1, seed=20), make_sample(1, seed=21)])
    inputs["input_ids"][1][inputs["input_ids"][1] == IMAGE_TOKEN_ID] = 5
    inputs["pixel_values"] = inputs["pixel_values"][:1]
    with pytest.raises(ValueError, match="need an image"):
        model(**inputs)


def test_non_finite_region_points_raise(model):
    inputs = batch_inputs([make_sample(1, seed=22)])
    inputs["region_points"][0, 0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="region_points.*NaN"):
        model(**inputs)


def test_wrongly_shaped_region_points_raise(model):
    inputs = batch_inputs([make_sample(1, seed=23)])
    with pytest.raises(ValueError, match="region_points.*shape"):
        model(**dict(inputs, region_points=inputs["region_points"][0]))


def test_image_token_count_mismatch_raises(model):
    inputs = batch_inputs([make_sample(0, seed=24)])
    ids = inputs["input_ids"].clone()
    ids[0, (ids[0] == IMAGE_TOKEN_ID).nonzero()[0]] = 5
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**dict(inputs, input_ids=ids))


def test_invalid_sampler_config_raises():
    with pytest.raises(ValueError, match="keeps 40 of 16 points"):
        tiny_ferret_config(sampler_num_sub_points=[40, 4])



def test_region_free_training_batch_still_gives_the_sampler_zero_gradients():
    """Every rank must use the sampler every step (DDP / ZeRO would otherwise hang waiting for its gradients)."""
    model = tiny_ferret_model(seed=4).train()
    inputs = batch_inputs([make_sample(0, seed=25)])
    del inputs["region_points"], inputs["region_counts"]
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN_ID, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    for name, parameter in model.model.region_sampler.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() == 0, name
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**inputs, labels=labels).loss, loss.detach())


def test_text_path_equals_the_bare_language_model_including_gemma2_logit_softcapping():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    text_config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=1.0)  # fmt: skip
    torch.manual_seed(0)
    language_model = Gemma2ForCausalLM(text_config).eval()
    model = tiny_ferret_model(text_config=text_config.to_dict(), tie_word_embeddings=True)
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    ids = torch.randint(3, 60, (2, 12))
    with torch.no_grad():
        logits, expected = model(input_ids=ids).logits, language_model(input_ids=ids).logits
    image_token_id = model.config.image_token_id  # a class of the vocabulary, but a placeholder: never predicted
    assert (logits[..., image_token_id] == IMAGE_TOKEN_LOGIT).all()
    assert logits.softmax(-1)[..., image_token_id].max() == 0
    torch.testing.assert_close(logits, mask_image_token_logits(expected, image_token_id))


# ---- more bad input to forward (2 samples, 2 and 1 regions); half precision with an fp32 model ---------------


@pytest.fixture(scope="module")
def inputs():
    return batch_inputs([make_sample(2, seed=0), make_sample(1, seed=1)])


def _forward(model, inputs, **overrides):
    with torch.no_grad():
        return model(**{**inputs, **overrides})


def test_region_counts_that_differ_from_the_region_tokens_raise(model, inputs):
    with pytest.raises(ValueError, match=r"`region_counts` is \[1, 1\] but the text holds \[2, 1\] region tokens"):
        _forward(model, inputs, region_counts=torch.tensor([1, 1]))


def test_region_points_and_counts_of_none_with_region_tokens_raise(model, inputs):
    with pytest.raises(ValueError, match=r"region tokens but no `region_points` were given"):
        _forward(model, inputs, region_points=None, region_counts=None)


def test_region_points_with_fewer_slots_than_region_counts_raise_a_value_error(model, inputs):
    # region_counts [2, 1] match the tokens, but region_points only has one slot per sample: today a RuntimeError from
    # masked_scatter ("Number of elements of source < number of ones in mask").
    with pytest.raises(ValueError, match=r"`region_points`"):
        _forward(model, inputs, region_points=inputs["region_points"][:, :1])


def test_region_points_with_too_few_points_for_the_sampler_raise_a_value_error(model, inputs):
    # The sampler's first stage keeps 8 points with 4 neighbours; 3 points per region give a RuntimeError from topk
    # ("selected index k out of range") today.
    with pytest.raises(ValueError, match=r"`region_points`"):
        _forward(model, inputs, region_points=inputs["region_points"][:, :, :3])


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_pixel_values_raise_a_value_error_naming_pixel_values(model, inputs, bad_value):
    pixel_values = inputs["pixel_values"].clone()
    pixel_values[0, 0, 0, 0] = bad_value  # today: logits silently all NaN
    with pytest.raises(ValueError, match=r"`pixel_values`"):
        _forward(model, inputs, pixel_values=pixel_values)


@pytest.mark.parametrize(
    "make_bad", [lambda pv: pv[0], lambda pv: pv[:, :1]], ids=["3-D", "1-channel"]
)
def test_pixel_values_of_the_wrong_rank_or_channel_count_raise_a_value_error_naming_pixel_values(
    model, inputs, make_bad
):
    # Today: "not enough values to unpack (expected 4, got 3)" and a conv2d RuntimeError about channels.
    with pytest.raises(ValueError, match=r"`pixel_values`"):
        _forward(model, inputs, pixel_values=make_bad(inputs["pixel_values"]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pixel_values_work_with_an_fp32_model(model, inputs, dtype):
    reference = _forward(model, inputs).logits
    logits = _forward(model, inputs, pixel_values=inputs["pixel_values"].to(dtype)).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0.05)


def test_half_precision_region_points_work_with_an_fp32_model(model, inputs):
    logits = _forward(model, inputs, region_points=inputs["region_points"].half()).logits
    assert torch.isfinite(logits).all()


# ---- degenerate regions through the processor and a tiny model with the fixture's vocabulary (502) -----------


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=NUM_POINTS)


@pytest.fixture(scope="module")
def model_502():
    return tiny_ferret_model(seed=6, text_config={"model_type": "llama", "vocab_size": 502, "hidden_size": 32,
                             "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
                             image_token_index=501, region_token_index=500)  # fmt: skip


def _one_pixel_mask(height, width, row, column):
    mask = np.zeros((height, width), bool)
    mask[row, column] = True
    return mask


DEGENERATE = {
    "1-pixel-mask": ((20, 30), [_one_pixel_mask(20, 30, 7, 9)]),
    "1-pixel-mask-at-corner": ((20, 30), [_one_pixel_mask(20, 30, 19, 29)]),
    "point-at-border": ((20, 30), [(29.9, 0)]),
    "zero-size-box-at-border": ((20, 30), [(29, 19, 29, 19)]),
    "box-clipped-to-one-column": ((20, 30), [(29, -50, 500, 500)]),
    "1x1-image": ((1, 1), [(0, 0), (0, 0, 0, 0)]),
    "1x10000-image": ((1, 10000), [(9999, 0), (0, 0, 9999, 0)]),
}


def _degenerate_inputs(processor, size, regions):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    text = "<image>\nWhat is " + " and ".join(["<region>"] * len(regions)) + "?"
    return processor(images=image, text=text, regions=regions, return_tensors="pt")


@pytest.mark.parametrize("name", list(DEGENERATE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_degenerate_regions_never_produce_nan_or_inf(processor, model_502, name, dtype):
    size, regions = DEGENERATE[name]
    inputs = _degenerate_inputs(processor, size, regions)
    points = inputs["region_points"][0]
    assert ((points >= 0) & (points < 1)).all()
    if "pixel" in name or "1x1-" in name:
        assert (points == points[:, :1]).all()  # every sampled point identical
    model = model_502 if dtype == torch.float32 else _half(model_502)
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    assert outputs.region_hidden_states.shape[:2] == (1, len(regions))
    assert torch.isfinite(outputs.region_hidden_states).all()
    assert all(torch.isfinite(hidden).all() for hidden in outputs.hidden_states)
    assert torch.isfinite(outputs.logits).all()


_HALF_MODELS = {}


def _half(model):
    if id(model) not in _HALF_MODELS:
        half = tiny_ferret_model(seed=6, text_config={"model_type": "llama", "vocab_size": 502, "hidden_size": 32,
                                 "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
                                 image_token_index=501, region_token_index=500)  # fmt: skip
        half.load_state_dict(model.state_dict())
        _HALF_MODELS[id(model)] = half.half()
    return _HALF_MODELS[id(model)]


def test_nan_free_images_from_the_processor_give_finite_logits(processor, model_502):
    image = Image.fromarray(np.full((10, 10, 3), 255, np.uint8))
    inputs = processor(images=image, text="<image>\n<region>", regions=[(0, 0, 9, 9)], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model_502(**inputs).logits).all()


# ---- safe loading: `torch.load` with `weights_only=True`, nothing unpickles, PIL's guards stay on ------------


REPOSITORY = Path(__file__).resolve().parents[1]
SCANNED = [REPOSITORY / "src", REPOSITORY / "conversion"]


def _dotted(node: ast.AST) -> str:
    """`torch.load`, `np.load`, `Image.MAX_IMAGE_PIXELS`, ... for a Name/Attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loading(source: str) -> list[str]:
    """Problems in one Python source: `(line) what`."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load":
                if not _keyword_is(node, "weights_only", True):
                    problems.append(f"({node.lineno}) torch.load without weights_only=True")
            elif name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in (
                "pickle", "cPickle", "dill", "joblib", "cloudpickle", "marshal", "shelve"
            ):  # fmt: skip
                problems.append(f"({node.lineno}) {name}")
            elif name.endswith(("np.load", "numpy.load")) and _keyword_is(node, "allow_pickle", True):
                problems.append(f"({node.lineno}) {name} with allow_pickle=True")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names]
            modules += [node.module] if isinstance(node, ast.ImportFrom) else []
            if any(module and module.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve")
                   for module in modules):  # fmt: skip
                problems.append(f"({node.lineno}) import of a pickle module")
            from_torch = isinstance(node, ast.ImportFrom) and node.module == "torch"
            if from_torch and any(alias.name == "load" for alias in node.names):
                problems.append(f"({node.lineno}) `from torch import load` hides torch.load from this check")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = _dotted(target)
                if name.endswith("MAX_IMAGE_PIXELS"):
                    problems.append(f"({node.lineno}) {name} changed: PIL's decompression-bomb guard stays on")
                if name.endswith("LOAD_TRUNCATED_IMAGES"):
                    problems.append(f"({node.lineno}) {name} changed: truncated images must raise")
    return problems


def test_torch_load_calls_use_weights_only_and_nothing_unpickles():
    files = [path for root in SCANNED for path in sorted(root.rglob("*.py"))]
    assert len(files) > 10
    problems = {
        str(path.relative_to(REPOSITORY)): found
        for path in files
        if (found := unsafe_loading(path.read_text(encoding="utf-8")))
    }
    assert problems == {}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import torch\nstate = torch.load(path)", "torch.load without weights_only=True"),
        ("import torch\nstate = torch.load(path, weights_only=False)", "torch.load without weights_only=True"),
        ("import torch as t\nstate = t.load(path, map_location='cpu')", None),  # aliases: see below
        ("import pickle\nstate = pickle.load(f)", "import of a pickle module"),
        ("import numpy as np\nnp.load(p, allow_pickle=True)", "np.load with allow_pickle=True"),
        ("from PIL import Image\nImage.MAX_IMAGE_PIXELS = None", "decompression-bomb guard stays on"),
        ("from PIL import ImageFile\nImageFile.LOAD_TRUNCATED_IMAGES = True", "truncated images must raise"),
        ("from torch import load\nload(p)", "hides torch.load"),
        ("import torch\ntorch.load(path, map_location='cpu', weights_only=True, mmap=True)", ""),
    ],
)
def test_the_check_catches_unsafe_patterns(source, expected):
    problems = unsafe_loading(source)
    if expected == "":
        assert problems == []
    elif expected is None:
        # `import torch as t` is not resolved; the code base imports torch by its name, which this asserts
        assert all("import torch as" not in path.read_text() for root in SCANNED for path in root.rglob("*.py"))
    else:
        assert any(expected in problem for problem in problems), problems
