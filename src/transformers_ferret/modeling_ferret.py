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
"""PyTorch Ferret: a LLaVA-style vision-language model that also takes referred regions as input."""

import inspect
from dataclasses import dataclass

import torch
import torch.nn.modules.module as torch_module_hooks
from torch import nn
from transformers import AutoModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, is_torchdynamo_compiling, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from .configuration_ferret import FerretConfig
from .modeling_ferret_anyres import merge_tiles, merged_map_extent, tile_valid_mask, upsample_global_maps
from .modeling_ferret_checks import check_pixel_values, check_region_inputs
from .modeling_ferret_sampler import FerretRegionSampler


FERRET_AUTO_MAP = {
    "AutoConfig": "configuration_ferret.FerretConfig",
    "AutoModel": "modeling_ferret.FerretModel",
    "AutoModelForCausalLM": "modeling_ferret.FerretForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_ferret.FerretForConditionalGeneration",
}


@dataclass
class FerretModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.Tensor` of shape `(num_image_tokens_in_batch, hidden_size)`, *optional*):
        Projected image features that replaced the `<image>` tokens.
    region_hidden_states (`torch.Tensor` of shape `(batch_size, max_regions, hidden_size)`, *optional*):
        Sampler output of every `region_points` slot; slot `r` of sample `b` replaced that sample's `r`-th region
        token. Slots past a sample's `region_counts` are padding (computed, never used).
    image_outputs ([`FerretImageFeaturesOutput`], *optional*): the image encoder's outputs, as `get_image_features`
        returns them (`pooler_output`: the per-image projected features; the global tower's `hidden_states` /
        `attentions` when asked for), the `image_outputs` of transformers' multimodal outputs.
    """

    image_hidden_states: torch.Tensor | None = None
    region_hidden_states: torch.Tensor | None = None
    image_outputs: "FerretImageFeaturesOutput | None" = None


@dataclass
class FerretImageFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    `get_image_features` output: the global vision tower's own outputs (`last_hidden_state`, and `hidden_states` /
    `attentions` when asked for), with `pooler_output` the list of per-image projected features
    `[num_image_tokens_i, hidden_size]` that replace the `<image>` tokens.

    region_maps (`torch.Tensor` of shape `(num_images, channels, rows, cols)`): the maps the region sampler reads.
    map_extent (`torch.Tensor` of shape `(num_images, 2)`, *optional*): `(cols, rows)` fraction of each padded region
        map that is real (Ferret-v2 batches whose images use different tile grids).
    """

    region_maps: torch.Tensor | None = None
    map_extent: torch.Tensor | None = None


@dataclass
class FerretCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.Tensor` of shape `(1,)`, *optional*): next-token loss, when `labels` are given.
    logits (`torch.Tensor` of shape `(batch_size, sequence_length, vocab_size)`): language-model head scores.
    image_hidden_states / region_hidden_states / image_outputs: as in [`FerretModelOutputWithPast`].
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor] | None = None
    attentions: tuple[torch.Tensor] | None = None
    image_hidden_states: torch.Tensor | None = None
    region_hidden_states: torch.Tensor | None = None
    image_outputs: FerretImageFeaturesOutput | None = None


def calls_only_forward(module: nn.Module) -> bool:
    """Whether `module(...)` would run `module.forward` and nothing else: torch's own condition for skipping its hook
    machinery (no forward or backward hooks of the module's own, such as FSDP2's, and no global ones), no compiled call
    (`module.compile()`) and no `forward` replaced on the instance (accelerate's device hooks)."""
    return not (
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or torch_module_hooks._global_forward_hooks or torch_module_hooks._global_forward_pre_hooks
        or torch_module_hooks._global_backward_hooks or torch_module_hooks._global_backward_pre_hooks
        or module._compiled_call_impl is not None or "forward" in module.__dict__
    )  # fmt: skip


IMAGE_TOKEN_LOGIT = -(2.0**15)
"""The logit of the `<image>` class: a power of two that float32, float16 and bfloat16 all hold exactly (so the logits
of a model loaded in any of them agree there), far below any real logit: its probability is exactly 0 (`exp`
underflows below about -104 in float32), and unlike -inf it keeps `p * log p` at 0 (entropy metrics such as TRL's)."""


def mask_image_token_logits(logits: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """`logits` `[..., vocab_size]` with the `<image>` class set to `IMAGE_TOKEN_LOGIT`, in place. `<image>` is an input
    placeholder, not a word (the original vocabulary has no such class: its image token is -200), so it takes no
    probability in the loss or in generation, and its `lm_head` row gets no gradient in fine-tuning."""
    if 0 <= image_token_id < logits.shape[-1]:
        logits.select(-1, image_token_id).fill_(IMAGE_TOKEN_LOGIT)
    return logits


def token_mask(
    token_id: int, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, embeddings: nn.Module
) -> torch.Tensor:
    """`[batch, seq]` bool mask of `token_id`, found by id or, without ids, by comparing embeddings."""
    if input_ids is not None:
        return input_ids == token_id
    token_embedding = embeddings(torch.tensor(token_id, device=inputs_embeds.device))
    return (inputs_embeds == token_embedding).all(-1)


def scale_multimodal_features(features: torch.Tensor, scale: float) -> torch.Tensor:
    """`features` times `config.multimodal_embedding_scale`, the factor as a tensor of their dtype (as Gemma scales its
    text embeddings)."""
    return features if scale == 1.0 else features * torch.tensor(scale, dtype=features.dtype, device=features.device)


def scatter_region_features(
    inputs_embeds: torch.Tensor, region_mask: torch.Tensor, region_features: torch.Tensor
) -> torch.Tensor:
    """`inputs_embeds` `[batch, seq, hidden]` with the `r`-th region token of each sample replaced by slot `r` of
    `region_features` `[batch, max_regions, hidden]` (`region_mask` `[batch, seq]` marks the region tokens)."""
    slot = (region_mask.long().cumsum(-1) - 1).clamp(min=0, max=region_features.shape[1] - 1)  # [batch, seq]
    per_token = region_features.gather(1, slot.unsqueeze(-1).expand(-1, -1, region_features.shape[-1]))
    return torch.where(region_mask.unsqueeze(-1), per_token.to(inputs_embeds.dtype), inputs_embeds)


class FerretMultiModalProjector(nn.Module):
    """Vision width -> language width: one linear layer (`"linear"`) or linear-GELU-linear (`"mlp2x_gelu"`)."""

    def __init__(self, config: FerretConfig, input_dim: int | None = None, projector_type: str | None = None):
        super().__init__()
        input_dim = input_dim if input_dim is not None else config.vision_config.hidden_size
        projector_type = projector_type if projector_type is not None else config.projector_type
        hidden_size = config.text_config.hidden_size
        self.linear_1 = nn.Linear(input_dim, hidden_size)
        if projector_type == "mlp2x_gelu":
            self.act = ACT2FN[config.projector_hidden_act]
            self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(image_features)
        if hasattr(self, "linear_2"):
            hidden_states = self.linear_2(self.act(hidden_states))
        return hidden_states


class FerretPreTrainedModel(PreTrainedModel):
    config: FerretConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache"]
    _no_split_modules = ["FerretRegionSampler"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # Ferret-v2 tile grids set token counts; v1 / global-view inputs trace as one graph

    @classmethod
    def is_custom_code(cls) -> bool:
        """Initialise like a native transformers model: transformers' shortcut for models defined outside its package
        skips sub-modules that hold no weights of their own, which would leave CLIP's attention and MLP weights with
        the generic init instead of CLIP's own when a checkpoint lacks the vision tower."""
        return False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, writing the model's code beside the weights and an `auto_map` naming
        every Ferret Auto class (transformers only records the saved class's own), so `AutoModel`,
        `AutoModelForCausalLM` and `AutoModelForImageTextToText` all load the folder with `trust_remote_code=True`.

        transformers copies the code of classes registered with `register_for_auto_class`; Ferret's model classes are
        registered only for the time of the save (also inside `push_to_hub`), because a registered class counts as
        remote code everywhere else too: `generate` would re-read `forward`'s signature at every decode step.
        """
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **FERRET_AUTO_MAP}
        model_class, registered = type(self), type(self)._auto_class
        if registered is None:
            model_class._auto_class = "AutoModel" if model_class is FerretModel else "AutoModelForImageTextToText"
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            model_class._auto_class = registered


class FerretModel(FerretPreTrainedModel):
    """Vision tower + projector + region sampler + language model (no LM head); Ferret-v2 adds a tile encoder
    (DINOv2) with its own projector.

    All multimodal work happens in `forward`, which is the only method TRL's trainer calls: image features
    replace the `<image>` tokens and region features replace the region tokens, then the language model runs.
    """

    def __init__(self, config: FerretConfig):
        super().__init__(config)
        self.add_visual_modules(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()
        # the vision towers are always asked for their hidden states; transformers installs the hooks that collect them
        # at the first such call, which a `torch.compile(fullgraph=True)` graph cannot do (it holds a lock): do it now
        for tower in (self.vision_tower, getattr(self, "tile_vision_tower", None)):
            if tower is not None:
                maybe_install_capturing_hooks(tower)

    def add_visual_modules(self, config: FerretConfig) -> None:
        """The vision tower, projector and region sampler (and Ferret-v2's tile encoder, tile projector and adapter),
        under the names checkpoints use; also builds vLLM's visual part (`vllm_plugin`)."""
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = FerretMultiModalProjector(config)
        if config.tile_vision_config is not None:  # Ferret-v2; Ferret-UI tiles share the global encoder and projector
            tile_width = config.tile_vision_config.hidden_size
            self.tile_vision_tower = AutoModel.from_config(config.tile_vision_config)
            self.tile_projector = FerretMultiModalProjector(config, tile_width, config.tile_projector_type)
            if config.tile_feature_adapter:
                self.tile_feature_adapter = nn.Linear(tile_width, config.vision_config.hidden_size)
        projected = config.region_feature_source == "projected"
        sampler_width = config.text_config.hidden_size if projected else config.vision_config.hidden_size
        self.region_sampler = FerretRegionSampler(config, sampler_width)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_vision_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> torch.Tensor:
        """Unprojected vision features `[num_images, num_patches, vision_hidden]`, patches in raster order.

        These are what the region sampler reads (the original Ferret samples raw CLIP features, not projected ones).
        """
        outputs = self.vision_tower(pixel_values.to(self.vision_tower.dtype), output_hidden_states=True)
        return self._select_vision_features(outputs.hidden_states, vision_feature_layer, vision_feature_select_strategy)

    def _select_vision_features(
        self, hidden_states: tuple[torch.Tensor], vision_feature_layer: int | None, vision_feature_select_strategy: str | None
    ) -> torch.Tensor:
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        return hidden_states[layer][:, 1:] if strategy == "default" else hidden_states[layer]

    @torch.no_grad()
    def init_tile_projector_from_global(self) -> None:
        """Copies the global (CLIP) projector's weights into the tile (DINOv2) projector, as Ferret-v2's stage II does.

        Raises a ValueError when the two projectors' shapes differ (tile encoder width != global encoder width).
        """
        if self.config.tile_vision_config is None:
            raise ValueError("This model has no separate tile projector (no `tile_vision_config`).")
        source, target = self.multi_modal_projector.state_dict(), self.tile_projector.state_dict()
        mismatched = [name for name in target if name not in source or source[name].shape != target[name].shape]
        if mismatched:
            raise ValueError(
                f"Cannot initialise the tile projector from the global one: {mismatched} differ in shape (tile encoder "
                f"width {self.config.tile_vision_config.hidden_size} vs global {self.config.vision_config.hidden_size})."
            )
        self.tile_projector.load_state_dict(source)

    def get_tile_features(self, pixel_values_tiles: torch.Tensor, image_grids: torch.Tensor) -> torch.Tensor:
        """Unprojected tile-encoder features `[num_tiles, t * t, tile_hidden]` of every real tile, image-major.

        Args:
            pixel_values_tiles: `[num_images, max_tiles, 3, tile_size, tile_size]`, zero-padded after each image's
                tiles.
            image_grids: `[num_images, 2]` `(rows, cols)` of each image's tile grid.
        """
        tiles = pixel_values_tiles[tile_valid_mask(image_grids, pixel_values_tiles.shape[1])]
        if self.config.tile_vision_config is None:  # Ferret-UI: the global encoder reads the tiles too
            return self.get_vision_features(tiles)
        outputs = self.tile_vision_tower(tiles.to(self.tile_vision_tower.dtype), output_hidden_states=True)
        patch = self.config.tile_patch_size
        num_patches = (tiles.shape[-2] // patch) * (tiles.shape[-1] // patch)
        return outputs.hidden_states[self.config.tile_vision_feature_layer][:, -num_patches:]  # drop CLS/registers

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        pixel_values_tiles: torch.FloatTensor | None = None,
        image_grids: torch.LongTensor | None = None,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> FerretImageFeaturesOutput:
        """Image tokens for the language model and the maps the region sampler reads (see [`FerretImageFeaturesOutput`]).

        Ferret v1 (and Ferret-v2 without tiles, e.g. its stage I): per image the global view's `(side / patch)^2`
        projected tokens; the region map is the global feature map.
        Ferret-v2 with `pixel_values_tiles`: per image the global tokens, then the merged tile map row by row; the
        region map is the merged tile map plus the global map upsampled to its size (`H_a = H'_l + Upsample(H_g)`),
        raw or projected as `config.region_feature_source` says. `output_hidden_states` / `output_attentions` return
        the global vision tower's.
        """
        if not is_torchdynamo_compiling():  # data-dependent checks run eagerly; a compiled graph trusts its inputs
            channels = self.config.vision_config.num_channels
            check_pixel_values(pixel_values, "pixel_values", 4, channels)
            if pixel_values_tiles is not None:
                check_pixel_values(pixel_values_tiles, "pixel_values_tiles", 5, channels)
        wants_hidden_states = kwargs.get("output_hidden_states") or self.config.vision_config.output_hidden_states
        wants_attentions = kwargs.get("output_attentions") or self.config.vision_config.output_attentions
        vision_outputs = self.vision_tower(
            pixel_values.to(self.vision_tower.dtype), output_hidden_states=True, output_attentions=bool(wants_attentions),
            return_dict=True,
        )  # fmt: skip
        features = self._select_vision_features(
            vision_outputs.hidden_states, vision_feature_layer, vision_feature_select_strategy
        )
        patch = self.config.vision_config.patch_size
        projected = self.multi_modal_projector(features)
        use_projected = self.config.region_feature_source == "projected"
        global_maps = (projected if use_projected else features).unflatten(
            1, (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        )  # [num_images, rows, cols, D]
        if self.config.is_any_resolution and pixel_values_tiles is not None:
            if image_grids is None:
                raise ValueError("`pixel_values_tiles` need their `image_grids` (tile rows, cols per image).")
            image_features, region_maps = self._add_tiles(projected, global_maps, pixel_values_tiles, image_grids)
            map_extent = merged_map_extent(image_grids, self.config.tile_size // self.config.tile_patch_size)
        else:
            image_features, region_maps, map_extent = list(projected.unbind(0)), global_maps, None
        return FerretImageFeaturesOutput(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=image_features,
            hidden_states=vision_outputs.hidden_states if wants_hidden_states else None,
            attentions=vision_outputs.attentions,
            region_maps=region_maps.permute(0, 3, 1, 2),
            map_extent=map_extent,
        )

    def _add_tiles(
        self,
        projected: torch.Tensor,
        global_maps: torch.Tensor,
        pixel_values_tiles: torch.Tensor,
        image_grids: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Ferret-v2's tiles: per-image token sequences (global tokens, then the merged tile map row by row) and the
        region maps `[num_images, rows, cols, D]` (merged tile map plus the upsampled global map)."""
        tile_side = self.config.tile_size // self.config.tile_patch_size
        separate_tile_encoder = self.config.tile_vision_config is not None
        tile_features = self.get_tile_features(pixel_values_tiles, image_grids)
        tile_projector = self.tile_projector if separate_tile_encoder else self.multi_modal_projector
        merged_projected, valid = merge_tiles(tile_projector(tile_features), image_grids, tile_side)
        sequences = torch.cat([projected, merged_projected.flatten(1, 2)], 1)
        token_valid = torch.cat([valid.new_ones(projected.shape[:2]), valid.flatten(1)], 1)
        image_features = list(sequences[token_valid].split(token_valid.sum(-1).tolist()))

        if self.config.region_feature_source == "projected":
            merged_local = merged_projected
        else:
            adapter = separate_tile_encoder and self.config.tile_feature_adapter
            adapted = self.tile_feature_adapter(tile_features) if adapter else tile_features
            merged_local = merge_tiles(adapted, image_grids, tile_side)[0]
        upsampled = upsample_global_maps(
            global_maps.permute(0, 3, 1, 2), image_grids, tile_side, self.config.global_upsample_mode
        )
        return image_features, merged_local + upsampled

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """`[batch, seq, 1]` mask of the image tokens; ValueError when their count differs from the features'."""
        image_mask = token_mask(self.config.image_token_id, input_ids, inputs_embeds, self.get_input_embeddings())
        torch_compilable_check(
            image_mask.sum() == image_features.shape[0],
            lambda: f"Image features and image tokens do not match, tokens: {int(image_mask.sum())}, "
            f"features: {image_features.shape[0]}",
        )
        return image_mask.unsqueeze(-1)

    def get_region_features(
        self, image_outputs: FerretImageFeaturesOutput, region_points: torch.Tensor, image_mask: torch.Tensor
    ) -> torch.Tensor:
        """Region features `[batch_size, max_regions, hidden_size]`, one per `region_points` slot.

        Args:
            image_outputs: `get_image_features`' output for the batch's images (one per sample with image tokens).
            region_points: `[batch_size, max_regions, num_points, 2]` normalised `(x, y)` points of each slot.
            image_mask: `[batch_size, sequence_length]` bool, the `<image>` token positions.

        Every slot reads the region map of its sample's image; padding slots (and samples without an image) get a
        feature that is never used. Shapes depend only on the inputs' shapes, so the region path compiles as one graph.
        """
        image_of_sample = (image_mask.any(-1).long().cumsum(0) - 1).clamp(min=0)  # [batch_size] index into images
        return self.region_sampler(
            image_outputs.region_maps, region_points, image_of_sample, image_outputs.map_extent
        )

    def _dummy_region_feature(self, image_outputs: FerretImageFeaturesOutput) -> torch.Tensor:
        """The sampler's output for one region at the first image's centre, reduced to a scalar.

        Training adds it with weight 0 when a batch has images but no region, so the sampler's parameters take part in
        every step on every rank (distributed data parallel / ZeRO otherwise wait forever for their gradients).
        """
        num_points = self.config.sampler_num_init_points
        points = torch.full((1, 1, num_points, 2), 0.5, device=image_outputs.region_maps.device)
        extent = image_outputs.map_extent[:1] if image_outputs.map_extent is not None else None
        return self.region_sampler(image_outputs.region_maps[:1], points, map_extent=extent).sum()

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        region_points: torch.FloatTensor | None = None,
        region_counts: torch.LongTensor | None = None,
        pixel_values_tiles: torch.FloatTensor | None = None,
        image_grids: torch.LongTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> FerretModelOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids, with one `<image>` token per image feature and one region token per region (the processor
            writes both).
        pixel_values (`torch.FloatTensor` of shape `(num_images, 3, height, width)`): at most one image per sample
            that has image tokens, in sample order.
        region_points (`torch.FloatTensor` of shape `(batch_size, max_regions, num_points, 2)`):
            Points sampled in each region's mask, normalised `(x / W, y / H)`; slot `r` of sample `b` belongs to
            the `r`-th region token of sample `b`.
        region_counts (`torch.LongTensor` of shape `(batch_size,)`): number of used slots per sample (default:
            all slots).
        pixel_values_tiles (`torch.FloatTensor` of shape `(num_images, max_tiles, 3, tile_size, tile_size)`):
            Ferret-v2 only: each image's tiles in row-major grid order, zero-padded to `max_tiles`.
        image_grids (`torch.LongTensor` of shape `(num_images, 2)`): Ferret-v2 only: `(rows, cols)` of each grid.
        image_sizes (`torch.LongTensor` of shape `(num_images, 2)`): original `(height, width)` the processor returns;
            not needed by the model (the processor already chose the grids), accepted so processor outputs can be
            passed as they are.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:  # decode steps and text-only inputs: the embeddings straight into the language model
            if region_points is not None:
                raise ValueError("Region inputs need an image: `region_points` were given without `pixel_values`.")
            outputs = self.language_model(
                attention_mask=attention_mask, position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                **kwargs,
            )  # fmt: skip
            return FerretModelOutputWithPast(last_hidden_state=outputs.last_hidden_state, cache=outputs.cache,
                                             hidden_states=outputs.hidden_states, attentions=outputs.attentions)  # fmt: skip

        # a prefill with an image (and regions): image tokens, then region tokens, replaced by their features
        scale = self.config.multimodal_embedding_scale  # of the image and region features only; see FerretConfig
        image_outputs = self.get_image_features(
            pixel_values, pixel_values_tiles, image_grids, vision_feature_layer, vision_feature_select_strategy,
            output_attentions=kwargs.get("output_attentions"), output_hidden_states=kwargs.get("output_hidden_states"),
            return_dict=True,
        )  # fmt: skip
        image_features = torch.cat(image_outputs.pooler_output).to(inputs_embeds.dtype)
        image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
        inputs_embeds = inputs_embeds.masked_scatter(image_mask, scale_multimodal_features(image_features, scale))

        region_features = None
        region_mask = token_mask(self.config.region_token_id, input_ids, inputs_embeds, self.get_input_embeddings())
        if not is_torchdynamo_compiling() and (region_points is not None or region_mask.any()):
            image_rows = image_mask.squeeze(-1).any(-1)
            num_images = pixel_values.shape[0]
            check_region_inputs(self.config, region_mask, image_rows, region_points, region_counts, num_images)
        if region_points is not None and region_points.shape[1] > 0:
            region_features = self.get_region_features(image_outputs, region_points, image_mask.squeeze(-1))
            scaled = scale_multimodal_features(region_features.to(inputs_embeds.dtype), scale)
            inputs_embeds = scatter_region_features(inputs_embeds, region_mask, scaled)
        elif self.training:
            inputs_embeds = inputs_embeds + 0.0 * self._dummy_region_feature(image_outputs).to(inputs_embeds.dtype)

        outputs = self.language_model(
            attention_mask=attention_mask, position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds, **kwargs
        )
        return FerretModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            region_hidden_states=region_features,
            image_outputs=image_outputs,
        )


def ignore_placeholder_labels_hook(module: "FerretForConditionalGeneration", args: tuple, kwargs: dict):
    """Forward pre-hook: `labels` / `shift_labels` given by keyword with every `<image>` and region-token position set
    to -100 (`ignore_placeholder_labels`), so that a `forward` that computes the loss itself (TRL's fused LM head
    replaces the model's) ignores them too. Our own `forward` applies the same rule, for calls that bypass the hook."""
    cleaned = {name: module.ignore_placeholder_labels(kwargs[name])
               for name in ("labels", "shift_labels") if kwargs.get(name) is not None}  # fmt: skip
    return (args, {**kwargs, **cleaned}) if cleaned else None


class FerretForConditionalGeneration(FerretPreTrainedModel, GenerationMixin):
    """Ferret with a language-model head: refers to regions given as input and grounds answers as box text."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: FerretConfig):
        super().__init__(config)
        self.model = FerretModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        # read at every forward where declared (Gemma-2); looking up a missing attribute cost ~3 us per decode step
        self._text_config_has_softcap = hasattr(config.text_config, "final_logit_softcapping")
        # before any `forward` runs, also one that replaces ours: TRL's fused LM head computes the loss from `labels`
        self.register_forward_pre_hook(ignore_placeholder_labels_hook, with_kwargs=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        pixel_values_tiles: torch.FloatTensor | None = None,
        image_grids: torch.LongTensor | None = None,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(
            pixel_values, pixel_values_tiles, image_grids, vision_feature_layer, vision_feature_select_strategy, **kwargs
        )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        region_points: torch.FloatTensor | None = None,
        region_counts: torch.LongTensor | None = None,
        pixel_values_tiles: torch.FloatTensor | None = None,
        image_grids: torch.LongTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> FerretCausalLMOutputWithPast:
        r"""
        Inputs as [`FerretModel.forward`], plus `labels` (`(batch_size, sequence_length)`, -100 = ignored) for the
        next-token loss and `logits_to_keep` (compute logits for the last `n` positions only, 0 = all).
        """
        base_forward_is_ours = type(self.model).forward is FerretModel.forward  # not a wrapper's or a subclass's
        if pixel_values is None and region_points is None and base_forward_is_ours and calls_only_forward(self.model):
            # a decode step or a text-only input, where `self.model` would only run its language model: run that
            # directly: one module call and one output object fewer per generated token (~50 us a step on CPU)
            outputs = self.model.language_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                inputs_embeds=inputs_embeds, **kwargs,
            )  # fmt: skip
        else:
            outputs = self.model(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                inputs_embeds=inputs_embeds,
                region_points=region_points,
                region_counts=region_counts,
                pixel_values_tiles=pixel_values_tiles,
                image_grids=image_grids,
                image_sizes=image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                **kwargs,
            )
        hidden_states = outputs.last_hidden_state
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, kept, :])
        softcap = self.config.text_config.final_logit_softcapping if self._text_config_has_softcap else None
        if softcap is not None:  # Gemma-2-style language models cap their logits in their own LM head
            logits = torch.tanh(logits / softcap) * softcap
        logits = mask_image_token_logits(logits, self.config.image_token_id)
        loss = None
        if labels is not None:
            labels = self.ignore_placeholder_labels(labels)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return FerretCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=getattr(outputs, "image_hidden_states", None),  # not in the LM's own output
            region_hidden_states=getattr(outputs, "region_hidden_states", None),
            image_outputs=getattr(outputs, "image_outputs", None),
        )

    def ignore_placeholder_labels(self, labels: torch.LongTensor) -> torch.LongTensor:
        """`labels` (`(batch_size, sequence_length)`) with every `<image>` and region-token position set to -100.

        Those positions hold image and region features, not text to predict, so they never count in the loss, whatever
        collator built the labels (TRL's default VLM collator copies `input_ids`, where `<image>` tokens are most of
        the sequence).
        """
        placeholders = torch.tensor([self.config.image_token_id, self.config.region_token_id], device=labels.device)
        return labels.masked_fill(torch.isin(labels, placeholders), -100)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        region_points=None,
        region_counts=None,
        pixel_values_tiles=None,
        image_grids=None,
        inputs_embeds=None,
        is_first_iteration=False,
        **kwargs,
    ):
        """Passes image and region inputs to the prefill step only; decode steps reuse the KV cache."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs.update(
                region_points=region_points,
                region_counts=region_counts,
                pixel_values_tiles=pixel_values_tiles,
                image_grids=image_grids,
            )
        return model_inputs


# Loaded with `trust_remote_code` (from a saved folder's own code), Ferret is remote code, for which transformers'
# `prepare_inputs_for_generation` reads `inspect.signature(self.forward)` at every decode step (~25 us to rebuild
# through the decorators). Stored on the undecorated function, where `inspect` stops unwrapping; wrappers of the bound
# method (accelerate) still drop `self`.
_forward = inspect.unwrap(FerretForConditionalGeneration.forward)
_forward.__signature__ = inspect.signature(_forward)

__all__ = ["FerretModel", "FerretForConditionalGeneration", "FerretPreTrainedModel"]
