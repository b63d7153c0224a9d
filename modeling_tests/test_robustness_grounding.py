"""`post_process_grounding` on whatever a model may write: never raises, never returns a box outside the image, never
hangs (see docs/robustness.md)."""

import os
import re
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tiny_models import tiny_processor

from transformers_ferret.coordinates import parse_grounded_text


if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):  # keep Hypothesis' caches out of the repository
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "transformers-ferret-hypothesis")

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
def test_malformed_generation_never_raises_and_boxes_stay_inside(processor, text):
    for height, width in [(120, 160), (1, 1), (1, 10000)]:
        _assert_well_formed(processor.post_process_grounding(text, (height, width)), height, width)


def test_coordinates_are_clipped_and_ordered(processor):
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
def test_bad_arguments_are_clear_errors(processor, texts, image_sizes, error, message):
    with pytest.raises(error, match=message):
        processor.post_process_grounding(texts, image_sizes)


def test_sizes_as_tensor_and_one_size_for_all(processor):
    results = processor.post_process_grounding(["a [0, 0, 999, 999]", "b"], torch.tensor([[10, 20]]))
    assert results[0]["entities"][0]["box"] == [0, 0, 19, 9] and results[1]["entities"] == []


# --- property-based ---

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
def test_a_well_formed_box_is_converted_exactly(box, size, prefix):
    height, width = size
    result = parse_grounded_text(f"{prefix}[{box[0]}, {box[1]}, {box[2]}, {box[3]}]", (height, width))
    assert len(result["entities"]) == 1
    x1, x2 = sorted([box[0], box[2]])
    y1, y2 = sorted([box[1], box[3]])
    expected = [x1 * width // 1000, y1 * height // 1000, x2 * width // 1000, y2 * height // 1000]
    assert result["entities"][0]["box"] == expected
