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

BracketRule = Literal["numbers", "every_bracket"]
"""Which brackets of an answer are coordinate groups:

- `"numbers"`: a `[...]` of comma-separated ASCII numbers (`-` allowed); other brackets are text;
- `"every_bracket"`: every `[` opens a group and every `]` closes one, whatever lies between, as the original evaluation
  scripts scan answers: a `[` inside an open group abandons it (`[[1, 2, 3, 4]]` closes `1, 2, 3, 4` and then an empty
  group), a `]` without its `[` closes a group that starts where the next phrase would, and numbers are read by
  Python's `int()` (spaces, a sign, `_` between digits and any Unicode digits are accepted; values beyond 1e300 are
  not numbers).
"""

PhraseRule = Literal["sentence", "after_delimiter"]
"""Where the phrase of an entity starts (it always ends at the group):

- `"sentence"`: after the previous entity, the last `. ! ? ; :` or line break, or the text start, whichever is last;
  stripped of spaces and commas;
- `"after_delimiter"`: just past the first `. , ; ! ?` that follows the previous group (the text start for the first
  group; with `brackets="every_bracket"`, just past a `[` that opened no group), as the original evaluation scripts;
  empty when that delimiter lies beyond the group; stripped of whitespace only. So in `"Sure. A dog [..]"` the phrase is
  `"Sure. A dog"`, and in `"a bench [..] with a hat, a guitar [..]"` the second is `"a guitar"`.
"""

ExtraNumbersRule = Literal["invalid", "first_four"]
"""A group of 5 or more numbers: `"invalid"` (not a box) or `"first_four"` (a box of its first four, as the original
evaluation scripts)."""

InvalidGroupRule = Literal["skip", "drop_all"]
"""A group that is not a box (nor a point, with `points`): `"skip"` (it stays in the text; the other groups count) or
`"drop_all"` (the answer grounds nothing, as the original evaluation scripts, whose parser then raises `ValueError`)."""

# A bracket of comma-separated ASCII numbers (the model writes ASCII). The whitespace before a group is stripped in
# code, not by the pattern, so that a long run of whitespace costs linear, not quadratic, time.
_NUMBER_BRACKET = re.compile(r"\[\s*(-?[0-9]+(?:\.[0-9]+)?(?:\s*,\s*-?[0-9]+(?:\.[0-9]+)?)*)\s*\]")
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"\s*[+-]?[0-9]+\.[0-9]+\s*")
_BRACKET_MARK = re.compile(r"[\[\]]")
_EVAL_DELIMITER = re.compile(r"[.,;!?]")  # where the original evaluation scripts start the next phrase after a group
_LARGEST_NUMBER = 10**300  # beyond this, pixel values may overflow a float
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


def _next_delimiter_finder(text: str):
    """`after(i)`: the index just past the first `. , ; ! ?` at or after `i` (`len(text) + 1` if none), in amortised
    linear time for increasing `i`."""
    found = -1

    def after(index: int) -> int:
        nonlocal found
        if found < index:
            match = _EVAL_DELIMITER.search(text, index)
            found = match.start() if match else len(text)
        return found + 1

    return after


def _number_groups(text: str):
    """`(start, end, content, window)` of each bracket of comma-separated ASCII numbers (`brackets="numbers"`);
    `window` is where an `"after_delimiter"` phrase may lie: from just past the first `. , ; ! ?` after the previous
    group (the text start for the first) to the group."""
    after_delimiter, mark = _next_delimiter_finder(text), 0
    for match in _NUMBER_BRACKET.finditer(text):
        yield match.start(), match.end(), match.group(1), (mark, match.start())
        mark = after_delimiter(match.end())


def _every_bracket_groups(text: str):
    """The groups of `brackets="every_bracket"`, as the original evaluation scripts scan a text: every `[` opens a group
    (abandoning one still open) and every `]` closes one. After a `]` the next phrase, and the content of a group
    closed without a `[` of its own, start just past the first `. , ; ! ?` that follows; such a group keeps the phrase
    window of the group before. Yields `(start, end, content, window)`, like [`_number_groups`]."""
    after_delimiter, mark, window, opened = _next_delimiter_finder(text), 0, None, None
    for match in _BRACKET_MARK.finditer(text):
        index = match.start()
        if text[index] == "[":
            window, opened, mark = (mark, index), index, index + 1
            continue
        yield (opened if opened is not None else min(mark, index)), index + 1, text[mark:index], window
        opened, mark = None, after_delimiter(index + 1)


def _read_number(item: str, brackets: BracketRule, decimals: bool) -> float | int | None:
    if brackets == "numbers":  # the group matched _NUMBER_BRACKET: ASCII numbers
        item = item.strip()
        return float(item) if decimals or _INTEGER.fullmatch(item) else None
    try:
        value = int(item)  # what the original scripts accept: spaces, a sign, `_` between digits, any Unicode digits
    except ValueError:
        return float(item) if decimals and _DECIMAL.fullmatch(item) else None
    return value if abs(value) <= _LARGEST_NUMBER else None


def _grid_values(
    group: str,
    decimals: bool,
    points: bool,
    brackets: BracketRule = "numbers",
    extra_numbers: ExtraNumbersRule = "invalid",
) -> list[float] | None:
    """The numbers of a bracket group, or `None` when the group is not a box (or a point, if `points`)."""
    values = [_read_number(item, brackets, decimals) for item in group.split(",")]
    if any(value is None for value in values):
        return None
    if len(values) > 4 and extra_numbers == "first_four":
        return values[:4]
    return values if len(values) == 4 or (points and len(values) == 2) else None


def _stripped_window(text: str, window: tuple[int, int]) -> tuple[str, int]:
    raw = text[window[0] : window[1]]
    return raw.strip(), window[0] + len(raw) - len(raw.lstrip())


def _phrase_in_window(
    text, window, copied_until, between, cleaned_length, entities, last
) -> tuple[str, tuple[int, int]]:
    """The `"after_delimiter"` phrase: the window's text stripped of whitespace, and its span in the cleaned text.
    `last` caches the previous window's `[window, (phrase, start)]`: groups closed without a `[` share one."""
    if window is None:
        return "", (cleaned_length, cleaned_length)
    if last[0] != window:
        last[:] = [window, _stripped_window(text, window)]
    phrase, start = last[1]
    if copied_until <= start and start + len(phrase) <= copied_until + len(between):
        return phrase, (cleaned_length + start - copied_until, cleaned_length + start - copied_until + len(phrase))
    if entities and entities[-1]["phrase"] == phrase:  # a group closed without its own `[`: the previous phrase
        return phrase, entities[-1]["span"]
    return phrase, (cleaned_length, cleaned_length)  # a separator left out of the cleaned text, e.g. ","


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
    brackets: BracketRule = "numbers",
    phrase_start: PhraseRule = "sentence",
    extra_numbers: ExtraNumbersRule = "invalid",
    invalid_groups: InvalidGroupRule = "skip",
) -> dict:
    """
    Extracts the boxes a Ferret answer grounds its phrases with, e.g. `"A cat [120, 300, 540, 880] on a mat."`.

    By default every bracket group of 4 numbers (a box), or of 2 (a point, a zero-size box) when `points`, is an entity.
    The group and the whitespace before it (and the comma between groups listed back to back) are removed from the
    text. The entity's phrase is the text between the previous entity (or the last sentence punctuation `. ! ? ; :` or
    line break, or the start of the text) and the group, stripped of spaces and commas; when that is empty (boxes
    listed back to back, as in `"two dogs [..], [..]"`) and `reuse_previous_phrase`, the previous entity's phrase is
    reused. Other brackets stay in the text untouched; this never raises, and runs in time linear in the length of
    `text`.

    The original evaluation scripts (`ferret/eval/eval_refexp.py`, `eval_flickr_entities.py`) read answers differently;
    `brackets="every_bracket"`, `phrase_start="after_delimiter"`, `extra_numbers="first_four"`,
    `invalid_groups="drop_all"`, with `decimals=False`, `points=False`, `clip=False`, `order_corners=False`,
    `reuse_previous_phrase=False` and `pixel_rule="original_eval"`, read them as those scripts do
    (`transformers_ferret.evaluation` names this set of options).

    Args:
        text (`str`): decoded model output (anything else counts as empty text).
        image_size (`tuple[int, int]`, *optional*): `(height, width)` of the original image; gives each entity a
            pixel `"box"` by [`grid_to_pixels`] (with `pixel_rule`, `clip` and `order_corners`).
        decimals (`bool`): accept `[10.5, ...]` groups (the original evaluation scripts take integers only).
        points (`bool`): accept 2-number groups as points.
        clip (`bool`): clip grid values to `[0, 999]` (and pixels to the image); `False` keeps them as written (and
            a group with a value beyond 1e300 is then not a box).
        order_corners (`bool`): swap corners written in the wrong order.
        reuse_previous_phrase (`bool`): give boxes listed back to back the phrase of the first.
        pixel_rule: see [`PixelRule`].
        brackets: which brackets are coordinate groups, see [`BracketRule`].
        phrase_start: where an entity's phrase starts, see [`PhraseRule`].
        extra_numbers: what a group of 5 or more numbers is, see [`ExtraNumbersRule`].
        invalid_groups: what a group that is not a box (nor a point, with `points`) does, see [`InvalidGroupRule`].

    Returns:
        `dict` with `"text"`: the text without the coordinate groups, and `"entities"`: a list of dicts with `"phrase"`
        (`str`), `"grid"` (the grid values after `clip` and `order_corners`, 2 or 4 of them), `"box"` (`[x1, y1, x2,
        y2]` pixels of the original image, when `image_size` is given) and `"span"` (`(start, end)` of the phrase in
        the cleaned text).
    """
    text = text if isinstance(text, str) else ""
    for name, value, allowed in (
        ("brackets", brackets, ("numbers", "every_bracket")),
        ("phrase_start", phrase_start, ("sentence", "after_delimiter")),
        ("extra_numbers", extra_numbers, ("invalid", "first_four")),
        ("invalid_groups", invalid_groups, ("skip", "drop_all")),
    ):
        if value not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
    groups = _every_bracket_groups(text) if brackets == "every_bracket" else _number_groups(text)
    pieces, cleaned_length, entities, copied_until, last_window = [], 0, [], 0, [None, None]
    for start, end, content, window in groups:
        values = _grid_values(content, decimals, points, brackets, extra_numbers)
        if values is not None and not clip and max(abs(value) for value in values) > _LARGEST_NUMBER:
            values = None  # unclipped, its pixel values could overflow a float
        if values is None:
            if invalid_groups == "drop_all":
                return {"text": text, "entities": []}
            continue
        between = text[copied_until:start].rstrip()  # the group takes the whitespace before it
        if entities and not between.strip(_PHRASE_STRIP):
            between = ""  # the separator of boxes listed back to back
        if phrase_start == "sentence":
            phrase, span = _phrase_before(between, cleaned_length)
        else:
            phrase, span = _phrase_in_window(text, window, copied_until, between, cleaned_length, entities, last_window)
        copied_until = end
        pieces.append(between)
        cleaned_length += len(between)
        if not phrase and entities and reuse_previous_phrase:
            phrase, span = entities[-1]["phrase"], entities[-1]["span"]
        grid = np.asarray(values, dtype=np.float64)
        if clip:
            grid = np.clip(grid, 0, GRID_SIZE - 1)
        if order_corners and grid.size == 4:
            grid = np.concatenate([np.minimum(grid[:2], grid[2:]), np.maximum(grid[:2], grid[2:])])
        written = values if not (clip or order_corners) else grid  # integers stay exact when nothing changes them
        entity = {
            "phrase": phrase,
            "grid": [int(v) if isinstance(v, int) or float(v).is_integer() else float(v) for v in written],
            "span": span,
        }
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
