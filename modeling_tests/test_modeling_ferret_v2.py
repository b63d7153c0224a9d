"""Ferret-v2: any-resolution tiles (DINOv2) + global view (CLIP) in the same Ferret classes."""

import pytest
import torch
from tiny_models import (
    IMAGE_TOKEN_ID,
    TILE_SIDE_PATCHES,
    batch_v2_inputs,
    make_v2_sample,
    num_v2_image_tokens,
    tiny_ferret_config,
    tiny_ferret_v2_config,
    tiny_ferret_v2_model,
)

from transformers_ferret.configuration_ferret import FERRET_V2_GRIDS
from transformers_ferret.modeling_ferret_anyres import merge_tiles, merged_map_extent, upsample_global_maps
from transformers_ferret.modeling_ferret_sampler import sample_point_features


@pytest.fixture(scope="module")
def model():
    return tiny_ferret_v2_model()


def test_default_grids_are_the_papers_fourteen():
    expected = {(1, n) for n in range(1, 7)} | {(n, 1) for n in range(1, 7)} | {(2, 2), (2, 3), (3, 2)}
    assert set(FERRET_V2_GRIDS) == expected and len(FERRET_V2_GRIDS) == 14
    config = tiny_ferret_v2_config()
    assert sorted(config.image_grids) == sorted(expected)


@pytest.mark.parametrize("grid", FERRET_V2_GRIDS, ids=lambda grid: f"{grid[0]}x{grid[1]}")
def test_every_grid_gives_the_announced_token_count_and_generates(model, grid):
    inputs = batch_v2_inputs([make_v2_sample(grid, 1, seed=grid[0] * 7 + grid[1])])
    encoding = model.get_image_features(inputs["pixel_values"], inputs["pixel_values_tiles"], inputs["image_grids"])
    assert [len(features) for features in encoding.pooler_output] == [num_v2_image_tokens(grid)]
    assert encoding.region_maps.shape[-2:] == (grid[0] * TILE_SIDE_PATCHES, grid[1] * TILE_SIDE_PATCHES)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def test_image_tokens_are_global_then_merged_tiles_row_by_row(model):
    grid = (2, 3)
    inputs = batch_v2_inputs([make_v2_sample(grid, 0, seed=1)])
    inner = model.model
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["pixel_values_tiles"], inputs["image_grids"])
        sequence = features.pooler_output[0]
        global_part = inner.multi_modal_projector(inner.get_vision_features(inputs["pixel_values"]))[0]
        tiles = inner.tile_projector(inner.get_tile_features(inputs["pixel_values_tiles"], inputs["image_grids"]))
    torch.testing.assert_close(sequence[: len(global_part)], global_part)
    t = TILE_SIDE_PATCHES
    local = sequence[len(global_part) :].view(grid[0] * t, grid[1] * t, -1)
    for tile_index in range(6):
        row, col = divmod(tile_index, grid[1])
        block = local[row * t : (row + 1) * t, col * t : (col + 1) * t]
        torch.testing.assert_close(block.reshape(t * t, -1), tiles[tile_index])


def _constant_tile_features(grids: torch.Tensor, side: int) -> torch.Tensor:
    """Tile features whose single channel holds `100 * image + tile index`, for every patch of the tile."""
    values = torch.cat([100 * image + torch.arange(int(rows * cols)) for image, (rows, cols) in enumerate(grids.tolist())])
    return values.float().view(-1, 1, 1).expand(-1, side * side, 1).contiguous()


@pytest.mark.parametrize("transposed_read", [False, True])
def test_region_inside_a_tile_reads_that_tiles_location_in_the_fused_map(transposed_read):
    side = 4
    grids = torch.tensor([[1, 1], [2, 3]])  # two images with different grids in one padded batch
    merged, valid = merge_tiles(_constant_tile_features(grids, side), grids, side)
    assert merged.shape[1:3] == (2 * side, 3 * side) and valid[0].sum() == side * side
    maps = merged.permute(0, 3, 1, 2)
    # image 0: the centre of its only tile; image 1 (2 x 3 tiles, 8 x 12 cells): the point x = 0.9, y = 0.2
    points = torch.tensor([[[0.5, 0.5]], [[0.9, 0.2]]])
    read = sample_point_features(maps, points, transposed_read, merged_map_extent(grids, side))
    # bilinear corners: row 0.2 * 7 = 1.4 and column 0.9 * 11 = 9.9 lie in tile (0, 2) -> index 2;
    # transposed (the original's x -> row, y -> column): row 0.9 * 7 = 6.3, column 0.2 * 11 = 2.2 -> tile (1, 0)
    expected_tile = 3 if transposed_read else 2
    assert read.flatten().tolist() == [0.0, 100.0 + expected_tile]


def test_upsampled_global_map_matches_interpolate_per_image():
    grids = torch.tensor([[1, 2], [3, 1], [1, 2]])
    maps = torch.randn(3, 5, 2, 2)
    for mode in ("bilinear", "nearest"):
        upsampled = upsample_global_maps(maps, grids, 2, mode)
        for image, (rows, cols) in enumerate(grids.tolist()):
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            expected = torch.nn.functional.interpolate(maps[image : image + 1], size=(2 * rows, 2 * cols), mode=mode, **kwargs)
            torch.testing.assert_close(upsampled[image, : 2 * rows, : 2 * cols], expected[0].permute(1, 2, 0))
            assert upsampled[image, 2 * rows :].abs().sum() == 0 and upsampled[image, :, 2 * cols :].abs().sum() == 0


def test_batch_with_different_grids_left_padded_equals_single_samples(model):
    samples = [make_v2_sample((1, 1), 1, seed=3), make_v2_sample((2, 3), 2, seed=4), make_v2_sample((6, 1), 0, seed=5)]
    batch = batch_v2_inputs(samples)
    with torch.no_grad():
        batched = model(**batch)
    for row, sample in enumerate(samples):
        with torch.no_grad():
            single = model(**batch_v2_inputs([sample]))
        torch.testing.assert_close(batched.logits[row, -len(sample["ids"]) :], single.logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("source", ["vision", "projected"])
def test_gradients_reach_both_projectors_sampler_and_both_encoders(source):
    model = tiny_ferret_v2_model(seed=1, region_feature_source=source).train()
    inputs = batch_v2_inputs([make_v2_sample((2, 2), 2, seed=6)])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN_ID, -100)
    model(**inputs, labels=labels).loss.backward()
    for name in ("multi_modal_projector.linear_2.weight", "tile_projector.linear_2.weight",
                 "region_sampler.layers.1.fusion.weight", "region_sampler.output_projection.weight",
                 "vision_tower.encoder.layers.0.mlp.fc1.weight", "tile_vision_tower.encoder.layer.0.mlp.fc1.weight"):  # fmt: skip
        gradient = model.model.get_parameter(name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name


def test_region_feature_source_projected_samples_language_width_features():
    model = tiny_ferret_v2_model(region_feature_source="projected")
    assert model.model.region_sampler.layers[0].fusion.out_features == model.config.text_config.hidden_size


def test_v1_config_builds_no_tile_encoder():
    from transformers_ferret import FerretForConditionalGeneration

    model = FerretForConditionalGeneration(tiny_ferret_config())
    assert not hasattr(model.model, "tile_vision_tower") and not model.config.is_any_resolution


def test_v2_without_tiles_reads_the_global_view_only(model):
    """Ferret-v2 stage I trains the CLIP path alone: no tiles, global tokens only; tile tokens without tiles raise."""
    from tiny_models import NUM_IMAGE_TOKENS, batch_inputs, make_sample

    global_only = batch_inputs([make_sample(1, seed=7)])
    with torch.no_grad():
        output = model(**global_only)
    assert output.image_hidden_states.shape[0] == NUM_IMAGE_TOKENS and torch.isfinite(output.logits).all()
    assert [len(features) for features in output.image_outputs.pooler_output] == [NUM_IMAGE_TOKENS]  # no tile tokens
    with_tile_tokens = batch_v2_inputs([make_v2_sample((1, 2), 0, seed=7)])
    del with_tile_tokens["pixel_values_tiles"]
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**with_tile_tokens)


def test_bad_any_resolution_configs_raise():
    with pytest.raises(ValueError, match="more tiles than `max_num_tiles=4`"):
        tiny_ferret_v2_config(max_num_tiles=4)
    with pytest.raises(ValueError, match="not a positive multiple of the tile size"):
        tiny_ferret_v2_config(image_grid_pinpoints=[[28, 30]])
    with pytest.raises(ValueError, match="tile_feature_adapter"):
        tiny_ferret_v2_config(tile_vision_config={"model_type": "dinov2", "hidden_size": 24, "num_attention_heads": 2,
                                                  "patch_size": 14, "image_size": 28, "num_hidden_layers": 1})  # fmt: skip
    adapted = tiny_ferret_v2_model(
        tile_feature_adapter=True,
        tile_vision_config={"model_type": "dinov2", "hidden_size": 24, "num_attention_heads": 2, "patch_size": 14,
                            "image_size": 28, "num_hidden_layers": 1, "intermediate_size": 32},  # fmt: skip
    )
    inputs = batch_v2_inputs([make_v2_sample((1, 3), 1, seed=8)])
    with torch.no_grad():
        assert torch.isfinite(adapted(**inputs).logits).all()


def test_ferret_ui_layout_reads_tiles_with_the_global_encoder_and_projector():
    """Pinpoints without a tile encoder: tiles share CLIP and its projector (Ferret-UI), nearest upsampling."""
    from tiny_models import IMAGE_SIZE, tiny_ferret_model

    pinpoints = [[IMAGE_SIZE * rows, IMAGE_SIZE * cols] for rows, cols in [(1, 2), (2, 1), (2, 2), (1, 3), (3, 1)]]
    model = tiny_ferret_model(image_grid_pinpoints=pinpoints, global_upsample_mode="nearest", sampler_transposed_read=True)
    assert model.config.is_any_resolution and not hasattr(model.model, "tile_vision_tower")
    assert not hasattr(model.model, "tile_projector")
    inputs = batch_v2_inputs([make_v2_sample((1, 3), 2, seed=9)])
    with torch.no_grad():
        output = model(**inputs)
        tiles = inputs["pixel_values_tiles"][0, :3]
        expected_tile_tokens = model.model.multi_modal_projector(model.model.get_vision_features(tiles))
    image_positions = (inputs["input_ids"][0] == IMAGE_TOKEN_ID).nonzero().squeeze(-1)
    assert len(image_positions) == num_v2_image_tokens((1, 3)) and torch.isfinite(output.logits).all()
    # the first row of the merged 2 x 6 map holds the first patch row of tiles 0, 1, 2
    first_row = output.image_hidden_states[4 : 4 + 6]
    torch.testing.assert_close(first_row, expected_tile_tokens[:, :2].flatten(0, 1))


def test_tile_projector_initialised_from_global_projector():
    model = tiny_ferret_v2_model(seed=4)
    model.model.init_tile_projector_from_global()
    for name, weight in model.model.tile_projector.state_dict().items():
        assert torch.equal(weight, model.model.multi_modal_projector.state_dict()[name])
