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
"""Ferret on vLLM: a plugin (entry point `vllm.general_plugins`, installed with the `vllm` extra) that vLLM loads in
every process it starts. It registers Ferret's architecture with vLLM and hands Ferret prompts' text to Ferret's
multimodal processor. Nothing here is imported by `import transformers_ferret`."""


def register() -> None:
    """vLLM's plugin hook: registers `FerretForConditionalGeneration` (lazily: the model module is imported by the
    process that builds the model) and the prompt-text hook."""
    from vllm import ModelRegistry

    import transformers_ferret  # noqa: F401  (registers FerretConfig and FerretProcessor with transformers' Auto classes)

    from .renderer import install_prompt_text_hook

    if "FerretForConditionalGeneration" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            "FerretForConditionalGeneration", "transformers_ferret.vllm_plugin.modeling:FerretForConditionalGeneration"
        )
    install_prompt_text_hook()
