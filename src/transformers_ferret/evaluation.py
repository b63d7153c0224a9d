# Copyright 2025 The transformers-ferret authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Referring and grounding metrics with the scoring rules of the original Ferret evaluation scripts, written against the
standard annotation formats (RefCOCO/+/g, LVIS, Flickr30k Entities, POPE) so that they also score the synthetic shapes
benchmark (`synthetic_shapes`).

Conventions:

* Model boxes are text on the 1000-bin grid, `[x1, y1, x2, y2]`; they become pixels of the original image with
  `int(v * width / 1000)` and `int(v * height / 1000)`, without clipping, as the original scripts do.
* Ground-truth boxes are pixel `[x1, y1, x2, y2]` (use [`coco_xywh_to_xyxy`] for COCO `[x, y, w, h]`).
* Image sizes are `(height, width)`, as in `region_utils` and transformers' image processors.
* IoU uses continuous areas `(x2 - x1) * (y2 - y1)`, like the original's box operations.
* Nothing here raises on a malformed model output: unparsable text scores as a miss.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from .coordinates import GRID_SIZE, grid_to_pixels

_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_INTEGER = re.compile(r"[+-]?\d+")
_SENTENCE_END = re.compile(r"[.!?;:\n]")
_PHRASE_STRIP = " \t\r\n,["


# ----------------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------------


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """
    Pairwise IoU of `[x1, y1, x2, y2]` boxes.

    Args:
        boxes_a, boxes_b: one box (4 numbers) or `[N, 4]` / `[M, 4]` boxes.

    Returns:
        `np.ndarray` of shape `[N, M]` (a single box counts as `N = 1`); 0 where the union is empty.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def coco_xywh_to_xyxy(box) -> list[float]:
    """COCO `[x, y, w, h]` -> `[x1, y1, x2, y2]`."""
    x, y, w, h = (float(value) for value in box)
    return [x, y, x + w, y + h]


def bins_to_pixels(box, image_size: tuple[int, int]) -> list[int]:
    """
    A grid box `[x1, y1, x2, y2]` (0..999 bins) to pixels of an image of `(height, width)`:
    `int(v * width / 1000)` for x and `int(v * height / 1000)` for y, without clipping (the original rule).
    """
    return grid_to_pixels(box, image_size, rule="original_eval", clip=False, order_corners=False)


def merge_boxes(boxes) -> list[float]:
    """The smallest box enclosing all `boxes` (`[N, 4]` or one box)."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [*array[:, :2].min(axis=0).tolist(), *array[:, 2:].max(axis=0).tolist()]


# ----------------------------------------------------------------------------------------------------------------
# Parsing model outputs
# ----------------------------------------------------------------------------------------------------------------


def _as_text(value) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _integers(content: str) -> list[int] | None:
    """The comma-separated integers of a bracket's content, or `None` if any item is not an integer."""
    items = [item.strip() for item in content.split(",")]
    if not all(_INTEGER.fullmatch(item) for item in items):
        return None
    return [int(item) for item in items]


def _entity_before(segment: str) -> str:
    """The entity text of a box: the text before its bracket, from the last sentence/colon break on, trimmed."""
    breaks = [match.end() for match in _SENTENCE_END.finditer(segment)]
    return segment[max(breaks, default=0) :].strip(_PHRASE_STRIP)


def parse_boxes(text, allow_points: bool = False) -> list[tuple[str, list[int]]]:
    """
    The boxes a model answer grounds, with the entity text before each, e.g.
    `"The objects are: 1: red circle [10, 20, 30, 40], 2: ..."` -> `[("red circle", [10, 20, 30, 40]), ...]`.

    As in the original REC parser, the entity of a bracket is the text between the previous bracket and this one;
    here it is also cut after the last `. ! ? ; :` or line break and stripped of spaces and commas. Brackets whose
    content is not 4 comma-separated integers (decimals, words, a 2-number point unless `allow_points`) are skipped;
    this never raises.

    Args:
        text (`str`): decoded model output (anything else counts as empty text).
        allow_points (`bool`): keep `[x, y]` brackets as zero-size boxes `[x, y, x, y]`.

    Returns:
        `list[tuple[str, list[int]]]`: `(entity, [x1, y1, x2, y2])` on the 1000-bin grid, in text order.
    """
    text, parsed, previous_end = _as_text(text), [], 0
    for match in _BRACKET.finditer(text):
        entity = _entity_before(text[previous_end : match.start()])
        previous_end = match.end()
        values = _integers(match.group(1))
        if values is not None and allow_points and len(values) == 2:
            values = values * 2
        if values is not None and len(values) == 4:
            parsed.append((entity, values))
    return parsed


def normalize_phrase(phrase) -> str:
    """Lower case, punctuation removed, whitespace collapsed: the form in which phrases are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", _as_text(phrase).lower()).split())


def _entity_matches(entity: str, phrase: str, match: str) -> bool:
    if match == "exact":
        return entity == phrase
    if match == "suffix":
        return entity == phrase or entity.endswith(" " + phrase)
    raise ValueError(f"match must be 'exact' or 'suffix', got {match!r}.")


def boxes_for_phrases(
    text, phrases: Sequence[str], image_size: tuple[int, int], match: str = "exact"
) -> list[list[list[int]]]:
    """
    For each phrase, the pixel boxes the answer gives to entities matching it, in text order; `[]` when none.

    Entity and phrase are compared after [`normalize_phrase`]. `match="exact"` requires equality (the Flickr30k
    Entities rule of the original); `match="suffix"` also accepts an entity that ends with the phrase, so that
    `"... and a dog [..]"` grounds `"a dog"`.
    """
    entities = [(normalize_phrase(entity), bins_to_pixels(box, image_size)) for entity, box in parse_boxes(text)]
    wanted = [normalize_phrase(phrase) for phrase in phrases]
    return [[box for entity, box in entities if _entity_matches(entity, phrase, match)] for phrase in wanted]


# ----------------------------------------------------------------------------------------------------------------
# Referring expression comprehension (RefCOCO/+/g)
# ----------------------------------------------------------------------------------------------------------------


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else 0.0


def rec_accuracy(
    predictions: Sequence[str],
    ground_truth_boxes: Sequence,
    image_sizes: Sequence[tuple[int, int]],
    iou_threshold: float = 0.5,
) -> dict:
    """
    REC Acc@`iou_threshold` with the original rule: only the first predicted box counts; no box scores IoU 0.

    Args:
        predictions (sequence of `str`): model answers.
        ground_truth_boxes: one pixel `[x1, y1, x2, y2]` per prediction.
        image_sizes: `(height, width)` of each original image.
        iou_threshold (`float`): a prediction is correct when IoU >= this.

    Returns:
        `dict` with `accuracy`, `mean_iou`, `parse_failure_rate`, `count`, and per item `ious` and `correct`.
    """
    ious, failures = [], 0
    for prediction, ground_truth, image_size in zip(predictions, ground_truth_boxes, image_sizes, strict=True):
        boxes = parse_boxes(prediction)
        failures += not boxes
        ious.append(float(box_iou(bins_to_pixels(boxes[0][1], image_size), ground_truth)[0, 0]) if boxes else 0.0)
    correct = [iou >= iou_threshold for iou in ious]
    return {
        "accuracy": _safe_ratio(sum(correct), len(ious)),
        "mean_iou": _safe_ratio(sum(ious), len(ious)),
        "parse_failure_rate": _safe_ratio(failures, len(ious)),
        "count": len(ious),
        "ious": ious,
        "correct": correct,
    }


# ----------------------------------------------------------------------------------------------------------------
# Referring object classification (LVIS point / box / free-form)
# ----------------------------------------------------------------------------------------------------------------


def name_variants(name: str) -> list[str]:
    """LVIS name forms that count as the class: underscores become spaces, `"a (b)"` gives both `"a"` and `"b"`."""
    name = _as_text(name).replace("_", " ").strip()
    match = re.fullmatch(r"(.*?)\s*\((.*)\)", name)
    if match:
        return [part.strip() for part in match.groups() if part.strip()]
    return [name] if name else []


def remove_negations(answer: str, prefix_match: bool = False) -> str:
    """
    Deletes each negated clause: from a `no`/`not` word to the next comma or period. With `prefix_match`, any word
    *beginning* with `no` starts a clause (the original's looser test, which also cuts e.g. " notebook").
    """
    pattern = r"\sno[^,.]*" if prefix_match else r"\b(?:no|not)\b[^,.]*"
    return re.sub(pattern, "", _as_text(answer), flags=0 if prefix_match else re.IGNORECASE)


def _candidate_names(index: int, name: str, synonyms) -> list[str]:
    extra = []
    if isinstance(synonyms, Mapping):
        extra = synonyms.get(name, [])
    elif synonyms is not None:
        extra = synonyms[index] or []
    return [variant for candidate in [name, *extra] for variant in name_variants(candidate)]


def roc_accuracy(
    answers: Sequence[str],
    gt_names: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | None = None,
    region_types: Sequence[str] | None = None,
    negation_prefix_match: bool = False,
) -> dict:
    """
    Referring object classification accuracy with the LVIS rule of the original: after negated clauses are removed
    ([`remove_negations`]), an answer is correct when the ground-truth name or a synonym (in any of its
    [`name_variants`]) is a case-sensitive substring of it.

    Args:
        answers (sequence of `str`): model answers.
        gt_names (sequence of `str`): the class of each referred region.
        synonyms: `{name: [synonym, ...]}`, or one list of synonyms per answer, or `None`.
        region_types (sequence of `str`, *optional*): `"point"`, `"box"`, `"free-form"`, ... per answer; adds
            `per_region_type` accuracies.
        negation_prefix_match (`bool`): use the original's looser negation test (see [`remove_negations`]).

    Returns:
        `dict` with `accuracy`, `count`, per item `correct`, and `per_region_type` (`{type: accuracy}`) when
        `region_types` is given.
    """
    correct = []
    for index, (answer, name) in enumerate(zip(answers, gt_names, strict=True)):
        kept = remove_negations(answer, negation_prefix_match)
        correct.append(any(candidate in kept for candidate in _candidate_names(index, name, synonyms)))
    result = {"accuracy": _safe_ratio(sum(correct), len(correct)), "count": len(correct), "correct": correct}
    if region_types is not None:
        result["per_region_type"] = _grouped_accuracy(correct, region_types)
    return result


def _grouped_accuracy(correct: Sequence[bool], groups: Sequence[str]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for is_correct, group in zip(correct, groups, strict=True):
        totals.setdefault(group, [0, 0])
        totals[group][0] += bool(is_correct)
        totals[group][1] += 1
    return {group: hits / count for group, (hits, count) in totals.items()}


# ----------------------------------------------------------------------------------------------------------------
# Phrase grounding (Flickr30k Entities)
# ----------------------------------------------------------------------------------------------------------------


def _recalls(best_ious: np.ndarray, ks: Sequence[int], iou_threshold: float) -> dict[str, float]:
    """`best_ious[p, j]`: best IoU among the first `j + 1` predictions of phrase `p`."""
    hits = best_ious >= iou_threshold
    result = {f"recall@{k}": float(hits[:, min(k, hits.shape[1]) - 1].mean()) for k in ks}
    result["upper_bound"] = float(hits[:, -1].mean())
    return result


def flickr_recall_at_k(
    predicted_boxes: Sequence[Sequence],
    gt_boxes: Sequence[Sequence],
    ks: Sequence[int] = (1, 5, 10),
    iou_threshold: float = 0.5,
    phrase_types: Sequence | None = None,
) -> dict:
    """
    Recall@k of phrase grounding with the original's rules: each phrase's ground-truth boxes are merged into one
    enclosing box; a phrase counts at `k` when one of its first `k` predicted boxes reaches `iou_threshold`; a phrase
    without predictions gets a zero box (IoU 0). `upper_bound` uses all predictions.

    Args:
        predicted_boxes: per phrase, the ranked predicted pixel boxes (e.g. from [`boxes_for_phrases`]).
        gt_boxes: per phrase, its ground-truth pixel boxes (`[N, 4]`, or one box).
        ks (sequence of `int`): the cut-offs.
        iou_threshold (`float`): IoU needed for a hit.
        phrase_types (*optional*): per phrase a type (`str`) or a list of types (Flickr phrases can have several);
            adds `per_phrase_type` results.

    Returns:
        `dict` with `recall@k` for each k, `upper_bound`, `count`, and `per_phrase_type` when types are given.
    """
    num_phrases = len(gt_boxes)
    if len(predicted_boxes) != num_phrases:
        raise ValueError(f"Got predictions for {len(predicted_boxes)} phrases and ground truth for {num_phrases}.")
    if num_phrases == 0:
        return {**{f"recall@{k}": 0.0 for k in ks}, "upper_bound": 0.0, "count": 0}
    depth = max([max(ks), *(len(boxes) for boxes in predicted_boxes)])
    best_ious = np.zeros((num_phrases, depth))
    for index, (predictions, truths) in enumerate(zip(predicted_boxes, gt_boxes)):
        if len(predictions):
            ious = box_iou(predictions, merge_boxes(truths))[:, 0]
            best_ious[index, : len(ious)] = np.maximum.accumulate(ious)
            best_ious[index, len(ious) :] = ious.max()
    result = {**_recalls(best_ious, ks, iou_threshold), "count": num_phrases}
    if phrase_types is not None:
        groups: dict[str, list[int]] = {}
        for index, types in enumerate(phrase_types):
            for phrase_type in [types] if isinstance(types, str) else types:
                groups.setdefault(phrase_type, []).append(index)
        result["per_phrase_type"] = {
            name: {**_recalls(best_ious[rows], ks, iou_threshold), "count": len(rows)} for name, rows in groups.items()
        }
    return result


# ----------------------------------------------------------------------------------------------------------------
# Object hallucination (POPE)
# ----------------------------------------------------------------------------------------------------------------


def pope_answer(answer) -> str:
    """The original's yes/no reading: lower case, first sentence, commas removed; a `no`/`not` word means `"no"`."""
    text = _as_text(answer).lower()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split()
    return "no" if "no" in words or "not" in words else "yes"


def _label_is_yes(label) -> bool:
    if isinstance(label, str):
        return label.strip().lower() == "yes"
    return bool(label)


def pope_metrics(answers: Sequence[str], labels: Sequence) -> dict:
    """
    POPE metrics, "yes" being the positive class.

    Args:
        answers (sequence of `str`): model answers, read with [`pope_answer`].
        labels: `"yes"`/`"no"` strings (any case) or booleans.

    Returns:
        `dict` with `accuracy`, `precision`, `recall`, `f1`, `yes_ratio` (share of "yes" predictions), `count`, the
        confusion counts `tp`, `fp`, `tn`, `fn`, and per item `predictions`. Empty denominators give 0.
    """
    predictions = [pope_answer(answer) for answer in answers]
    predicted_yes = np.array([prediction == "yes" for prediction in predictions], dtype=bool)
    actual_yes = np.array([_label_is_yes(label) for label in labels], dtype=bool)
    if predicted_yes.shape != actual_yes.shape:
        raise ValueError(f"Got {len(predictions)} answers and {len(actual_yes)} labels.")
    tp = int(np.sum(predicted_yes & actual_yes))
    fp = int(np.sum(predicted_yes & ~actual_yes))
    tn = int(np.sum(~predicted_yes & ~actual_yes))
    fn = int(np.sum(~predicted_yes & actual_yes))
    precision, recall = _safe_ratio(tp, tp + fp), _safe_ratio(tp, tp + fn)
    return {
        "accuracy": _safe_ratio(tp + tn, len(predictions)),
        "precision": precision,
        "recall": recall,
        "f1": _safe_ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _safe_ratio(tp + fp, len(predictions)),
        "count": len(predictions),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "predictions": predictions,
    }


__all__ = [
    "GRID_SIZE",
    "bins_to_pixels",
    "box_iou",
    "boxes_for_phrases",
    "coco_xywh_to_xyxy",
    "flickr_recall_at_k",
    "merge_boxes",
    "name_variants",
    "normalize_phrase",
    "parse_boxes",
    "pope_answer",
    "pope_metrics",
    "rec_accuracy",
    "remove_negations",
    "roc_accuracy",
]
