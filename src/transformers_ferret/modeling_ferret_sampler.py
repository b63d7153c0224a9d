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

Everything is vectorised over the regions of a chunk: no loop over images, regions or points. Regions go through
the stages in chunks of a bounded size (`FerretRegionSampler.max_chunk_elements`), so memory does not grow with the
number of regions; farthest point sampling iterates over the number of points it keeps. The fusion of a
(kept point, neighbour) pair is linear before its ReLU, so the two linear layers run once per point instead of once
per pair (see `FerretSetAbstraction`). Point sampling is deterministic: farthest point sampling starts at the first
point, and the kNN uses the original code's float32 distance expansion and `torch.topk`, so neighbour ties resolve
as the original's do on the CPU.
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
    """Gathers rows of `values` [R, N, D] at `index` [R, *S] (indices into N) -> [R, *S, D].

    One `index_select` of whole rows from the flattened `[R * N, D]` values: its backward adds whole rows
    (`index_add_`), ~2x faster on the CPU than the element-wise accumulation of advanced indexing's backward."""
    num_sets, num_points = values.shape[:2]
    offsets = torch.arange(num_sets, device=values.device).view(-1, *([1] * (index.dim() - 1))) * num_points
    rows = values.flatten(0, 1).index_select(0, (index + offsets).flatten())
    return rows.view(*index.shape, *values.shape[2:])


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum of each row of `values` [R, N] -> [R]: `argmax` (documented to return the first
    maximum), written out as `amin` over the maxima's indices in a compiled graph, where inductor's `argmax` picked
    other indices than eager (`test_compiled_farthest_point_sampling_keeps_the_eager_picks`)."""
    if not torch.compiler.is_compiling():
        return values.argmax(-1)
    index = torch.arange(values.shape[-1], device=values.device)
    return torch.where(values == values.amax(-1, keepdim=True), index, values.shape[-1]).amin(-1)


def farthest_point_sample(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Farthest point sampling, starting at index 0 of every point set.

    Each step keeps the point whose squared distance to the already kept points is largest, the first such index on
    ties (as the original's `torch.max` does on the CPU; `first_argmax`). Distances are computed in float32.

    Args:
        points: `[R, N, 2]` coordinates.
        num_samples: number of points to keep, `S <= N`.

    Returns:
        `[R, S]` indices into `N`, in sampling order.
    """
    points = points.float()
    num_sets, num_points, _ = points.shape
    min_distance = torch.full((num_sets, num_points), 1e10, device=points.device)
    farthest = torch.zeros(num_sets, dtype=torch.long, device=points.device)
    set_index = torch.arange(num_sets, device=points.device)
    kept = []
    for _ in range(num_samples):
        kept.append(farthest)
        centre = points[set_index, farthest].unsqueeze(1)  # [R, 1, 2]
        min_distance = torch.minimum(min_distance, ((points - centre) ** 2).sum(-1))
        farthest = first_argmax(min_distance)
    return torch.stack(kept, 1)


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

    A point is `x = (f, p)`, its feature and its coordinates (`C + 2` values). For a kept point `x_c` and one of its
    neighbours `x_n` the original computes `h = LayerNorm(ReLU(fusion([neighbor_projection(x_n - x_c), x_c])))` and
    pools `h` over the `K` neighbours (`max` or `mean`). Both layers are linear, so the pre-activation splits into a
    term per point and a term per kept point:

        fusion([neighbor_projection(x_n - x_c), x_c]) = P(x_n) - P(x_c) + A(x_c)
        P(x)   = fusion([neighbor_projection(x), 0])    neighbour term, once per point
        A(x_c) = fusion([neighbor_projection(0), x_c])  the kept point's own pair (zero offset), once per kept point

    (`P(x_n) - P(x_c) = W_a W_d (x_n - x_c)`, the biases cancel; `A(x_c) = W_a b_d + W_b x_c + b_f`, with `W_a`, `W_b`
    the two halves of the fusion weight and `W_d`, `b_d`, `b_f` the other weights.) The layers thus run on `N + S`
    rows instead of `S * K` (about 5x fewer products at the released sizes) and the `[S, K, 2 (C + 2)]` concatenation
    is never built; only the `[S, K, C]` sum, its ReLU, LayerNorm and pooling are per pair. The layers are only ever
    called, their weights never read, so hooks that materialise weights inside a module's call (accelerate's
    offloading) keep working.
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

    def neighbor_terms(self, context: torch.Tensor) -> torch.Tensor:
        """`P(x) = fusion([neighbor_projection(x), 0])` of every point `context` [R, N, C + 2] -> [R, N, C]."""
        return self.fusion(torch.cat([self.neighbor_projection(context), torch.zeros_like(context)], -1))

    def centre_terms(self, centre_context: torch.Tensor) -> torch.Tensor:
        """`A(x_c) = fusion([neighbor_projection(0), x_c])` of the kept points [R, S, C + 2] -> [R, S, C]."""
        zero_offset = self.neighbor_projection(centre_context.new_zeros(1, 1, centre_context.shape[-1]))
        return self.fusion(torch.cat([zero_offset.expand_as(centre_context), centre_context], -1))

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
        neighbors = knn_indices(centre_points, points, self.num_neighbors)  # [R, S, K]

        context = torch.cat([features, points.to(features.dtype)], -1)  # [R, N, C + 2]
        neighbor_terms = self.neighbor_terms(context)  # [R, N, C]
        centre_terms = self.centre_terms(gather_points(context, kept)) - gather_points(neighbor_terms, kept)
        hidden = gather_points(neighbor_terms, neighbors) + centre_terms.unsqueeze(2)  # [R, S, K, C]
        hidden = self.norm(F.relu(hidden))
        return centre_points, self.pool(hidden)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pools `[R, S, K, C]` over the `K` neighbours -> `[R, S, C]`. Max pooling is the original's
        `AdaptiveMaxPool1d(1)` over `K`: its backward sends each gradient to one maximum (as the original's does on
        ties) and costs a third of `amax`'s, which compares, counts and divides over all `K`."""
        if self.pooler_mode == "mean":
            return hidden.mean(dim=2)
        num_sets, num_samples, num_neighbors, channels = hidden.shape
        by_neighbor = hidden.reshape(num_sets * num_samples, num_neighbors, channels).transpose(1, 2)  # [R * S, C, K]
        return F.adaptive_max_pool1d(by_neighbor, 1).view(num_sets, num_samples, channels)


class FerretRegionSampler(nn.Module):
    """Spatial-aware visual sampler: region points + image feature maps -> one `hidden_size` vector per region.

    Parameter count for Ferret-7B (C = 1024, hidden 4096): about 44 M, 33.6 M of them in `flatten_projection`.
    """

    max_chunk_elements = 2**22
    """Regions per chunk are chosen so that a chunk's `[chunk, S, K, C]` work tensors and its copy of the feature maps
    (`[chunk, C, rows, cols]`) stay under this many elements (16 MB in float32), with at least one region per chunk:
    one region at a time at the released width (C = 1024), every region at once for small models."""

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

    def chunk_size(self, feature_maps: torch.Tensor) -> int:
        """Regions per chunk for maps `[B, C, rows, cols]` (see `max_chunk_elements`)."""
        channels, rows, cols = feature_maps.shape[1:]
        pairs = max(layer.num_samples * layer.num_neighbors for layer in self.layers)
        return max(1, self.max_chunk_elements // (max(pairs, rows * cols) * channels))

    def encode_regions(
        self,
        feature_maps: torch.Tensor,
        points: torch.Tensor,
        image_index: torch.Tensor,
        map_extent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            feature_maps: `[B, C, rows, cols]` feature map of each image.
            points: `[k, N, 2]` normalised `(x, y)` points of `k` regions.
            image_index: `[k]` the image each region belongs to.
            map_extent: `[B, 2]` optional real fraction of each padded map (see `sample_point_features`).

        Returns:
            `[k, hidden_size]` region features.
        """
        extent = None if map_extent is None else map_extent[image_index]
        features = sample_point_features(feature_maps[image_index], points, self.transposed_read, extent)
        features = features.to(self.flatten_projection.weight.dtype)  # [k, N, C]
        points = points.float()
        for layer in self.layers:
            points, features = layer(points, features)
        return self.output_projection(self.flatten_projection(features.flatten(1)))

    def forward(
        self,
        feature_maps: torch.Tensor,
        region_points: torch.Tensor,
        image_index: torch.Tensor | None = None,
        map_extent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            feature_maps: `[num_images, C, rows, cols]` feature map of each image.
            region_points: `[B, R, N, 2]` normalised `(x, y)` points of `R` region slots per row.
            image_index: `[B]` the image whose map row `b`'s regions read (default: row `b` reads image `b`).
            map_extent: `[num_images, 2]` optional `(cols, rows)` fraction of each padded map that is real (see
                `sample_point_features`).

        Returns:
            `[B, R, hidden_size]`: one feature per slot. Every slot is encoded, so shapes follow the inputs' shapes
            only (the caller ignores padding slots).
        """
        num_rows, num_slots = region_points.shape[:2]
        if image_index is None:
            image_index = torch.arange(num_rows, device=region_points.device)
        points = region_points.flatten(0, 1)  # [B * R, N, 2], row-major
        images = image_index.repeat_interleave(num_slots)
        chunk = self.chunk_size(feature_maps)
        outputs = [
            self.encode_regions(feature_maps, chunk_points, chunk_images, map_extent)
            for chunk_points, chunk_images in zip(points.split(chunk), images.split(chunk))
        ]
        return torch.cat(outputs).unflatten(0, (num_rows, num_slots))


__all__ = ["FerretRegionSampler"]
