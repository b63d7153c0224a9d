"""The model on bad or unusual inputs: clear errors instead of deep shape errors or silent NaN, and numerically safe
region sampling for degenerate regions and half precision (see docs/robustness.md)."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_processor, NUM_POINTS, batch_inputs, make_sample, tiny_ferret_model

from transformers_ferret.modeling_ferret_sampler import farthest_point_sample, knn_indices, sample_point_features
from transformers_ferret.modeling_ferret_sampler import square_distance


# --- direct model inputs (tiny model of tiny_models.py, vocabulary 64) ---


@pytest.fixture(scope="module")
def model():
    return tiny_ferret_model()


@pytest.fixture(scope="module")
def inputs():
    return batch_inputs([make_sample(2, seed=0), make_sample(1, seed=1)])


def _forward(model, inputs, **overrides):
    with torch.no_grad():
        return model(**{**inputs, **overrides})


def test_region_counts_that_differ_from_the_region_tokens_raise(model, inputs):
    with pytest.raises(ValueError, match=r"`region_counts` is \[1, 1\] but the text holds \[2, 1\] region tokens"):
        _forward(model, inputs, region_counts=torch.tensor([1, 1]))


def test_region_tokens_without_region_points_raise(model, inputs):
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


# --- degenerate regions through the processor and the tiny model of test_pipeline.py (vocabulary 502) ---


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


# --- the sampler's functions in half precision ---


def test_sampler_distances_are_float32_for_half_inputs_and_do_not_overflow():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(3, 64, 2, generator=generator)
    points[1] = 0.5  # all identical
    points[2, :, 0] = 0.999  # a column at the border
    kept_half = farthest_point_sample(points.half(), 16)
    kept_float = farthest_point_sample(points.half().float(), 16)
    assert torch.equal(kept_half, kept_float)
    distance = square_distance(points.half(), points.half())
    assert distance.dtype == torch.float32 and torch.isfinite(distance).all()
    # far-apart coordinates whose squares overflow fp16 (65504) stay finite: the distance is computed in float32
    far = torch.tensor([[[0.0, 0.0], [300.0, 300.0]]], dtype=torch.float16)
    assert torch.isfinite(square_distance(far, far)).all() and square_distance(far, far).max() == 180000
    neighbors = knn_indices(points[:, :16].half(), points.half(), 4)
    assert neighbors.shape == (3, 16, 4) and (neighbors < 64).all()


def test_bilinear_read_in_half_precision_is_finite_at_the_borders():
    maps = torch.randn(2, 8, 4, 4, dtype=torch.float16) * 1000
    points = torch.tensor([[[0.0, 0.0], [0.9999, 0.9999], [0.5, 0.0]], [[0.0, 0.9999], [0.9999, 0.0], [1.0, 1.0]]])
    for transposed in (False, True):
        features = sample_point_features(maps, points.half(), transposed)
        assert features.dtype == torch.float16 and torch.isfinite(features).all()


def test_nan_free_images_from_the_processor_give_finite_logits(processor, model_502):
    image = Image.fromarray(np.full((10, 10, 3), 255, np.uint8))
    inputs = processor(images=image, text="<image>\n<region>", regions=[(0, 0, 9, 9)], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model_502(**inputs).logits).all()
