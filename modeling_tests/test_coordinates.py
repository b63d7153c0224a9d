"""The 0..999 coordinate grid has one home, `transformers_ferret.coordinates`: writing, reading and pixel rules."""

import numpy as np
import pytest
from tiny_models import tiny_processor

from transformers_ferret.training.collator import FerretDataCollator
from transformers_ferret.coordinates import coordinate_text, grid_to_pixels, parse_grounded_text, to_grid
from transformers_ferret.evaluation import bins_to_pixels
from transformers_ferret.region_utils import normalize_region
from transformers_ferret.synthetic_shapes import render_conversation


def test_coordinate_text_truncates_as_the_original():
    # width 200, height 100: x * 1000 / 200, y * 1000 / 100, truncated
    assert coordinate_text([50, 25, 149, 74], 200, 100) == "[250, 250, 745, 740]"
    assert coordinate_text([101, 33], 200, 100) == "[505, 330]"
    assert coordinate_text([40, 50, 71, 65], 160, 120) == "[250, 416, 443, 541]"  # the parity fixture's box


def test_ferret_and_ferret_ui_rounding_rules_differ_where_the_originals_do():
    assert to_grid([19, 0], 38, 10, rule="ferret") == [500, 0]  # int(19 * 1000 / 38)
    assert to_grid([19, 0], 38, 10, rule="ferret_ui") == [499, 0]  # int(19 * (1000.0 / 38))
    sizes = np.arange(20, 400)
    values = [(v, size) for size in sizes for v in range(size)]
    differ = sum(to_grid([v, 0], size, 1, "ferret") != to_grid([v, 0], size, 1, "ferret_ui") for v, size in values)
    assert differ > 0
    with pytest.raises(ValueError, match="rule"):
        to_grid([1, 2], 10, 10, rule="nearest")


@pytest.fixture(scope="module")
def collator(parity_dir):
    return FerretDataCollator(tiny_processor(parity_dir, num_region_points=16))


@pytest.mark.parametrize("box", [(19, 5, 60, 30), (1, 1, 74, 48), (37, 12, 38, 13)])
def test_processor_collator_and_synthetic_generator_write_the_same_text(collator, box):
    """The three writers of coordinate text agree on every box, including x = 19 of W = 76 (the synthetic generator
    used to write 249 where the others write 250)."""
    width, height = 76, 50
    _, processor_text = normalize_region(box, (height, width))
    row = {
        "conversations": [{"from": "human", "value": "Where?"}, {"from": "gpt", "value": "<bbox_location0>"}],
        "box_x1y1x2y2": [[], [list(box)]], "image_w": width, "image_h": height,
    }  # fmt: skip
    collator_text = collator.prepare_example(row)["messages"][1]["content"][0]["text"]
    sample = {"conversations": row["conversations"], "box_x1y1x2y2": row["box_x1y1x2y2"],
              "region_types": [[], ["box"]], "image_w": width, "image_h": height}  # fmt: skip
    synthetic_text = render_conversation(sample)[1]["value"]
    assert processor_text == collator_text == synthetic_text == coordinate_text(box, width, height)
    if box[0] == 19:
        assert processor_text.startswith("[250, ")


def test_grid_to_pixels_exact_and_original_evaluation_rules():
    assert grid_to_pixels([25, 0, 25, 0], (10, 1160)) == [29, 0, 29, 0]  # 25 * 1160 / 1000 = 29 exactly
    assert grid_to_pixels([25, 0, 25, 0], (10, 1160), rule="original_eval") == [28, 0, 28, 0]  # 25 * 1.16 = 28.99..
    assert bins_to_pixels([25, 0, 25, 0], (10, 1160)) == [28, 0, 28, 0]  # the evaluators keep the original's rule


def test_out_of_range_and_swapped_boxes_are_clipped_for_users_and_kept_for_the_original_evaluation():
    text = "a dog [100, 200, 1200, 500] and a cat [300, 400, 100, 200]"
    users = parse_grounded_text(text, (1000, 1000))["entities"]
    assert [entity["grid"] for entity in users] == [[100, 200, 999, 500], [100, 200, 300, 400]]
    assert [entity["box"] for entity in users] == [[100, 200, 999, 500], [100, 200, 300, 400]]
    kept = parse_grounded_text(text, (1000, 1000), clip=False, order_corners=False, pixel_rule="original_eval")
    assert [entity["grid"] for entity in kept["entities"]] == [[100, 200, 1200, 500], [300, 400, 100, 200]]
    assert [entity["phrase"] for entity in kept["entities"]] == ["a dog", "and a cat"]


def test_decimals_points_and_back_to_back_boxes_are_named_options():
    text = "two dogs [1, 2, 3, 4], [5, 6, 7, 8]; a point [10, 20]; odd [10.5, 1, 2, 3]"
    default = parse_grounded_text(text)["entities"]
    assert [entity["phrase"] for entity in default] == ["two dogs", "two dogs", "a point", "odd"]
    strict = parse_grounded_text(text, decimals=False, points=False, reuse_previous_phrase=False)["entities"]
    assert [(entity["phrase"], entity["grid"]) for entity in strict] == [("two dogs", [1, 2, 3, 4]), ("", [5, 6, 7, 8])]


def test_post_process_grounding_parses_through_the_coordinates_module(parity_dir):
    processor = tiny_processor(parity_dir)
    text = "A cat [120, 300, 540, 880] on a mat."
    processed = processor.post_process_grounding(text, image_sizes=[(200, 100)])
    expected = parse_grounded_text(text, (200, 100))
    assert processed["text"] == expected["text"]
    assert [entity["box"] for entity in processed["entities"]] == [entity["box"] for entity in expected["entities"]]
