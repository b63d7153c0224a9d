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
"""Boxes, and how the evaluators read the boxes of an answer (through `coordinates.parse_grounded_text`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..coordinates import grid_to_pixels, parse_grounded_text


Reading = Literal["original", "sentences"]
"""How an answer's coordinate groups and their phrases are read (sets of [`coordinates.parse_grounded_text`] options):

- `"original"`: as the original evaluation scripts (`eval_refexp.py`, `eval_flickr_entities.py`) read answers. Every
  `[` opens and every `]` closes a group; a group is 4 (or more: the first four count) integers as Python's `int()`
  reads them, and any other group (words, decimals, `[]`, 1 to 3 numbers) leaves the answer without boxes. A phrase
  is the text from just past the first `. , ; ! ?` after the previous group (or from the text start) to the group,
  stripped of whitespace, so `"Sure. A dog [..]"` names `"Sure. A dog"` and the second of `"two dogs [..], [..]"` names
  `""`. Values are kept as written (no clipping, corners not reordered) and become pixels as `int(v * (W / 1000))`.
  Where the original crashes, it is read as if its parser's `ValueError` handler had caught the error too: a group of
  1 to 3 integers (the original raises `IndexError`) or with a value beyond 1e300 (`OverflowError`) leaves the answer
  without boxes.
- `"sentences"`: the project's reading (that of `FerretProcessor.post_process_grounding`, without clipping):
  a group is a bracket of 4 ASCII integers and other brackets are skipped; a phrase starts after the previous box or
  the last `. ! ? ; :` or line break and is stripped of spaces and commas (`"Sure. A dog [..]"` names `"A dog"`).
"""

_ORIGINAL_READING = {
    "brackets": "every_bracket",
    "phrase_start": "after_delimiter",
    "extra_numbers": "first_four",
    "invalid_groups": "drop_all",
    "decimals": False,
    "points": False,
    "clip": False,
    "order_corners": False,
    "reuse_previous_phrase": False,
    "pixel_rule": "original_eval",
}
READINGS: dict[str, dict] = {
    "original": _ORIGINAL_READING,
    # the same integers, values and pixels; brackets, phrases and malformed groups as the user-facing parser reads them
    "sentences": {
        **_ORIGINAL_READING,
        "brackets": "numbers",
        "phrase_start": "sentence",
        "extra_numbers": "invalid",
        "invalid_groups": "skip",
    },
}


def as_text(value) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else 0.0


def grouped_accuracy(correct: Sequence[bool], groups: Sequence[str]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for is_correct, group in zip(correct, groups, strict=True):
        totals.setdefault(group, [0, 0])
        totals[group][0] += bool(is_correct)
        totals[group][1] += 1
    return {group: hits / count for group, (hits, count) in totals.items()}


# ----------------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------------


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """
    Pairwise IoU of `[x1, y1, x2, y2]` boxes.

    A box with corners in the wrong order has area 0 here. The original scripts compute its area as a negative
    product, which gives the same IoU (0), except that the union can then be exactly 0 and the IoU NaN (a box of width
    `-w` against a truth of area `w * h`); here it is 0.

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
    `int(v * (width / 1000))` for x and `int(v * (height / 1000))` for y, without clipping (the original rule).
    """
    return grid_to_pixels(box, image_size, rule="original_eval", clip=False, order_corners=False)


def merge_boxes(boxes) -> list[float]:
    """The smallest box enclosing all `boxes` (`[N, 4]` or one box)."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [*array[:, :2].min(axis=0).tolist(), *array[:, 2:].max(axis=0).tolist()]


# ----------------------------------------------------------------------------------------------------------------
# Reading answers
# ----------------------------------------------------------------------------------------------------------------


def read_entities(text, reading: Reading = "original", image_size=None, allow_points: bool = False) -> list[dict]:
    """The entities (`"phrase"`, `"grid"`, `"box"` when `image_size` is given) of an answer, read by `reading`."""
    if reading not in READINGS:
        raise ValueError(f"`reading` must be one of {tuple(READINGS)}, got {reading!r}.")
    options = {**READINGS[reading], "points": allow_points}
    return parse_grounded_text(as_text(text), image_size, **options)["entities"]


def parse_boxes(text, allow_points: bool = False, reading: Reading = "sentences") -> list[tuple[str, list[int]]]:
    """
    The boxes a model answer grounds, with the phrase before each, e.g.
    `"The objects are: 1: red circle [10, 20, 30, 40], 2: ..."` -> `[("red circle", [10, 20, 30, 40]), ...]`.

    The default reading is the project's (`"sentences"`, see [`Reading`]), which names phrases as a reader would; the
    evaluators read answers as the original scripts do: pass `reading="original"` to get the boxes and phrases they
    score. Never raises.

    Args:
        text (`str`): decoded model output (anything else counts as empty text).
        allow_points (`bool`): keep `[x, y]` groups as zero-size boxes `[x, y, x, y]`.
        reading: see [`Reading`].

    Returns:
        `list[tuple[str, list[int]]]`: `(phrase, [x1, y1, x2, y2])` on the 1000-bin grid, as written, in text order.
    """
    entities = read_entities(text, reading, allow_points=allow_points)
    return [(entity["phrase"], entity["grid"] * (4 // len(entity["grid"]))) for entity in entities]
