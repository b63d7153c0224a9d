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
"""Synthetic refer-and-ground data for tests, demos and the CPU training benchmark: scenes of coloured shapes
([`scenes`]) and GRIT-format conversations about them ([`conversations`]). Not imported by `transformers_ferret`."""

from .conversations import (
    PLACEHOLDER,
    REGION_TYPES,
    TASKS,
    make_sample,
    make_samples,
    raster_order,
    region_inputs,
    render_conversation,
    to_dataset,
    with_article,
    write_grit_json,
)
from .scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    ShapeObject,
    ShapeScene,
    diagonal_halves,
    generate_scene,
    shape_mask,
)


__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "PLACEHOLDER",
    "REGION_TYPES",
    "SHAPES",
    "TASKS",
    "ShapeObject",
    "ShapeScene",
    "diagonal_halves",
    "generate_scene",
    "make_sample",
    "make_samples",
    "raster_order",
    "region_inputs",
    "render_conversation",
    "shape_mask",
    "to_dataset",
    "with_article",
    "write_grit_json",
]
