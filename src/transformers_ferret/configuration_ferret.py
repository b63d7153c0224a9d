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
"""Ferret model configuration."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


# Ferret-v2's tile grids (rows, cols): 1x1 ... 1x6, 2x2, 2x3 and their transposes.
FERRET_V2_GRIDS = sorted({grid for rows, cols in [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 2), (2, 3)]
                          for grid in ((rows, cols), (cols, rows))})  # fmt: skip


@strict
class FerretConfig(PreTrainedConfig):
    r"""
    Configuration of a Ferret model: a CLIP-style vision tower, a projector from vision features to the
    language model's width, the spatial-aware visual sampler that turns a referred region into one
    embedding, and a causal language model.

    The defaults describe the released Ferret-7B: CLIP ViT-L/14 at 336 px (576 patch tokens of width 1024,
    read at layer -2, CLS dropped), a single linear projector, and a Vicuna-7B-shaped Llama whose vocabulary
    holds the 32000 Vicuna tokens, `<region_fea>` (32000) and `<image>` (32001).

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower (any model `AutoModel` builds whose output has `hidden_states`;
            default CLIP vision ViT-L/14-336).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the causal language model (default Vicuna-7B-shaped Llama).
        image_token_index (`int`): id of the `<image>` token; the processor writes one per image feature.
        region_token_index (`int`): id of the region-feature token `<region_fea>`; its embedding is replaced
            by the sampler's output for the region, in order of appearance.
        vision_feature_layer (`int`): index into the vision tower's `hidden_states` (-2 = second to last).
        vision_feature_select_strategy (`"default"` or `"full"`): `"default"` drops the CLS token.
        projector_type (`"linear"` or `"mlp2x_gelu"`): Ferret v1 uses one linear layer; Ferret-v2 and
            Ferret-UI a two-layer MLP with GELU.
        projector_hidden_act (`str`): activation of the `mlp2x_gelu` projector.
        sampler_num_init_points (`int`): points sampled in each region mask (512).
        sampler_num_sub_points (`list[int]`): points kept by farthest point sampling at each stage ([128, 32]).
        sampler_num_neighbors (`list[int]`): neighbours gathered around each kept point at each stage ([24, 24]).
        sampler_pooler_mode (`"max"` or `"mean"`): pooling over neighbours; released Ferret uses `"max"`.
        sampler_transposed_read (`bool`): reproduce the original code's transposed feature read (a point at
            normalised `(x, y)` reads the feature map at row `x`, column `y`; see
            `docs/design.md`). On for converted Ferret v1 / Ferret-UI checkpoints, off for new models.
        tie_word_embeddings (`bool`): whether `lm_head` shares the input embedding matrix.
        multimodal_embedding_scale (`float`): factor applied to the image and region features written into
            `inputs_embeds` (the text embeddings keep the language model's own scaling). `1.0` writes them as the
            projector and sampler produce them. Language models whose embedding layer scales its output (Gemma:
            `sqrt(hidden_size)`) in transformers 5, but scaled the whole `inputs_embeds` in transformers 4, saw image
            and region features scaled too when trained there: converted Gemma Ferret-UI checkpoints need
            `text_config.hidden_size ** 0.5` (the converter sets it).

    Ferret-v2 (any resolution; all `None`/unused for Ferret v1):
        tile_vision_config (`dict` or `PreTrainedConfig`, *optional*): a separate encoder for the high-resolution
            tiles (DINOv2 in the Ferret-v2 paper), with its own projector. Setting it turns on any-resolution tiling.
        image_grid_pinpoints (`list[list[int]]`): candidate resolutions `[height, width]` in pixels, each a
            multiple of `tile_size`; default with a `tile_vision_config` = the paper's 14 grids (`FERRET_V2_GRIDS`)
            times `tile_size`. Set without a `tile_vision_config` (Ferret-UI), the tiles go through the global
            encoder and projector.
        tile_size (`int`): side of a tile in pixels (default `vision_config.image_size`). A grid of `rows x cols`
            tiles adds `rows * cols * (tile_size // tile_patch_size) ** 2` image tokens after the global ones
            (336 px, patch 14: 576 per tile, so 576 + 576 * tiles in all).
        max_num_tiles (`int`): cap on tiles per image; a pinpoint with more tiles is a configuration error.
        tile_vision_feature_layer (`int`): index into the tile encoder's `hidden_states` (its CLS is dropped).
        tile_projector_type (`"linear"` or `"mlp2x_gelu"`): projector of the tile features (`MLP_l`).
        region_feature_source (`"vision"` or `"projected"`): the sampler reads raw encoder features
            (`"vision"`, as Ferret and Ferret-UI) or projected ones (`"projected"`, the paper's formula).
        tile_feature_adapter (`bool`): under `"vision"`, a linear map from the tile encoder's width to the global
            encoder's, required when the two widths differ.
        global_upsample_mode (`"bilinear"` or `"nearest"`): how the global map is upsampled onto the merged tile
            map before the two are added (Ferret-UI used nearest).
    """

    model_type = "ferret"
    attribute_map = {"image_token_id": "image_token_index", "region_token_id": "region_token_index"}

    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 336,
                "projection_dim": 768,
                "hidden_act": "quick_gelu",
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={"vocab_size": 32002, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6},
        ),
        "tile_vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="dinov2",
            init_kwargs={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14},
            optional=True,
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 32001
    region_token_index: int = 32000
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    projector_type: Literal["linear", "mlp2x_gelu"] = "linear"
    projector_hidden_act: str = "gelu"
    sampler_num_init_points: int = 512
    sampler_num_sub_points: list[int] | tuple[int, ...] = (128, 32)
    sampler_num_neighbors: list[int] | tuple[int, ...] = (24, 24)
    sampler_pooler_mode: Literal["max", "mean"] = "max"
    sampler_transposed_read: bool = False
    tie_word_embeddings: bool = False
    multimodal_embedding_scale: float = 1.0
    tile_vision_config: dict | PreTrainedConfig | None = None
    image_grid_pinpoints: list[list[int]] | None = None
    tile_size: int | None = None
    max_num_tiles: int = 6
    tile_vision_feature_layer: int = -1
    tile_projector_type: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    region_feature_source: Literal["vision", "projected"] = "vision"
    tile_feature_adapter: bool = False
    global_upsample_mode: Literal["bilinear", "nearest"] = "bilinear"

    def __post_init__(self, **kwargs):
        if "mm_vision_tower" in kwargs or "region_geo_sampler" in kwargs:
            raise ValueError(
                "This config.json is in the original apple/ml-ferret layout (it has `mm_vision_tower`); loading it "
                "directly would give random weights. Convert the checkpoint first: "
                "`python conversion/convert_ferret_original.py --model-path DIR --output-dir OUT`."
            )
        super().__post_init__(**kwargs)
        self.sampler_num_sub_points = list(self.sampler_num_sub_points)
        self.sampler_num_neighbors = list(self.sampler_num_neighbors)
        self._check_sampler_stages()
        scale = self.multimodal_embedding_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise ValueError(f"`multimodal_embedding_scale` must be a positive finite number, got {scale!r}.")
        if self.is_any_resolution:
            self.tile_size = self.tile_size or self.vision_config.image_size
            if self.image_grid_pinpoints is None:
                self.image_grid_pinpoints = [[rows * self.tile_size, cols * self.tile_size] for rows, cols in FERRET_V2_GRIDS]
            self.image_grid_pinpoints = [list(pinpoint) for pinpoint in self.image_grid_pinpoints]
            self._check_any_resolution()

    @property
    def is_any_resolution(self) -> bool:
        """Ferret-v2 / Ferret-UI: images are also cut into tiles (a tile encoder or grid pinpoints are configured)."""
        return self.tile_vision_config is not None or self.image_grid_pinpoints is not None

    @property
    def tile_patch_size(self) -> int:
        """Patch size of the encoder that reads the tiles."""
        return (self.tile_vision_config or self.vision_config).patch_size

    @property
    def image_grids(self) -> list[tuple[int, int]]:
        """The `(rows, cols)` tile grid of every pinpoint."""
        return [(height // self.tile_size, width // self.tile_size) for height, width in self.image_grid_pinpoints]

    def _check_any_resolution(self):
        """ValueError for pinpoints off the tile lattice, grids over the tile cap, or unfused encoder widths."""
        for height, width in self.image_grid_pinpoints:
            if height <= 0 or width <= 0 or height % self.tile_size or width % self.tile_size:
                raise ValueError(
                    f"`image_grid_pinpoints` entry [{height}, {width}] is not a positive multiple of the tile size "
                    f"{self.tile_size}."
                )
        too_many = [grid for grid in self.image_grids if grid[0] * grid[1] > self.max_num_tiles]
        if too_many:
            raise ValueError(
                f"`image_grid_pinpoints` has grids {too_many} with more tiles than `max_num_tiles={self.max_num_tiles}`."
            )
        if self.tile_vision_config is None:
            return
        global_width, tile_width = self.vision_config.hidden_size, self.tile_vision_config.hidden_size
        if self.region_feature_source == "vision" and global_width != tile_width and not self.tile_feature_adapter:
            raise ValueError(
                f"With `region_feature_source='vision'` the sampler adds tile features (width {tile_width}) to global "
                f"features (width {global_width}); set `tile_feature_adapter=True` to map one onto the other, or use "
                "`region_feature_source='projected'`."
            )

    def _check_sampler_stages(self):
        """ValueError unless every sampler stage keeps and groups at most the points it receives."""
        sub_points, neighbors = self.sampler_num_sub_points, self.sampler_num_neighbors
        if len(sub_points) == 0 or len(sub_points) != len(neighbors):
            raise ValueError(
                "`sampler_num_sub_points` and `sampler_num_neighbors` must be non-empty lists of the same length, "
                f"got {sub_points} and {neighbors}."
            )
        available = [self.sampler_num_init_points] + sub_points[:-1]
        for stage, (kept, k, n) in enumerate(zip(sub_points, neighbors, available)):
            if not 0 < kept <= n or not 0 < k <= n:
                raise ValueError(
                    f"Sampler stage {stage} keeps {kept} of {n} points with {k} neighbours; both must be in [1, {n}]."
                )


__all__ = ["FerretConfig"]
