"""Region masks, coordinate text and sampled points follow the original Ferret code exactly; degenerate regions are
valid, and sampled points lie inside every mask (property-based)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from safetensors.numpy import load_file

from transformers_ferret.region_utils import binarize_mask, mask_to_points, normalize_region


CASES_WITH_REGIONS = [
    "03_image_box",
    "04_image_freeform_and_point",
    "05_batch2_right_padded",
    "06_image_point_at_border",
]


def _case(parity_dir, name: str) -> dict:
    cases = json.loads((parity_dir / "manifest.json").read_text())["cases"]
    return next(case for case in cases if case["name"] == name)


def _region_input(parity_dir, region: dict):
    """The region as a user would give it: the raw pixel point/box, or the free-form mask as a PNG."""
    if region["kind"] == "freeform":
        return Image.open(parity_dir / region["mask_png"])
    return region["coor_raw"]


def _fixture_mask(parity_dir, region: dict) -> np.ndarray:
    """The mask the original model received, (W, H) on disk, transposed to (H, W)."""
    return np.load(parity_dir / region["mask_npy"]).T.astype(bool)


@pytest.mark.parametrize("case_name", CASES_WITH_REGIONS)
def test_masks_and_coordinate_text_rebuilt_from_manifest_match_original(parity_dir, case_name):
    case = _case(parity_dir, case_name)
    regions = [(sample, region) for sample in case["samples"] for region in sample["regions"]]
    assert regions
    for sample, region in regions:
        width, height = sample["image_size_wh"]
        mask, text = normalize_region(_region_input(parity_dir, region), (height, width))
        assert text == region["coor_text"]
        assert mask.dtype == bool and mask.shape == (height, width)
        np.testing.assert_array_equal(mask, _fixture_mask(parity_dir, region))
        assert mask.sum() == region["num_pixels"]


@pytest.mark.parametrize("case_name", CASES_WITH_REGIONS)
def test_mask_to_points_equals_original_initial_points_exactly(parity_dir, case_name):
    case = _case(parity_dir, case_name)
    expected = torch.from_numpy(load_file(parity_dir / case["file"])["region_points_init"])
    masks = [_fixture_mask(parity_dir, region) for sample in case["samples"] for region in sample["regions"]]
    points = mask_to_points(torch.from_numpy(np.stack(masks)), num_points=512)
    assert points.dtype == torch.float32 and points.shape == expected.shape
    assert torch.equal(points, expected)


# --- normalize_region: geometry by hand ---


def test_point_is_an_11x11_square_and_text_is_truncated_on_the_1000_grid():
    mask, text = normalize_region((50, 40), (100, 160))  # height 100, width 160
    assert text == "[312, 400]"  # int(50 * 1000 / 160) = int(312.5), int(40 * 1000 / 100)
    rows, columns = np.nonzero(mask)
    assert mask.sum() == 121
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (35, 45, 45, 55)


def test_point_window_is_clipped_at_the_image_corner():
    mask, text = normalize_region((2, 98), (100, 160))
    assert text == "[12, 980]"
    rows, columns = np.nonzero(mask)
    assert mask.sum() == 8 * 7  # columns 0..7, rows 93..99
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (93, 99, 0, 7)


def test_float_point_uses_truncated_pixel_for_the_mask_and_exact_value_for_the_text():
    mask, text = normalize_region([10.9, 20.5], (100, 100))
    assert text == "[109, 205]"
    rows, columns = np.nonzero(mask)
    assert (rows.min(), columns.min()) == (15, 5)


def test_box_is_inclusive():
    mask, text = normalize_region((10, 20, 13, 21), (50, 80))
    assert text == "[125, 400, 162, 420]"  # 10*1000/80, 20*1000/50, 13*1000/80 = 162.5, 21*1000/50
    assert mask.sum() == 4 * 2
    assert mask[20:22, 10:14].all()


def test_box_partly_outside_is_clipped_before_writing_text():
    mask, text = normalize_region((-10, 30, 120, 70), (50, 100))
    assert text == "[0, 600, 990, 980]"  # clipped to (0, 30, 99, 49)
    assert mask.sum() == 100 * 20
    assert mask[30:, :].all()


@pytest.mark.parametrize(
    "region",
    [
        (3, 4),
        [3, 4],
        np.array([3, 4]),
        torch.tensor([3, 4]),
        {"point": (3, 4)},
        {"point": torch.tensor([3.0, 4.0])},
    ],
    ids=["tuple", "list", "numpy", "torch", "dict", "dict-torch"],
)
def test_point_accepts_every_container(region):
    mask, text = normalize_region(region, (10, 20))
    assert text == "[150, 400]"
    assert mask.sum() == 9 * 10  # columns 0..8, rows 0..9: clipped at the left, top and bottom


@pytest.mark.parametrize(
    "mask_input",
    [
        lambda m: m,
        lambda m: m.astype(np.uint8),
        lambda m: m.astype(np.uint8) * 255,
        lambda m: m.astype(np.float32),
        lambda m: torch.from_numpy(m),
        lambda m: Image.fromarray(m),  # mode "1"
        lambda m: Image.fromarray(m.astype(np.uint8) * 255),  # mode "L"
        lambda m: {"mask": m.astype(np.uint8)},
    ],
    ids=["bool", "uint8-01", "uint8-0-255", "float", "torch", "pil-1", "pil-L", "dict"],
)
def test_free_form_mask_gives_bounding_box_text_and_itself_as_mask(mask_input):
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 5:8] = True
    mask[25, 30] = True
    out_mask, text = normalize_region(mask_input(mask), (40, 50))
    assert text == "[100, 250, 600, 625]"  # bbox x 5..30, y 10..25
    np.testing.assert_array_equal(out_mask, mask)


def test_non_binary_masks_use_documented_thresholds():
    soft = np.array([[0.2, 0.5, 0.51, 0.9]], dtype=np.float32)
    np.testing.assert_array_equal(binarize_mask(soft), [[False, False, True, True]])
    gray = np.array([[0, 100, 127, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(binarize_mask(gray), [[False, False, False, True, True]])
    binary = np.array([[0, 1, 1]], dtype=np.int64)
    np.testing.assert_array_equal(binarize_mask(binary), [[False, True, True]])


# --- normalize_region: bad input ---

BAD_REGIONS = [
    ((25, 5), ValueError, r"`regions`.*point \(x=25, y=5\) lies outside the image of width 20 and height 10"),
    ((-1, 5), ValueError, r"`regions`.*outside the image"),
    ((30, 0, 40, 5), ValueError, r"`regions`.*box .* lies entirely outside the image"),
    ((0, -9, 5, -1), ValueError, r"`regions`.*entirely outside"),
    ((5, 0, 2, 5), ValueError, r"`regions`.*x1 <= x2 and y1 <= y2"),
    ((0, 5, 2, 3), ValueError, r"`regions`.*x1 <= x2 and y1 <= y2"),
    ((float("nan"), 3), ValueError, r"`regions`.*finite"),
    ((1, 2, float("inf"), 3), ValueError, r"`regions`.*finite"),
    ((1, 2, 3), ValueError, r"`regions`.*point \(x, y\) or a box \(x1, y1, x2, y2\).*3 coordinates"),
    ({"box": (1, 2)}, ValueError, r"`regions`.*box needs 4 coordinates, got 2"),
    ({"point": (1, 2, 3, 4)}, ValueError, r"`regions`.*point needs 2 coordinates, got 4"),
    (np.zeros((10, 20), dtype=bool), ValueError, r"`regions`.*mask is empty"),
    (np.ones((20, 10), dtype=bool), ValueError, r"`regions`.*mask is 20x10 .* image is 10x20"),
    ("a cat", TypeError, r"`regions`.*expected a point .*got str"),
    (np.ones((1, 10, 20), dtype=bool), TypeError, r"`regions`.*got ndarray with 3 dimensions"),
    (["1", "2"], TypeError, r"`regions`.*must hold numbers"),
    ({"polygon": [1, 2]}, TypeError, r"`regions`.*\"point\", \"box\" or \"mask\""),
    (np.array([["a"]]), TypeError, r"`regions`.*mask must hold numbers"),
    ({"mask": np.ones((1, 10, 20))}, TypeError, r"`regions`.*mask must be 2-D .*got shape \(1, 10, 20\)"),
    ({"mask": "cat"}, TypeError, r"`regions`.*mask must be 2-D"),
]


@pytest.mark.parametrize("region, error, message", BAD_REGIONS)
def test_bad_region_raises_with_argument_named(region, error, message):
    with pytest.raises(error, match=message):
        normalize_region(region, (10, 20))


# --- mask_to_points ---


def _mask(height: int, width: int, pixels: list[tuple[int, int]]) -> torch.Tensor:
    """Mask from `(x, y)` pixels."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x, y in pixels:
        mask[y, x] = True
    return mask


def test_points_are_x_major_and_divided_by_size_without_half_pixel_offset():
    mask = _mask(4, 5, [(3, 0), (1, 2), (1, 1), (0, 3)])
    points = mask_to_points(mask[None], num_points=4)[0]
    expected = torch.tensor([[0, 3], [1, 1], [1, 2], [3, 0]], dtype=torch.float32) / torch.tensor([5.0, 4.0])
    assert torch.equal(points, expected)


def test_fewer_pixels_than_points_repeat_cyclically():
    mask = _mask(4, 4, [(0, 0), (2, 1), (3, 3)])
    points = mask_to_points(mask[None], num_points=7)[0]
    base = torch.tensor([[0, 0], [2, 1], [3, 3]], dtype=torch.float32) / 4
    assert torch.equal(points, base[[0, 1, 2, 0, 1, 2, 0]])


def test_more_pixels_than_points_take_evenly_spaced_pixels_without_generator():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, :] = True  # 12 pixels, x-major: (0,0),(0,1),(0,2),(1,0),...
    points = mask_to_points(mask[None], num_points=5)[0]
    chosen = [0, 2, 4, 7, 9]  # floor(k * 12 / 5)
    all_pixels = torch.tensor([[x, y] for x in range(4) for y in range(3)], dtype=torch.float32)
    assert torch.equal(points, all_pixels[chosen] / torch.tensor([4.0, 3.0]))


def test_generator_draws_a_reproducible_random_subset_of_distinct_mask_pixels():
    large = torch.zeros(30, 40, dtype=torch.bool)
    large[5:25, 10:30] = True  # 400 pixels
    small = _mask(30, 40, [(1, 1), (2, 2), (3, 3)])
    masks = torch.stack([large, small])
    first = mask_to_points(masks, num_points=64, generator=torch.Generator().manual_seed(0))
    again = mask_to_points(masks, num_points=64, generator=torch.Generator().manual_seed(0))
    other = mask_to_points(masks, num_points=64, generator=torch.Generator().manual_seed(1))
    deterministic = mask_to_points(masks, num_points=64)
    assert torch.equal(first, again) and not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], deterministic[0])
    pixels = (first[0] * torch.tensor([40.0, 30.0])).round().long()
    assert len({tuple(p) for p in pixels.tolist()}) == 64
    assert large[pixels[:, 1], pixels[:, 0]].all()
    # Regions with at most `num_points` pixels are not shuffled.
    assert torch.equal(first[1], deterministic[1])


def test_regions_of_different_sizes_in_one_call_equal_separate_calls():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True  # 18 px
    masks[1, 0:20, 0:30] = True  # 600 px
    masks[2, 10, 10] = True  # 1 px
    together = mask_to_points(masks, num_points=32)
    separately = torch.stack([mask_to_points(mask[None], num_points=32)[0] for mask in masks])
    assert torch.equal(together, separately)
    assert torch.equal(together[2], torch.tensor([[10 / 30, 10 / 20]]).expand(32, 2))


def test_empty_mask_raises():
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 1, 1] = True
    with pytest.raises(ValueError, match=r"`regions`.*positions \[1\] are empty"):
        mask_to_points(masks)


def _listed_pixels(mask: torch.Tensor) -> torch.Tensor:
    """Every pixel `(x, y)` of an `[H, W]` mask, sorted by x then y: the list the original code sampled from."""
    return mask.T.nonzero()


def _points_from_the_pixel_list(masks: torch.Tensor, num_points: int) -> torch.Tensor:
    """The earlier `mask_to_points` without generator: list every pixel, take pixel floor(k n / P) (or k mod n)."""
    points = []
    for mask in masks:
        pixels = _listed_pixels(mask != 0)
        n, k = len(pixels), torch.arange(num_points)
        points.append(pixels[k * n // num_points if n > num_points else k % n])
    return torch.stack(points).float() / torch.tensor([masks.shape[2], masks.shape[1]], dtype=torch.float32)


def _random_masks(generator: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """Masks of every density, from a few pixels to full; shapes with holes and with empty columns and rows."""
    density = torch.rand(count, 1, 1, generator=generator) ** 3
    masks = torch.rand(count, height, width, generator=generator) < density
    masks[:, torch.randint(height, (1,), generator=generator), torch.randint(width, (1,), generator=generator)] = True
    return masks


def test_mask_points_equal_taking_them_from_the_list_of_every_pixel_on_random_masks():
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        height, width = torch.randint(1, 50, (2,), generator=generator).tolist()
        masks = _random_masks(generator, 4, height, width)
        for num_points in (1, 7, 64, int(masks[0].sum())):
            assert torch.equal(mask_to_points(masks, num_points), _points_from_the_pixel_list(masks, num_points))
    # non-boolean masks (nonzero = inside), and masks given as a list of arrays
    masks = _random_masks(generator, 3, 40, 30)
    expected = _points_from_the_pixel_list(masks, 32)
    assert torch.equal(mask_to_points(masks.to(torch.uint8) * 3, 32), expected)
    assert torch.equal(mask_to_points(list(masks.numpy()), 32), expected)
    # PIL mode "1" masks are bool arrays that store True as the byte 255
    image_mask = np.asarray(Image.fromarray(masks[0].numpy()).convert("1"))
    assert image_mask.view(np.uint8).max() == 255
    assert torch.equal(mask_to_points([image_mask], 32), expected[:1])


def test_seeded_points_of_large_masks_are_a_randperm_of_the_pixel_list():
    generator = torch.Generator().manual_seed(1)
    masks = _random_masks(generator, 5, 40, 50)
    masks[2] = False
    masks[2, 3, 4:7] = True  # 3 pixels: repeated cyclically, no draw
    points = mask_to_points(masks, 48, generator=torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    for mask, region_points in zip(masks, points):
        pixels = _listed_pixels(mask)
        if len(pixels) > 48:
            pixels = pixels[torch.randperm(len(pixels), generator=draws)[:48]]
        else:
            pixels = pixels[torch.arange(48) % len(pixels)]
        assert torch.equal(region_points, pixels.float() / torch.tensor([50.0, 40.0]))


def test_mask_coordinate_text_is_the_bounding_box_of_its_pixels():
    generator = torch.Generator().manual_seed(2)
    for _ in range(30):
        height, width = torch.randint(1, 60, (2,), generator=generator).tolist()
        mask = _random_masks(generator, 1, height, width)[0].numpy()
        rows, columns = np.nonzero(mask)
        box = np.array([columns.min(), rows.min(), columns.max(), rows.max()]) * 1000 / [width, height, width, height]
        assert normalize_region(mask, (height, width))[1] == "[" + ", ".join(str(int(v)) for v in box) + "]"


# --- degenerate regions and random masks ---


@pytest.mark.parametrize(
    "region, size",
    [((0, 0), (1, 1)), ((0, 0, 0, 0), (1, 1)), ((9999, 0), (1, 10000)), ((29, 19), (20, 30))],  # last: bottom-right
)
def test_one_pixel_and_border_regions_give_a_non_empty_mask_and_coordinates_on_the_grid(region, size):
    mask, text = normalize_region(region, size)
    assert mask.any()
    values = [int(value) for value in text.strip("[]").split(",")]
    assert all(0 <= value <= 999 for value in values)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    masks=st.integers(1, 30).flatmap(
        lambda height: st.integers(1, 30).flatmap(
            lambda width: st.lists(arrays(np.bool_, (height, width)), min_size=1, max_size=4)
        )
    ),
    num_points=st.integers(1, 64),
)
def test_mask_to_points_samples_inside_every_non_empty_mask(masks, num_points):
    masks = [mask.copy() for mask in masks]
    for mask in masks:
        mask[0, 0] = True
    stacked = torch.from_numpy(np.stack(masks))
    points = mask_to_points(stacked, num_points)
    height, width = masks[0].shape
    assert points.shape == (len(masks), num_points, 2) and ((points >= 0) & (points < 1)).all()
    columns, rows = (points[..., 0] * width).round().long(), (points[..., 1] * height).round().long()
    regions = torch.arange(len(masks))[:, None].expand(-1, num_points)
    assert stacked[regions, rows, columns].all()
    expected_distinct = torch.tensor([min(int(mask.sum()), num_points) for mask in masks])
    distinct = torch.tensor([len({tuple(p) for p in region.tolist()}) for region in points])
    assert torch.equal(distinct, expected_distinct)


def test_hypothesis_keeps_its_files_out_of_the_repository():
    from hypothesis.configuration import storage_directory

    repository = Path(__file__).resolve().parents[1]
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        assert repository not in storage_directory("x", intent_to_write=False).path.parents
