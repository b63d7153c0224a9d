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
Referring and grounding metrics that take, by default, the decisions of the original Ferret evaluation scripts
(`ferret/eval/` of apple/ml-ferret: `eval_refexp.py`, `eval_flickr_entities.py`, `eval_lvis.py`, `eval_pope.py`), item
by item, written against the standard annotation formats (RefCOCO/+/g, Flickr30k Entities, LVIS, POPE) so that they
also score the synthetic shapes benchmark (`synthetic_shapes`).

One module per task: `rec` ([`rec_accuracy`]), `flickr` ([`boxes_for_phrases`], [`flickr_recall_at_k`]), `roc`
([`roc_accuracy`]) and `pope` ([`pope_metrics`]); `common` holds the boxes and the reading of answers, which goes
through the one parser of grounded text, `coordinates.parse_grounded_text` (see [`Reading`]).

Conventions:

* Model boxes are text on the 1000-bin grid, `[x1, y1, x2, y2]`; they become pixels of the original image with
  `int(v * (width / 1000))` and `int(v * (height / 1000))`, without clipping, as the original scripts do.
* Ground-truth boxes are pixel `[x1, y1, x2, y2]` (use [`coco_xywh_to_xyxy`] for COCO `[x, y, w, h]`).
* Image sizes are `(height, width)`, as in `region_utils` and transformers' image processors.
* IoU uses continuous areas `(x2 - x1) * (y2 - y1)`, like the original's box operations.
* Nothing here raises on a malformed model output.

The defaults differ from the original only where it crashes or computes NaN (each function's docstring says where);
`modeling_tests/fixtures/original_eval/` holds stress answers with the original scripts' decisions, and
`modeling_tests/test_evaluation.py` checks every one. The project's own rules (suffix matching of phrases, punctuation
as spaces, other negation rules, whitespace splitting in POPE, the `"sentences"` reading) are options.
"""

from ..coordinates import GRID_SIZE
from .common import READINGS, Reading, bins_to_pixels, box_iou, coco_xywh_to_xyxy, merge_boxes, parse_boxes
from .flickr import PhraseNormalization, boxes_for_phrases, flickr_recall_at_k, normalize_phrase
from .pope import pope_answer, pope_metrics
from .rec import rec_accuracy
from .roc import NegationRule, name_variants, remove_negations, roc_accuracy


__all__ = [
    "GRID_SIZE",
    "READINGS",
    "NegationRule",
    "PhraseNormalization",
    "Reading",
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
