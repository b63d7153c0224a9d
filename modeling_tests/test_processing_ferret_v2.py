"""Ferret-v2 preprocessing: grid choice, tiles, and processor token counts that equal the model's."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_ferret_v2_config
from transformers.image_processing_utils import select_best_resolution

from transformers_ferret import FerretForConditionalGeneration, FerretImageProcessorPil, FerretProcessor
from transformers_ferret.configuration_ferret import FERRET_V2_GRIDS
from transformers_ferret.conversion import convert_original_tokenizer

TILE = 28


@pytest.fixture(scope="module")
def processor(parity_dir):
    config = tiny_ferret_v2_config()
    image_processor = FerretImageProcessorPil(
        size={"height": TILE, "width": TILE}, image_grid_pinpoints=config.image_grid_pinpoints, tile_size=TILE
    )
    tokenizer = convert_original_tokenizer(parity_dir / "ferret_tiny")
    return FerretProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14, tile_patch_size=14,
                           num_region_points=16)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = tiny_ferret_v2_config(
        text_config={"model_type": "llama", "vocab_size": 502, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},  # fmt: skip
        image_token_index=501, region_token_index=500,
    )
    return FerretForConditionalGeneration(config).eval()


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


GRID_SIZES = [(rows * TILE, cols * TILE) for rows, cols in FERRET_V2_GRIDS]
EXTREME_SIZES = [(20, 120), (120, 20), (20, 20), (300, 4000), (4000, 300), (61, 1000)]


@pytest.mark.parametrize("size", GRID_SIZES + EXTREME_SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_grid_choice_token_count_forward_and_generate(processor, model, size):
    image = _image(*size)
    pinpoints = processor.image_processor.image_grid_pinpoints
    best = select_best_resolution(size, [tuple(p) for p in pinpoints])
    expected_grid = (best[0] // TILE, best[1] // TILE)
    if size in GRID_SIZES:
        assert expected_grid == (size[0] // TILE, size[1] // TILE)
    point, box = (size[1] // 2, size[0] // 2), (0, 0, size[1] // 3, size[0] // 3)
    inputs = processor(images=image, text="<image>\nWhat are <region> and <region>?", regions=[point, box],
                       return_tensors="pt")  # fmt: skip
    assert inputs["image_grids"].tolist() == [list(expected_grid)]
    assert inputs["image_sizes"].tolist() == [list(size)]
    rows, cols = expected_grid
    tiles = inputs["pixel_values_tiles"][0]
    assert tiles[: rows * cols].abs().sum(dim=(1, 2, 3)).min() > 0 and tiles[rows * cols :].abs().sum() == 0
    num_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], inputs["pixel_values_tiles"], inputs["image_grids"]
        ).pooler_output
    assert num_tokens == len(features[0])
    assert num_tokens == 4 + rows * cols * 4
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["pixel_values_tiles"], inputs["image_grids"])
        assert features.pooler_output[0].shape[0] == num_tokens
        output = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 2


def test_tiles_are_the_stretched_image_cut_row_major(processor):
    image = _image(2 * TILE, 3 * TILE, seed=1)  # exactly the 2 x 3 pinpoint: no resampling of the tiles
    inputs = processor.image_processor(image, return_tensors="np")
    mean = np.array(processor.image_processor.tile_image_mean).reshape(3, 1, 1)
    std = np.array(processor.image_processor.tile_image_std).reshape(3, 1, 1)
    pixels = np.asarray(image).transpose(2, 0, 1) / 255.0
    for index in range(6):
        row, col = divmod(index, 3)
        expected = (pixels[:, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE] - mean) / std
        np.testing.assert_allclose(inputs["pixel_values_tiles"][0, index], expected, atol=1e-5)


def test_any_resolution_processor_round_trips(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = FerretProcessor.from_pretrained(tmp_path)
    assert reloaded.tile_patch_size == 14
    assert reloaded.image_processor.image_grid_pinpoints == processor.image_processor.image_grid_pinpoints
    image = _image(50, 200)
    text = "<image>\nWhere is <region>?"
    first = processor(images=image, text=text, regions=[(10, 10)], return_tensors="pt")
    second = reloaded(images=image, text=text, regions=[(10, 10)], return_tensors="pt")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
