"""Bad regions get a clear ValueError/TypeError naming `regions`; documented ones are clipped or thresholded (see
docs/robustness.md)."""

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import tiny_processor

from transformers_ferret import FerretProcessor
from transformers_ferret.region_utils import normalize_region


HEIGHT, WIDTH = 20, 30


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=16)


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _call(processor, image, regions, text=None):
    text = text if text is not None else "<image>\n" + " and ".join(["<region>"] * len(regions))
    return processor(images=image, text=text, regions=regions, return_tensors="pt")


def test_wrong_number_of_regions_for_the_placeholders(processor, image):
    with pytest.raises(ValueError, match=r"Sample 0 has 2 region placeholders .* but 1 regions in `regions`"):
        _call(processor, image, [(1, 1)], text="<image>\n<region> <region>")
    with pytest.raises(ValueError, match=r"Sample 0 has 0 region placeholders .* but 2 regions in `regions`"):
        _call(processor, image, [(1, 1), (2, 2)], text="<image>\nHi")


@pytest.mark.parametrize("region", [(30, 5), (-1, 5), (5, 20), {"point": (100, 100)}])
def test_point_outside_the_image(processor, image, region):
    with pytest.raises(ValueError, match=r"`regions`: the point .* lies outside the image of width 30 and height 20"):
        _call(processor, image, [region])


@pytest.mark.parametrize("region", [(30, 0, 40, 5), (-9, -9, -1, -1), (0, 20, 5, 25)])
def test_box_entirely_outside_the_image(processor, image, region):
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
def test_nan_or_inf_coordinates(processor, image, region):
    with pytest.raises(ValueError, match=r"`regions`: coordinates must be finite numbers"):
        _call(processor, image, [region])


@pytest.mark.parametrize("region", [(10, 5, 5, 8), (10, 8, 12, 2), {"box": (10, 10, -3, -3)}])
def test_swapped_corners_and_negative_sizes_are_rejected_not_reordered(processor, image, region):
    message = r"`regions`: a box .* needs x1 <= x2 and y1 <= y2.*not \(x, y, width, height\)"
    with pytest.raises(ValueError, match=message):
        _call(processor, image, [region])


def test_empty_mask(processor, image):
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
def test_mask_of_wrong_size_or_dtype(processor, image, mask, error, message):
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


def test_more_regions_than_max_regions_per_sample(processor, image, parity_dir, tmp_path):
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


def test_regions_on_a_text_only_sample(processor, image):
    with pytest.raises(ValueError, match=r"Sample 0 refers to regions .* but has 0 images"):
        processor(text="What is <region>?", regions=[(1, 1)])
    with pytest.raises(ValueError, match=r"Sample 1 refers to regions .* but has 0 images"):
        processor(images=[image], text=["<image>\n<region>", "just text"], regions=[[(1, 1)], [(2, 2)]])


def test_regions_without_text(processor, image):
    with pytest.raises(ValueError, match=r"`regions` were given without `text`"):
        processor(images=image, regions=[(1, 1)])


@pytest.mark.parametrize(
    "region, size",
    [((0, 0), (1, 1)), ((0, 0, 0, 0), (1, 1)), ((9999, 0), (1, 10000)), ((WIDTH - 1, HEIGHT - 1), (HEIGHT, WIDTH))],
)
def test_degenerate_regions_are_valid_and_finite(region, size):
    mask, text = normalize_region(region, size)
    assert mask.any()
    values = [int(value) for value in text.strip("[]").split(",")]
    assert all(0 <= value <= 999 for value in values)
