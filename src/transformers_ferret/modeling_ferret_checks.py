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
"""Ferret's checks of its inputs: a `ValueError` naming the argument and what was expected, before a wrong input
could reach a deep shape error or turn into NaN logits."""

import torch

from .configuration_ferret import FerretConfig


def check_pixel_values(pixel_values: torch.Tensor, name: str, expected_dim: int, channels: int) -> None:
    """ValueError naming `name` for a wrong rank / channel count, or NaN / inf pixels (never NaN logits)."""
    if pixel_values.dim() != expected_dim or pixel_values.shape[-3] != channels:
        shape = "[num_images, " + ("max_tiles, " if expected_dim == 5 else "") + f"{channels}, height, width]"
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(pixel_values.shape)}.")
    if pixel_values.is_floating_point() and not torch.isfinite(pixel_values).all():
        raise ValueError(f"`{name}` contain NaN or inf values.")


def check_region_inputs(
    config: FerretConfig,
    region_mask: torch.Tensor,
    image_rows: torch.Tensor,
    region_points: torch.Tensor | None,
    region_counts: torch.Tensor | None,
    num_images: int,
) -> None:
    """ValueError naming the argument when region inputs disagree with the region tokens (eager only: the checks
    read tensor values)."""
    tokens_per_row = region_mask.sum(-1)
    if region_points is None:
        raise ValueError(
            f"`input_ids` hold {int(tokens_per_row.sum())} region tokens but no `region_points` were given; "
            "build the inputs with FerretProcessor(regions=...)."
        )
    batch_size = region_mask.shape[0]
    if region_points.dim() != 4 or region_points.shape[0] != batch_size or region_points.shape[-1] != 2:
        raise ValueError(
            f"`region_points` must have shape [batch_size={batch_size}, max_regions, num_points, 2], "
            f"got {tuple(region_points.shape)}."
        )
    kept, neighbors = config.sampler_num_sub_points[0], config.sampler_num_neighbors[0]
    if region_points.shape[2] < max(kept, neighbors):
        raise ValueError(
            f"`region_points` has {region_points.shape[2]} points per region but the region sampler keeps {kept} of "
            f"them with {neighbors} neighbours; give {config.sampler_num_init_points} points per region "
            "(`sampler_num_init_points`, the processor's `num_region_points`)."
        )
    if not torch.isfinite(region_points).all():
        raise ValueError("`region_points` contain NaN or inf values.")
    if region_counts is None:
        region_counts = torch.full((batch_size,), region_points.shape[1], device=region_points.device)
    region_counts = region_counts.to(tokens_per_row.device)
    if not torch.equal(region_counts, tokens_per_row):
        raise ValueError(
            f"Each sample needs one region per region token: `region_counts` is {region_counts.tolist()} but the "
            f"text holds {tokens_per_row.tolist()} region tokens per sample."
        )
    if int(region_counts.max()) > region_points.shape[1]:
        raise ValueError(
            f"`region_points` holds {region_points.shape[1]} region slots per sample but `region_counts` is "
            f"{region_counts.tolist()}."
        )
    if (region_counts[~image_rows] > 0).any():
        raise ValueError("Region tokens need an image: a sample with regions has no `<image>` tokens.")
    if int(image_rows.sum()) != num_images:
        raise ValueError(
            f"With regions, every sample holds at most one image: {int(image_rows.sum())} samples have image "
            f"tokens but `pixel_values` holds {num_images} images."
        )
