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
"""Ferret's spatial-aware visual sampler: one embedding per referred region.

A region arrives as `N` points sampled inside its mask, normalised to `[0, 1)` as `(x / W, y / H)`.
The sampler

1. reads a feature for every point from the image's feature map by bilinear interpolation,
2. runs set-abstraction stages in the manner of PointNet++: farthest point sampling keeps `S` points,
   each kept point gathers its `K` nearest neighbours, the neighbour-minus-centre differences (features and
   coordinates) are projected, fused with the centre and pooled over the neighbours,
3. flattens the last stage's `S` point features (in sampling order) and projects them to one vector.

Everything is batched over all regions of a batch: no loop over images, regions or points; only farthest
point sampling iterates, over the number of points it keeps. Point sampling is deterministic: farthest
point sampling starts at the first point, and the kNN uses the original code's float32 distance expansion
and `torch.topk`, so neighbour ties resolve as the original's do on the CPU.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_ferret import FerretConfig


def sample_point_features(
    feature_maps: torch.Tensor,
    points: torch.Tensor,
    transposed_read: bool,
    map_extent: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bilinear feature read at normalised points (`align_corners=True`, zeros outside).

    Args:
        feature_maps: `[B, C, rows, cols]`, one map per image.
        points: `[B, P, 2]` normalised `(x, y)` of the points reading each map.
        transposed_read: read at row `x`, column `y` (the original Ferret code's convention) instead of
            row `y`, column `x`.
        map_extent: `[B, 2]` optional `(cols, rows)` fraction of each padded map that holds the image (maps of
            different sizes padded at the bottom/right to one shape); point `1.0` then reads the last real cell.

    Returns:
        `[B, P, C]` point features, in the dtype of `feature_maps`.
    """
    grid_xy = points.flip(-1) if transposed_read else points  # (column, row) coordinates in [0, 1]
    if map_extent is not None:
        grid_xy = grid_xy * map_extent.unsqueeze(1)
    grid = (2 * grid_xy - 1).unsqueeze(2).float()  # [B, P, 1, 2] in [-1, 1]
    sampled = F.grid_sample(feature_maps.float(), grid, mode="bilinear", align_corners=True)  # [B, C, P, 1]
    return sampled.squeeze(-1).transpose(1, 2).to(feature_maps.dtype)


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gathers rows of `values` [R, N, D] at `index` [R, *S] (indices into N) -> [R, *S, D]."""
    batch_index = torch.arange(values.shape[0], device=values.device).view(-1, *([1] * (index.dim() - 1)))
    return values[batch_index, index]


def farthest_point_sample(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Farthest point sampling, starting at index 0 of every point set.

    Each step keeps the point whose squared distance to the already kept points is largest (the first
    such index on ties, as `torch.max`). Distances are computed in float32.

    Args:
        points: `[R, N, 2]` coordinates.
        num_samples: number of points to keep, `S <= N`.

    Returns:
        `[R, S]` indices into `N`, in sampling order.
    """
    points = points.float()
    num_sets, num_points, _ = points.shape
    kept = torch.zeros(num_sets, num_samples, dtype=torch.long, device=points.device)
    min_distance = torch.full((num_sets, num_points), 1e10, device=points.device)
    farthest = torch.zeros(num_sets, dtype=torch.long, device=points.device)
    set_index = torch.arange(num_sets, device=points.device)
    for step in range(num_samples):
        kept[:, step] = farthest
        centre = points[set_index, farthest].unsqueeze(1)  # [R, 1, 2]
        min_distance = torch.minimum(min_distance, ((points - centre) ** 2).sum(-1))
        farthest = min_distance.max(-1).indices
    return kept


def square_distance(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances `[R, S, N]` between `queries` [R, S, 2] and `points` [R, N, 2].

    Uses the expansion `-2 q.p + |q|^2 + |p|^2` in float32 in exactly that order: the neighbour sets of the
    original code (including how ties between equidistant lattice points fall) depend on it.
    """
    queries, points = queries.float(), points.float()
    distance = -2 * torch.matmul(queries, points.transpose(1, 2))
    distance = distance + (queries**2).sum(-1).unsqueeze(-1)
    return distance + (points**2).sum(-1).unsqueeze(-2)


def knn_indices(queries: torch.Tensor, points: torch.Tensor, num_neighbors: int) -> torch.Tensor:
    """Indices `[R, S, K]` of the `K` nearest `points` [R, N, 2] of each query [R, S, 2] (itself included)."""
    distance = square_distance(queries, points)
    return distance.topk(num_neighbors, dim=-1, largest=False, sorted=False).indices


class FerretSetAbstraction(nn.Module):
    """One sampler stage: keep `S` points by farthest point sampling, group `K` neighbours, fuse, pool.

    For a kept point with feature `f_c` at `p_c` and a neighbour `(f_n, p_n)`:
    `h = LayerNorm(ReLU(W_f [W_d((f_n, p_n) - (f_c, p_c)), (f_c, p_c)]))`, then `max` (or `mean`) over the
    `K` neighbours gives the kept point's new feature.
    """

    def __init__(self, feature_dim: int, num_samples: int, num_neighbors: int, pooler_mode: str):
        super().__init__()
        self.num_samples = num_samples
        self.num_neighbors = num_neighbors
        self.pooler_mode = pooler_mode
        point_dim = feature_dim + 2
        self.neighbor_projection = nn.Linear(point_dim, point_dim)
        self.fusion = nn.Linear(2 * point_dim, feature_dim)
        self.norm = nn.LayerNorm(feature_dim)

    def forward(self, points: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            points: `[R, N, 2]` coordinates.
            features: `[R, N, C]` point features.

        Returns:
            the kept points `[R, S, 2]` and their pooled features `[R, S, C]`.
        """
        kept = farthest_point_sample(points, self.num_samples)  # [R, S]
        centre_points = gather_points(points, kept)
        centre_features = gather_points(features, kept)
        neighbors = knn_indices(centre_points, points, self.num_neighbors)  # [R, S, K]

        dtype = features.dtype
        neighbor_context = torch.cat([gather_points(features, neighbors), gather_points(points, neighbors).to(dtype)], -1)
        anchor = torch.cat([centre_features, centre_points.to(dtype)], -1).unsqueeze(2)  # [R, S, 1, C + 2]
        offsets = self.neighbor_projection(neighbor_context - anchor)
        grouped = torch.cat([offsets, anchor.expand_as(offsets)], -1)  # [R, S, K, 2 (C + 2)]
        hidden = self.norm(F.relu(self.fusion(grouped)))
        pooled = hidden.amax(dim=2) if self.pooler_mode == "max" else hidden.mean(dim=2)
        return centre_points, pooled


class FerretRegionSampler(nn.Module):
    """Spatial-aware visual sampler: region points + image feature maps -> one `hidden_size` vector per region.

    Parameter count for Ferret-7B (C = 1024, hidden 4096): about 44 M, 33.6 M of them in `flatten_projection`.
    """

    def __init__(self, config: FerretConfig, feature_dim: int | None = None):
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else config.vision_config.hidden_size
        self.transposed_read = config.sampler_transposed_read
        self.layers = nn.ModuleList(
            FerretSetAbstraction(feature_dim, num_samples, num_neighbors, config.sampler_pooler_mode)
            for num_samples, num_neighbors in zip(config.sampler_num_sub_points, config.sampler_num_neighbors)
        )
        self.flatten_projection = nn.Linear(config.sampler_num_sub_points[-1] * feature_dim, feature_dim)
        self.output_projection = nn.Linear(feature_dim, config.text_config.hidden_size)

    def forward(
        self,
        feature_maps: torch.Tensor,
        region_points: torch.Tensor,
        region_valid: torch.Tensor | None = None,
        map_extent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            feature_maps: `[B, C, rows, cols]` feature map of each image.
            region_points: `[B, R, N, 2]` normalised `(x, y)` points of up to `R` regions per image.
            region_valid: `[B, R]` bool, which of the `R` slots hold a region (default: all). Padding slots are
                dropped after the feature read, before any set-abstraction work.
            map_extent: `[B, 2]` optional `(cols, rows)` fraction of each padded map that is real (see
                `sample_point_features`).

        Returns:
            `[num_valid_regions, hidden_size]` region features, image-major, in slot order.
        """
        batch_size, num_slots, num_points, _ = region_points.shape
        if region_valid is None:
            region_valid = torch.ones(batch_size, num_slots, dtype=torch.bool, device=region_points.device)
        point_features = sample_point_features(
            feature_maps, region_points.reshape(batch_size, num_slots * num_points, 2), self.transposed_read, map_extent
        ).view(batch_size, num_slots, num_points, -1)
        points = region_points[region_valid].float()  # [R, N, 2]
        features = point_features[region_valid].to(self.flatten_projection.weight.dtype)  # [R, N, C]
        for layer in self.layers:
            points, features = layer(points, features)
        return self.output_projection(self.flatten_projection(features.flatten(1)))


__all__ = ["FerretRegionSampler"]
