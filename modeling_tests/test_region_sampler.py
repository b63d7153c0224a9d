"""The region sampler's folded, chunked computation against the plain per-pair formula of the original code, and its
functions in half precision (see docs/robustness.md)."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from transformers_ferret import FerretConfig
from transformers_ferret.modeling_ferret_sampler import (
    FerretRegionSampler,
    farthest_point_sample,
    gather_points,
    knn_indices,
    sample_point_features,
    square_distance,
)


def _sampler(pooler_mode: str = "max", channels: int = 24, seed: int = 0, **overrides) -> FerretRegionSampler:
    config = FerretConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": channels, "num_attention_heads": 1},
        text_config={"model_type": "llama", "hidden_size": 20, "num_attention_heads": 1, "vocab_size": 64},
        sampler_num_init_points=48, sampler_num_sub_points=[16, 6], sampler_num_neighbors=[5, 4],
        sampler_pooler_mode=pooler_mode, sampler_transposed_read=True, **overrides,
    )  # fmt: skip
    torch.manual_seed(seed)
    sampler = FerretRegionSampler(config)
    for parameter in sampler.parameters():  # non-zero biases and LayerNorm weights: every term of the fold counts
        torch.nn.init.normal_(parameter, std=0.3)
    return sampler.eval()


def _inputs(seed: int = 1):
    """3 images with 3, 0 and 4 regions (slots padded to 4), maps of different real extents."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(3, 24, 7, 9, generator=generator)
    points = torch.rand(3, 4, 48, 2, generator=generator)
    valid = torch.tensor([[True, True, True, False], [False] * 4, [True] * 4])
    extent = torch.tensor([[1.0, 1.0], [0.5, 0.75], [0.8, 0.6]])
    return maps, points, valid, extent


def _reference_stage(layer, points, features):
    """One stage as the original code writes it: the `[R, S, K, 2 (C + 2)]` pair tensor through both layers."""
    kept = farthest_point_sample(points, layer.num_samples)
    centres = gather_points(points, kept)
    neighbours = knn_indices(centres, points, layer.num_neighbors)
    local = torch.cat([gather_points(features, neighbours), gather_points(points, neighbours)], -1)
    anchor = torch.cat([gather_points(features, kept), centres], -1).unsqueeze(2)
    offsets = F.linear(local - anchor, layer.neighbor_projection.weight, layer.neighbor_projection.bias)
    pairs = torch.cat([offsets, anchor.expand_as(offsets)], -1)
    hidden = layer.norm(F.relu(F.linear(pairs, layer.fusion.weight, layer.fusion.bias)))
    return centres, hidden.amax(2) if layer.pooler_mode == "max" else hidden.mean(2)


def _reference_sampler(sampler, maps, points, valid, extent):
    """All valid regions at once (no chunks), per-pair fusion."""
    features = sample_point_features(maps, points.flatten(1, 2), sampler.transposed_read, extent)
    features = features.unflatten(1, points.shape[1:3])[valid]
    region_points = points[valid]
    for layer in sampler.layers:
        region_points, features = _reference_stage(layer, region_points, features)
    return sampler.output_projection(sampler.flatten_projection(features.flatten(1)))


@pytest.mark.parametrize("pooler_mode", ["max", "mean"])
def test_folded_fusion_equals_the_per_pair_formula_for_each_stage(pooler_mode):
    sampler = _sampler(pooler_mode)
    points = torch.rand(5, 48, 2, generator=torch.Generator().manual_seed(2))
    features = torch.randn(5, 48, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for layer in sampler.layers:
            centres, pooled = layer(points, features)
            expected_centres, expected = _reference_stage(layer, points, features)
            assert torch.equal(centres, expected_centres)
            torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
            points, features = centres, pooled


@pytest.mark.parametrize("pooler_mode", ["max", "mean"])
def test_chunked_sampler_equals_the_unchunked_per_pair_reference_across_images(pooler_mode):
    sampler = _sampler(pooler_mode)
    maps, points, valid, extent = _inputs()
    assert sampler.chunk_size(maps) >= valid.numel()  # tiny sizes: all 12 slots in one chunk by default
    with torch.no_grad():
        expected = _reference_sampler(sampler, maps, points, valid, extent)
        whole = sampler(maps, points, map_extent=extent)
        for budget in (1, 5 * 16 * 5 * 24):  # one slot per chunk; five slots per chunk (the last chunk has two)
            sampler.max_chunk_elements = budget
            chunked = sampler(maps, points, map_extent=extent)
            torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)  # matmul blocking differs
    assert whole.shape == (3, 4, 20)  # every slot, padding included
    torch.testing.assert_close(whole[valid], expected, rtol=1e-5, atol=1e-5)


def test_chunked_sampler_gradients_equal_the_reference_gradients():
    sampler = _sampler()
    sampler.max_chunk_elements = 1
    maps, points, valid, extent = _inputs()
    maps.requires_grad_(True)
    inputs = [maps, *sampler.parameters()]
    ours = torch.autograd.grad(sampler(maps, points, map_extent=extent)[valid].square().sum(), inputs)
    expected = torch.autograd.grad(_reference_sampler(sampler, maps, points, valid, extent).square().sum(), inputs)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_chunk_size_bounds_the_work_tensor_and_the_map_copy():
    sampler = _sampler()
    budget = sampler.max_chunk_elements
    assert sampler.chunk_size(torch.zeros(1, 24, 7, 9)) == budget // (16 * 5 * 24)  # [chunk, S, K, C] dominates
    assert sampler.chunk_size(torch.zeros(1, 24, 100, 100)) == budget // (100 * 100 * 24)  # the map copy dominates
    assert sampler.chunk_size(torch.zeros(1, 24, 2000, 2000)) == 1  # at least one region


def test_no_region_slot_gives_an_empty_result_in_the_output_width():
    sampler = _sampler()
    maps, points, _, extent = _inputs()
    output = sampler(maps, points[:, :0], map_extent=extent)
    assert output.shape == (3, 0, 20)


def test_rows_read_the_image_their_image_index_names():
    """Row `b` of `region_points` reads the map `image_index[b]`: rows given in another order, or two rows reading one
    image, get exactly the features their points get on that image."""
    sampler = _sampler()
    maps, points, _, extent = _inputs()
    with torch.no_grad():
        reference = sampler(maps, points, map_extent=extent)
        reordered = sampler(maps, points[[2, 0, 2]], torch.tensor([2, 0, 2]), extent)
        other_image = sampler(maps, points[[0]], torch.tensor([1]), extent)
    torch.testing.assert_close(reordered, reference[[2, 0, 2]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(other_image, reference[[0]], atol=1e-3)


def _numpy_farthest_point_picks(cloud: np.ndarray, count: int) -> list[int]:
    """Farthest point sampling from index 0 written with numpy, whose argmax is documented to return the first
    maximum."""
    distance, picks = np.full(len(cloud), 1e10, dtype=np.float32), [0]
    for _ in range(count - 1):
        distance = np.minimum(distance, ((cloud - cloud[picks[-1]]) ** 2).sum(-1))
        picks.append(int(np.argmax(distance)))
    return picks


def test_compiled_farthest_point_sampling_keeps_the_eager_picks():
    """The first farthest index must win in a compiled graph too: with `max(...).indices`, inductor's graph picked other
    points than eager from the 4th pick on (125 of 128 picks differed on two sets of 512 random points, and the
    compiled region features by up to 1.5). Both must also equal the first-index rule written with numpy's argmax
    (documented to return the first maximum)."""
    torch._dynamo.reset()
    points = torch.rand(2, 512, 2, generator=torch.Generator().manual_seed(0))
    eager = farthest_point_sample(points, 128)
    compiled = torch.compile(farthest_point_sample, fullgraph=True, backend="inductor")(points, 128)
    assert torch.equal(compiled, eager)
    for cloud, picks in zip(points.numpy(), eager.tolist()):
        assert picks == _numpy_farthest_point_picks(cloud, 128)


def test_farthest_point_sampling_on_a_mask_lattice_keeps_the_first_of_tied_points():
    """Points of a mask lie on a pixel lattice, where many distances tie: each pick must be the first farthest index,
    as numpy's argmax (documented to return the first maximum) picks."""
    generator = torch.Generator().manual_seed(1)
    points = torch.randint(0, 12, (3, 256, 2), generator=generator).float() / 12  # many repeated points and distances
    picks = farthest_point_sample(points, 64)
    for cloud, kept in zip(points.numpy(), picks.tolist()):
        assert kept == _numpy_farthest_point_picks(cloud, 64)


def test_max_pooling_and_its_gradient_equal_the_originals_adaptive_max_pool_on_tied_neighbours():
    """Max pooling over the neighbours is the original's `AdaptiveMaxPool1d(1)` on `[R * S, C, K]`: equal values, and
    on a tie (a neighbour listed twice, as on small masks) the gradient goes to one of the tied entries, not split."""
    layer = _sampler("max").layers[0]
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 3, 5, 24, generator=generator)
    hidden[:, :, 3] = hidden[:, :, 1]  # neighbour 3 repeats neighbour 1
    hidden[:, :, 1] += 10  # ... and both are the maximum of every channel
    hidden[:, :, 3] += 10
    ours, original = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    pooled = layer.pool(ours)
    reference = torch.nn.AdaptiveMaxPool1d(1)(original.permute(0, 1, 3, 2).reshape(-1, 24, 5)).view(2, 3, 24)
    upstream = torch.randn(2, 3, 24, generator=generator)
    (pooled * upstream).sum().backward()
    (reference * upstream).sum().backward()
    torch.testing.assert_close(pooled, reference, rtol=0, atol=0)
    torch.testing.assert_close(ours.grad, original.grad, rtol=0, atol=0)
    assert torch.count_nonzero(ours.grad, dim=2).max() == 1  # one neighbour per channel, the whole gradient


# --- half precision: distances in float32, finite reads at the borders ---


def test_sampler_distances_are_float32_for_half_inputs_and_do_not_overflow():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(3, 64, 2, generator=generator)
    points[1] = 0.5  # all identical
    points[2, :, 0] = 0.999  # a column at the border
    kept_half = farthest_point_sample(points.half(), 16)
    kept_float = farthest_point_sample(points.half().float(), 16)
    assert torch.equal(kept_half, kept_float)
    distance = square_distance(points.half(), points.half())
    assert distance.dtype == torch.float32 and torch.isfinite(distance).all()
    # far-apart coordinates whose squares overflow fp16 (65504) stay finite: the distance is computed in float32
    far = torch.tensor([[[0.0, 0.0], [300.0, 300.0]]], dtype=torch.float16)
    assert torch.isfinite(square_distance(far, far)).all() and square_distance(far, far).max() == 180000
    neighbors = knn_indices(points[:, :16].half(), points.half(), 4)
    assert neighbors.shape == (3, 16, 4) and (neighbors < 64).all()


def test_bilinear_read_in_half_precision_is_finite_at_the_borders():
    maps = torch.randn(2, 8, 4, 4, dtype=torch.float16) * 1000
    points = torch.tensor([[[0.0, 0.0], [0.9999, 0.9999], [0.5, 0.0]], [[0.0, 0.9999], [0.9999, 0.0], [1.0, 1.0]]])
    for transposed in (False, True):
        features = sample_point_features(maps, points.half(), transposed)
        assert features.dtype == torch.float16 and torch.isfinite(features).all()
