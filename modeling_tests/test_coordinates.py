"""The 0..999 coordinate grid has one home, `transformers_ferret.coordinates`: writing, reading and pixel rules; the
grounding parser on whatever a model may write never raises, never returns a box outside the image and never hangs
(see docs/robustness.md)."""

import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# --- the grounding parser on malformed, adversarial and random model outputs ---


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=16)


def _assert_well_formed(result: dict, height: int, width: int) -> None:
    assert isinstance(result["text"], str)
    for entity in result["entities"]:
        x1, y1, x2, y2 = entity["box"]
        assert all(isinstance(value, int) for value in entity["box"])
        assert 0 <= x1 <= x2 <= width - 1 and 0 <= y1 <= y2 <= height - 1, entity
        start, end = entity["span"]
        assert 0 <= start <= end <= len(result["text"]) and result["text"][start:end] == entity["phrase"]


MALFORMED = {
    "partial": "A cat [100, 200, 30",
    "unopened": "A cat 100, 200, 300, 400]",
    "words": "A cat [a, b, c, d]",
    "three-numbers": "A cat [1, 2, 3]",
    "five-numbers": "A cat [1, 2, 3, 4, 5]",
    "nested": "A cat [[100, 200, 300, 400]] and [[1, 2], [3, 4]]",
    "negative": "A cat [-100, -20, -3, -400]",
    "over-999": "A cat [1000, 5000, 99999, 1e9] [123456789012345678901234567890, 1]",
    "huge-digits": "[" + "9" * 5000 + ", 5, 7, 9]",
    "swapped": "A cat [900, 900, 100, 100]",
    "decimals": "A cat [1.5, 2.25, 999.999, 0.0001]",
    "non-ascii": "Ein Käfer 🐞 [１２, ３４, ５６, ７８] [٣, ٤] [12, 34, 56, 78] 猫",
    "empty": "",
    "only-brackets": "[[[]]] ]][[ [,] [1,,2] [1.5.5, 2] [ ] [-] [--1, 2]",
    "control-chars": "\x00\x1b[31m red \x1b[0m [1, 2, 3, 4]\r\n\t",
    "nan-inf": "A cat [1e5, 2, 3, 4] [NaN, 1] [inf, inf, inf, inf]",
}


@pytest.mark.parametrize("text", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_generations_never_raise_and_boxes_stay_inside_the_image(processor, text):
    for height, width in [(120, 160), (1, 1), (1, 10000)]:
        _assert_well_formed(processor.post_process_grounding(text, (height, width)), height, width)


def test_out_of_range_coordinates_are_clipped_to_the_image_and_corners_ordered(processor):
    result = processor.post_process_grounding("A [-100, 1500, 99999, -3] B [900, 900, 100, 100]", (100, 200))
    assert [entity["box"] for entity in result["entities"]] == [[0, 0, 199, 99], [20, 10, 180, 90]]


def test_non_ascii_digits_are_text_not_coordinates(processor):
    result = processor.post_process_grounding("Katze [１２, ３４, ５６, ７８] und [٣, ٤].", (100, 100))
    assert result["entities"] == [] and result["text"] == "Katze [１２, ３４, ５６, ７８] und [٣, ٤]."


def test_nested_brackets_keep_the_outer_ones_in_the_text(processor):
    result = processor.post_process_grounding("A cat [[100, 200, 300, 400]].", (100, 100))
    assert result["text"] == "A cat [].", result
    assert [entity["box"] for entity in result["entities"]] == [[10, 20, 30, 40]]


@pytest.mark.parametrize(
    "text",
    [" " * 200_000, "\n" * 200_000, "a [1, 2, 3, 4] " * 20_000, "[" * 100_000, "[1, " * 50_000, "[1" + ", 1" * 50_000],
    ids=["spaces", "newlines", "many-boxes", "open-brackets", "unclosed-lists", "long-list"],
)
def test_long_adversarial_outputs_are_parsed_in_linear_time(text):
    start = time.perf_counter()
    _assert_well_formed(parse_grounded_text(text, (50, 60)), 50, 60)
    assert time.perf_counter() - start < 5.0  # quadratic parsing took minutes on these


_NUMBER = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.integers(0, 999).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="0123456789.-e", min_size=0, max_size=6),
    st.text(max_size=4),
)
_BRACKET = st.lists(_NUMBER, min_size=0, max_size=6).flatmap(
    lambda values: st.sampled_from([", ", ",", " , ", " "]).map(lambda sep: "[" + sep.join(values) + "]")
)
_PIECE = st.one_of(
    _BRACKET,
    st.text(max_size=12),
    st.sampled_from(["[", "]", ",", ".", "\n", " ", "[[", "]]", "<region_fea>", "</s>", "[0, 0, 999, 999]"]),
)
_SIZE = st.tuples(st.integers(1, 4000), st.integers(1, 4000))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_PIECE, max_size=12), size=_SIZE)
def test_random_outputs_never_raise_and_boxes_are_inside_the_image(pieces, size):
    height, width = size
    text = "".join(pieces)
    result = parse_grounded_text(text, (height, width))
    _assert_well_formed(result, height, width)
    well_formed_groups = [
        match for match in re.finditer(r"\[\s*(-?[0-9]+(?:\.[0-9]+)?(?:\s*,\s*-?[0-9]+(?:\.[0-9]+)?)*)\s*\]", text)
        if len(match.group(1).split(",")) in (2, 4)
    ]  # fmt: skip
    assert len(result["entities"]) == len(well_formed_groups)


@settings(max_examples=200, deadline=None, database=None)
@given(
    box=st.tuples(*[st.integers(0, 999)] * 4),
    size=_SIZE,
    prefix=st.text(alphabet=st.characters(blacklist_characters="[]"), max_size=20),
)
def test_any_well_formed_box_is_converted_to_pixels_exactly(box, size, prefix):
    height, width = size
    result = parse_grounded_text(f"{prefix}[{box[0]}, {box[1]}, {box[2]}, {box[3]}]", (height, width))
    assert len(result["entities"]) == 1
    x1, x2 = sorted([box[0], box[2]])
    y1, y2 = sorted([box[1], box[3]])
    expected = [x1 * width // 1000, y1 * height // 1000, x2 * width // 1000, y2 * height // 1000]
    assert result["entities"][0]["box"] == expected
