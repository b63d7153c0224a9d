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
"""Object hallucination (POPE), as `ferret/eval/model_pope.py` stores answers and `ferret/eval/eval_pope.py` scores
them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .common import as_text, safe_ratio


def pope_answer(answer, split_on_whitespace: bool = False) -> str:
    """
    The original's yes/no reading of an answer: stripped and lower-cased (as `model_pope.py` stores it), cut at the
    first `.`, commas deleted, split into words at each space `" "`; `"no"` when a word is `no` or `not`, else `"yes"`.
    So `"No!"`, `"no\\tthere is"` and `"Yes\\nno"` read `"yes"`, and `"yes , no"` reads `"no"`.

    Args:
        answer (`str`): the model answer (anything else counts as empty text, read `"yes"`).
        split_on_whitespace (`bool`): split words at any whitespace (the project's alternative: `"Yes\\nno"` reads
            `"no"`).
    """
    text = as_text(answer).strip().lower()
    text = text.split(".")[0].replace(",", "")
    words = text.split() if split_on_whitespace else text.split(" ")
    return "no" if "no" in words or "not" in words else "yes"


def _label_is_yes(label) -> bool:
    if isinstance(label, str):
        return label != "no"  # the original: the label "no" is negative, any other is positive
    return bool(label)


def pope_metrics(answers: Sequence[str], labels: Sequence, split_on_whitespace: bool = False) -> dict:
    """
    POPE metrics, "yes" being the positive class, as `eval_pope.py` computes them.

    Difference from the original, where it crashes: an empty denominator (no "yes" predicted, no "yes" label, ...)
    gives 0 here (the original raises `ZeroDivisionError`).

    Args:
        answers (sequence of `str`): model answers, read with [`pope_answer`].
        labels: the annotation's `"yes"`/`"no"` strings (as in the original, any string but `"no"` counts as yes), or
            booleans.
        split_on_whitespace (`bool`): see [`pope_answer`].

    Returns:
        `dict` with `accuracy`, `precision`, `recall`, `f1`, `yes_ratio` (share of "yes" predictions), `count`, the
        confusion counts `tp`, `fp`, `tn`, `fn`, and per item `predictions`.
    """
    predictions = [pope_answer(answer, split_on_whitespace) for answer in answers]
    predicted_yes = np.array([prediction == "yes" for prediction in predictions], dtype=bool)
    actual_yes = np.array([_label_is_yes(label) for label in labels], dtype=bool)
    if predicted_yes.shape != actual_yes.shape:
        raise ValueError(f"Got {len(predictions)} answers and {len(actual_yes)} labels.")
    tp = int(np.sum(predicted_yes & actual_yes))
    fp = int(np.sum(predicted_yes & ~actual_yes))
    tn = int(np.sum(~predicted_yes & ~actual_yes))
    fn = int(np.sum(~predicted_yes & actual_yes))
    precision, recall = safe_ratio(tp, tp + fp), safe_ratio(tp, tp + fn)
    return {
        "accuracy": safe_ratio(tp + tn, len(predictions)),
        "precision": precision,
        "recall": recall,
        "f1": safe_ratio(2 * precision * recall, precision + recall),
        "yes_ratio": safe_ratio(tp + fp, len(predictions)),
        "count": len(predictions),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "predictions": predictions,
    }
