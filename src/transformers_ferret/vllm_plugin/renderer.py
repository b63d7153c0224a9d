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
"""Hands a Ferret request's prompt text to its multimodal processor.

vLLM tokenizes a prompt before its multimodal processor runs and gives the processor the ids only. A region's
coordinate text is tokenized together with the text around it (`"is [12, 34, 56, 78] <region_fea>"`), and decoding ids
back to text is not exact (spaces before special tokens, characters a small vocabulary lacks), so the processor needs
the text itself: this hook adds it to the request's processor kwargs under a private key, for Ferret models only.
"""

import functools

from .processing import PROMPT_TEXT_KEY


def _with_prompt_text(renderer, prompt):
    if renderer.model_config.hf_config.model_type != "ferret" or not prompt.get("multi_modal_data"):
        return prompt
    if not isinstance(prompt.get("prompt"), str):
        return prompt
    kwargs = {**(prompt.get("mm_processor_kwargs") or {}), PROMPT_TEXT_KEY: prompt["prompt"]}
    return {**prompt, "mm_processor_kwargs": kwargs}


def install_prompt_text_hook() -> None:
    """Wraps `BaseRenderer._process_tokens` (and its async twin) once per process."""
    from vllm.renderers.base import BaseRenderer

    if getattr(BaseRenderer._process_tokens, "_ferret_hook", False):
        return
    process, process_async = BaseRenderer._process_tokens, BaseRenderer._process_tokens_async

    @functools.wraps(process)
    def _process_tokens(self, prompt, **kwargs):
        return process(self, _with_prompt_text(self, prompt), **kwargs)

    @functools.wraps(process_async)
    async def _process_tokens_async(self, prompt, **kwargs):
        return await process_async(self, _with_prompt_text(self, prompt), **kwargs)

    _process_tokens._ferret_hook = True
    BaseRenderer._process_tokens, BaseRenderer._process_tokens_async = _process_tokens, _process_tokens_async
