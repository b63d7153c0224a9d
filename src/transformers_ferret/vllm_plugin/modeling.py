# Copyright 2025 The transformers-ferret authors.
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
"""Ferret and Ferret-v2 as a vLLM model: vLLM's language model, this package's vision towers, projectors and sampler.

`embed_multimodal` gets the encoder inputs of one modality at a time (vLLM batches items of one modality across
requests): an image item gives its image tokens `[num_image_tokens, hidden]`, a region item its region feature
`[1, hidden]`, computed from the region's own copy of its image's inputs. vLLM places them on the placeholder ranges
[`FerretMultiModalProcessor`] marked and runs its language model on the result.
"""

from collections.abc import Iterable

import torch
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..configuration_ferret import FerretConfig
from ..modeling_ferret import FerretModel, mask_image_token_logits, scale_multimodal_features
from .processing import REGION_MODALITY, FerretDummyInputsBuilder, FerretMultiModalProcessor, FerretProcessingInfo


class FerretVisualModel(nn.Module):
    """[`FerretModel`]'s vision tower(s), projector(s) and region sampler, without its language model, under the same
    parameter names; its image-feature methods are FerretModel's own, so both compute the same numbers."""

    base_model_prefix = ""  # read by transformers' checkpoint conversion mapping (see `checkpoint_key_renamer`)
    get_vision_features = FerretModel.get_vision_features
    _select_vision_features = FerretModel._select_vision_features
    get_tile_features = FerretModel.get_tile_features
    get_image_features = FerretModel.get_image_features
    _add_tiles = FerretModel._add_tiles

    add_visual_modules = FerretModel.add_visual_modules

    def __init__(self, config: FerretConfig):
        super().__init__()
        self.config = config
        self.add_visual_modules(config)

    def image_outputs(self, pixel_values, pixel_values_tiles=None, image_grids=None):
        return self.get_image_features(pixel_values, pixel_values_tiles, image_grids, return_dict=True)

    def embed_images(self, pixel_values, pixel_values_tiles=None, image_grids=None) -> list[torch.Tensor]:
        """Per image `[num_image_tokens, hidden]`, scaled as the transformers model scales them."""
        features = self.image_outputs(pixel_values, pixel_values_tiles, image_grids).pooler_output
        return [scale_multimodal_features(item, self.config.multimodal_embedding_scale) for item in features]

    def embed_regions(self, region_points, pixel_values, pixel_values_tiles=None, image_grids=None) -> list[torch.Tensor]:
        """Per region `[1, hidden]`. Every region brings its image's inputs; equal images are encoded once."""
        flat = [pixel_values.flatten(1)]
        if pixel_values_tiles is not None:
            flat += [pixel_values_tiles.flatten(1), image_grids.to(pixel_values.dtype)]
        unique, image_of_region = torch.unique(torch.cat(flat, 1), dim=0, return_inverse=True)
        first = torch.full((len(unique),), len(image_of_region), dtype=torch.long)
        first = first.scatter_reduce(0, image_of_region, torch.arange(len(image_of_region)), "amin")
        tiles = pixel_values_tiles[first] if pixel_values_tiles is not None else None
        grids = image_grids[first] if image_grids is not None else None
        outputs = self.image_outputs(pixel_values[first], tiles, grids)
        features = self.region_sampler(
            outputs.region_maps, region_points.unsqueeze(1), image_of_region, outputs.map_extent
        )  # [num_regions, 1, hidden]
        return list(scale_multimodal_features(features, self.config.multimodal_embedding_scale).unbind(0))


def checkpoint_key_renamer(visual: FerretVisualModel):
    """Checkpoint name -> parameter name for the visual part, by transformers' own conversion mapping of its towers
    (e.g. DINOv2's saved `attention.attention.query` is loaded as `attention.q_proj`), which transformers applies in
    `from_pretrained` and vLLM's loader does not. A transform that would change tensors, not names, is refused."""
    transforms = get_model_conversion_mapping(visual)
    renamings = [transform for transform in transforms if isinstance(transform, WeightRenaming)]
    converters = [transform for transform in transforms if isinstance(transform, WeightConverter)]

    def rename(key: str) -> str:
        renamed, converter = rename_source_key(key, renamings, converters)
        if converter is not None:
            raise NotImplementedError(f"Checkpoint weight {key!r} needs a tensor conversion ({converter}).")
        return renamed

    return rename


@MULTIMODAL_REGISTRY.register_processor(
    FerretMultiModalProcessor, info=FerretProcessingInfo, dummy_inputs=FerretDummyInputsBuilder
)
class FerretForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """Ferret (v1, Ferret-UI, Ferret-v2) for vLLM: images and referred regions in, text out."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.": "visual.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        if modality == REGION_MODALITY:
            return "<region>"
        raise ValueError(f"Ferret takes images and regions, not {modality!r}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: FerretConfig = vllm_config.model_config.hf_config
        self.config = config
        text_config = config.text_config
        text_config.architectures = text_config.architectures or ["LlamaForCausalLM"]
        text_config.tie_word_embeddings = config.tie_word_embeddings
        self.configure_mm_token_handling(
            vocab_size=text_config.vocab_size, mm_token_ids=[config.image_token_id, config.region_token_id]
        )
        with self._mark_tower_model(vllm_config, {"image", REGION_MODALITY}):
            self.visual = FerretVisualModel(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=text_config, prefix=maybe_prefix(prefix, "language_model")
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs) -> list[torch.Tensor]:
        if kwargs.get("region_points") is not None:
            return self.visual.embed_regions(
                kwargs["region_points"], kwargs["region_pixel_values"], kwargs.get("region_pixel_values_tiles"),
                kwargs.get("region_image_grids"),
            )  # fmt: skip
        if kwargs.get("pixel_values") is not None:
            return self.visual.embed_images(
                kwargs["pixel_values"], kwargs.get("pixel_values_tiles"), kwargs.get("image_grids")
            )
        return []

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)  # None on the ranks before the last pipeline stage
        return logits if logits is None else mask_image_token_logits(logits, self.config.image_token_id)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """vLLM's loader for the language model; the visual part's names first renamed as transformers does."""
        rename = checkpoint_key_renamer(self.visual)

        def renamed():
            for name, tensor in weights:
                if name.startswith("model.") and not name.startswith("model.language_model."):
                    name = "model." + rename(name.removeprefix("model."))
                yield name, tensor

        return AutoWeightsLoader(self).load_weights(renamed(), mapper=self.hf_to_vllm_mapper)
