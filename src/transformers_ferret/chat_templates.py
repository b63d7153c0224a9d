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
"""Ferret chat templates for the language-model families Ferret, Ferret-UI and Ferret-v2 build on.

Every template

* uses Ferret's system text when the conversation has no system message (a system message replaces it),
* writes each image of a message as `<image>\\n` at the start of that message (several text items are joined by
  `\\n`), as the original code moves `<image>` to the start of its turn,
* writes each region item (`{"type": "region", "box" | "point" | "mask": ...}`) as the `<region>` placeholder where it
  stands, glued to the text around it (`FerretProcessor.apply_chat_template` takes the item's geometry as the region),
* wraps each assistant reply *with its end-of-turn token(s)* in `{% generation %}...{% endgeneration %}`, so
  `apply_chat_template(..., return_assistant_tokens_mask=True)` marks exactly what a model is trained to write,
* ends with the family's assistant header when `add_generation_prompt=True`.

| family | template | turn end | rendered single-turn prompt |
|---|---|---|---|
| Vicuna v1 (Ferret, Llama-1/2 tokenizers) | [`VICUNA_CHAT_TEMPLATE`] | `</s>` | `<s>SYSTEM  USER: <image>\\nQ ASSISTANT:` |
| Llama-3 | [`LLAMA3_CHAT_TEMPLATE`] | `<|eot_id|>` | `<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nSYSTEM<|eot_id|><|start_header_id|>user<|end_header_id|>\\n\\n<image>\\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n` |
| ChatML (Qwen2) | [`CHATML_CHAT_TEMPLATE`] | `<|im_end|>` | `<|im_start|>system\\nSYSTEM<|im_end|>\\n<|im_start|>user\\n<image>\\nQ<|im_end|>\\n<|im_start|>assistant\\n` |
| Gemma | [`GEMMA_CHAT_TEMPLATE`] | `<end_of_turn>\\n<eos>` | `<bos>SYSTEM<start_of_turn>user\\n<image>\\nQ<end_of_turn>\\n<start_of_turn>model\\n` |

Vicuna keeps the original Ferret text byte for byte (its system text ends with a space, so two spaces precede
`USER:`). The other families use Ferret-UI's system text, the same sentence without the trailing space. Gemma has no
system role: as Ferret-UI's `ferret_gemma_instruct`, the system text is written right after `<bos>`, in front of the
first user turn, and a finished model turn ends with `<end_of_turn>\\n<eos>` (both supervised). Converted Ferret-UI
Llama-3 checkpoints use [`FERRET_UI_LLAMA3_CHAT_TEMPLATE`], which starts with two `<|begin_of_text|>`, as that model
was trained and evaluated.
"""

FERRET_SYSTEM_PROMPT = (
    "A chat between a human and an AI that understands visuals. In images, [x, y] denotes points: top-left [0, 0], "
    "bottom-right [width-1, height-1]. Increasing x moves right; y moves down. Bounding box: [x1, y1, x2, y2]. "
    "Image size: 1000x1000. Follow instructions. "
)
"""System text of the original `ferret_v1` conversation template (its trailing space is part of it)."""

# Vicuna v1 as the original Ferret renders it: `<s>` + system + " " + "USER: <image>\n... " + "ASSISTANT: ...</s>" ...
# ending with "ASSISTANT:" for generation. Images go first in their message; several text items are joined by "\n";
# a region item is written as `<region>` where it stands, glued to the text around it (no newline, no space).
# Every tag trims the whitespace around it, so only the quoted strings reach the output.
RENDER_CONTENT_MACRO = """
{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for item in content if item.type == 'image' -%}
            {{- '<image>\\n' -}}
        {%- endfor -%}
        {%- for item in content if item.type in ['text', 'region'] -%}
            {%- if item.type == 'region' -%}
                {{- '<region>' -}}
            {%- else -%}
                {{- ('\\n' if not loop.first and loop.previtem.type == 'text' else '') + item.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
"""
"""Jinja macro shared by the Ferret chat templates: images first in their message (`<image>\\n` each), then the text
items joined by newlines, each region item (`{"type": "region", ...}`) written as the `<region>` placeholder where it
stands, with no separator around it (`[text "What is ", region, text "?"]` -> `What is <region>?`)."""

DEFAULT_CHAT_TEMPLATE = RENDER_CONTENT_MACRO + """
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
    {{- render_content(messages[0].content) + ' ' -}}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {{- '@FERRET_SYSTEM_PROMPT@ ' -}}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {{- 'USER: ' + render_content(message.content) + ' ' -}}
    {%- elif message.role == 'assistant' -%}
        {{- 'ASSISTANT:' -}}
        {%- generation -%}
            {{- ' ' + render_content(message.content) + eos_token -}}
        {%- endgeneration -%}
    {%- else -%}
        {{- raise_exception('Ferret conversations have system, user and assistant messages, got ' + message.role) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
""".replace("@FERRET_SYSTEM_PROMPT@", FERRET_SYSTEM_PROMPT)


FERRET_UI_SYSTEM_PROMPT = FERRET_SYSTEM_PROMPT.rstrip(" ")
"""System text of Ferret-UI's `ferret_llama_3` / `ferret_gemma_instruct` templates (no trailing space)."""

VICUNA_CHAT_TEMPLATE = DEFAULT_CHAT_TEMPLATE
"""Vicuna v1 with Ferret's system text, as the original Ferret renders it (the processor's default template)."""

# `system_text` = the system message's content, or Ferret-UI's system text when there is none.
_SYSTEM_TEXT = """
{%- if messages and messages[0].role == 'system' -%}
    {%- set system_text = render_content(messages[0].content) -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_text = '@FERRET_UI_SYSTEM_PROMPT@' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
"""

_UNKNOWN_ROLE = (
    "{{- raise_exception('Ferret conversations have system, user and assistant messages, got ' + message.role) -}}"
)


def _template(body: str) -> str:
    return (RENDER_CONTENT_MACRO + _SYSTEM_TEXT + body).replace("@FERRET_UI_SYSTEM_PROMPT@", FERRET_UI_SYSTEM_PROMPT)


LLAMA3_CHAT_TEMPLATE = _template(
    """
{{- bos_token -}}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_text + '<|eot_id|>' -}}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' + render_content(message.content) + '<|eot_id|>' -}}
    {%- elif message.role == 'assistant' -%}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {%- generation -%}
            {{- render_content(message.content) + '<|eot_id|>' -}}
        {%- endgeneration -%}
    {%- else -%}
        @UNKNOWN_ROLE@
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{%- endif -%}
""".replace("@UNKNOWN_ROLE@", _UNKNOWN_ROLE)
)
"""Llama-3 (`ferret_llama_3`): header blocks closed by `<|eot_id|>`; the reply and its `<|eot_id|>` are supervised."""

FERRET_UI_LLAMA3_CHAT_TEMPLATE = LLAMA3_CHAT_TEMPLATE.replace(
    "{{- bos_token -}}", "{{- bos_token + '<|begin_of_text|>' -}}", 1
)
"""[`LLAMA3_CHAT_TEMPLATE`] with the two `<|begin_of_text|>` of Ferret-UI's released Llama-3 model: the system text of
its `ferret_llama_3` template starts with a literal `<|begin_of_text|>` and its tokenizer adds its own, in training and
at inference, so every prompt it saw starts with both."""

CHATML_CHAT_TEMPLATE = _template(
    """
{{- '<|im_start|>system\\n' + system_text + '<|im_end|>\\n' -}}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {{- '<|im_start|>user\\n' + render_content(message.content) + '<|im_end|>\\n' -}}
    {%- elif message.role == 'assistant' -%}
        {{- '<|im_start|>assistant\\n' -}}
        {%- generation -%}
            {{- render_content(message.content) + '<|im_end|>' -}}
        {%- endgeneration -%}
        {{- '\\n' -}}
    {%- else -%}
        @UNKNOWN_ROLE@
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
""".replace("@UNKNOWN_ROLE@", _UNKNOWN_ROLE)
)
"""ChatML (Qwen2): the reply and its `<|im_end|>` are supervised, the newline after it is not."""

GEMMA_CHAT_TEMPLATE = _template(
    """
{{- bos_token + system_text -}}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {{- '<start_of_turn>user\\n' + render_content(message.content) + '<end_of_turn>\\n' -}}
    {%- elif message.role == 'assistant' -%}
        {{- '<start_of_turn>model\\n' -}}
        {%- generation -%}
            {{- render_content(message.content) + '<end_of_turn>\\n' + eos_token -}}
        {%- endgeneration -%}
    {%- else -%}
        @UNKNOWN_ROLE@
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\\n' -}}
{%- endif -%}
""".replace("@UNKNOWN_ROLE@", _UNKNOWN_ROLE)
)
"""Gemma (`ferret_gemma_instruct`): no system role, so the system text precedes the first user turn; a model turn
ends with `<end_of_turn>\\n<eos>`, all supervised."""

TURN_END_TOKENS = {
    "vicuna": None,  # the tokenizer's eos token, `</s>`
    "llama3": "<|eot_id|>",
    "chatml": "<|im_end|>",
    "gemma": "<end_of_turn>",
}
"""Token that closes an assistant turn in each family (`None`: the tokenizer's eos token); generation stops on it."""

_TEMPLATES = {
    "vicuna": VICUNA_CHAT_TEMPLATE,
    "llama3": LLAMA3_CHAT_TEMPLATE,
    "chatml": CHATML_CHAT_TEMPLATE,
    "gemma": GEMMA_CHAT_TEMPLATE,
}
_FAMILY_OF_MODEL_TYPE = {"llama": None, "qwen2": "chatml", "gemma": "gemma", "gemma2": "gemma"}  # None: see below
SUPPORTED_MODEL_TYPES = tuple(_FAMILY_OF_MODEL_TYPE)


def _has_token(tokenizer, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and token_id != tokenizer.unk_token_id


def chat_template_family(model_type: str, tokenizer=None) -> str:
    """The template family (`"vicuna"`, `"llama3"`, `"chatml"` or `"gemma"`) of a language model.

    Args:
        model_type (`str`): the language model's `config.model_type` (`llama`, `qwen2`, `gemma`, `gemma2`).
        tokenizer (*optional*): its tokenizer. A `llama` model uses Llama-3's template when its tokenizer has
            `<|eot_id|>`, Vicuna v1's otherwise (Vicuna, Llama-1/2); without a tokenizer, Vicuna v1.

    Raises:
        ValueError: for a model type outside the supported families.
    """
    if model_type not in _FAMILY_OF_MODEL_TYPE:
        raise ValueError(
            f"No Ferret chat template for language models of type {model_type!r}; supported: "
            "llama (Vicuna v1, or Llama-3 when the tokenizer has <|eot_id|>), qwen2 (ChatML), gemma and gemma2 "
            "(Gemma). Pass a template explicitly for other families."
        )
    family = _FAMILY_OF_MODEL_TYPE[model_type]
    if family is None:
        family = "llama3" if tokenizer is not None and _has_token(tokenizer, "<|eot_id|>") else "vicuna"
    return family


def chat_template_for(model_type: str, tokenizer=None) -> str:
    """The Ferret chat template of a language model: see [`chat_template_family`] for the choice."""
    return _TEMPLATES[chat_template_family(model_type, tokenizer)]


__all__ = [
    "CHATML_CHAT_TEMPLATE",
    "DEFAULT_CHAT_TEMPLATE",
    "FERRET_SYSTEM_PROMPT",
    "FERRET_UI_LLAMA3_CHAT_TEMPLATE",
    "FERRET_UI_SYSTEM_PROMPT",
    "GEMMA_CHAT_TEMPLATE",
    "LLAMA3_CHAT_TEMPLATE",
    "RENDER_CONTENT_MACRO",
    "SUPPORTED_MODEL_TYPES",
    "TURN_END_TOKENS",
    "VICUNA_CHAT_TEMPLATE",
    "chat_template_family",
    "chat_template_for",
]
