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
"""Referring object classification (LVIS point / box / free-form regions), as `ferret/eval/eval_lvis.py` scores it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

from .common import as_text, grouped_accuracy, safe_ratio


NegationRule = Literal["original", "words", "prefix"]
"""Which clauses of an answer are deleted as negated before the class name is looked for:

- `"original"`: as `eval_lvis.py`: first every `<whitespace>not...` up to and including the next `,` or `.`, then
  every `<whitespace>no...` likewise; case-sensitive, and `not`/`no` may begin a longer word (`" nothing else."`,
  `" notebook."`, `" nor a cat."` are deleted too). A negation at the very start of the answer (no whitespace before
  it: `"Not a cat, a dog"`), after punctuation without a space (`"a dog,not a cat."`), in capitals (`" NOT a cat,"`),
  or without a `,` or `.` after it (`"an animal, not a remote control"`) stays;
- `"words"`: a `no` or `not` word in any case, up to the next `,` or `.` (or the end of the answer);
- `"prefix"`: any word beginning with `no` (case-sensitive, after a whitespace character), up to the next `,` or `.`
  (or the end).
"""

_NEGATION_PATTERNS = {
    "original": [re.compile(r"\s+" + word + r"[^,.]*[,.]") for word in ("not", "no")],
    "words": [re.compile(r"\b(?:no|not)\b[^,.]*", re.IGNORECASE)],
    "prefix": [re.compile(r"\sno[^,.]*")],
}


def remove_negations(answer, rule: NegationRule = "original") -> str:
    """The answer without its negated clauses, see [`NegationRule`]."""
    if rule not in _NEGATION_PATTERNS:
        raise ValueError(f"`rule` must be one of {tuple(_NEGATION_PATTERNS)}, got {rule!r}.")
    text = as_text(answer)
    for pattern in _NEGATION_PATTERNS[rule]:
        text = pattern.sub("", text)
    return text


def name_variants(name: str, split_parentheses: bool = True) -> list[str]:
    """
    The forms of an LVIS synonym that count as the class, as the original prepares synonyms: underscores become spaces
    and the ends are stripped; `"a_(b)"` gives `"a"` and `"b"` (with `split_parentheses`).

    The original asserts that a synonym with `(` has exactly one `(` and a `)`; other synonyms with `(` make it raise,
    and are used whole here.
    """
    text = as_text(name)
    if split_parentheses and "(" in text:
        parts = text.split("(")
        if len(parts) == 2 and ")" in text:
            return [parts[0].replace("_", " ").strip(), parts[1].replace("_", " ").replace(")", "").strip()]
    return [text.replace("_", " ").strip()]


def _candidate_names(index: int, name: str, synonyms, split_name_parentheses: bool) -> list[str]:
    extra = []
    if isinstance(synonyms, Mapping):
        extra = synonyms.get(name, [])
    elif synonyms is not None:
        extra = synonyms[index] or []
    forms = name_variants(name, split_name_parentheses)
    return [*forms, *(form for synonym in extra for form in name_variants(synonym))]


def roc_accuracy(
    answers: Sequence[str],
    gt_names: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | None = None,
    region_types: Sequence[str] | None = None,
    negations: NegationRule = "original",
    split_name_parentheses: bool = False,
) -> dict:
    """
    Referring object classification accuracy with the LVIS rule of the original `eval_lvis.py`: the answer is stripped
    (as `model_lvis.py` stores it), its negated clauses are removed ([`remove_negations`]), and it is correct when the
    ground-truth name (underscores as spaces) or a form of a synonym ([`name_variants`]) is a case-sensitive substring
    of what remains.

    Difference from the original, where it crashes: a synonym with `(` but not of the form `"a (b)"` is used whole
    (the original fails an assertion).

    Args:
        answers (sequence of `str`): model answers.
        gt_names (sequence of `str`): the class of each referred region.
        synonyms: `{name: [synonym, ...]}`, or one list of synonyms per answer (LVIS lists usually include the name
            itself), or `None`.
        region_types (sequence of `str`, *optional*): `"point"`, `"box"`, `"free-form"`, ... per answer; adds
            `per_region_type` accuracies (the original is run once per region type).
        negations: see [`NegationRule`]; `"words"` and `"prefix"` are the project's alternatives.
        split_name_parentheses (`bool`): also split the name `"a_(b)"` into `"a"` and `"b"` (the original splits only
            synonyms, so `"bow"` matches `bow_(weapon)` through its synonym `bow_(weapon)`, not through the name).

    Returns:
        `dict` with `accuracy`, `count`, per item `correct`, and `per_region_type` (`{type: accuracy}`) when
        `region_types` is given.
    """
    correct = []
    for index, (answer, name) in enumerate(zip(answers, gt_names, strict=True)):
        kept = remove_negations(as_text(answer).strip(), negations)
        candidates = _candidate_names(index, name, synonyms, split_name_parentheses)
        correct.append(any(candidate in kept for candidate in candidates))
    result = {"accuracy": safe_ratio(sum(correct), len(correct)), "count": len(correct), "correct": correct}
    if region_types is not None:
        result["per_region_type"] = grouped_accuracy(correct, region_types)
    return result
