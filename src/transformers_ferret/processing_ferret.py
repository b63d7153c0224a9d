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
"""Processor for Ferret: images, text with referred regions, and grounded boxes in the output."""

import bisect
import re
from itertools import accumulate
from numbers import Number

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput, get_image_size, make_flat_list_of_images, to_numpy_array
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.tokenization_utils_base import TextInput

# The markers `apply_chat_template(..., sanitize_control_tokens=True)` puts around control tokens typed in user text
# (transformers >= 5.25, which the package requires, has no public name for them): marked tokens are not placeholders.
from transformers.utils.chat_template_utils import _CONTROL_TOKEN_END, _CONTROL_TOKEN_START

from .chat_regions import check_region_chat, conversations_of, take_region_items
from .chat_templates import DEFAULT_CHAT_TEMPLATE
from .coordinates import parse_grounded_text
from .image_processing_ferret import prepare_images
from .region_utils import mask_to_points, normalize_region


_MARKED_TOKEN = re.compile(f"{_CONTROL_TOKEN_START}.*?{_CONTROL_TOKEN_END}", re.DOTALL)
_UNMARKED = f"(?<!{_CONTROL_TOKEN_START})"


def _without_marked_tokens(text: str) -> str:
    """`text` without the control tokens `sanitize_control_tokens` marked as user text (they are not placeholders)."""
    return _MARKED_TOKEN.sub("", text)


def _original_image_size(image) -> tuple[int, int]:
    """`(height, width)` of an image given as PIL, numpy or torch (channels first or last)."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return get_image_size(to_numpy_array(image))


def _is_number(value) -> bool:
    return isinstance(value, Number) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0)


def _is_list_of_regions(value) -> bool:
    return isinstance(value, (list, tuple)) and not any(_is_number(item) for item in value)


def _compose_replacement_offsets(region_offsets: list[dict], image_offsets: list[dict]) -> list[dict]:
    """
    Chains two rounds of placeholder replacement of one sample: regions (original text -> text 1) then images (text 1
    -> text 2), into `span` (original text) / `new_span` (text 2) entries sorted by position.
    """
    region_ends = [offset["new_span"][1] for offset in region_offsets]
    region_gains = [0, *accumulate(len(o["replacement"]) - len(o["text"]) for o in region_offsets)]
    image_ends = [offset["span"][1] for offset in image_offsets]
    image_gains = [0, *accumulate(len(o["replacement"]) - len(o["text"]) for o in image_offsets)]
    composed = []
    for offset in region_offsets:
        gain = image_gains[bisect.bisect_right(image_ends, offset["new_span"][0])]
        composed.append({**offset, "new_span": tuple(position + gain for position in offset["new_span"])})
    for offset in image_offsets:
        gain = region_gains[bisect.bisect_right(region_ends, offset["span"][0])]
        composed.append({**offset, "span": tuple(position - gain for position in offset["span"])})
    return sorted(composed, key=lambda offset: offset["span"][0])


def split_regions_per_sample(regions, batch_size: int) -> list[list]:
    """Normalises `regions` to one list of regions per sample."""
    if regions is None or (isinstance(regions, (list, tuple)) and len(regions) == 0):
        return [[] for _ in range(batch_size)]
    if not isinstance(regions, (list, tuple)) or all(_is_number(value) for value in regions):
        regions = [regions]  # a single region
    if len(regions) == batch_size and all(_is_list_of_regions(sample) for sample in regions):
        return [list(sample) for sample in regions]
    if batch_size == 1:
        return [list(regions)]
    raise ValueError(
        f"`regions` must hold one list of regions per sample ({batch_size} samples in `text`), with an empty list "
        f"for a sample without regions; got {len(regions)} entries."
    )



def _return_tensors_of(outputs: BatchFeature) -> str | None:
    input_ids = outputs["input_ids"]
    return "pt" if isinstance(input_ids, torch.Tensor) else "np" if isinstance(input_ids, np.ndarray) else None



def batch_region_points(points_per_sample: list[np.ndarray], num_points: int, return_tensors) -> BatchFeature:
    """Pads each sample's `[num_regions, N, 2]` points to `[batch_size, max_regions, N, 2]`."""
    region_counts = np.array([len(points) for points in points_per_sample], dtype=np.int64)
    region_points = np.zeros(
        (len(points_per_sample), region_counts.max(), num_points, 2), dtype=np.float32
    )
    sample_index = np.repeat(np.arange(len(points_per_sample)), region_counts)
    region_index = np.concatenate([np.arange(count) for count in region_counts])
    region_points[sample_index, region_index] = np.concatenate(points_per_sample)
    return BatchFeature(
        {"region_points": region_points, "region_counts": region_counts}, tensor_type=return_tensors
    )



def write_region_texts(
    text: str, slots: list[re.Match], coordinate_texts: list[str], placeholder: str, region_token: str
) -> tuple[str, list[dict]]:
    """`text` with each `placeholder` slot replaced by its region's coordinate text and the region token (slots that
    are region tokens already keep their text), and the replacement offsets as
    `ProcessorMixin.get_text_with_replacements` returns them."""
    pieces, offsets, copied_until, shift = [], [], 0, 0
    for slot, coordinate_text in zip(slots, coordinate_texts):
        if slot.group() != placeholder:
            continue
        replacement = f"{coordinate_text} {region_token}"
        start, end = slot.span()
        pieces += [text[copied_until:start], replacement]
        offsets.append(
            {
                "type": "region",
                "span": (start, end),
                "new_span": (start + shift, start + shift + len(replacement)),
                "text": slot.group(),
                "replacement": replacement,
            }
        )
        copied_until, shift = end, shift + len(replacement) - (end - start)
    return "".join(pieces) + text[copied_until:], offsets



def image_sizes_per_text(image_sizes, num_texts: int) -> list[tuple[int, int]]:
    """`image_sizes` (one `(height, width)` per text, or one for all) checked and repeated to one per text."""
    if isinstance(image_sizes, torch.Tensor):
        image_sizes = image_sizes.tolist()
    try:
        sizes = np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        sizes = np.full((1, 2), np.nan)  # reported below
    if not (np.isfinite(sizes).all() and (sizes >= 1).all()):
        raise ValueError(f"`image_sizes` must be (height, width) pairs of positive integers, got {image_sizes!r}.")
    sizes = sizes.astype(np.int64)
    if len(sizes) == 1:
        sizes = np.repeat(sizes, num_texts, axis=0)
    if len(sizes) != num_texts:
        raise ValueError(f"`image_sizes` has {len(sizes)} sizes for {num_texts} texts.")
    return [tuple(size) for size in sizes.tolist()]


def add_empty_region_inputs(outputs: BatchFeature, image_token_id: int, num_points: int) -> None:
    """
    Gives a tokenized batch with images and no region zero region slots, so that it batches with samples that have
    regions; not when a sample holds several images (it could not have regions, the model would reject them).
    """
    if "pixel_values" not in outputs or "region_points" in outputs:
        return
    input_ids = outputs["input_ids"]
    input_ids = input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids
    if sum(image_token_id in ids for ids in input_ids) != len(outputs["pixel_values"]):
        return
    no_points = np.zeros((0, num_points, 2), dtype=np.float32)
    points_per_sample = [no_points] * len(input_ids)
    outputs.update(batch_region_points(points_per_sample, num_points, _return_tensors_of(outputs)))



def split_images_per_sample(images, texts: list[str], image_token: str) -> list[list]:
    """The images of each sample, in order: sample `i` takes as many as it has `<image>` tokens."""
    flat_images = make_flat_list_of_images(images) if images is not None else []
    ends = list(accumulate(sample_text.count(image_token) for sample_text in texts))
    return [flat_images[end - sample_text.count(image_token) : end] for sample_text, end in zip(texts, ends)]



def texts_of(text) -> list[str]:
    """`text` (a string or a list of strings) as a non-empty list of strings; a clear error for anything else."""
    if not isinstance(text, (str, list, tuple)) or not all(isinstance(sample, str) for sample in text):
        found = type(text).__name__ if not isinstance(text, (list, tuple)) else "a list holding " + ", ".join(
            sorted({type(sample).__name__ for sample in text if not isinstance(sample, str)})
        )
        raise TypeError(f"`text` must be a string or a list of strings, got {found}.")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError("`text` is an empty list: give at least one prompt.")
    return texts


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class FerretProcessor(ProcessorMixin):
    r"""
    Constructs a Ferret processor: an image processor (e.g. [`FerretImageProcessorPil`]), a LLaMA tokenizer holding
    the image and region tokens (see [`convert_original_tokenizer`]), and Ferret's conversation template.

    Text refers to regions of its sample's image with the placeholder `<region>` (one per region, matched with
    `regions` in order). The processor writes each one as the region's coordinate text followed by the region token,
    e.g. `"[250, 416, 443, 541] <region_fea>"`, expands `<image>` to one image token per image feature, and samples the
    points of every region mask for the model's region sampler. Region tokens already written in the text (with their
    coordinates) also take a region from `regions`, without any text being added. In a chat, a content item
    `{"type": "region", "box" | "point" | "mask": ...}` stands for `<region>` and brings its region with it (see
    [`~FerretProcessor.apply_chat_template`]): each conversation of a batch, or of a `pipeline` batch, has its own.

    Args:
        image_processor ([`FerretImageProcessorPil`]): the image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the tokenizer.
        chat_template (`str`, *optional*): Jinja template; defaults to [`DEFAULT_CHAT_TEMPLATE`] (Vicuna v1 with
            Ferret's system text, byte for byte as the original).
        patch_size (`int`, defaults to 14): patch size of the vision tower.
        num_region_points (`int`, defaults to 512): points sampled in each region mask.
        image_token (`str`, defaults to `"<image>"`): image placeholder token.
        region_token (`str`, defaults to `"<region_fea>"`): token whose embedding the model replaces by the region's.
        region_placeholder (`str`, defaults to `"<region>"`): what users write in the text where a region is referred.
        tile_patch_size (`int`, *optional*): Ferret-v2 only, patch size of the tile encoder (DINOv2: 14); with an image
            processor that has `image_grid_pinpoints`, each image also gets `rows * cols * (tile_size //
            tile_patch_size) ** 2` tile tokens after its global ones.
        max_regions_per_sample (`int`, *optional*, defaults to 32): most regions one sample may refer to; more raise a
            `ValueError` (every region costs a sampler pass and its points; `None` = no limit).
        coordinate_rule (`"ferret"` or `"ferret_ui"`, defaults to `"ferret"`): rule of the regions' coordinate text
            (`coordinates.GridRule`); converted Ferret-UI checkpoints use Ferret-UI's own, `"ferret_ui"`.

    Placeholders are reserved: `<image>`, `<region_fea>` and `<region>` in `text` are always read as placeholders
    (their counts must match `images` and `regions`, else a `ValueError`). With `apply_chat_template(...,
    sanitize_control_tokens=True)`, `<image>` and `<region_fea>` typed in message text are encoded as plain text and
    take no image or region; `<region>` stays the way to refer to a region. See `docs/robustness.md`.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        patch_size=14,
        num_region_points=512,
        image_token="<image>",
        region_token="<region_fea>",
        region_placeholder="<region>",
        tile_patch_size=None,
        max_regions_per_sample=32,
        coordinate_rule="ferret",
        **kwargs,
    ):
        if max_regions_per_sample is not None and not _is_positive_int(max_regions_per_sample):
            raise ValueError(
                f"`max_regions_per_sample` must be a positive int or None, got {max_regions_per_sample!r}."
            )
        self.max_regions_per_sample = max_regions_per_sample
        if coordinate_rule not in ("ferret", "ferret_ui"):
            raise ValueError(f"`coordinate_rule` must be 'ferret' or 'ferret_ui', got {coordinate_rule!r}.")
        self.coordinate_rule = coordinate_rule
        self.patch_size = patch_size
        self.tile_patch_size = tile_patch_size
        self.num_region_points = num_region_points
        self.image_token = image_token
        self.region_token = region_token
        self.region_placeholder = region_placeholder
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.region_token_id = tokenizer.convert_tokens_to_ids(region_token)
        for token, token_id in ((image_token, self.image_token_id), (region_token, self.region_token_id)):
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(
                    f"The tokenizer has no token {token!r}; add it as a special token "
                    "(see `convert_original_tokenizer`)."
                )
        self._region_slot_pattern = re.compile(
            _UNMARKED
            + "(?:"
            + "|".join(re.escape(slot) for slot in sorted({region_placeholder, region_token}, key=len, reverse=True))
            + ")"
        )
        chat_template = DEFAULT_CHAT_TEMPLATE if chat_template is None else chat_template
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(
        self, images: ImageInput | None = None, text: TextInput | list[TextInput] | None = None, regions=None, **kwargs
    ) -> BatchFeature:
        """
        Prepares images, text and referred regions for the model.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, a path / URL / base64 string, or a (nested)
                list of them): one image per `<image>` in `text`, in order. Checked and normalised by
                [`prepare_image`]: EXIF orientation applied (region coordinates refer to the displayed image), 16-bit
                images scaled to 8 bits, float images read as [0, 1]; unusable images raise an error naming `images`.
            text (`str` or `list[str]`): prompts with `<image>` and one `<region>` per referred region.
            regions (`list`, *optional*): per sample, the list of its regions (an empty list for a sample without
                regions); for a single sample the flat list is accepted. A region is a point `(x, y)`, a box
                `(x1, y1, x2, y2)` in pixels of the original image, a `[height, width]` mask, or a dict
                `{"point" | "box" | "mask": ...}` (see [`normalize_region`]).
            region_generator (`torch.Generator`, *optional*): draws a random subset of the pixels of masks larger than
                `num_region_points` (default: an evenly spaced deterministic subset).
            **kwargs: image processor and tokenizer arguments (`return_tensors`, `padding`, `padding_side`, ...).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `pixel_values` `[num_images, 3, height, width]`, and,
            when a sample has regions, `region_points` float32 `[batch_size, max_regions, num_region_points, 2]`
            (normalised `(x, y)`, zero rows after a sample's regions) and `region_counts` int64 `[batch_size]`.
        """
        region_generator = kwargs.pop("region_generator", None)
        images = prepare_images(images)
        if text is None:
            if regions is not None:
                raise ValueError("`regions` were given without `text`: refer to them with `<region>` in `text`.")
            return super().__call__(images=images, text=text, **kwargs)

        texts = texts_of(text)
        sanitized = kwargs.get("sanitize_control_tokens")
        unmarked_texts = [_without_marked_tokens(sample) for sample in texts] if sanitized else texts
        self.validate_inputs(images=images, text=unmarked_texts)
        images_per_sample = split_images_per_sample(images, unmarked_texts, self.image_token)
        regions_per_sample = split_regions_per_sample(regions, len(texts))
        region_data = [
            self._expand_regions(index, sample_text, sample_images, sample_regions, region_generator)
            for index, (sample_text, sample_images, sample_regions) in enumerate(
                zip(texts, images_per_sample, regions_per_sample)
            )
        ]
        texts = [sample_text for sample_text, _, _ in region_data]
        outputs = super().__call__(images=images, text=texts, **kwargs)
        # Truncation must not cut region tokens either (ProcessorMixin checks the image tokens): a clear error here
        # rather than a count mismatch in the model.
        self._check_special_mm_tokens(texts, outputs, modalities=["region"])

        if "text_replacement_offsets" in outputs:
            image_offsets = outputs["text_replacement_offsets"] or [[] for _ in texts]
            outputs["text_replacement_offsets"] = [
                _compose_replacement_offsets(region_offsets, sample_image_offsets)
                for (_, region_offsets, _), sample_image_offsets in zip(region_data, image_offsets)
            ]
        points_per_sample = [points for _, _, points in region_data]
        if any(len(points) for points in points_per_sample):
            outputs.update(batch_region_points(points_per_sample, self.num_region_points, _return_tensors_of(outputs)))
        return outputs

    def apply_chat_template(self, conversation, chat_template=None, processor_kwargs=None, **kwargs):
        """
        [`~ProcessorMixin.apply_chat_template`], with the regions of each conversation given in its messages.

        A content item `{"type": "region", "box": [x1, y1, x2, y2]}`, `{"type": "region", "point": [x, y]}` or
        `{"type": "region", "mask": mask}` (pixels of the conversation's image; the mask a `[height, width]` array,
        tensor or PIL image) refers to a region where it stands. It is written as `<region>`, glued to the text around
        it (write the spaces in the text items: `[text "What is ", region, text "?"]` -> `"What is <region>?"`), which
        the processor turns into the region's coordinate text and region token; its geometry becomes a region of its
        own conversation, in the order the items come across the conversation's messages. So every conversation of a
        batch carries its own regions, also in `pipeline("image-text-to-text")`, which processes chats one at a time
        and gives the same `processor_kwargs` to each.

        The other form, `<region>` in the text with `processor_kwargs={"regions": ...}`, works as before; the two
        forms can't be mixed in one call. Without `regions` in `processor_kwargs`, a tokenized batch with images (one
        per sample) always holds `region_points` and `region_counts` (zero regions when no conversation refers to one),
        so chats processed one at a time batch together.

        Raises:
            ValueError: region items mixed with `processor_kwargs["regions"]` or with `<region>` / `<region_fea>`
                typed in a message's text, a region item with no or several geometries or the wrong number of
                coordinates, or a conversation with region items and not exactly one image. Errors name the chat (its
                index in a batch), the message and the content item, counted from 0.
            TypeError: a region item whose geometry has the wrong type.
        """
        conversations, is_batched = conversations_of(conversation)
        chat_names = [f"chat {index}, " if is_batched else "" for index in range(len(conversations))]
        placeholders = [self.region_placeholder] * len(conversations)
        lowered, regions = zip(*map(take_region_items, conversations, chat_names, placeholders))
        regions_in_kwargs = (processor_kwargs or {}).get("regions") is not None
        if any(regions):
            if regions_in_kwargs:
                raise ValueError(
                    'Regions were given both as {"type": "region", ...} items in the messages and as '
                    '`processor_kwargs["regions"]`: give them one way (region items keep each chat\'s regions with it).'
                )
            ignored = self.region_token if kwargs.get("sanitize_control_tokens", False) else None  # typed as text
            needs_image = "images" not in (processor_kwargs or {})
            for chat, name, chat_regions in zip(conversations, chat_names, regions):
                check_region_chat(chat, name, len(chat_regions), self._region_slot_pattern, ignored, needs_image)
            processor_kwargs = {**(processor_kwargs or {}), "regions": list(regions)}
            conversation = list(lowered) if is_batched else lowered[0]
        outputs = super().apply_chat_template(
            conversation, chat_template=chat_template, processor_kwargs=processor_kwargs, **kwargs
        )
        if not regions_in_kwargs and isinstance(outputs, BatchFeature):
            add_empty_region_inputs(outputs, self.image_token_id, self.num_region_points)
        return outputs

    def _expand_regions(
        self, index: int, text: str, images: list, regions: list, generator: torch.Generator | None
    ) -> tuple[str, list[dict], np.ndarray]:
        """
        Writes the coordinates of one sample's regions in place of its `<region>` placeholders and samples their
        points.

        Returns:
            The new text, the replacement offsets (as `ProcessorMixin.get_text_with_replacements` returns them) and
            the region points `[num_regions, num_region_points, 2]`.
        """
        slots = list(self._region_slot_pattern.finditer(text))
        no_points = np.zeros((0, self.num_region_points, 2), dtype=np.float32)
        if not slots and not regions:
            return text, [], no_points
        if self.max_regions_per_sample is not None and max(len(slots), len(regions)) > self.max_regions_per_sample:
            raise ValueError(
                f"Sample {index} refers to {max(len(slots), len(regions))} regions but the processor's "
                f"`max_regions_per_sample` is {self.max_regions_per_sample}; split the sample or raise the limit."
            )
        if len(images) != 1:
            raise ValueError(
                f"Sample {index} refers to regions ({len(slots)} region placeholders in `text`, {len(regions)} "
                f"regions in `regions`) but has {len(images)} images: a sample with regions needs exactly one "
                "`<image>` in `text` and its image in `images`."
            )
        if len(slots) != len(regions):
            raise ValueError(
                f"Sample {index} has {len(slots)} region placeholders ({self.region_placeholder!r} or "
                f"{self.region_token!r}) in `text` but {len(regions)} regions in `regions`; they are matched in "
                "order, one region per placeholder. (In a chat, `{\"type\": \"region\", \"box\": ...}` content items "
                "give each conversation its own regions, e.g. in a `pipeline` batch, where `processor_kwargs` go to "
                "every chat.)"
            )
        image_size = _original_image_size(images[0])
        masks, coordinate_texts = zip(*(normalize_region(r, image_size, self.coordinate_rule) for r in regions))
        text, offsets = write_region_texts(text, slots, coordinate_texts, self.region_placeholder, self.region_token)
        points = mask_to_points(masks, self.num_region_points, generator=generator)
        return text, offsets, points.numpy()

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """What one `<image>` becomes: the image's tokens, counted for its original size (the image processor's
        `image_sizes`; Ferret v1's count is the same for every size)."""
        sizes = image_inputs.get("image_sizes")
        size = tuple(int(value) for value in sizes[image_idx]) if sizes is not None else None
        return self.image_token * self._get_num_image_tokens(size)

    def _get_num_image_tokens(self, image_size: tuple[int, int] | None) -> int:
        """
        Number of image tokens for one image of original size `image_size` (`(height, width)`; only Ferret-v2 needs
        it).

        Ferret stretches every image to the image processor's `size`, so the global view gives
        `(height // patch_size) * (width // patch_size)` tokens (576 for 336 px and patch 14) whatever `image_size`.
        Ferret-v2 adds the tiles of the grid the image processor picks for `image_size`: `rows * cols * t^2` with
        `t = tile_size // tile_patch_size` (576 per tile at 336 px, patch 14).
        """
        size = self.image_processor.size
        num_tokens = (size["height"] // self.patch_size) * (size["width"] // self.patch_size)
        if getattr(self.image_processor, "image_grid_pinpoints", None):
            if not self.tile_patch_size:
                raise ValueError("An any-resolution image processor needs the processor's `tile_patch_size`.")
            rows, cols = self.image_processor.select_grid(image_size)
            num_tokens += rows * cols * (self.image_processor.tile_size // self.tile_patch_size) ** 2
        return num_tokens

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder-token counts for images of the given `(height, width)` sizes."""
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(
            num_image_tokens=[self._get_num_image_tokens(image_size) for image_size in image_sizes],
            num_image_patches=[1] * len(image_sizes),
        )

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(super().model_input_names + ["region_points", "region_counts"]))

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs) -> list[str]:
        """
        Decodes generated ids (`[batch_size, sequence_length]` or `[sequence_length]`) to a list of strings.
        Grounded boxes stay in the text; see [`~FerretProcessor.post_process_grounding`] to extract them.
        """
        if isinstance(generated_outputs, (torch.Tensor, np.ndarray)) and generated_outputs.ndim == 1:
            generated_outputs = generated_outputs[None]
        elif isinstance(generated_outputs, (list, tuple)) and generated_outputs and _is_number(generated_outputs[0]):
            generated_outputs = [generated_outputs]
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    def post_process_grounding(self, texts, image_sizes):
        """
        Extracts the grounded boxes from decoded Ferret outputs, in pixels of the original images.

        Args:
            texts (`str` or `list[str]`): decoded outputs.
            image_sizes: `(height, width)` of the original image, one per text or a single one for all.

        Returns:
            For each text (a single dict for a single string) a dict with `"text"` (the text without its coordinate
            groups) and `"entities"` (list of `{"phrase", "grid": grid values, "box": [x1, y1, x2, y2] pixels,
            "span": (start, end)}`); see [`coordinates.parse_grounded_text`] for the rules (values clipped to the grid
            and the image, corners ordered). Malformed coordinates never raise.
        """
        is_single = isinstance(texts, str)
        if not is_single and not (isinstance(texts, (list, tuple)) and all(isinstance(text, str) for text in texts)):
            raise TypeError(f"`texts` must be a string or a list of strings, got {type(texts).__name__}.")
        texts = [texts] if is_single else list(texts)
        sizes = image_sizes_per_text(image_sizes, len(texts))
        results = [parse_grounded_text(text, tuple(size)) for text, size in zip(texts, sizes)]
        return results[0] if is_single else results


__all__ = ["FerretProcessor"]
