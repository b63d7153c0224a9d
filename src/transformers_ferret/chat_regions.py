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
"""Region content items of chat messages (`{"type": "region", "box" | "point" | "mask": ...}`): checking their form,
and writing them as the `<region>` placeholder where they stand while collecting each conversation's regions, for
[`FerretProcessor.apply_chat_template`]."""

import re
from numbers import Number

import numpy as np
import torch
from PIL import Image


def _is_coordinate(value) -> bool:
    is_number = isinstance(value, Number) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0)
    return is_number and not isinstance(value, (bool, np.bool_)) and not (
        isinstance(value, (np.ndarray, torch.Tensor)) and value.dtype in (np.bool_, torch.bool)
    )


_REGION_GEOMETRIES = {"box": 4, "point": 2, "mask": None}
"""Geometry keys of a region content item and the number of coordinates each takes (`None`: a 2-D mask)."""


def conversations_of(conversation) -> tuple[list, bool]:
    """The conversations of an `apply_chat_template` input (lists of messages) and whether it was a batch."""
    if isinstance(conversation, (list, tuple)) and conversation and (
        isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")
    ):
        return [getattr(chat, "messages", chat) for chat in conversation], True
    return [getattr(conversation, "messages", conversation)], False


def region_of_item(item: dict, where: str) -> dict:
    """
    The region (`{"box" | "point" | "mask": value}`, as [`normalize_region`] takes it) of one `{"type": "region"}`
    content item, checked for its form; `where` names the item in errors. Whether the region fits its image is checked
    with the image, by the processor.
    """
    kinds = [kind for kind in _REGION_GEOMETRIES if item.get(kind) is not None]
    if len(kinds) != 1:
        found = "none of them" if not kinds else " and ".join(f'"{kind}"' for kind in kinds)
        raise ValueError(
            f'{where}: a region item needs exactly one of "box" [x1, y1, x2, y2], "point" [x, y] or "mask" (a '
            f"[height, width] array, tensor or PIL image), got {found} (keys {sorted(item)})."
        )
    kind, value = kinds[0], item[kinds[0]]
    if kind == "mask":
        is_array = isinstance(value, (np.ndarray, torch.Tensor))
        if not (isinstance(value, Image.Image) or is_array):
            raise TypeError(
                f'{where}: a region "mask" must be a [height, width] numpy array, torch tensor or PIL image, got '
                f"{type(value).__name__}."
            )
        if is_array and value.ndim != 2:
            raise ValueError(
                f'{where}: a region "mask" must have 2 dimensions [height, width], got shape {tuple(value.shape)}.'
            )
        return {kind: value}
    is_vector = isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1
    if not (is_vector or isinstance(value, (list, tuple))) or not all(_is_coordinate(v) for v in value):
        raise TypeError(
            f'{where}: a region "{kind}" must be a list of {_REGION_GEOMETRIES[kind]} numbers (pixels of the '
            f"original image), got {value!r}."
        )
    if len(value) != _REGION_GEOMETRIES[kind]:
        names = "[x1, y1, x2, y2]" if kind == "box" else "[x, y]"
        raise ValueError(f'{where}: a region "{kind}" needs {_REGION_GEOMETRIES[kind]} numbers {names}, got {value!r}.')
    return {kind: value}


def _lower_region_items(content: list, placeholder: str, where: str) -> tuple[list, list[dict]]:
    """
    One message's content with its region items written as `placeholder` into its text items, as the Ferret chat
    templates render them (glued to the text around them; text items still joined by newlines), so that templates that
    know no region item render the same prompt. Returns the new content and the message's regions, in order; `where`
    names the message in errors.
    """
    lowered, regions, target, previous = [], [], None, None
    for index, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in ("text", "region"):
            lowered.append(item)
            continue
        if kind == "region":
            regions.append(region_of_item(item, f"{where}, content item {index}"))
        text = placeholder if kind == "region" else item.get("text", "")
        if previous is not None and not (previous == kind == "text"):
            lowered[target] = {**lowered[target], "text": lowered[target].get("text", "") + text}
        else:
            target = len(lowered)
            lowered.append(dict(item) if kind == "text" else {"type": "text", "text": text})
        previous = kind
    return lowered, regions


def take_region_items(messages: list, chat_name: str, placeholder: str) -> tuple[list, list[dict]]:
    """A conversation with its region items written as `<region>` in their message's text, and its regions."""
    lowered, regions = [], []
    for message_index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, (list, tuple)):
            lowered.append(message)
            continue
        where = f"{chat_name}message {message_index} ({message.get('role')!r})"
        content, message_regions = _lower_region_items(content, placeholder, where)
        lowered.append({**message, "content": content})
        regions += message_regions
    return lowered, regions


def check_region_chat(
    messages: list, chat_name: str, num_regions: int, slot_pattern: re.Pattern, ignored_slot: str | None,
    needs_image: bool,
):
    """
    Checks one conversation of a call that gives regions as region items: no region placeholder (`slot_pattern`, except
    `ignored_slot`) typed in its text (it would have no region), and exactly one image when it refers to regions.
    """
    num_images = 0
    for message_index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            num_images += kind in ("image", "image_url")
            slots = slot_pattern.findall(item.get("text") or "") if kind == "text" else []
            slots = [slot for slot in slots if slot != ignored_slot]
            if slots:
                raise ValueError(
                    f"{chat_name}message {message_index} ({message.get('role')!r}) has {slots[0]!r} in its text, "
                    'but this call gives regions as {"type": "region", ...} items, so it would have no region: '
                    "put a region item where it stands."
                )
    if num_regions and needs_image and num_images != 1:
        raise ValueError(
            f"{chat_name[:-2].capitalize() or 'The chat'} refers to {num_regions} regions with region items but "
            f"has {num_images} images: a chat with regions needs exactly one image item, the one they lie on."
        )
