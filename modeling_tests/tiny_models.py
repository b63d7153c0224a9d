"""Tiny random Ferret models and inputs for offline tests (no download, a few hundred kB of weights)."""

from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from transformers_ferret import FerretConfig, FerretForConditionalGeneration

VOCAB_SIZE = 64
IMAGE_TOKEN_ID = 63
REGION_TOKEN_ID = 62
PAD_TOKEN_ID = 0
IMAGE_SIZE = 28
PATCH_SIZE = 14
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
NUM_POINTS = 16
# Outputs of Apple's original Ferret code on a tiny original-format checkpoint (see its README.md and generate.py).
ORIGINAL_FERRET_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "original_ferret"


def tiny_ferret_config(**overrides) -> FerretConfig:
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=16, intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD_TOKEN_ID, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    kwargs = dict(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_TOKEN_ID,
        region_token_index=REGION_TOKEN_ID, sampler_num_init_points=NUM_POINTS, sampler_num_sub_points=[8, 4],
        sampler_num_neighbors=[4, 4],
    )  # fmt: skip
    kwargs.update(overrides)
    return FerretConfig(**kwargs)


def tiny_ferret_model(seed: int = 0, **overrides) -> FerretForConditionalGeneration:
    torch.manual_seed(seed)
    return FerretForConditionalGeneration(tiny_ferret_config(**overrides)).eval()


def prompt_ids(num_regions: int, text_len: int = 6, seed: int = 0) -> list[int]:
    """`<s> text <image>*n text (region)*num_regions text` with text ids in [3, 60)."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 60, (3 * text_len,), generator=generator).tolist()
    ids = [1] + text[:text_len] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + text[text_len : 2 * text_len]
    for region in range(num_regions):
        ids += [text[2 * text_len + region], REGION_TOKEN_ID]
    return ids + text[-2:]


def random_region_points(num_regions: int, seed: int = 0) -> torch.Tensor:
    """`[num_regions, NUM_POINTS, 2]` points inside random boxes, normalised to [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(num_regions, 1, 2, generator=generator) * 0.5
    size = 0.1 + torch.rand(num_regions, 1, 2, generator=generator) * 0.4
    return corner + size * torch.rand(num_regions, NUM_POINTS, 2, generator=generator)


def make_sample(num_regions: int, seed: int = 0, text_len: int = 6) -> dict:
    """One sample: prompt ids with `num_regions` region tokens, its region points and a random image."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return {
        "ids": prompt_ids(num_regions, text_len, seed),
        "points": random_region_points(num_regions, seed),
        "pixels": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
    }


def batch_inputs(samples: list[dict], padding_side: str = "left") -> dict:
    """Pads samples from `make_sample` into model inputs (one image per sample, regions batch-first)."""
    length = max(len(sample["ids"]) for sample in samples)
    max_regions = max(max(sample["points"].shape[0] for sample in samples), 1)
    input_ids = torch.full((len(samples), length), PAD_TOKEN_ID)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
    region_points = torch.zeros(len(samples), max_regions, NUM_POINTS, 2)
    for row, sample in enumerate(samples):
        ids, points = sample["ids"], sample["points"]
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids)
        attention_mask[row, span] = 1
        region_points[row, : points.shape[0]] = points
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack([sample["pixels"] for sample in samples]),
        "region_points": region_points,
        "region_counts": torch.tensor([sample["points"].shape[0] for sample in samples]),
    }


# ---- Ferret-v2 (any resolution): tiny CLIP global encoder + tiny DINOv2 tile encoder ---------------------------

TILE_SIDE_PATCHES = IMAGE_SIZE // PATCH_SIZE  # tiles are as large as the global view: 2 x 2 patches
MAX_TILES = 6


def tiny_ferret_v2_config(**overrides) -> FerretConfig:
    from transformers import Dinov2Config

    tile = Dinov2Config(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2,
    )  # fmt: skip
    kwargs = dict(tile_vision_config=tile.to_dict(), projector_type="mlp2x_gelu", max_num_tiles=MAX_TILES)
    kwargs.update(overrides)
    return tiny_ferret_config(**kwargs)


def tiny_ferret_v2_model(seed: int = 0, **overrides) -> FerretForConditionalGeneration:
    torch.manual_seed(seed)
    return FerretForConditionalGeneration(tiny_ferret_v2_config(**overrides)).eval()


def num_v2_image_tokens(grid: tuple[int, int]) -> int:
    return NUM_IMAGE_TOKENS + grid[0] * grid[1] * TILE_SIDE_PATCHES**2


def make_v2_sample(grid: tuple[int, int], num_regions: int, seed: int = 0, text_len: int = 6) -> dict:
    """A Ferret-v2 sample: global + tile image tokens for `grid`, regions, a global view and its tiles."""
    sample = make_sample(num_regions, seed, text_len)
    image_start = sample["ids"].index(IMAGE_TOKEN_ID)
    sample["ids"][image_start : image_start + NUM_IMAGE_TOKENS] = [IMAGE_TOKEN_ID] * num_v2_image_tokens(grid)
    generator = torch.Generator().manual_seed(2000 + seed)
    sample["tiles"] = torch.randn(grid[0] * grid[1], 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    sample["grid"] = grid
    return sample


def batch_v2_inputs(samples: list[dict], padding_side: str = "left") -> dict:
    inputs = batch_inputs(samples, padding_side)
    tiles = torch.zeros(len(samples), MAX_TILES, 3, IMAGE_SIZE, IMAGE_SIZE)
    for row, sample in enumerate(samples):
        tiles[row, : len(sample["tiles"])] = sample["tiles"]
    inputs["pixel_values_tiles"] = tiles
    inputs["image_grids"] = torch.tensor([sample["grid"] for sample in samples])
    return inputs


def tiny_processor(parity_dir, num_region_points: int = NUM_POINTS, image_size: int = IMAGE_SIZE):
    """A FerretProcessor for the tiny models: the parity fixture's converted tokenizer (`<image>` = 501,
    `<region_fea>` = 500), a `image_size`-pixel stretch image processor, patch 14."""
    from transformers_ferret import FerretImageProcessorPil, FerretProcessor
    from transformers_ferret.conversion import convert_original_tokenizer

    return FerretProcessor(
        image_processor=FerretImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=convert_original_tokenizer(parity_dir / "ferret_tiny"), patch_size=PATCH_SIZE,
        num_region_points=num_region_points,
    )  # fmt: skip
