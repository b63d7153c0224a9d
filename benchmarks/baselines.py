"""Reference implementations the benchmarks compare against, written for the benchmarks only.

`loop_region_sampler` computes exactly what `FerretRegionSampler` computes, with the weights of a given sampler, but
structured as the original Ferret code's `GeoRegionSampler.forward` is (apple/ml-ferret, `ferret/model/ferret_arch.py`):
images one at a time, the image's feature map repeated once per region (`[n_regions, C, H, W]`), one `grid_sample`
over that stack, then farthest point sampling, kNN, grouping, the `Conv1d(kernel 1)` fusion, LayerNorm
and pooling for one region at a time. Nothing is vectorised across regions.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _read_features(feature_map: torch.Tensor, points: torch.Tensor, transposed_read: bool) -> torch.Tensor:
    """`feature_map` [C, H, W] read at `points` [n, N, 2] -> [n, N, C], with the map repeated once per region."""
    num_regions = points.shape[0]
    stacked = feature_map.unsqueeze(0).repeat(num_regions, 1, 1, 1)  # the per-region copy of the original
    grid_xy = points.flip(-1) if transposed_read else points
    grid = (2 * grid_xy - 1).unsqueeze(2).float()  # [n, N, 1, 2]
    sampled = F.grid_sample(stacked.float(), grid, mode="bilinear", align_corners=True)  # [n, C, N, 1]
    return sampled.squeeze(-1).transpose(1, 2)


def _farthest_points(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """FPS on one point set [N, 2], starting at index 0 -> [S] indices."""
    distance = torch.full((points.shape[0],), 1e10)
    chosen = torch.zeros(num_samples, dtype=torch.long)
    current = 0
    for step in range(num_samples):
        chosen[step] = current
        distance = torch.minimum(distance, ((points - points[current]) ** 2).sum(-1))
        current = int(torch.argmax(distance))
    return chosen


def _nearest(queries: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """kNN of one region: `queries` [S, 2], `points` [N, 2] -> [S, k], by the `|q|^2 + |p|^2 - 2 q.p` expansion."""
    distance = -2 * queries @ points.T
    distance = distance + (queries**2).sum(-1, keepdim=True)
    distance = distance + (points**2).sum(-1).unsqueeze(0)
    return distance.topk(k, dim=-1, largest=False, sorted=False).indices


def _set_abstraction_one_region(layer, points: torch.Tensor, features: torch.Tensor):
    """One set-abstraction stage for one region (`points` [N, 2], `features` [N, C]), with `layer`'s weights."""
    kept = _farthest_points(points, layer.num_samples)
    centres, centre_features = points[kept], features[kept]
    neighbours = _nearest(centres, points, layer.num_neighbors)  # [S, k]
    local = torch.cat([features[neighbours], points[neighbours]], -1)  # [S, k, C + 2]
    anchor = torch.cat([centre_features, centres], -1).unsqueeze(1)  # [S, 1, C + 2]
    difference = F.linear(local - anchor, layer.neighbor_projection.weight, layer.neighbor_projection.bias)
    gathered = torch.cat([difference, anchor.expand_as(difference)], -1)  # [S, k, 2 (C + 2)]
    # the original's Conv1d(2 (C + 2) -> C, kernel 1) over [S, channels, k], then ReLU, then LayerNorm over channels
    conv_weight = layer.fusion.weight.unsqueeze(-1)
    hidden = F.relu(F.conv1d(gathered.permute(0, 2, 1), conv_weight, layer.fusion.bias))  # [S, C, k]
    hidden = F.layer_norm(
        hidden.permute(0, 2, 1), layer.norm.normalized_shape, layer.norm.weight, layer.norm.bias, layer.norm.eps
    ).permute(0, 2, 1)
    pooled = hidden.amax(-1) if layer.pooler_mode == "max" else hidden.mean(-1)  # [S, C]
    return centres, pooled


@torch.no_grad()
def loop_region_sampler(sampler, feature_maps: torch.Tensor, points_per_image: list[torch.Tensor]) -> torch.Tensor:
    """
    Per-image, per-region region features with the weights of `sampler` (a `FerretRegionSampler`).

    Args:
        sampler: the module whose weights are used.
        feature_maps: `[B, C, H, W]`.
        points_per_image: per image, `[n_regions, N, 2]` normalised `(x, y)` points.

    Returns:
        `[total_regions, hidden_size]`, image-major.
    """
    outputs = []
    for feature_map, points in zip(feature_maps, points_per_image):
        if points.shape[0] == 0:
            continue
        point_features = _read_features(feature_map, points, sampler.transposed_read)  # [n, N, C]
        for region_points, region_features in zip(points.float(), point_features):
            for layer in sampler.layers:
                region_points, region_features = _set_abstraction_one_region(layer, region_points, region_features)
            flatten = sampler.flatten_projection
            flat = F.linear(region_features.flatten(), flatten.weight, flatten.bias)
            outputs.append(F.linear(flat, sampler.output_projection.weight, sampler.output_projection.bias))
    return torch.stack(outputs)
