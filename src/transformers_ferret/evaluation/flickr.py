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
"""Phrase grounding (Flickr30k Entities), as `ferret/eval/eval_flickr_entities.py` scores it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .common import Reading, as_text, box_iou, merge_boxes, read_entities


PhraseNormalization = Literal["original", "punctuation_to_space"]
"""How phrases are normalised before they are compared (both lower-case and collapse whitespace):

- `"original"`: as the original's `are_phrases_similar`: the punctuation `' " , . ; ! ? | :` separates words, any other
  character that is neither a word character nor whitespace is deleted (`"t-shirt"` -> `"tshirt"`, `"t - shirt"` ->
  `"t shirt"`, `"man's"` -> `"man s"`);
- `"punctuation_to_space"`: every such character separates words (`"t-shirt"` and `"t - shirt"` -> `"t shirt"`).
"""

_WORD_BREAKING_PUNCTUATION = re.compile(r"['\",.;!?|:]")
_OTHER_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize_phrase(phrase, rule: PhraseNormalization = "original") -> str:
    """The form in which an answer's phrase and an annotated phrase are compared, see [`PhraseNormalization`]."""
    text = as_text(phrase).lower()
    if rule == "original":
        text = _OTHER_PUNCTUATION.sub("", _WORD_BREAKING_PUNCTUATION.sub(" ", text))
    elif rule == "punctuation_to_space":
        text = _OTHER_PUNCTUATION.sub(" ", text)
    else:
        raise ValueError(f"`rule` must be 'original' or 'punctuation_to_space', got {rule!r}.")
    return " ".join(text.split())


def _entity_matches(entity: str, phrase: str, match: str) -> bool:
    if match == "exact":
        return entity == phrase
    if match == "suffix":
        return entity == phrase or entity.endswith(" " + phrase)
    raise ValueError(f"match must be 'exact' or 'suffix', got {match!r}.")


def boxes_for_phrases(
    text,
    phrases: Sequence[str],
    image_size: tuple[int, int],
    match: str = "exact",
    normalization: PhraseNormalization = "original",
    reading: Reading = "original",
) -> list[list[list[int]]]:
    """
    For each annotated phrase, the pixel boxes the answer gives it, in text order; `[]` when none (the recall then
    scores the zero box).

    With the defaults this is the original rule: the answer is read as the original reads it (see [`Reading`]: the
    phrase of a box starts just past the first `. , ; ! ?` after the previous box, so `"Sure. A snowy hill [..]"` does
    not ground `"a snowy hill"` and `"a bench [..] with a hat, a guitar [..]"` grounds `"a guitar"`), and a box counts
    for a phrase when both are equal after [`normalize_phrase`].

    Args:
        text (`str`): the model answer.
        phrases (sequence of `str`): the annotated phrases of the sentence.
        image_size (`tuple[int, int]`): `(height, width)` of the original image.
        match (`str`): `"exact"` (the original) or `"suffix"`, which also accepts an answer phrase that ends with the
            annotated one (`"... and a dog [..]"` grounds `"a dog"`).
        normalization: see [`PhraseNormalization`].
        reading: see [`Reading`]; `"sentences"` names phrases from the last sentence break on and skips malformed
            groups.

    Returns:
        `list[list[list[int]]]`: per phrase, its `[x1, y1, x2, y2]` pixel boxes.
    """
    entities = [
        (normalize_phrase(entity["phrase"], normalization), entity["box"])
        for entity in read_entities(text, reading, image_size)
    ]
    wanted = [normalize_phrase(phrase, normalization) for phrase in phrases]
    return [[box for entity, box in entities if _entity_matches(entity, phrase, match)] for phrase in wanted]


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
    Recall@k of phrase grounding with the rules of the original (`merge_boxes=True`, as its `__main__` runs it): each
    phrase's ground-truth boxes are merged into one enclosing box; a phrase counts at `k` when one of its first `k`
    predicted boxes reaches `iou_threshold`; a phrase without predictions gets the zero box (IoU 0). `upper_bound`
    uses all predictions.

    Difference from the original, where it computes NaN: a box whose union with the truth is exactly 0 (corners
    swapped, area minus the truth's) has IoU 0 here; the original's IoU is NaN, and NumPy's `max` then makes every
    `k` whose first boxes include it a miss, even when another of those boxes hits.

    Args:
        predicted_boxes: per phrase, the ranked predicted pixel boxes (e.g. from [`boxes_for_phrases`]).
        gt_boxes: per phrase, its ground-truth pixel boxes (`[N, 4]`, or one box).
        ks (sequence of `int`): the cut-offs.
        iou_threshold (`float`): IoU needed for a hit.
        phrase_types (*optional*): per phrase a type (`str`) or a list of types (Flickr phrases can have several);
            adds `per_phrase_type` results.

    Returns:
        `dict` with `recall@k` for each k, `upper_bound`, `count`, per phrase `hits` (`{"recall@k": [bool, ...],
        "upper_bound": [...]}`), and `per_phrase_type` when types are given.
    """
    num_phrases = len(gt_boxes)
    if len(predicted_boxes) != num_phrases:
        raise ValueError(f"Got predictions for {len(predicted_boxes)} phrases and ground truth for {num_phrases}.")
    if num_phrases == 0:
        return {**{f"recall@{k}": 0.0 for k in ks}, "upper_bound": 0.0, "count": 0,
                "hits": {**{f"recall@{k}": [] for k in ks}, "upper_bound": []}}  # fmt: skip
    depth = max([max(ks), *(len(boxes) for boxes in predicted_boxes)])
    best_ious = np.zeros((num_phrases, depth))
    for index, (predictions, truths) in enumerate(zip(predicted_boxes, gt_boxes)):
        if len(predictions):
            ious = box_iou(predictions, merge_boxes(truths))[:, 0]
            best_ious[index, : len(ious)] = np.maximum.accumulate(ious)
            best_ious[index, len(ious) :] = ious.max()
    hits = best_ious >= iou_threshold
    result = {
        **_recalls(best_ious, ks, iou_threshold),
        "count": num_phrases,
        "hits": {
            **{f"recall@{k}": hits[:, min(k, depth) - 1].tolist() for k in ks},
            "upper_bound": hits[:, -1].tolist(),
        },
    }
    if phrase_types is not None:
        groups: dict[str, list[int]] = {}
        for index, types in enumerate(phrase_types):
            for phrase_type in [types] if isinstance(types, str) else types:
                groups.setdefault(phrase_type, []).append(index)
        result["per_phrase_type"] = {
            name: {**_recalls(best_ious[rows], ks, iou_threshold), "count": len(rows)} for name, rows in groups.items()
        }
    return result
