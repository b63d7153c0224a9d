"""FerretProcessor on bad and unusual input: referred regions, text, truncation and placeholders typed by users, and
the arguments of `post_process_grounding`. Bad input gets a clear ValueError/TypeError naming the argument; documented
cases are clipped or thresholded. Property-based: random valid regions give consistent points and coordinate text,
arbitrary ones either work or raise an error naming `regions` (see docs/robustness.md)."""

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from tiny_models import tiny_processor

from transformers_ferret import FerretProcessor
from transformers_ferret.region_utils import POINT_SPAN, normalize_region


HEIGHT, WIDTH = 20, 30
NUM_POINTS, IMAGE_TOKEN_ID, REGION_TOKEN_ID = 16, 501, 500
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=NUM_POINTS)


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


# --- regions: errors naming `regions`, clipping and thresholds ---


def _call(processor, image, regions, text=None):
    text = text if text is not None else "<image>\n" + " and ".join(["<region>"] * len(regions))
    return processor(images=image, text=text, regions=regions, return_tensors="pt")


def test_region_count_must_match_the_region_placeholders(processor, image):
    with pytest.raises(ValueError, match=r"Sample 0 has 2 region placeholders .* but 1 regions in `regions`"):
        _call(processor, image, [(1, 1)], text="<image>\n<region> <region>")
    with pytest.raises(ValueError, match=r"Sample 0 has 0 region placeholders .* but 2 regions in `regions`"):
        _call(processor, image, [(1, 1), (2, 2)], text="<image>\nHi")


@pytest.mark.parametrize("region", [(30, 5), (-1, 5), (5, 20), {"point": (100, 100)}])
def test_point_outside_the_image_is_an_error_naming_regions(processor, image, region):
    with pytest.raises(ValueError, match=r"`regions`: the point .* lies outside the image of width 30 and height 20"):
        _call(processor, image, [region])


@pytest.mark.parametrize("region", [(30, 0, 40, 5), (-9, -9, -1, -1), (0, 20, 5, 25)])
def test_box_entirely_outside_the_image_is_an_error_naming_regions(processor, image, region):
    with pytest.raises(ValueError, match=r"`regions`: the box .* lies entirely outside the image"):
        _call(processor, image, [region])


def test_box_partly_outside_is_clipped_to_the_image(processor, image):
    outputs = processor(images=image, text="<image>\n<region>", regions=[(-10, -5, 100, 10)], return_tensors="pt",
                        return_text_replacement_offsets=True)  # fmt: skip
    replacements = [o["replacement"] for o in outputs["text_replacement_offsets"][0] if o["type"] == "region"]
    assert replacements == ["[0, 0, 966, 500] <region_fea>"]  # clipped to (0, 0, 29, 10)
    points = outputs["region_points"][0, 0]
    assert (points >= 0).all() and (points < 1).all()
    assert points[:, 1].max() * HEIGHT <= 10  # rows 0..10 only


@pytest.mark.parametrize(
    "region", [(float("nan"), 1), (1, float("inf")), (0, 0, float("-inf"), 3), torch.tensor([float("nan"), 1.0])]
)
def test_nan_or_inf_coordinates_are_an_error_naming_regions(processor, image, region):
    with pytest.raises(ValueError, match=r"`regions`: coordinates must be finite numbers"):
        _call(processor, image, [region])


@pytest.mark.parametrize("region", [(10, 5, 5, 8), (10, 8, 12, 2), {"box": (10, 10, -3, -3)}])
def test_swapped_corners_and_negative_sizes_are_rejected_not_reordered(processor, image, region):
    message = r"`regions`: a box .* needs x1 <= x2 and y1 <= y2.*not \(x, y, width, height\)"
    with pytest.raises(ValueError, match=message):
        _call(processor, image, [region])


def test_empty_mask_is_an_error_naming_regions(processor, image):
    with pytest.raises(ValueError, match=r"`regions`: the mask is empty"):
        _call(processor, image, [np.zeros((HEIGHT, WIDTH), bool)])


@pytest.mark.parametrize(
    "mask, error, message",
    [
        (np.ones((WIDTH, HEIGHT), bool), ValueError, r"`regions`: a mask must have the image's size: .*30x20 .*20x30"),
        (np.ones((1, HEIGHT, WIDTH), bool), TypeError, r"`regions`: expected a point .*ndarray with 3 dimensions"),
        ({"mask": np.ones((HEIGHT, WIDTH, 3))}, TypeError, r"`regions`: a mask must be 2-D .*\(20, 30, 3\)"),
        (np.full((HEIGHT, WIDTH), "x"), TypeError, r"`regions`: a mask must hold numbers or booleans, got dtype <U1"),
        (np.ones((HEIGHT, WIDTH), np.complex64), TypeError, r"`regions`: a mask must hold numbers or booleans"),
        ({"mask": np.full((HEIGHT, WIDTH), None)}, TypeError, r"`regions`: a mask must hold numbers or booleans"),
        (np.full((HEIGHT, WIDTH), np.nan), ValueError, r"`regions`: a float mask holds NaN values"),
    ],
    ids=["transposed", "3-D", "3-D-dict", "strings", "complex", "objects", "nan"],
)
def test_mask_of_wrong_size_or_dtype_is_an_error_naming_regions(processor, image, mask, error, message):
    with pytest.raises(error, match=message):
        _call(processor, image, [mask])


def test_non_binary_masks_are_thresholded_as_documented(processor, image):
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    mask[2:6, 3:9] = 0.9
    mask[10:15, 10:20] = 0.4  # a soft mask: only values > 0.5 are inside
    expected = _call(processor, image, [mask > 0.5])["region_points"]
    for variant in (mask, torch.from_numpy(mask).to(torch.bfloat16), (mask * 255).astype(np.uint8),
                    Image.fromarray((mask * 255).astype(np.uint8))):  # fmt: skip
        assert torch.equal(_call(processor, image, [variant])["region_points"], expected)


def test_bool_coordinates_are_a_type_error(processor, image):
    with pytest.raises(TypeError, match=r"`regions`: a point \(x, y\) or a box .* must hold numbers"):
        _call(processor, image, [(True, False)])
    with pytest.raises(TypeError, match=r"`regions`: a point or a box must hold numbers, not booleans"):
        _call(processor, image, [np.array([True, True])])


def test_more_regions_than_max_regions_per_sample_are_refused_and_the_limit_is_saved(
    processor, image, parity_dir, tmp_path
):
    assert processor.max_regions_per_sample == 32
    regions = [(i % WIDTH, i % HEIGHT) for i in range(33)]
    with pytest.raises(ValueError, match=r"Sample 0 refers to 33 regions but .* `max_regions_per_sample` is 32"):
        _call(processor, image, regions)
    assert _call(processor, image, regions[:32])["region_counts"].tolist() == [32]

    small = FerretProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer, patch_size=14,
                            num_region_points=16, max_regions_per_sample=2)  # fmt: skip
    small.save_pretrained(tmp_path)
    reloaded = FerretProcessor.from_pretrained(tmp_path)
    assert reloaded.max_regions_per_sample == 2
    with pytest.raises(ValueError, match=r"refers to 3 regions .* `max_regions_per_sample` is 2"):
        _call(reloaded, image, regions[:3])
    with pytest.raises(ValueError, match=r"`max_regions_per_sample` must be a positive int or None, got 0"):
        FerretProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                        max_regions_per_sample=0)  # fmt: skip


def test_regions_on_a_sample_without_an_image_are_refused(processor, image):
    with pytest.raises(ValueError, match=r"Sample 0 refers to regions .* but has 0 images"):
        processor(text="What is <region>?", regions=[(1, 1)])
    with pytest.raises(ValueError, match=r"Sample 1 refers to regions .* but has 0 images"):
        processor(images=[image], text=["<image>\n<region>", "just text"], regions=[[(1, 1)], [(2, 2)]])


def test_regions_given_without_text_are_refused(processor, image):
    with pytest.raises(ValueError, match=r"`regions` were given without `text`"):
        processor(images=image, regions=[(1, 1)])


# --- text: truncation, typed placeholders, malformed `text` ---


PROMPT = "<image>\nWhat is the thing <region> doing over there?"


def _length(processor, image) -> int:
    return processor(images=image, text=PROMPT, regions=[(3, 4)])["input_ids"][0].__len__()


def test_truncation_that_would_cut_image_tokens_is_an_error(processor, image):
    with pytest.raises(ValueError, match=r"Mismatch in `image` token count .* ids=\[2\] and text=\[4\].*`max_length`"):
        processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True, max_length=3)


def test_truncation_that_would_cut_region_tokens_is_an_error(processor, image):
    ids = processor(images=image, text=PROMPT, regions=[(3, 4)])["input_ids"][0]
    region_position = ids.index(REGION_TOKEN_ID)  # keeps the image and the coordinate text, cuts the region token
    message = r"Mismatch in `region` token count .* ids=\[0\] and text=\[1\].*`max_length`"
    with pytest.raises(ValueError, match=message):
        processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True, max_length=region_position)


def test_left_truncation_cannot_cut_the_image_either(processor, image):
    tokenizer = processor.tokenizer
    tokenizer.truncation_side = "left"
    try:
        with pytest.raises(ValueError, match=r"Mismatch in `image` token count"):
            processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True,
                      max_length=_length(processor, image) - 10)  # fmt: skip
    finally:
        tokenizer.truncation_side = "right"


def test_truncation_that_keeps_every_placeholder_token_is_fine(processor, image):
    full = _length(processor, image)
    outputs = processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True, max_length=full - 3,
                        return_tensors="pt")  # fmt: skip
    ids = outputs["input_ids"][0]
    assert len(ids) == full - 3 and (ids == IMAGE_TOKEN_ID).sum() == 4 and (ids == REGION_TOKEN_ID).sum() == 1
    assert outputs["region_counts"].tolist() == [1]


def test_literal_image_placeholder_without_an_image_is_an_error(processor):
    with pytest.raises(ValueError, match=r"Found 1 <image> tokens in the text but no images were passed"):
        processor(text="How do I write <image> in a prompt?")


def test_literal_region_token_without_a_region_is_an_error(processor, image):
    with pytest.raises(ValueError, match=r"Sample 0 has 1 region placeholders .* but 0 regions in `regions`"):
        processor(images=image, text="<image>\nWhat does <region_fea> mean?")


def _chat(image, question):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def test_without_sanitizing_typed_placeholders_in_chat_text_are_placeholders(processor, image):
    with pytest.raises(ValueError, match=r"Found total 2 <image> tokens and 1 images"):
        processor.apply_chat_template(_chat(image, "Is <image> a tag?"), add_generation_prompt=True, tokenize=True,
                                      return_dict=True)  # fmt: skip


def test_sanitized_chat_encodes_typed_image_and_region_tokens_as_plain_text(processor, image):
    conversation = [
        {"role": "user", "content": "Print <image> and <region_fea>."},
        {"role": "assistant", "content": "ok"},
        *_chat(image, "Is <image> here <region>? Or <region_fea>?"),
    ]
    outputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        sanitize_control_tokens=True, processor_kwargs={"regions": [[(3, 4)]]},
    )  # fmt: skip
    ids = outputs["input_ids"][0]
    assert (ids == IMAGE_TOKEN_ID).sum() == 4 and (ids == REGION_TOKEN_ID).sum() == 1
    assert outputs["region_counts"].tolist() == [1]
    decoded = processor.tokenizer.decode(ids)
    assert "Print <image> and <region_fea>." in decoded and "Or <region_fea>?" in decoded


@pytest.mark.parametrize(
    "text, error, message",
    [
        (5, TypeError, r"`text` must be a string or a list of strings, got int"),
        ([None], TypeError, r"`text` must be a string or a list of strings, got a list holding NoneType"),
        (["ok", 3], TypeError, r"got a list holding int"),
        ([], ValueError, r"`text` is an empty list"),
    ],
)
def test_malformed_text_argument_is_a_clear_error(processor, text, error, message):
    with pytest.raises(error, match=message):
        processor(text=text)


def test_empty_prompt_gives_the_bos_token_only(processor):
    assert processor(text="")["input_ids"] == [[1]]


# --- post_process_grounding's arguments ---


@pytest.mark.parametrize(
    "texts, image_sizes, error, message",
    [
        ("a", (0, 10), ValueError, r"`image_sizes` must be \(height, width\) pairs of positive integers"),
        ("a", (-5, 10), ValueError, r"`image_sizes` must be"),
        ("a", (float("nan"), 10), ValueError, r"`image_sizes` must be"),
        ("a", "big", ValueError, r"`image_sizes` must be"),
        ("a", (1, 2, 3), ValueError, r"`image_sizes` must be"),
        (["a", "b", "c"], [(1, 2), (3, 4)], ValueError, r"`image_sizes` has 2 sizes for 3 texts"),
        (None, (10, 10), TypeError, r"`texts` must be a string or a list of strings, got NoneType"),
        ([b"bytes"], (10, 10), TypeError, r"`texts` must be a string or a list of strings"),
    ],
)
def test_post_process_grounding_rejects_bad_texts_and_image_sizes_clearly(
    processor, texts, image_sizes, error, message
):
    with pytest.raises(error, match=message):
        processor.post_process_grounding(texts, image_sizes)


def test_post_process_grounding_takes_sizes_as_a_tensor_and_one_size_for_all_texts(processor):
    results = processor.post_process_grounding(["a [0, 0, 999, 999]", "b"], torch.tensor([[10, 20]]))
    assert results[0]["entities"][0]["box"] == [0, 0, 19, 9] and results[1]["entities"] == []


# --- property-based: random regions on random image sizes ---


@st.composite
def image_and_regions(draw):
    """An image size and 1..4 valid regions on it (points inside, boxes overlapping the image, non-empty masks)."""
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    regions = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["point", "box", "mask"]))
        if kind == "point":
            x = draw(st.floats(0, width, exclude_max=True))
            y = draw(st.floats(0, height, exclude_max=True))
            regions.append(("point", (x, y)))
        elif kind == "box":
            x1 = draw(st.floats(-2 * width, width - 1))
            y1 = draw(st.floats(-2 * height, height - 1))
            x2 = draw(st.floats(max(x1, 0), 3 * width))
            y2 = draw(st.floats(max(y1, 0), 3 * height))
            regions.append(("box", (x1, y1, x2, y2)))
        else:
            mask = draw(arrays(np.bool_, (height, width)))
            mask[draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))] = True
            as_input = draw(st.sampled_from(["bool", "uint8", "float", "torch", "pil"]))
            value = {
                "bool": mask, "uint8": mask.astype(np.uint8) * 255, "float": mask.astype(np.float32),
                "torch": torch.from_numpy(mask), "pil": Image.fromarray(mask),
            }[as_input]  # fmt: skip
            regions.append(("mask", value))
    return height, width, regions


def _run(processor, height, width, region_inputs):
    image = np.random.default_rng(height * 100 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    text = "<image>\nWhat are " + " and ".join(["<region>"] * len(region_inputs)) + "?"
    return processor(images=image, text=text, regions=region_inputs, return_tensors="pt",
                     return_text_replacement_offsets=True)  # fmt: skip


def _check_outputs(outputs, height, width, region_inputs, kinds):
    count = len(region_inputs)
    ids = outputs["input_ids"][0]
    assert (ids == IMAGE_TOKEN_ID).sum() == 4 and (ids == REGION_TOKEN_ID).sum() == count
    assert outputs["region_counts"].tolist() == [count]
    points = outputs["region_points"]
    assert points.shape == (1, count, NUM_POINTS, 2) and points.dtype == torch.float32
    assert torch.isfinite(points).all() and (points >= 0).all() and (points < 1).all()
    assert outputs["pixel_values"].shape == (1, 3, 28, 28) and torch.isfinite(outputs["pixel_values"]).all()
    replacements = [o["replacement"] for o in outputs["text_replacement_offsets"][0] if o["type"] == "region"]
    assert len(replacements) == count
    for region_input, kind, replacement, region_points in zip(region_inputs, kinds, replacements, points[0]):
        match = re.fullmatch(r"\[(\d+(?:, \d+)*)\] <region_fea>", replacement)
        assert match, replacement
        values = [int(value) for value in match.group(1).split(", ")]
        assert len(values) == (2 if kind == "point" else 4) and all(0 <= value <= 999 for value in values)
        mask, _ = normalize_region(region_input, (height, width))
        columns = torch.round(region_points[:, 0] * width).long()
        rows = torch.round(region_points[:, 1] * height).long()
        assert mask[rows.numpy(), columns.numpy()].all()  # every sampled point lies in the region
        grid_x, grid_y = columns.double() * 1000 / width, rows.double() * 1000 / height
        if kind == "point":  # the point's window: POINT_SPAN pixels around the written point
            slack_x, slack_y = (POINT_SPAN + 1) * 1000 / width + 1, (POINT_SPAN + 1) * 1000 / height + 1
            assert (grid_x - values[0]).abs().max() <= slack_x and (grid_y - values[1]).abs().max() <= slack_y
        else:  # inside the written box (a float box corner may sit inside its first pixel: one pixel of slack)
            x1, y1, x2, y2 = values
            assert x1 <= x2 and y1 <= y2
            slack_x, slack_y = (1000 / width + 1, 1000 / height + 1) if kind == "box" else (0, 0)
            assert grid_x.floor().min() >= x1 - slack_x and grid_x.floor().max() <= x2
            assert grid_y.floor().min() >= y1 - slack_y and grid_y.floor().max() <= y2


@SETTINGS
@given(case=image_and_regions())
def test_valid_regions_give_consistent_points_and_coordinate_text(processor, case):
    height, width, regions = case
    kinds = [kind for kind, _ in regions]
    region_inputs = [value for _, value in regions]
    _check_outputs(_run(processor, height, width, region_inputs), height, width, region_inputs, kinds)


_ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.floats(-50, 50)
)
_ANY_REGION = st.one_of(
    st.lists(_ANY_NUMBER, min_size=0, max_size=6),
    st.lists(_ANY_NUMBER, min_size=2, max_size=2).map(tuple),
    st.lists(_ANY_NUMBER, min_size=4, max_size=4).map(tuple),
    st.fixed_dictionaries({"box": st.lists(_ANY_NUMBER, min_size=4, max_size=4)}),
    st.fixed_dictionaries({"point": st.lists(_ANY_NUMBER, min_size=2, max_size=2)}),
    st.builds(lambda h, w, fill: np.full((h, w), fill), st.integers(1, 40), st.integers(1, 40),
              st.sampled_from([0, 1, 0.3, 0.7, 200, np.nan, True])),  # fmt: skip
    st.sampled_from(["a cat", None, 3, {"polygon": [1, 2]}, np.zeros((2, 2, 2))]),
)


@SETTINGS
@given(size=st.tuples(st.integers(1, 40), st.integers(1, 40)), regions=st.lists(_ANY_REGION, min_size=1, max_size=3))
@example(size=(2, 1), regions=[np.full((2, 1), 1)])  # a mask of a 2x1 image has two values, yet it is no point
def test_arbitrary_regions_either_work_or_raise_an_error_naming_regions(processor, size, regions):
    height, width = size
    try:
        outputs = _run(processor, height, width, regions)
    except (ValueError, TypeError) as error:
        assert "`regions`" in str(error), error
        return
    kinds = ["mask" if np.ndim(region) == 2
             else "point" if np.size(np.asarray(region.get("point", region) if isinstance(region, dict) else region)) == 2
             else "box" for region in regions]  # fmt: skip
    _check_outputs(outputs, height, width, regions, kinds)
