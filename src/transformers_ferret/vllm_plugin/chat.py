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
"""The chat content item `{"type": "region", "box" | "point" | "mask": ...}` in vLLM (`LLM.chat`, `vllm serve`'s chat
completions), the same item `FerretProcessor.apply_chat_template` takes.

vLLM's chat parser knows a fixed set of content types and rejects others, and its item tracker hands on only the
modalities it knows. Two of its functions are wrapped, once per process: a `region` part is checked, added to the
request's `region` items, and kept in the message for the chat template (Ferret's templates write it as `<region>`
where it stands); the tracker's `region` items become the request's `multi_modal_data["region"]`. Other content types
and other models are left to vLLM.
"""

import functools

from .processing import REGION_MODALITY, region_of_request_item


def _add_region(part: dict, mm_parser) -> dict:
    from vllm.renderers.chat_utils import AsyncMultiModalItemTracker

    tracker = mm_parser._tracker
    region = region_of_request_item(part, len(tracker._items_by_modality.get(REGION_MODALITY, [])))
    uuid = part.get("uuid")
    item = (region, uuid)
    if isinstance(tracker, AsyncMultiModalItemTracker):  # the server's tracker resolves awaitables

        async def resolved():
            return item

        tracker.add(REGION_MODALITY, resolved)
    else:
        tracker.add(REGION_MODALITY, item)
    return region


def install_region_content_part() -> None:
    from vllm.renderers import chat_utils

    if getattr(chat_utils._parse_chat_message_content_part, "_ferret_hook", False):
        return
    parse_part, resolve_items = chat_utils._parse_chat_message_content_part, chat_utils._resolve_items

    @functools.wraps(parse_part)
    def _parse_chat_message_content_part(part, mm_parser, *, wrap_dicts, interleave_strings):
        if not (isinstance(part, dict) and part.get("type") == REGION_MODALITY):
            return parse_part(part, mm_parser, wrap_dicts=wrap_dicts, interleave_strings=interleave_strings)
        region = _add_region(part, mm_parser)
        placeholder = mm_parser._tracker.model_cls.get_placeholder_str(REGION_MODALITY, 0)
        return {"type": REGION_MODALITY, **region} if wrap_dicts else placeholder

    @functools.wraps(resolve_items)
    def _resolve_items(items_by_modality, mm_processor, modality_order):
        regions = items_by_modality.pop(REGION_MODALITY, None)
        mm_data, mm_uuids = resolve_items(items_by_modality, mm_processor, modality_order)
        if regions:
            mm_data[REGION_MODALITY] = [region for region, _ in regions]
            mm_uuids[REGION_MODALITY] = [uuid for _, uuid in regions]
        return mm_data, mm_uuids

    _parse_chat_message_content_part._ferret_hook = True
    chat_utils._parse_chat_message_content_part = _parse_chat_message_content_part
    chat_utils._resolve_items = _resolve_items
