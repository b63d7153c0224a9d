"""Ferret model configuration."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


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
