"""Evaluators against hand-computed values; malformed model outputs never raise."""

import numpy as np
import pytest

from transformers_ferret.evaluation import (
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


def test_box_iou_is_pairwise_and_safe_on_empty_boxes():
    ious = box_iou([[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 10, 10], [0, 0, 5, 10], [3, 3, 3, 3]])
    assert ious.shape == (2, 3)
    np.testing.assert_allclose(ious, [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert not np.isnan(ious).any()


def test_box_conversions_hand_values():
    assert coco_xywh_to_xyxy([10, 20, 30, 40]) == [10, 20, 40, 60]
    # height 200, width 300: x -> int(v * 300 / 1000), y -> int(v * 200 / 1000), no clipping
    assert bins_to_pixels([500, 250, 999, 1000], (200, 300)) == [150, 50, 299, 200]
    assert bins_to_pixels([1, 1, 3, 4], (200, 300)) == [0, 0, 0, 0]  # 0.3, 0.2, 0.9, 0.8 truncate to 0
    assert merge_boxes([[0, 5, 10, 10], [2, 0, 20, 8]]) == [0, 0, 20, 10]


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


def test_parse_boxes_takes_the_text_before_each_bracket():
    text = "The objects are: 1: red circle [10, 20, 30, 40], 2: blue star [ 1 ,2, 3,4 ]."
    assert parse_boxes(text) == [("red circle", [10, 20, 30, 40]), ("blue star", [1, 2, 3, 4])]
    assert parse_boxes("A man [0, 0, 500, 500] and a dog [500, 500, 999, 999]") == [
        ("A man", [0, 0, 500, 500]),
        ("and a dog", [500, 500, 999, 999]),
    ]


def test_parse_boxes_skips_non_integer_brackets():
    text = "x [0.1, 0.2, 0.3, 0.4] a point [5, 6] the cat [1, 2, 3, 4] [a, b, c, d]"
    assert parse_boxes(text) == [("the cat", [1, 2, 3, 4])]
    assert parse_boxes(text, allow_points=True) == [("a point", [5, 6, 5, 6]), ("the cat", [1, 2, 3, 4])]


@pytest.mark.parametrize("output", MALFORMED_OUTPUTS)
def test_malformed_outputs_never_raise(output):
    parse_boxes(output)
    parse_boxes(output, allow_points=True)
    rec_accuracy([output], [[0, 0, 10, 10]], [(100, 100)])
    roc_accuracy([output], ["cat"])
    pope_metrics([output], ["yes"])
    boxes_for_phrases(output, ["a cat"], (100, 100), match="suffix")


def test_malformed_outputs_mostly_give_no_box():
    boxes = {output: parse_boxes(output) for output in MALFORMED_OUTPUTS}
    # four integers are a box, whatever their range, spacing, or digit script (Python's int() accepts all three)
    assert boxes.pop("[99999999999999999999999, -5, 3, 4]") == [("", [99999999999999999999999, -5, 3, 4])]
    assert boxes.pop("\x00\n[\n1,\n2,\n3,\n4\n]") == [("", [1, 2, 3, 4])]
    assert boxes.pop("a cat [\uff11, 2, 3, 4]") == [("a cat", [1, 2, 3, 4])]
    assert list(boxes.values()) == [[]] * (len(MALFORMED_OUTPUTS) - 3)


def test_normalize_phrase():
    assert normalize_phrase("  A  Red-Circle, ") == "a red circle"


# ---------------------------------------------------------------------------------------------------------------
# REC
# ---------------------------------------------------------------------------------------------------------------


def test_rec_accuracy_hand_example():
    # image: height 100, width 200; ground truth [0, 0, 100, 50] pixels (area 5000)
    predictions = [
        "[0, 0, 500, 500]",  # -> [0, 0, 100, 50]: IoU 1
        "the cat [250, 0, 750, 500] and [0, 0, 500, 500]",  # first box only -> [50, 0, 150, 50]: 2500 / 7500
        "I cannot find it.",  # no box: IoU 0
    ]
    result = rec_accuracy(predictions, [[0, 0, 100, 50]] * 3, [(100, 200)] * 3)
    assert result["ious"] == pytest.approx([1.0, 1 / 3, 0.0])
    assert result["correct"] == [True, False, False]
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["mean_iou"] == pytest.approx(4 / 9)
    assert result["parse_failure_rate"] == pytest.approx(1 / 3)
    assert result["count"] == 3


def test_rec_threshold_is_inclusive_and_coco_boxes_convert():
    # [0, 0, 500, 250] on a 100x200 image -> [0, 0, 100, 25]: exactly half of [0, 0, 100, 50]
    result = rec_accuracy(["[0, 0, 500, 250]"], [coco_xywh_to_xyxy([0, 0, 100, 50])], [(100, 200)])
    assert result["ious"] == [0.5] and result["accuracy"] == 1.0
    assert rec_accuracy(["[0, 0, 500, 250]"], [[0, 0, 100, 50]], [(100, 200)], iou_threshold=0.6)["accuracy"] == 0.0


def test_rec_accuracy_of_nothing_is_zero_and_lengths_must_match():
    assert rec_accuracy([], [], [])["accuracy"] == 0.0
    with pytest.raises(ValueError):
        rec_accuracy(["[0, 0, 1, 1]"], [], [])


# ---------------------------------------------------------------------------------------------------------------
# ROC
# ---------------------------------------------------------------------------------------------------------------


def test_roc_accuracy_two_of_three():
    answers = ["a red triangle", "It is not a blue star, it is a red triangle.", "A Red Triangle"]
    result = roc_accuracy(answers, ["red triangle"] * 3)
    assert result["correct"] == [True, True, False]  # matching is case-sensitive
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_roc_negated_names_do_not_count():
    assert roc_accuracy(["It is not a cat, it is a dog."], ["cat"])["accuracy"] == 0.0
    assert remove_negations("It is not a dog, it is a cat.") == "It is , it is a cat."
    assert remove_negations("No. A cat.") == ". A cat."


def test_roc_negation_prefix_quirk_of_the_original_is_optional():
    answers = ["The object is a notebook."]
    assert roc_accuracy(answers, ["notebook"])["accuracy"] == 1.0
    assert roc_accuracy(answers, ["notebook"], negation_prefix_match=True)["accuracy"] == 0.0


def test_roc_synonyms_and_lvis_names():
    assert name_variants("trash_can") == ["trash can"]
    assert name_variants("bow_(weapon)") == ["bow", "weapon"]
    answers = ["a couch", "a bow", "a trash can", "a chair"]
    names = ["sofa", "bow_(weapon)", "trash_can", "sofa"]
    by_name = roc_accuracy(answers, names, synonyms={"sofa": ["couch"]})
    assert by_name["correct"] == [True, True, True, False] and by_name["accuracy"] == 0.75
    per_item = roc_accuracy(answers, names, synonyms=[["couch"], None, [], ["armchair"]])
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
    text = "A man [0, 0, 500, 500], a dog [500, 500, 999, 999] and a dog [0, 0, 100, 100]."
    image_size = (100, 200)  # height, width
    exact = boxes_for_phrases(text, ["a man", "A dog", "a cat"], image_size)
    assert exact == [[[0, 0, 100, 50]], [[100, 50, 199, 99]], []]
    suffix = boxes_for_phrases(text, ["a dog"], image_size, match="suffix")
    assert suffix == [[[100, 50, 199, 99], [0, 0, 20, 10]]]
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
    assert pope_answer("Not really") == "no"
    assert pope_answer("There is nothing, no.") == "no"  # commas removed before splitting
    assert pope_answer("nothing") == "yes"  # whole words only
    assert pope_answer("") == "yes" and pope_answer(None) == "yes"


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
    result = pope_metrics(["no", "no"], ["yes", "no"])
    assert result["precision"] == 0.0 and result["recall"] == 0.0 and result["f1"] == 0.0
    assert result["accuracy"] == 0.5 and result["yes_ratio"] == 0.0
    with pytest.raises(ValueError):
        pope_metrics(["yes"], ["yes", "no"])
