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
"""Ferret-v2 any-resolution packing: tile feature maps merged in their spatial arrangement, global map upsampled.

Images of one batch may use different tile grids. Their merged maps are padded at the bottom/right to the
largest grid of the batch, `[B, max_rows * t, max_cols * t, D]` (t = patches per tile side), with a boolean
`valid` map marking the real cells; every step works on that padded tensor, so nothing loops over images.
"""

import torch
from torch.nn import functional as F


def tile_valid_mask(image_grids: torch.Tensor, max_tiles: int) -> torch.Tensor:
    """`[B, max_tiles]` bool: which tile slots of each image hold a tile (`image_grids` `[B, 2]` = rows, cols)."""
    num_tiles = image_grids.prod(-1)
    return torch.arange(max_tiles, device=image_grids.device).unsqueeze(0) < num_tiles.unsqueeze(1)


def merge_tiles(
    tile_features: torch.Tensor, image_grids: torch.Tensor, tile_side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Places each tile's patch grid at its position in its image's tile grid (tiles in row-major order).

    Args:
        tile_features: `[num_tiles, tile_side * tile_side, D]`, the tiles of all images, image-major, each
            image's tiles in row-major grid order.
        image_grids: `[B, 2]` `(rows, cols)` of each image's tile grid.
        tile_side: patches per tile side `t`.

    Returns:
        merged maps `[B, max_rows * t, max_cols * t, D]` (zeros where padded) and the `[B, max_rows * t,
        max_cols * t]` bool map of real cells.
    """
    rows, cols = image_grids[:, 0], image_grids[:, 1]
    height, width = int(rows.max()) * tile_side, int(cols.max()) * tile_side
    num_tiles = rows * cols
    image_index = torch.repeat_interleave(torch.arange(len(image_grids), device=image_grids.device), num_tiles)
    tile_index = torch.arange(len(image_index), device=image_grids.device) - torch.repeat_interleave(
        num_tiles.cumsum(0) - num_tiles, num_tiles
    )  # position of each tile within its image
    tile_row = (tile_index // cols[image_index]) * tile_side
    tile_col = (tile_index % cols[image_index]) * tile_side
    offsets = torch.arange(tile_side, device=image_grids.device)
    merged = tile_features.new_zeros(len(image_grids), height, width, tile_features.shape[-1])
    merged[
        image_index.view(-1, 1, 1),
        (tile_row.view(-1, 1) + offsets).unsqueeze(-1),
        (tile_col.view(-1, 1) + offsets).unsqueeze(1),
    ] = tile_features.view(-1, tile_side, tile_side, tile_features.shape[-1])
    cell_rows = torch.arange(height, device=image_grids.device).view(1, -1, 1)
    cell_cols = torch.arange(width, device=image_grids.device).view(1, 1, -1)
    valid = (cell_rows < (rows * tile_side).view(-1, 1, 1)) & (cell_cols < (cols * tile_side).view(-1, 1, 1))
    return merged, valid


def upsample_global_maps(global_maps: torch.Tensor, image_grids: torch.Tensor, tile_side: int, mode: str) -> torch.Tensor:
    """Upsamples each image's global map `[B, D, g, g]` to its merged-tile size, padded like `merge_tiles`.

    `F.interpolate` (bilinear with `align_corners=False`, or nearest) runs once per distinct grid in the batch,
    at most the number of configured grids, never once per image.

    Returns:
        `[B, max_rows * t, max_cols * t, D]`.
    """
    height, width = int(image_grids[:, 0].max()) * tile_side, int(image_grids[:, 1].max()) * tile_side
    upsampled = global_maps.new_zeros(global_maps.shape[0], global_maps.shape[1], height, width)
    align = {"align_corners": False} if mode == "bilinear" else {}
    for grid in image_grids.unique(dim=0):
        images = (image_grids == grid).all(-1)
        size = (int(grid[0]) * tile_side, int(grid[1]) * tile_side)
        upsampled[images, :, : size[0], : size[1]] = F.interpolate(global_maps[images], size=size, mode=mode, **align)
    return upsampled.permute(0, 2, 3, 1)


def merged_map_extent(image_grids: torch.Tensor, tile_side: int) -> torch.Tensor:
    """`[B, 2]` `(cols, rows)` fraction of the padded merged map that is real, in `align_corners=True` units."""
    cells = image_grids.flip(-1).float() * tile_side  # (cols, rows) of real cells
    padded = cells.max(0).values
    return ((cells - 1) / (padded - 1).clamp(min=1)).where(padded > 1, torch.ones_like(cells))
