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
"""vLLM's side of Ferret's inputs: an `image` modality and a `region` modality, processed by [`FerretProcessor`].

A request holds at most one image and any number of regions of that image:

    {"prompt": "... <image>\\nWhat is <region>?", "multi_modal_data": {"image": image, "region": [{"box": [x1, y1,
    x2, y2]}]}}

Each region item is `{"box" | "point" | "mask": value}` (optionally with `"type": "region"`, as a chat content item),
matched in order with the prompt's `<region>` placeholders. The processor writes the prompt exactly as transformers
does, by running [`FerretProcessor`] on the prompt's text with the request's image and regions: `<image>` becomes the
image's tokens, each `<region>` its coordinate text and region token. Placeholders are the image-token run (the
image's features) and each region token (one sampler output); a region's encoder input carries its image, so its
feature is computed from its own request's image features whatever other requests share the batch.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
from transformers import BatchFeature
from vllm.multimodal.hasher import MultiModalHasher
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageSize, MultiModalDataItems, MultiModalDataParser, ProcessorBatchItems
from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo
from vllm.multimodal.processing.processor import PlaceholderFeaturesInfo

from ..chat_regions import region_of_item
from ..configuration_ferret import FerretConfig
from ..processing_ferret import FerretProcessor


REGION_MODALITY = "region"
# Where the plugin's renderer hook passes a prompt's text to the processor (vLLM gives processors token ids only).
PROMPT_TEXT_KEY = "_ferret_prompt_text"


def region_of_request_item(item, index: int) -> dict:
    """One `region` item of a request, checked: `{"box" | "point" | "mask": value}` (a `"type": "region"` key is
    allowed, a nested-list mask becomes an array); errors name the item."""
    where = f"region item {index}"
    if not isinstance(item, Mapping):
        raise TypeError(
            f'{where}: a region is a dict {{"box": [x1, y1, x2, y2]}}, {{"point": [x, y]}} or {{"mask": [[...]]}}, got '
            f"{type(item).__name__}."
        )
    extra = sorted(set(item) - {"type", "box", "point", "mask", "uuid"})
    if item.get("type", REGION_MODALITY) != REGION_MODALITY or extra:
        raise ValueError(f"{where}: unexpected keys {extra or ['type']} in {sorted(item)}.")
    region = dict(item)
    if isinstance(region.get("mask"), (list, tuple)):  # JSON: rows of numbers or booleans
        try:
            region["mask"] = np.asarray(region["mask"])
        except ValueError:
            raise ValueError(f'{where}: a region "mask" given as lists must be [height, width] rows of equal length.')
    return region_of_item(region, where)


def _expand_token(ids: list[int], token_id: int, expanded: torch.Tensor) -> list[int]:
    """`ids` with each `token_id` replaced by the run of `token_id` in `expanded`."""
    run = [token_id] * int((expanded == token_id).sum())
    return [piece for token in ids for piece in (run if token == token_id else [token])]


class FerretRegionItems(ProcessorBatchItems):
    """The `region` items of one request (dicts); [`FerretMultiModalProcessor`] hands them to [`FerretProcessor`]."""

    def __init__(self, data) -> None:
        super().__init__(data, REGION_MODALITY)


class FerretDataParser(MultiModalDataParser):
    """vLLM's parser with Ferret's `region` modality: one region dict or a list of them."""

    def _parse_region_data(self, data) -> FerretRegionItems | None:
        items = [data] if isinstance(data, Mapping) else list(data)
        return FerretRegionItems([region_of_request_item(item, index) for index, item in enumerate(items)])

    def _get_subparsers(self):
        return {**super()._get_subparsers(), REGION_MODALITY: self._parse_region_data}


class FerretProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> FerretConfig:
        return self.ctx.get_hf_config(FerretConfig)

    def get_hf_processor(self, **kwargs: object) -> FerretProcessor:
        return self.ctx.get_hf_processor(FerretProcessor, **kwargs)

    def get_data_parser(self) -> MultiModalDataParser:
        return FerretDataParser(expected_hidden_size=self._get_expected_hidden_size())

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": 1, REGION_MODALITY: self.get_hf_processor().max_regions_per_sample}

    def get_num_image_tokens(self, image_size: ImageSize) -> int:
        return self.get_hf_processor()._get_num_image_tokens((image_size.height, image_size.width))

    def get_image_size_with_most_features(self) -> ImageSize:
        """The size whose tile grid is the largest (Ferret v1: any size, every image gives the same tokens)."""
        image_processor = self.get_hf_processor().image_processor
        pinpoints = getattr(image_processor, "image_grid_pinpoints", None) or [
            [image_processor.size["height"], image_processor.size["width"]]
        ]
        height, width = max(pinpoints, key=lambda size: size[0] * size[1])
        return ImageSize(width=width, height=height)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_num_image_tokens(self.get_image_size_with_most_features()), REGION_MODALITY: 1}


class FerretDummyInputsBuilder(BaseDummyInputsBuilder[FerretProcessingInfo]):
    """Profiling inputs: the largest image and `mm_counts["region"]` boxes covering it."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        processor = self.info.get_hf_processor()
        image = processor.image_token if mm_counts.get("image", 0) or mm_counts.get(REGION_MODALITY, 0) else ""
        return image + processor.region_placeholder * mm_counts.get(REGION_MODALITY, 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        size = self.info.get_image_size_with_most_features()
        num_regions = mm_counts.get(REGION_MODALITY, 0)
        num_images = max(mm_counts.get("image", 0), 1 if num_regions else 0)
        data = {"image": self._get_dummy_images(width=size.width, height=size.height, num_images=num_images)}
        if num_regions:
            data[REGION_MODALITY] = [{"box": [0, 0, size.width - 1, size.height - 1]}] * num_regions
        return data


class FerretMultiModalProcessor(BaseMultiModalProcessor[FerretProcessingInfo]):
    """Runs [`FerretProcessor`] on the whole prompt, so vLLM's prompt ids are transformers' ids for the same text."""

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        image_fields = ("pixel_values", "pixel_values_tiles", "image_grids")
        fields = {name: MultiModalFieldConfig.batched("image") for name in image_fields}
        fields["region_points"] = MultiModalFieldConfig.batched(REGION_MODALITY)
        fields.update({f"region_{name}": MultiModalFieldConfig.batched(REGION_MODALITY) for name in image_fields})
        return fields

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options):
        """vLLM's profiling inputs, with their text (the dummy prompt has `<region>`s, like a user's)."""
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        text = self.dummy_inputs.get_dummy_text(mm_counts)
        return dataclasses.replace(inputs, hf_processor_mm_kwargs={**inputs.hf_processor_mm_kwargs, PROMPT_TEXT_KEY: text})

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        return []  # `apply` writes the whole prompt with FerretProcessor (coordinate text depends on the image)

    def _process(self, prompt: str | list[int], mm_items: MultiModalDataItems, hf_kwargs) -> BatchFeature:
        """FerretProcessor's output for the request's text (or, for token ids without regions, the ids with the image
        token expanded: it is a special token, so the text around it tokenizes the same either way), plus each
        region's copy of its image's inputs."""
        images = mm_items.get("image").get_all() if "image" in mm_items else []
        regions = mm_items.get(REGION_MODALITY).get_all() if REGION_MODALITY in mm_items else []
        if len(images) > 1:
            raise ValueError(f"A Ferret request takes at most one image, got {len(images)}.")
        if regions and not images:
            raise ValueError(f"The request has {len(regions)} region items but no image: regions refer to its image.")
        processor = self.info.get_hf_processor(**hf_kwargs)
        text = prompt if isinstance(prompt, str) else processor.image_token * len(images)
        outputs = processor(
            images=images or None, text=text, regions=[regions] if regions else None, return_tensors="pt",
            add_special_tokens=False, **hf_kwargs,
        )  # fmt: skip
        if not isinstance(prompt, str):
            outputs["input_ids"] = torch.tensor([_expand_token(prompt, processor.image_token_id, outputs["input_ids"][0])])
        if regions:
            count = int(outputs["region_counts"][0])
            outputs["region_points"] = outputs["region_points"][0, :count]
            for name in ("pixel_values", "pixel_values_tiles", "image_grids"):
                if name in outputs:
                    outputs[f"region_{name}"] = outputs[name].expand(count, *outputs[name].shape[1:])
        for name in ("region_counts", "image_sizes", "attention_mask"):
            outputs.pop(name, None)
        return outputs

    def _get_mm_hashes(self, inputs) -> dict[str, list[str]]:
        """Image hashes as vLLM computes them; a region's hash also covers its image (same box, other image: other
        feature), so the encoder cache never mixes requests."""
        kwargs = {key: value for key, value in inputs.hf_processor_mm_kwargs.items() if key != PROMPT_TEXT_KEY}
        hashes = dict(super()._get_mm_hashes(dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs)))
        if REGION_MODALITY in hashes:
            image_hashes = hashes.get("image", [])
            algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
            hashes[REGION_MODALITY] = [
                MultiModalHasher.hash_kwargs(algorithm, region=region_hash, image=image_hashes)
                for region_hash in hashes[REGION_MODALITY]
            ]
        return hashes

    def apply(self, inputs, timing_ctx):
        from vllm.inputs.engine import mm_input

        mm_items = inputs.mm_data_items
        hf_kwargs = dict(inputs.hf_processor_mm_kwargs)
        prompt_text = hf_kwargs.pop(PROMPT_TEXT_KEY, None)
        with timing_ctx.record("apply_hf_processor"):
            outputs = self._process(self._prompt_text(inputs.prompt, prompt_text, mm_items), mm_items, hf_kwargs)
        prompt_ids = outputs.pop("input_ids")[0].tolist()
        mm_kwargs = MultiModalKwargsItems.from_hf_inputs(outputs, self._get_mm_fields_config(outputs, {}))
        with timing_ctx.record("get_mm_hashes"):
            mm_hashes = self._get_mm_hashes(inputs)
        placeholders = self._placeholders(prompt_ids, mm_items)
        mm_kwargs = self._through_cache(inputs.cache, mm_kwargs, mm_hashes)
        return mm_input(
            prompt_token_ids=prompt_ids,
            mm_kwargs=mm_kwargs,
            mm_hashes=mm_hashes,
            mm_placeholders={modality: [info.to_range() for info in infos] for modality, infos in placeholders.items()},
        )

    def _prompt_text(self, prompt_ids: list[int], prompt_text: str | None, mm_items: MultiModalDataItems):
        """What FerretProcessor reads: the prompt's text when vLLM has it and it encodes to `prompt_ids`; else (no
        regions) the ids themselves."""
        tokenizer = self.info.get_tokenizer()
        if prompt_text is not None:
            encoded, prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False), list(prompt_ids)
            if prompt_ids == encoded:
                return prompt_text
            if tokenizer.bos_token is not None and prompt_ids == [tokenizer.bos_token_id, *encoded]:
                return tokenizer.bos_token + prompt_text  # vLLM added the BOS; FerretProcessor reads it as text
        if REGION_MODALITY in mm_items:
            raise ValueError(
                "A Ferret request with regions needs its prompt as text (a `prompt` string or chat messages), not "
                "token ids: each `<region>` is written as its coordinate text, tokenized with the text around it."
            )
        return list(prompt_ids)

    def _placeholders(self, prompt_ids: list[int], mm_items: MultiModalDataItems) -> dict[str, list]:
        """The image's token run and each region token, as vLLM's placeholder ranges."""
        config = self.info.get_hf_config()
        ids = np.asarray(prompt_ids)
        placeholders = {}
        if "image" in mm_items:
            image_positions = np.flatnonzero(ids == config.image_token_id)
            start = int(image_positions[0])
            tokens = prompt_ids[start : int(image_positions[-1]) + 1]
            placeholders["image"] = [PlaceholderFeaturesInfo("image", 0, start, tokens, None)]
        if REGION_MODALITY in mm_items:
            positions = np.flatnonzero(ids == config.region_token_id)
            placeholders[REGION_MODALITY] = [
                PlaceholderFeaturesInfo(REGION_MODALITY, index, int(position), [config.region_token_id], None)
                for index, position in enumerate(positions)
            ]
        return placeholders

    @staticmethod
    def _through_cache(cache, mm_kwargs: MultiModalKwargsItems, mm_hashes):
        """vLLM's processor-cache protocol (items the engine already holds are sent as None)."""
        if cache is None:
            return mm_kwargs
        for hashes in mm_hashes.values():
            for item_hash in hashes:
                cache.touch_sender_cache_item(item_hash)
        try:
            merged = {
                modality: [cache.get_and_update_item((item, []), item_hash)[0] for item, item_hash in zip(items, mm_hashes[modality])]
                for modality, items in mm_kwargs.items()
            }
        finally:
            cache.release_sender_touches()
        return MultiModalKwargsItems(merged)

