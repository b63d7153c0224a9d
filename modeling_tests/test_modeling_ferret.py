"""Behaviour of FerretModel / FerretForConditionalGeneration on tiny random configs."""

import pytest
import torch
from tiny_models import (
    IMAGE_TOKEN_ID,
    REGION_TOKEN_ID,
    batch_inputs,
    make_sample,
    tiny_ferret_config,
    tiny_ferret_model,
)
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretModel


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
    torch.testing.assert_close(model.lm_head(hidden), _logits(model, inputs))
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
        torch.testing.assert_close(model.lm_head(base(**inputs).last_hidden_state), expected, rtol=0, atol=0)


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
        torch.testing.assert_close(model(input_ids=ids).logits, language_model(input_ids=ids).logits)
