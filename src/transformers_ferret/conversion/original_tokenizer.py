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
"""Conversion of the original Ferret tokenizer (slow LLaMA SentencePiece folder) to a transformers 5 tokenizer."""

import os

from transformers import AddedToken, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase


def convert_original_tokenizer(
    model_dir: str | os.PathLike, image_token: str = "<image>", region_token: str = "<region_fea>"
) -> PreTrainedTokenizerBase:
    """
    Loads the tokenizer of an original Ferret checkpoint folder (`tokenizer.model`, `tokenizer_config.json`,
    `added_tokens.json`, as `LlamaTokenizer.save_pretrained` wrote them) and prepares it for [`FerretProcessor`].

    transformers 5 converts the SentencePiece model to a `tokenizers` backend. On top of it:
    * `region_token` keeps its id (32000 in the released models) and becomes a special token with `lstrip=True`, so
      the space before it is absorbed as the original slow tokenizer did (`"541] <region_fea>"` gives `']'`,
      `'<region_fea>'`, with no `'▁'` in between);
    * `image_token` is added as a special token with the next free id; the processor writes one per image feature
      where the original inserted the single placeholder id -200;
    * the padding token is the unknown token, as in the original training code.

    With these settings, tokenising a whole Ferret prompt gives the original ids, the image token standing where the
    original had -200.

    Args:
        model_dir (`str` or `os.PathLike`): folder of the original checkpoint.
        image_token (`str`, defaults to `"<image>"`): the image placeholder token.
        region_token (`str`, defaults to `"<region_fea>"`): the region-feature token.

    Returns:
        The converted tokenizer.
    """
    # The folder's config.json describes the original model (model_type "ferret"), not the tokenizer: a neutral config
    # makes AutoTokenizer pick the class from tokenizer_config.json alone.
    tokenizer = AutoTokenizer.from_pretrained(model_dir, config=PreTrainedConfig())
    tokenizer.add_special_tokens(
        {
            "extra_special_tokens": [
                AddedToken(region_token, lstrip=True, normalized=False, special=True),
                AddedToken(image_token, normalized=False, special=True),
            ]
        },
        replace_extra_special_tokens=False,
    )
    tokenizer.pad_token = tokenizer.unk_token
    # `legacy=True` (from the original tokenizer_config.json) makes the pre-tokenizer prepend "▁" after every special
    # token, as the original slow tokenizer did. transformers does not write it back on save, and a reload would then
    # default to `legacy=False` and change the ids next to `<image>` and `<region_fea>`: record it explicitly.
    tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    return tokenizer


__all__ = ["convert_original_tokenizer"]
