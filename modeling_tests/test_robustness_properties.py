"""Property-based tests of the processor: random points, boxes and masks on random image sizes (see
docs/robustness.md)."""

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.extra.numpy import arrays
from PIL import Image

from tiny_models import tiny_processor

from transformers_ferret.region_utils import POINT_SPAN, mask_to_points, normalize_region


if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):  # keep Hypothesis' caches out of the repository
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "transformers-ferret-hypothesis")

NUM_POINTS, IMAGE_TOKEN_ID, REGION_TOKEN_ID = 16, 501, 500
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=NUM_POINTS)


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


@SETTINGS
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
