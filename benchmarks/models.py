"""Randomly initialised models of matching shapes and synthetic inputs for `benchmarks/run.py`.

Ferret and its references (Llama, LLaVA-1.5, LLaVA-NeXT) are built from the same `Shape`: the same CLIP vision
tower, the same Llama language model, the same vocabulary and the same number of image tokens, so a difference in
time is a difference in what the models do, not in how large they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

from transformers_ferret import FerretConfig, FerretForConditionalGeneration


PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Shape:
    """Sizes of a benchmark model (vision tower, language model, region sampler)."""

    vision_hidden: int = 384
    vision_layers: int = 6
    image_size: int = 336
    patch_size: int = 14
    text_hidden: int = 768
    text_layers: int = 12
    text_intermediate: int = 2048
    vocab_size: int = 32002
    sampler_points: int = 512
    sampler_sub_points: tuple[int, ...] = (128, 32)
    sampler_neighbors: tuple[int, ...] = (24, 24)
    grids: tuple[tuple[int, int], ...] = field(default=((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2), (1, 4), (4, 1),
                                                       (1, 5), (5, 1), (1, 6), (6, 1), (2, 3), (3, 2)))  # fmt: skip

    @property
    def image_token_id(self) -> int:
        return self.vocab_size - 1

    @property
    def region_token_id(self) -> int:
        return self.vocab_size - 2

    @property
    def patches_per_view(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def pinpoints(self) -> list[list[int]]:
        return [[rows * self.image_size, cols * self.image_size] for rows, cols in self.grids]

    def describe(self) -> str:
        return (
            f"CLIP {self.vision_layers}x{self.vision_hidden} @ {self.image_size}px/{self.patch_size} "
            f"({self.patches_per_view} tokens per view), Llama {self.text_layers}x{self.text_hidden} "
            f"(MLP {self.text_intermediate}, vocab {self.vocab_size}), sampler {self.sampler_points} points "
            f"{list(self.sampler_sub_points)}/{list(self.sampler_neighbors)}"
        )


def clip_config(shape: Shape) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers, num_attention_heads=max(1, shape.vision_hidden // 64),
        image_size=shape.image_size, patch_size=shape.patch_size, hidden_act="quick_gelu",
    )  # fmt: skip


def dinov2_config(shape: Shape) -> Dinov2Config:
    """A DINOv2 as wide and deep as the CLIP tower (the image size set to the tile size: no position interpolation)."""
    return Dinov2Config(
        hidden_size=shape.vision_hidden, num_hidden_layers=shape.vision_layers,
        num_attention_heads=max(1, shape.vision_hidden // 64), mlp_ratio=4, image_size=shape.image_size,
        patch_size=shape.patch_size,
    )  # fmt: skip


def llama_config(shape: Shape) -> LlamaConfig:
    heads = max(1, shape.text_hidden // 64)
    return LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=8192, rms_norm_eps=1e-6, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip


def ferret_config(shape: Shape, version: str = "v1", projector_type: str = "mlp2x_gelu") -> FerretConfig:
    """Ferret v1 (`"v1"`), or Ferret-v2 (`"v2"`: a DINOv2 tile encoder as large as CLIP, up to 6 tiles)."""
    kwargs = dict(
        vision_config=clip_config(shape).to_dict(), text_config=llama_config(shape).to_dict(),
        image_token_index=shape.image_token_id, region_token_index=shape.region_token_id,
        projector_type=projector_type, sampler_num_init_points=shape.sampler_points,
        sampler_num_sub_points=list(shape.sampler_sub_points), sampler_num_neighbors=list(shape.sampler_neighbors),
    )  # fmt: skip
    if version == "v2":
        kwargs.update(
            tile_vision_config=dinov2_config(shape).to_dict(), max_num_tiles=6, image_grid_pinpoints=shape.pinpoints
        )
    return FerretConfig(**kwargs)


def llava_config(shape: Shape) -> LlavaConfig:
    return LlavaConfig(
        vision_config=clip_config(shape).to_dict(), text_config=llama_config(shape).to_dict(),
        image_token_index=shape.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_seq_length=shape.patches_per_view,
    )  # fmt: skip


def llava_next_config(shape: Shape) -> LlavaNextConfig:
    return LlavaNextConfig(
        vision_config=clip_config(shape).to_dict(), text_config=llama_config(shape).to_dict(),
        image_token_index=shape.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=shape.pinpoints,
        image_seq_length=shape.patches_per_view,
    )  # fmt: skip


def build(model_class, config, seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    return model_class(config).to(dtype).eval()


def ferret(shape: Shape, version: str = "v1", **kwargs) -> FerretForConditionalGeneration:
    return build(FerretForConditionalGeneration, ferret_config(shape, version, **kwargs))


def llava(shape: Shape) -> LlavaForConditionalGeneration:
    return build(LlavaForConditionalGeneration, llava_config(shape))


def llava_next(shape: Shape) -> LlavaNextForConditionalGeneration:
    return build(LlavaNextForConditionalGeneration, llava_next_config(shape))


def llama_like(model: FerretForConditionalGeneration) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` of Ferret's text config holding Ferret's language-model and head weights."""
    llama = LlamaForCausalLM(model.config.text_config).to(model.dtype).eval()
    llama.model.load_state_dict(model.model.language_model.state_dict())
    llama.lm_head.load_state_dict(model.lm_head.state_dict())
    return llama


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# ---- inputs -------------------------------------------------------------------------------------------------------


def random_region_points(num_images: int, num_regions: int, num_points: int, seed: int = 0) -> torch.Tensor:
    """`[num_images, num_regions, num_points, 2]` points inside random boxes (normalised `(x, y)`, no ties)."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(num_images, num_regions, 1, 2, generator=generator) * 0.6
    size = 0.05 + 0.35 * torch.rand(num_images, num_regions, 1, 2, generator=generator)
    return corner + size * torch.rand(num_images, num_regions, num_points, 2, generator=generator)


def prompt_ids(
    shape: Shape, num_image_tokens: int, num_regions: int, region_token: bool, extra_text: int = 0, seed: int = 0
) -> list[int]:
    """`<s> text <image>*n text (coords region)*R text`; without `region_token` the region slot is a text token."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(3, shape.vocab_size - 2, (64 + 6 * num_regions + extra_text,), generator=generator).tolist()
    ids = [BOS] + text[:16] + [shape.image_token_id] * num_image_tokens + text[16:32]
    for region in range(num_regions):
        start = 32 + 6 * region
        ids += text[start : start + 5] + [shape.region_token_id if region_token else text[start + 5]]
    return ids + text[32 + 6 * num_regions :]


def pixel_values(num_views: int, shape: Shape, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(num_views, 3, shape.image_size, shape.image_size, generator=generator)


def ferret_v1_inputs(shape: Shape, num_regions: int, seed: int = 0) -> dict:
    ids = prompt_ids(shape, shape.patches_per_view, num_regions, region_token=True, seed=seed)
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": pixel_values(1, shape, seed)}  # fmt: skip
    if num_regions:
        inputs["region_points"] = random_region_points(1, num_regions, shape.sampler_points, seed)
        inputs["region_counts"] = torch.tensor([num_regions])
    return inputs


def ferret_v2_inputs(shape: Shape, grid: tuple[int, int], num_regions: int, extra_text: int = 0, seed: int = 0) -> dict:
    """Ferret-v2 inputs for one image cut into `grid` tiles, plus `extra_text` text tokens (to match another length)."""
    num_tiles = grid[0] * grid[1]
    num_image_tokens = shape.patches_per_view * (1 + num_tiles)
    ids = prompt_ids(shape, num_image_tokens, num_regions, region_token=True, extra_text=extra_text, seed=seed)
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": pixel_values(1, shape, seed),
              "pixel_values_tiles": pixel_values(num_tiles, shape, seed + 1).unsqueeze(0),
              "image_grids": torch.tensor([list(grid)])}  # fmt: skip
    if num_regions:
        inputs["region_points"] = random_region_points(1, num_regions, shape.sampler_points, seed)
        inputs["region_counts"] = torch.tensor([num_regions])
    return inputs


def llava_inputs(shape: Shape, num_regions: int, seed: int = 0) -> dict:
    """LLaVA-1.5 inputs of exactly the Ferret v1 prompt's length (region tokens are plain text here)."""
    ids = prompt_ids(shape, shape.patches_per_view, num_regions, region_token=False, seed=seed)
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": pixel_values(1, shape, seed)}  # fmt: skip


def llava_next_image_tokens(model: LlavaNextForConditionalGeneration, shape: Shape, grid: tuple[int, int]) -> int:
    """Image tokens LLaVA-NeXT writes for an image of exactly the grid's aspect (base + tiles + row newlines)."""
    num_tiles = grid[0] * grid[1]
    image_size = torch.tensor([[grid[0] * shape.image_size, grid[1] * shape.image_size]])
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values(1 + num_tiles, shape).unsqueeze(0).to(model.dtype), image_size
        ).pooler_output
    return int(features[0].shape[0])


def llava_next_inputs(
    shape: Shape, grid: tuple[int, int], num_image_tokens: int, num_regions: int, seed: int = 0
) -> dict:
    num_tiles = grid[0] * grid[1]
    ids = prompt_ids(shape, num_image_tokens, num_regions, region_token=False, seed=seed)
    views = torch.cat([pixel_values(1, shape, seed), pixel_values(num_tiles, shape, seed + 1)])
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": views.unsqueeze(0),
            "image_sizes": torch.tensor([[grid[0] * shape.image_size, grid[1] * shape.image_size]])}  # fmt: skip
