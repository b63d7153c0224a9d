"""Evaluators: against hand-computed values, against the decisions of the original evaluation scripts on the stress
answers of `fixtures/original_eval/` (item by item and in aggregate), and on malformed model outputs (never raise)."""

import gzip
import hashlib
import json
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from transformers_ferret.coordinates import parse_grounded_text
from transformers_ferret.evaluation import (
    READINGS,
    bins_to_pixels,
    box_iou,
    boxes_for_phrases,
    coco_xywh_to_xyxy,
    flickr_recall_at_k,
    merge_boxes,
    name_variants,
    normalize_phrase,
    parse_boxes,
    pope_answer,
    pope_metrics,
    rec_accuracy,
    remove_negations,
    roc_accuracy,
)


ORIGINAL_EVAL = Path(__file__).parent / "fixtures" / "original_eval"

MALFORMED_OUTPUTS = [
    "",
    None,
    12345,
    "[",
    "]",
    "][",
    "[[[[",
    "[1, 2, 3, 4",
    "1, 2, 3, 4]",
    "[]",
    "[,,,]",
    "[1, 2, 3]",
    "[1, 2, 3, 4, 5]",
    "[a, b, c, d]",
    "[1.5, 2, 3, 4]",
    "[1, 2, 3, 4x]",
    "[0x10, 2, 3, 4]",
    "[99999999999999999999999, -5, 3, 4]",
    "[1" + "0" * 400 + ", 2, 3, 4]",
    "a cat [\uff11, 2, 3, 4]",
    "🙂 [region_fea] <region_fea> [1, 2]",
    "\x00\n[\n1,\n2,\n3,\n4\n]",
]


# ---------------------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------------------


def test_box_iou_hand_values():
    # two 10x10 squares offset by 5 on both axes: intersection 5*5 = 25, union 100 + 100 - 25 = 175
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15])[0, 0] == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10])[0, 0] == 1.0
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10])[0, 0] == 0.0  # touching edges
    # a 4x2 box inside an 8x4 box: 8 / 32
    assert box_iou([2, 1, 6, 3], [0, 0, 8, 4])[0, 0] == pytest.approx(0.25)


def test_box_iou_is_pairwise_and_safe_on_empty_and_swapped_boxes():
    ious = box_iou([[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 10, 10], [0, 0, 5, 10], [3, 3, 3, 3]])
    assert ious.shape == (2, 3)
    np.testing.assert_allclose(ious, [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    # width -10 against a 10x10 truth: the original's union is -100 + 100 - 0 = 0 and its IoU NaN; here 0
    assert box_iou([10, 0, 0, 10], [0, 0, 10, 10])[0, 0] == 0.0
    assert not np.isnan(ious).any()


def test_box_conversions_hand_values():
    assert coco_xywh_to_xyxy([10, 20, 30, 40]) == [10, 20, 40, 60]
    # height 200, width 300: x -> int(v * (300 / 1000)), y -> int(v * (200 / 1000)), no clipping
    assert bins_to_pixels([500, 250, 999, 1000], (200, 300)) == [150, 50, 299, 200]
    assert bins_to_pixels([1, 1, 3, 4], (200, 300)) == [0, 0, 0, 0]  # 0.3, 0.2, 0.9, 0.8 truncate to 0
    assert bins_to_pixels([25, 0, 25, 0], (10, 1160)) == [28, 0, 28, 0]  # 25 * 1.16 = 28.999..., as the original
    assert merge_boxes([[0, 5, 10, 10], [2, 0, 20, 8]]) == [0, 0, 20, 10]


# ---------------------------------------------------------------------------------------------------------------
# Reading answers: the original scripts' rules are options of the one parser
# ---------------------------------------------------------------------------------------------------------------


def _original(text, image_size=None):
    return parse_grounded_text(text, image_size, **READINGS["original"])["entities"]


def test_original_reading_phrases_start_after_the_delimiter_that_follows_the_previous_box():
    text = "Sure. A snowy hill [1, 2, 3, 4] and a bench [5, 6, 7, 8] with a hat, a guitar [9, 10, 11, 12]."
    assert [e["phrase"] for e in _original(text)] == ["Sure. A snowy hill", "", "a guitar"]
    default = [e["phrase"] for e in parse_grounded_text(text)["entities"]]
    assert default == ["A snowy hill", "and a bench", "with a hat, a guitar"]
    # boxes listed back to back: the second has no phrase in the original (no reuse)
    assert [e["phrase"] for e in _original("two dogs [1, 2, 3, 4], [5, 6, 7, 8]")] == ["two dogs", ""]


def test_original_reading_groups_numbers_and_malformed_brackets():
    assert [e["grid"] for e in _original("a [1, 2, 3, 4, 5, 6]")] == [[1, 2, 3, 4]]  # the first four
    assert _original("a dog [1, 2, 3, 4] and [0.5, 0.5, 0.7, 0.9]") == []  # a non-integer group: no box at all
    assert _original("a dog [1, 2, 3, 4] and [region]") == []
    assert _original("a dog [1, 2, 3, 4] and [5, 6]") == []  # 1-3 numbers crash the original (IndexError)
    assert _original("a dog [[1, 2, 3, 4]]") == []  # the second `]` closes an empty group
    # integers as Python reads them, kept as written (out of range, corners swapped)
    grids = [e["grid"] for e in _original("a [ +1 , 0_2, \uff13, 4 ]; b [1200, -5, 30, 20]; c [7, 8, 9, 10")]
    assert grids == [[1, 2, 3, 4], [1200, -5, 30, 20]]
    # a `]` without its `[` closes a group that starts past the delimiter, with the phrase of the group before
    assert [(e["phrase"], e["grid"]) for e in _original("a cat [1, 2, 3, 4], 5, 6, 7, 8] here")] == [
        ("a cat", [1, 2, 3, 4]),
        ("a cat", [5, 6, 7, 8]),
    ]
    assert [e["box"] for e in _original("[25, 0, 25, 1000]", (10, 1160))] == [[28, 0, 28, 10]]


@pytest.mark.parametrize(
    "text",
    ["x" * 100_000 + " [1, 2, 3, 4]" + ", 1, 2, 3, 4]" * 20_000, "a [1, 2, 3, 4] " * 20_000, "[" * 100_000,
     "]" * 100_000, "[1, " * 50_000, "a" * 100_000 + "]" * 100_000],
    ids=["shared-phrase", "many-boxes", "open-brackets", "close-brackets", "unclosed-lists", "long-content"],
)  # fmt: skip
def test_original_reading_is_linear_time(text):
    start = time.perf_counter()
    parse_grounded_text(text, (50, 60), **READINGS["original"])
    assert time.perf_counter() - start < 5.0


def test_parser_options_are_validated():
    for option, value in [("brackets", "all"), ("phrase_start", "x"), ("extra_numbers", 4), ("invalid_groups", "no")]:
        with pytest.raises(ValueError, match=option):
            parse_grounded_text("a [1, 2, 3, 4]", **{option: value})


def test_parse_boxes_readings():
    text = "Sure. A dog [1, 2, 3, 4] with a hat, a cat [5, 6, 7, 8] [9, 10, 11, 12]"
    assert parse_boxes(text) == [("A dog", [1, 2, 3, 4]), ("with a hat, a cat", [5, 6, 7, 8]), ("", [9, 10, 11, 12])]
    assert parse_boxes(text, reading="original") == [
        ("Sure. A dog", [1, 2, 3, 4]),
        ("a cat", [5, 6, 7, 8]),
        ("", [9, 10, 11, 12]),
    ]
    dense = "The objects are: 1: red circle [10, 20, 30, 40], 2: blue star [ 1 ,2, 3,4 ]."
    assert parse_boxes(dense) == [("red circle", [10, 20, 30, 40]), ("blue star", [1, 2, 3, 4])]
    assert parse_boxes("a point [5, 6], the cat [1, 2, 3, 4] [a, b]", allow_points=True) == [
        ("a point", [5, 6, 5, 6]),
        ("the cat", [1, 2, 3, 4]),
    ]
    assert parse_boxes("odd [1.5, 2, 3, 4]. the cat [1, 2, 3, 4]") == [("the cat", [1, 2, 3, 4])]
    assert parse_boxes("odd [1.5, 2, 3, 4]. the cat [1, 2, 3, 4]", reading="original") == []
    with pytest.raises(ValueError, match="reading"):
        parse_boxes("a [1, 2, 3, 4]", reading="loose")


@pytest.mark.parametrize("output", MALFORMED_OUTPUTS)
def test_malformed_outputs_never_raise(output):
    for reading in READINGS:
        parse_boxes(output, reading=reading)
        parse_boxes(output, allow_points=True, reading=reading)
        rec_accuracy([output], [[0, 0, 10, 10]], [(100, 100)], reading=reading)
        boxes_for_phrases(output, ["a cat"], (100, 100), match="suffix", reading=reading)
    roc_accuracy([output], ["cat"])
    pope_metrics([output], ["yes"])


def test_malformed_outputs_mostly_give_no_box():
    boxes = {output: parse_boxes(output, reading="original") for output in MALFORMED_OUTPUTS}
    # four integers are a box, whatever their range, spacing, or digit script (Python's int() accepts all three)
    assert boxes.pop("[99999999999999999999999, -5, 3, 4]") == [("", [99999999999999999999999, -5, 3, 4])]
    assert boxes.pop("\x00\n[\n1,\n2,\n3,\n4\n]") == [("\x00", [1, 2, 3, 4])]
    assert boxes.pop("a cat [\uff11, 2, 3, 4]") == [("a cat", [1, 2, 3, 4])]
    assert boxes.pop("[1, 2, 3, 4, 5]") == [("", [1, 2, 3, 4])]  # the first four
    assert boxes.pop("1, 2, 3, 4]") == [("", [1, 2, 3, 4])]  # a `]` closes what precedes it
    assert list(boxes.values()) == [[]] * (len(MALFORMED_OUTPUTS) - 5)


# ---------------------------------------------------------------------------------------------------------------
# REC
# ---------------------------------------------------------------------------------------------------------------


def test_rec_accuracy_hand_example():
    # image: height 100, width 200; ground truth [0, 0, 100, 50] pixels (area 5000)
    predictions = [
        "[0, 0, 500, 500]",  # -> [0, 0, 100, 50]: IoU 1
        # first box [50, 0, 150, 50]: 2500 / 7500; best: the second, IoU 1; mean box [25, 0, 125, 50]: 3750 / 6250
        "the cat [250, 0, 750, 500] and [0, 0, 500, 500]",
        "I cannot find it.",  # no box: the zero box, IoU 0
        "the cat [0, 0, 500, 500] [1.5, 2, 3, 4]",  # a non-integer group: no box at all, as the original
        "[0, 0, 500, 500, 7]",  # the first four
    ]
    datasets = ["refcoco"] * 3 + ["refcocog"] * 2
    result = rec_accuracy(predictions, [[0, 0, 100, 50]] * 5, [(100, 200)] * 5, datasets=datasets)
    assert result["ious"] == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 1.0])
    assert result["correct"] == [True, False, False, False, True]
    assert result["mean_box_ious"] == pytest.approx([1.0, 0.6, 0.0, 0.0, 1.0])
    assert result["best_ious"] == pytest.approx([1.0, 1.0, 0.0, 0.0, 1.0])
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["mean_box_accuracy"] == result["best_box_accuracy"] == pytest.approx(3 / 5)
    assert result["mean_iou"] == pytest.approx((2 + 1 / 3) / 5)
    assert result["parse_failure_rate"] == pytest.approx(2 / 5)
    assert result["count"] == 5
    assert result["per_dataset"] == {
        "refcoco": {"accuracy": 1 / 3, "mean_box_accuracy": 2 / 3, "best_box_accuracy": 2 / 3, "count": 3},
        "refcocog": {"accuracy": 0.5, "mean_box_accuracy": 0.5, "best_box_accuracy": 0.5, "count": 2},
    }
    # the project's reading skips the malformed group and keeps the other box
    assert rec_accuracy(predictions[3:4], [[0, 0, 100, 50]], [(100, 200)], reading="sentences")["accuracy"] == 1.0


def test_rec_threshold_is_inclusive_and_coco_boxes_convert():
    # [0, 0, 500, 250] on a 100x200 image -> [0, 0, 100, 25]: exactly half of [0, 0, 100, 50]
    result = rec_accuracy(["[0, 0, 500, 250]"], [coco_xywh_to_xyxy([0, 0, 100, 50])], [(100, 200)])
    assert result["ious"] == [0.5] and result["accuracy"] == 1.0
    assert rec_accuracy(["[0, 0, 500, 250]"], [[0, 0, 100, 50]], [(100, 200)], iou_threshold=0.6)["accuracy"] == 0.0


def test_rec_accuracy_of_nothing_is_zero_and_lengths_must_match():
    assert rec_accuracy([], [], [])["accuracy"] == 0.0
    with pytest.raises(ValueError):
        rec_accuracy(["[0, 0, 1, 1]"], [], [])
    with pytest.raises(ValueError):
        rec_accuracy(["[0, 0, 1, 1]"], [[0, 0, 1, 1]], [(10, 10)], datasets=[])


# ---------------------------------------------------------------------------------------------------------------
# ROC
# ---------------------------------------------------------------------------------------------------------------


def test_roc_accuracy_two_of_three():
    answers = ["a red triangle", "It is not a blue star, it is a red triangle.", "A Red Triangle"]
    result = roc_accuracy(answers, ["red triangle"] * 3)
    assert result["correct"] == [True, True, False]  # matching is case-sensitive
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_roc_negations_follow_the_original_rule():
    assert roc_accuracy(["It is not a cat, it is a dog."], ["cat"])["accuracy"] == 0.0
    assert remove_negations("It is not a dog, it is a cat.") == "It is it is a cat."
    assert remove_negations("No. A cat.") == "No. A cat."  # no whitespace before it
    answers = [
        "It is NOT an apple, it's a hat.",  # capitals: not removed
        "It is an animal, not a remote control",  # no `,` or `.` after it: not removed
        "  Not a hat, an apple.",  # at the start (once stripped): not removed
        "It is a hat,not an apple.",  # no whitespace before it: not removed
        "The object is a notebook.",  # " notebook." begins with "no": removed
        "It is neither a hat nor an apple.",  # " nor an apple." too
    ]
    names = ["apple", "remote_control", "hat", "apple", "notebook", "apple"]
    assert roc_accuracy(answers, names)["correct"] == [True, True, True, True, False, False]
    assert roc_accuracy(answers, names, negations="words")["correct"] == [False, False, False, False, True, True]
    assert roc_accuracy(answers, names, negations="prefix")["correct"] == [True, False, True, True, False, False]
    with pytest.raises(ValueError, match="rule"):
        remove_negations("a", rule="none")


def test_roc_synonyms_and_lvis_names():
    assert name_variants("trash_can") == ["trash can"]
    assert name_variants("bow_(weapon)") == ["bow", "weapon"]
    assert name_variants("bow_(weapon)", split_parentheses=False) == ["bow (weapon)"]
    assert name_variants("odd_(unclosed") == ["odd (unclosed"]  # the original fails an assertion; used whole here
    answers = ["a couch", "a bow", "a trash can", "a chair"]
    names = ["sofa", "bow_(weapon)", "trash_can", "sofa"]
    by_name = roc_accuracy(answers, names, synonyms={"sofa": ["couch"]})
    assert by_name["correct"] == [True, False, True, False]  # the original splits synonyms, not the name
    lvis_style = {"sofa": ["couch"], "bow_(weapon)": ["bow_(weapon)"]}  # LVIS synonyms include the name
    assert roc_accuracy(answers, names, synonyms=lvis_style)["accuracy"] == 0.75
    split = roc_accuracy(answers, names, synonyms={"sofa": ["couch"]}, split_name_parentheses=True)
    assert split["correct"] == [True, True, True, False]
    per_item = roc_accuracy(answers, names, synonyms=[["couch"], ["longbow", "bow_(weapon)"], [], ["armchair"]])
    assert per_item["correct"] == [True, True, True, False]


def test_roc_accuracy_per_region_type():
    answers = ["a cat", "a dog", "a cat", "a cat", "a dog"]
    types = ["point", "point", "box", "free-form", "free-form"]
    result = roc_accuracy(answers, ["cat"] * 5, region_types=types)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_region_type"] == {"point": 0.5, "box": 1.0, "free-form": 0.5}


# ---------------------------------------------------------------------------------------------------------------
# Flickr30k Entities
# ---------------------------------------------------------------------------------------------------------------


def test_normalize_phrase_rules():
    assert normalize_phrase("  A  Red-Circle, ") == "a redcircle"  # the original deletes `-`
    assert normalize_phrase("a t - shirt") == "a t shirt" and normalize_phrase("a t-shirt") == "a tshirt"
    assert normalize_phrase("the man's|hat:") == "the man s hat"  # `' " , . ; ! ? | :` separate words
    assert normalize_phrase("  A  Red-Circle, ", "punctuation_to_space") == "a red circle"
    with pytest.raises(ValueError):
        normalize_phrase("a", "lower")


def test_flickr_recall_hand_example():
    far = [50, 50, 60, 60]
    predicted = [
        [[0, 0, 10, 10]],  # A: IoU 100 / 200 = 0.5 with the merged [0, 0, 20, 10] -> hit at 1
        [far, far, [0, 0, 9, 10]],  # B: IoU 90 / 100 at rank 3 -> hit at 5
        [],  # C: no box -> zero box -> miss
        [far] * 5 + [[0, 0, 10, 10]],  # D: hit at rank 6 -> hit at 10, not at 5
        [far] * 12,  # E: never
    ]
    truths = [[[0, 0, 10, 10], [10, 0, 20, 10]], [[0, 0, 10, 10]], [[0, 0, 10, 10]], [0, 0, 10, 10], [[0, 0, 10, 10]]]
    result = flickr_recall_at_k(predicted, truths)
    assert result["recall@1"] == pytest.approx(1 / 5)
    assert result["recall@5"] == pytest.approx(2 / 5)
    assert result["recall@10"] == pytest.approx(3 / 5)
    assert result["upper_bound"] == pytest.approx(3 / 5)
    assert result["count"] == 5
    assert result["hits"]["recall@5"] == [True, True, False, False, False]
    assert result["hits"]["upper_bound"] == [True, True, False, True, False]


def test_flickr_per_phrase_type_and_empty_input():
    predicted = [[[0, 0, 10, 10]], [], [[0, 0, 10, 10]]]
    truths = [[[0, 0, 10, 10]]] * 3
    result = flickr_recall_at_k(predicted, truths, ks=(1,), phrase_types=["people", ["people", "animals"], "animals"])
    assert result["recall@1"] == pytest.approx(2 / 3)
    assert result["per_phrase_type"]["people"]["recall@1"] == 0.5
    assert result["per_phrase_type"]["animals"] == {"recall@1": 0.5, "upper_bound": 0.5, "count": 2}
    assert flickr_recall_at_k([], [])["recall@1"] == 0.0
    with pytest.raises(ValueError):
        flickr_recall_at_k([[]], [])


def test_boxes_for_phrases_hand_example():
    image_size = (100, 200)  # height, width
    text = "A man [0, 0, 500, 500], a dog [500, 500, 999, 999] and a dog [0, 0, 100, 100]."
    # the original: the third box's phrase would start past the first delimiter after the second box, the final "."
    expected = [[[0, 0, 100, 50]], [[100, 50, 199, 99]], []]
    assert boxes_for_phrases(text, ["a man", "A dog", "a cat"], image_size) == expected
    sentences = boxes_for_phrases(text, ["a dog"], image_size, match="suffix", reading="sentences")
    assert sentences == [[[100, 50, 199, 99], [0, 0, 20, 10]]]
    text = "Sure. A snowy hill [0, 0, 500, 500] and a t - shirt [0, 0, 100, 100]; a t-shirt [0, 0, 200, 200]."
    phrases = ["a snowy hill", "a t-shirt"]
    assert boxes_for_phrases(text, phrases, image_size) == [[], [[0, 0, 40, 20]]]
    assert boxes_for_phrases(text, phrases, image_size, reading="sentences", normalization="punctuation_to_space",
                             match="suffix") == [[[0, 0, 100, 50]], [[0, 0, 20, 10], [0, 0, 40, 20]]]  # fmt: skip
    with pytest.raises(ValueError):
        boxes_for_phrases(text, ["a dog"], image_size, match="fuzzy")


# ---------------------------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------------------------


def test_pope_answer_rule():
    assert pope_answer("Yes, there is a dog.") == "yes"
    assert pope_answer("No, there is not.") == "no"
    assert pope_answer("There is no cat in the image.") == "no"
    assert pope_answer("Yes. There is no other animal.") == "yes"  # first sentence only
    assert pope_answer("Not really") == "no"  # lower-cased first
    assert pope_answer("There is nothing, no.") == "no"  # commas removed before splitting
    assert pope_answer("nothing") == "yes"  # whole words only
    assert pope_answer("") == "yes" and pope_answer(None) == "yes"
    # words are split at spaces only, after the answer is stripped
    assert pope_answer("Yes\nno") == "yes" and pope_answer("Yes\nno", split_on_whitespace=True) == "no"
    assert pope_answer("  no\n") == "no" and pope_answer("No!") == "yes" and pope_answer("yes , no") == "no"


def test_pope_metrics_hand_example():
    answers = ["Yes, there is a dog.", "No, there is not.", "There is no cat in the image.", "yes", "I think so. No."]
    labels = ["yes", "no", "Yes", "no", True]
    # predictions: yes, no, no, yes, yes -> TP 2 (#1, #5), FP 1 (#4), TN 1 (#2), FN 1 (#3)
    result = pope_metrics(answers, labels)
    assert result["predictions"] == ["yes", "no", "no", "yes", "yes"]
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (2, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["yes_ratio"] == pytest.approx(3 / 5)


def test_pope_metrics_without_positive_predictions():
    result = pope_metrics(["no", "no"], ["yes", "no"])  # the original divides by zero here
    assert result["precision"] == 0.0 and result["recall"] == 0.0 and result["f1"] == 0.0
    assert result["accuracy"] == 0.5 and result["yes_ratio"] == 0.0
    with pytest.raises(ValueError):
        pope_metrics(["yes"], ["yes", "no"])


# ---------------------------------------------------------------------------------------------------------------
# The original scripts' decisions on the stress answers of fixtures/original_eval (see its README)
# ---------------------------------------------------------------------------------------------------------------

# Where the original crashes, the evaluators take the decision documented in their docstrings:
# eval_refexp.py / eval_flickr_entities.py raise IndexError on a group of 1 to 3 integers (they index box[3]); here the
# answer has no box, as for the malformed groups whose ValueError the scripts catch.
REC_CRASHES = (
    25, 28, 104, 131, 134, 163, 186, 190, 195, 207, 248, 274, 301, 302, 378, 425, 437, 482, 530, 564, 615, 708, 712,
    727, 741, 755, 781, 787, 817, 831, 833, 883, 977, 1005, 1089, 1104, 1146, 1152, 1158, 1183, 1210, 1228, 1317, 1375,
    1386, 1405, 1408, 1417, 1428, 1466, 1481, 1486, 1491, 1526, 1531, 1561, 1572, 1610, 1648, 1670, 1767, 1811, 1816,
    1839, 1894, 1905, 2002, 2025, 2060, 2091, 2110, 2147, 2183, 2225, 2231, 2276, 2280, 2299, 2305, 2316, 2349,
)  # fmt: skip
FLICKR_CRASHES = (
    7, 55, 56, 61, 94, 124, 192, 333, 353, 380, 442, 611, 612, 633, 673, 693, 1093, 1150, 1158, 1292, 1387, 1437, 1440,
    1444, 1477, 1480, 1482, 1483, 1534, 1557, 1801, 1828,
)  # fmt: skip
# eval_lvis.py asserts that a synonym with "(" has exactly one "(" and a ")"; here such a synonym is used whole.
ROC_CRASHES = (117, 221, 256, 495, 766, 812, 906, 1002, 1212, 1264, 1598, 1629, 1638)
# Where the original computes NaN: a box with its x corners swapped and an area of minus the truth's has union 0 and
# IoU NaN there (0 here). Placed before a box that hits, it makes the original miss where the evaluators hit:
# eval_refexp.py's best box (`max()` over the IoUs keeps a leading NaN), and eval_flickr_entities.py's recall at
# 5, 10 and the upper bound (NumPy's `max` propagates NaN).
REC_NAN_BEST_BOX = (150, 750, 1350, 1950)
FLICKR_NAN = ((125, 0), (375, 0), (625, 0), (875, 0), (1125, 0), (1375, 0), (1625, 0))  # (answer, phrase)
FLICKR_KS = ("recall@1", "recall@5", "recall@10", "upper_bound")


@cache
def _load(task: str) -> list[dict]:
    with gzip.open(ORIGINAL_EVAL / f"{task}.jsonl.gz", "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@cache
def _aggregates() -> dict:
    return json.loads((ORIGINAL_EVAL / "aggregates.json").read_text())


def _crashed(task: str) -> tuple[int, ...]:
    """The items on which the original raises: their `original` is the exception's name."""
    return tuple(item["id"] for item in _load(task)
                 if isinstance(item["original"], str) and item["original"][0].isupper())  # fmt: skip


def _union_is_zero_in_the_original(box, truth) -> bool:
    """DETR's / the original Flickr script's union: areas not clamped, intersection clamped."""
    width = max(0, min(box[2], truth[2]) - max(box[0], truth[0]))
    height = max(0, min(box[3], truth[3]) - max(box[1], truth[1]))
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return area(box) + area(truth) - width * height == 0


def test_reference_files_have_the_listed_checksums():
    listed = dict(reversed(line.split()) for line in (ORIGINAL_EVAL / "SHA256SUMS").read_text().splitlines())
    not_data = {"README.md", "generate.py", "SHA256SUMS"}
    on_disk = {path.name for path in ORIGINAL_EVAL.iterdir() if path.name not in not_data}
    assert on_disk == set(listed), "files and SHA256SUMS disagree: rerun generate.py (it writes SHA256SUMS)"
    assert {name: hashlib.sha256((ORIGINAL_EVAL / name).read_bytes()).hexdigest() for name in listed} == listed
    assert _aggregates()["numbers_of_items"] == {"rec": 2400, "flickr": 2000, "roc": 2400, "pope": 2400}
    assert sum(len(item["phrases"]) for item in _load("flickr")) >= 2000


def test_rec_decisions_are_the_original_scripts():
    items = _load("rec")
    assert _crashed("rec") == REC_CRASHES
    assert {_aggregates()["rec"]["crashed"][str(i)] for i in REC_CRASHES} == {"IndexError"}
    result = rec_accuracy([item["text"] for item in items], [coco_xywh_to_xyxy(item["gt"]) for item in items],
                          [tuple(item["size"]) for item in items])  # fmt: skip
    differ = set()
    for row, item in enumerate(items):
        ours = [result["correct"][row], result["mean_box_correct"][row], result["best_box_correct"][row]]
        if item["id"] in REC_CRASHES:
            assert parse_boxes(item["text"], reading="original") == [] and ours == [False] * 3
            continue
        differ |= {(item["id"], score) for score, mine, theirs in zip(("first", "mean", "best"), ours, item["original"])
                   if mine != (theirs == "1")}  # fmt: skip
    assert differ == {(i, "best") for i in REC_NAN_BEST_BOX}
    for i in REC_NAN_BEST_BOX:  # the reason: a NaN box before the hit
        item = items[i]
        boxes = [entity["box"] for entity in _original(item["text"], tuple(item["size"]))]
        truth = coco_xywh_to_xyxy(item["gt"])
        assert _union_is_zero_in_the_original(boxes[0], truth) and box_iou(boxes[1], truth)[0, 0] >= 0.5


def test_rec_aggregates_are_the_original_scripts():
    items = [item for item in _load("rec") if item["id"] not in REC_CRASHES]
    result = rec_accuracy([item["text"] for item in items], [coco_xywh_to_xyxy(item["gt"]) for item in items],
                          [tuple(item["size"]) for item in items],
                          datasets=[item["dataset"] for item in items])  # fmt: skip
    original = _aggregates()["rec"]["aggregate"]
    for dataset, scores in original["per_dataset"].items():
        ours = result["per_dataset"][dataset]
        nan_items = sum(_load("rec")[i]["dataset"] == dataset for i in REC_NAN_BEST_BOX)
        assert ours["accuracy"] == scores["1"] and ours["mean_box_accuracy"] == scores["mean"]
        assert ours["best_box_accuracy"] - nan_items / ours["count"] == pytest.approx(scores["upper bound"], abs=1e-12)
        # what the script returns: the three scores of a dataset, sorted
        assert original["script_output"][dataset] == sorted(scores.values())


def test_flickr_decisions_and_recalls_are_the_original_scripts():
    items = _load("flickr")
    assert _crashed("flickr") == FLICKR_CRASHES
    differ, predicted, truths, types = set(), [], [], []
    for item in items:
        phrases = [phrase["phrase"] for phrase in item["phrases"]]
        boxes = boxes_for_phrases(item["text"], phrases, tuple(item["size"]))
        if item["id"] in FLICKR_CRASHES:
            assert boxes == [[]] * len(phrases)
            continue
        hits = flickr_recall_at_k(boxes, [phrase["gt"] for phrase in item["phrases"]])["hits"]
        for index, theirs in enumerate(item["original"]):
            differ |= {(item["id"], index, k) for k, decision in zip(FLICKR_KS, theirs)
                       if hits[k][index] != (decision == "1")}  # fmt: skip
        predicted += boxes
        truths += [phrase["gt"] for phrase in item["phrases"]]
        types += [phrase["types"] for phrase in item["phrases"]]
    assert differ == {(*key, k) for key in FLICKR_NAN for k in FLICKR_KS[1:]}
    for answer, index in FLICKR_NAN:  # the reason: a NaN box, then a hit, both named by the phrase
        item = items[answer]
        boxes = boxes_for_phrases(item["text"], [item["phrases"][index]["phrase"]], tuple(item["size"]))[0]
        truth = merge_boxes(item["phrases"][index]["gt"])
        assert _union_is_zero_in_the_original(boxes[0], truth) and box_iou(boxes[1], truth)[0, 0] >= 0.5
    # the original's report, per phrase type, on the answers it does not crash on
    result = flickr_recall_at_k(predicted, truths, phrase_types=types)
    nan_types = [t for answer, index in FLICKR_NAN for t in ["all", *items[answer]["phrases"][index]["types"]]]
    for k, per_type in _aggregates()["flickr"]["aggregate"].items():
        for phrase_type, recall in per_type.items():
            ours = result if phrase_type == "all" else result["per_phrase_type"][phrase_type]
            shift = nan_types.count(phrase_type) / ours["count"] if k != "recall@1" else 0
            assert ours[k] - shift == pytest.approx(recall, abs=1e-12), (k, phrase_type)


def test_roc_decisions_and_accuracies_are_the_original_scripts():
    items = _load("roc")
    assert _crashed("roc") == ROC_CRASHES
    result = roc_accuracy([item["text"] for item in items], [item["name"] for item in items],
                          synonyms=[item["synonyms"] for item in items],
                          region_types=[item["region_type"] for item in items])  # fmt: skip
    for item, correct in zip(items, result["correct"]):
        if item["id"] in ROC_CRASHES:  # the reason: a synonym that is not "a_(b)"
            assert any(s.count("(") == 2 or (s.count("(") == 1 and ")" not in s) for s in item["synonyms"])
        else:
            assert correct == (item["original"] == "1"), item
    kept = [row for row, item in enumerate(items) if item["id"] not in ROC_CRASHES]
    original = _aggregates()["roc"]["aggregate"]
    assert sum(result["correct"][row] for row in kept) == original["all"]["correct"]
    for region_type in ("point", "box", "free_shape"):
        rows = [row for row in kept if items[row]["region_type"] == region_type]
        assert sum(result["correct"][row] for row in rows) / len(rows) == original[region_type]["accuracy"]


def test_pope_decisions_and_metrics_are_the_original_scripts():
    items = _load("pope")
    result = pope_metrics([item["text"] for item in items], [item["label"] for item in items])
    assert result["predictions"] == [item["original"] for item in items]
    original = _aggregates()["pope"]["aggregate"]
    assert [result[key] for key in ("tp", "fp", "tn", "fn")] == [original[key] for key in ("TP", "FP", "TN", "FN")]
    names = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1 score",
             "yes_ratio": "Yes ratio"}  # fmt: skip
    assert {key: result[key] for key in names} == {key: original["metric.json"][name] for key, name in names.items()}
