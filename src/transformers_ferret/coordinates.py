# Copyright 2026 The transformers-ferret authors.
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
"""Ferret's coordinate text: the 0..999 grid on which points and boxes are written, in prompts and in answers.

This module is the one home of the grid. Everything that writes coordinates (the processor's region prompts, the
training collator, the synthetic-data generator) calls [`coordinate_text`]; everything that reads them (the
processor's `post_process_grounding`, the evaluators, the demos) calls [`parse_grounded_text`] and
[`grid_to_pixels`]. Where two users need different behaviour (the original evaluation scripts keep out-of-range
values that users get clipped; Ferret-UI rounds differently from Ferret), the difference is a named option here.
"""

import re
from typing import Literal

import numpy as np


GRID_SIZE = 1000
"""Side of the virtual canvas on which coordinates are written: values are bins `0 .. GRID_SIZE - 1`."""

GridRule = Literal["ferret", "ferret_ui"]
"""How a pixel coordinate `v` of an image side `S` becomes a bin (both truncate with `int`, as the originals do):

- `"ferret"`: `int(v * 1000 / S)`, Ferret's region prompts and training data;
- `"ferret_ui"`: `int(v * (1000.0 / S))`, Ferret-UI's; the two differ for some `(v, S)`, e.g. 19 of 38 is 500 vs 499.
"""

PixelRule = Literal["exact", "original_eval"]
"""How a bin `g` of an image side `S` becomes a pixel (both truncate with `int`):

- `"exact"`: `int(g * S / 1000)`, exact for integer bins (`25 * 1160 / 1000` is 29);
- `"original_eval"`: `int(g * (S / 1000))`, as Ferret's evaluation scripts compute it (`25 * 1.16` is 28.999...).
"""

# A bracket of comma-separated ASCII numbers (the model writes ASCII). The whitespace before a group is stripped in
# code, not by the pattern, so that a long run of whitespace costs linear, not quadratic, time.
_NUMBER_BRACKET = re.compile(r"\[\s*(-?[0-9]+(?:\.[0-9]+)?(?:\s*,\s*-?[0-9]+(?:\.[0-9]+)?)*)\s*\]")
_INTEGER = re.compile(r"-?[0-9]+")
_PHRASE_BOUNDARY = re.compile(r"[.!?;:\n]")
_PHRASE_STRIP = " \t,"


def to_grid(values, width: int, height: int, rule: GridRule = "ferret") -> list[int]:
    """Pixel coordinates `[x, y]` or `[x1, y1, x2, y2]` (any even count, x first) to grid bins, by `rule`."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    sizes = np.resize(np.array([width, height], dtype=np.float64), values.shape)
    if rule == "ferret":
        grid = values * GRID_SIZE / sizes
    elif rule == "ferret_ui":
        grid = values * (GRID_SIZE / sizes)
    else:
        raise ValueError(f"`rule` must be 'ferret' or 'ferret_ui', got {rule!r}.")
    return [int(value) for value in grid]


def format_grid(values) -> str:
    """`[a, b, ...]`: grid values written as the model reads and writes them."""
    return "[" + ", ".join(str(int(value)) for value in values) + "]"


def coordinate_text(values, width: int, height: int, rule: GridRule = "ferret") -> str:
    """The text of a point `[x, y]` or box `[x1, y1, x2, y2]` given in pixels of a `width` x `height` image.

    >>> coordinate_text([40, 50, 71, 65], 160, 120)
    '[250, 416, 443, 541]'
    """
    return format_grid(to_grid(values, width, height, rule))


def grid_to_pixels(
    values,
    image_size: tuple[int, int],
    *,
    rule: PixelRule = "exact",
    clip: bool = True,
    order_corners: bool = True,
) -> list[int]:
    """A grid box `[x1, y1, x2, y2]` (or a point `[x, y]`, which becomes a zero-size box) to pixels.

    Args:
        values (sequence of 2 or 4 numbers): grid coordinates.
        image_size (`tuple[int, int]`): `(height, width)` of the original image.
        rule: see [`PixelRule`].
        clip (`bool`): clip grid values to `[0, 999]` and pixels to the image (a user always gets a box inside the
            image); the original evaluation keeps values as written.
        order_corners (`bool`): swap corners so that `x1 <= x2` and `y1 <= y2`.

    Returns:
        `list[int]`: `[x1, y1, x2, y2]` in pixels.
    """
    height, width = image_size
    grid = np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(-1))
    if grid.size == 2:
        grid = np.concatenate([grid, grid])
    if clip:
        grid = np.clip(grid, 0, GRID_SIZE - 1)
    if order_corners:
        xs, ys = np.sort(grid[0::2]), np.sort(grid[1::2])
        grid = np.array([xs[0], ys[0], xs[1], ys[1]])
    sizes = np.array([width, height, width, height], dtype=np.float64)
    pixels = grid * sizes / GRID_SIZE if rule == "exact" else grid * (sizes / GRID_SIZE)
    pixels = [int(value) for value in pixels]
    if clip:
        pixels = np.clip(pixels, 0, sizes.astype(np.int64) - 1).tolist()
    return pixels


def _phrase_before(segment: str, offset: int) -> tuple[str, tuple[int, int]]:
    """The phrase at the end of `segment` (the cleaned text since the previous entity, which starts at `offset`)."""
    start = max((match.end() for match in _PHRASE_BOUNDARY.finditer(segment)), default=0)
    raw = segment[start:]
    span_start = start + len(raw) - len(raw.lstrip(_PHRASE_STRIP))
    span_end = max(span_start, len(segment) - (len(raw) - len(raw.rstrip(_PHRASE_STRIP))))
    return segment[span_start:span_end], (offset + span_start, offset + span_end)


def _grid_values(group: str, decimals: bool, points: bool) -> list[float] | None:
    """The numbers of a bracket group, or `None` when the group is not a box (or a point, if `points`)."""
    items = [item.strip() for item in group.split(",")]
    if len(items) not in ((2, 4) if points else (4,)):
        return None
    if not decimals and not all(_INTEGER.fullmatch(item) for item in items):
        return None
    return [float(item) for item in items]


def parse_grounded_text(
    text: str,
    image_size: tuple[int, int] | None = None,
    *,
    decimals: bool = True,
    points: bool = True,
    clip: bool = True,
    order_corners: bool = True,
    reuse_previous_phrase: bool = True,
    pixel_rule: PixelRule = "exact",
) -> dict:
    """
    Extracts the boxes a Ferret answer grounds its phrases with, e.g. `"A cat [120, 300, 540, 880] on a mat."`.

    Every bracket group of 4 numbers (a box), or of 2 (a point, a zero-size box) when `points`, is an entity. The
    group and the whitespace before it (and the comma between groups listed back to back) are removed from the text.
    The entity's phrase is the text between the previous entity (or the last sentence punctuation `. ! ? ; :` or line
    break, or the start of the text) and the group, stripped of spaces and commas; when that is empty (boxes listed
    back to back, as in `"two dogs [..], [..]"`) and `reuse_previous_phrase`, the previous entity's phrase is reused.
    Other brackets stay in the text untouched; this never raises, and runs in time linear in the length of `text`.

    Args:
        text (`str`): decoded model output (anything else counts as empty text).
        image_size (`tuple[int, int]`, *optional*): `(height, width)` of the original image; gives each entity a
            pixel `"box"` by [`grid_to_pixels`] (with `pixel_rule`, `clip` and `order_corners`).
        decimals (`bool`): accept `[10.5, ...]` groups (the original evaluation scripts take integers only).
        points (`bool`): accept 2-number groups as points.
        clip (`bool`): clip grid values to `[0, 999]` (and pixels to the image); `False` keeps them as written.
        order_corners (`bool`): swap corners written in the wrong order.
        reuse_previous_phrase (`bool`): give boxes listed back to back the phrase of the first.
        pixel_rule: see [`PixelRule`].

    Returns:
        `dict` with `"text"`: the text without the coordinate groups, and `"entities"`: a list of dicts with `"phrase"`
        (`str`), `"grid"` (the grid values after `clip` and `order_corners`, 2 or 4 of them), `"box"` (`[x1, y1, x2,
        y2]` pixels of the original image, when `image_size` is given) and `"span"` (`(start, end)` of the phrase in
        the cleaned text).
    """
    text = text if isinstance(text, str) else ""
    pieces, cleaned_length, entities, copied_until = [], 0, [], 0
    for match in _NUMBER_BRACKET.finditer(text):
        values = _grid_values(match.group(1), decimals, points)
        if values is None:
            continue
        between = text[copied_until : match.start()].rstrip()  # the group takes the whitespace before it
        if entities and not between.strip(_PHRASE_STRIP):
            between = ""  # the separator of boxes listed back to back
        copied_until = match.end()
        phrase, span = _phrase_before(between, cleaned_length)
        pieces.append(between)
        cleaned_length += len(between)
        if not phrase and entities and reuse_previous_phrase:
            phrase, span = entities[-1]["phrase"], entities[-1]["span"]
        grid = np.asarray(values)
        if clip:
            grid = np.clip(grid, 0, GRID_SIZE - 1)
        if order_corners and grid.size == 4:
            grid = np.concatenate([np.minimum(grid[:2], grid[2:]), np.maximum(grid[:2], grid[2:])])
        entity = {"phrase": phrase, "grid": [int(v) if float(v).is_integer() else float(v) for v in grid], "span": span}
        if image_size is not None:
            entity["box"] = grid_to_pixels(grid, image_size, rule=pixel_rule, clip=clip, order_corners=order_corners)
        entities.append(entity)
    return {"text": "".join(pieces) + text[copied_until:], "entities": entities}


__all__ = [
    "GRID_SIZE",
    "coordinate_text",
    "format_grid",
    "grid_to_pixels",
    "parse_grounded_text",
    "to_grid",
]
