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
"""Referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg), as `ferret/eval/eval_refexp.py` scores it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .common import Reading, box_iou, read_entities, safe_ratio


def _scores(correct: dict[str, list[bool]], rows) -> dict[str, float | int]:
    return {
        "accuracy": safe_ratio(sum(correct["first"][row] for row in rows), len(rows)),
        "mean_box_accuracy": safe_ratio(sum(correct["mean"][row] for row in rows), len(rows)),
        "best_box_accuracy": safe_ratio(sum(correct["best"][row] for row in rows), len(rows)),
        "count": len(rows),
    }


def rec_accuracy(
    predictions: Sequence[str],
    ground_truth_boxes: Sequence,
    image_sizes: Sequence[tuple[int, int]],
    iou_threshold: float = 0.5,
    datasets: Sequence[str] | None = None,
    reading: Reading = "original",
) -> dict:
    """
    REC Acc@`iou_threshold` with the rules of the original `eval_refexp.py`: the answer's boxes are read as the
    original reads them (see [`Reading`]: a malformed group leaves the answer without boxes) and an answer without a
    box is scored with the zero box `[0, 0, 0, 0]` (IoU 0). The original's three scores:

    - `accuracy` (its `k = 1`): the first box reaches the threshold;
    - `mean_box_accuracy` (`"mean"`): the mean of all the answer's boxes does;
    - `best_box_accuracy` (`"upper bound"`): any of the boxes does.

    Differences from the original, where it crashes or computes NaN: an answer with a group of 1 to 3 integers, which
    crashes the original (`IndexError`), has no box here; a box whose union with the truth is exactly 0 (corners
    swapped, area minus the truth's) has IoU 0 here, NaN there, and when such a box precedes a box that hits, the
    original's best-box test (Python's `max()` over the IoUs) keeps the NaN and misses where this hits. IoUs are
    computed in float64 (the original: float32).

    Args:
        predictions (sequence of `str`): model answers.
        ground_truth_boxes: one pixel `[x1, y1, x2, y2]` per prediction (see [`coco_xywh_to_xyxy`]).
        image_sizes: `(height, width)` of each original image.
        iou_threshold (`float`): a prediction is correct when IoU >= this.
        datasets (sequence of `str`, *optional*): the dataset of each item (`"refcoco"`, `"refcoco+"`, `"refcocog"`);
            adds the three scores per dataset, as the original reports them.
        reading: how answers are read, see [`Reading`]; `"sentences"` skips malformed groups instead.

    Returns:
        `dict` with `accuracy`, `mean_box_accuracy`, `best_box_accuracy`, `mean_iou` (of the first box),
        `parse_failure_rate` (share of answers without a box), `count`, per item `ious` (first box), `correct`, `mean_box_ious`,
        `mean_box_correct`, `best_ious` and `best_box_correct`, and `per_dataset` (`{dataset: {accuracy,
        mean_box_accuracy, best_box_accuracy, count}}`) when `datasets` is given.
    """
    first, mean, best, failures = [], [], [], 0
    for prediction, truth, image_size in zip(predictions, ground_truth_boxes, image_sizes, strict=True):
        boxes = [entity["box"] for entity in read_entities(prediction, reading, image_size)]
        failures += not boxes
        predicted = np.asarray(boxes or [[0, 0, 0, 0]], dtype=np.float64)
        ious = box_iou(predicted, truth)[:, 0]
        first.append(float(ious[0]))
        best.append(float(ious.max()))
        mean.append(float(box_iou(predicted.mean(axis=0), truth)[0, 0]))
    correct = {name: [iou >= iou_threshold for iou in values] for name, values in (("first", first), ("mean", mean),
                                                                                   ("best", best))}  # fmt: skip
    result = {
        **_scores(correct, range(len(first))),
        "mean_iou": safe_ratio(sum(first), len(first)),
        "parse_failure_rate": safe_ratio(failures, len(first)),
        "ious": first,
        "correct": correct["first"],
        "mean_box_ious": mean,
        "mean_box_correct": correct["mean"],
        "best_ious": best,
        "best_box_correct": correct["best"],
    }
    if datasets is not None:
        rows: dict[str, list[int]] = {}
        for row, dataset in enumerate(datasets):
            rows.setdefault(dataset, []).append(row)
        if len(datasets) != len(first):
            raise ValueError(f"Got {len(datasets)} datasets for {len(first)} predictions.")
        result["per_dataset"] = {dataset: _scores(correct, indices) for dataset, indices in rows.items()}
    return result
