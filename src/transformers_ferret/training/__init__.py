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
"""Training Ferret: GRIT-format data ([`grit`]), the batch collator ([`collator`]) and the training-stage freeze plans
([`stages`]). Needs the `train` extra; not imported by `transformers_ferret`."""

from .collator import FerretDataCollator, clamp_box
from .grit import GRIT_FEATURES, coco_to_grit, load_grit, mask_to_rle, normalize_rle, rle_to_mask, save_grit
from .stages import STAGES, apply_training_stage, format_trainable_summary, trainable_summary


__all__ = [
    "GRIT_FEATURES",
    "STAGES",
    "FerretDataCollator",
    "apply_training_stage",
    "clamp_box",
    "coco_to_grit",
    "format_trainable_summary",
    "load_grit",
    "mask_to_rle",
    "normalize_rle",
    "rle_to_mask",
    "save_grit",
    "trainable_summary",
]
