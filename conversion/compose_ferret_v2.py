"""Compose a Ferret-v2 from three pretrained parts: a CLIP vision encoder, a DINOv2 encoder and a causal language model.

    python conversion/compose_ferret_v2.py --clip CLIP_DIR --dinov2 DINOV2_DIR --llm LLM_DIR --output-dir OUT \
        [--stage1-projector FILE] [--grids 1x1 1x2 ...] [--region-feature-source vision|projected] \
        [--dtype float32|float16|bfloat16] [--seed 0] [--chat-template FILE]

* `--clip`: a `CLIPVisionModel` folder, or a full `CLIPModel` folder (its vision half is used). Global view encoder.
* `--dinov2`: a `Dinov2Model` folder (`Dinov2WithRegistersModel` works too). Tile encoder.
* `--llm`: any causal LM folder `AutoModelForCausalLM` loads, with its tokenizer (Vicuna/Llama, Llama-3, Qwen2,
  Gemma). Its base model becomes `model.language_model`, its output layer `lm_head`.
* `--stage1-projector`: the CLIP projector after Ferret-v2 stage I (image-caption alignment), a state dict in
  safetensors or a torch pickle (read with `weights_only=True`); keys as ours (`linear_1.*`, `linear_2.*`, with or
  without a `model.multi_modal_projector.` prefix) or as LLaVA's `mm_projector.bin` (`model.mm_projector.0.*` / `.2.*`).
* `--grids`: tile grids `ROWSxCOLS` (default: the paper's 14 grids, 1x1 ... 1x6, 2x2, 2x3 and transposes).
* `--chat-template`: a Jinja file replacing the Ferret chat template of the language model's family (Vicuna v1,
  Llama-3, ChatML for Qwen2, Gemma; see `transformers_ferret.chat_templates`); required for other families.

What the output holds:

* the three parts' weights, bit for bit (cast to `--dtype`, default the language model's dtype);
* `<region_fea>` and `<image>` added to the tokenizer as special tokens when it lacks them. The embedding matrix grows
  to cover them; the original vocabulary's rows are untouched. A new token's embedding row is the mean of the
  original vocabulary's rows and, with an untied `lm_head`, its output row is zero. With tied embeddings (e.g. small
  Qwen2 and Gemma models) the one shared row is the mean row, so the new tokens get the logit `mean_row . h`; the
  original vocabulary's logits are unchanged either way and generation never writes `<image>`
  (`suppress_tokens`). When the matrix already has rows past the tokenizer (Qwen2 pads its vocabulary), the new
  tokens take those unused rows and the vocabulary size stays;
* a new CLIP projector (`mlp2x_gelu`), DINOv2 projector, region sampler and, when the two encoders' widths differ
  under `--region-feature-source vision`, a linear adapter from DINOv2's width to CLIP's, initialised as
  `FerretForConditionalGeneration` initialises them (`--seed`); the stage-I projector, when given, replaces the CLIP
  projector; then the DINOv2 projector is initialised from the CLIP projector as the paper does (possible when the
  two encoders have the same width; otherwise it keeps its own initialisation and the script says so);
* a padding token for a tokenizer without one (Llama-1/2 and Vicuna tokenizers have `<unk>`, `<s>`, `</s>` and no
  pad token): its unk token, as Vicuna and LLaVA pad, else an end-of-text token that does not close assistant turns
  (so padding is never a supervised token), else a new special token `<pad>` with a new row as above;
* tokens of the language model's own tokenizer that have no row in its embedding matrix (a `<pad>` added without
  resizing the model) get new rows as above, with a warning naming them, the tokenizer's size and the matrix's rows;
  the written tokenizer is checked to have a row for every id;
* `generation_config.json`: the language model's, with `suppress_tokens=[<image>]` and the chat template's end of
  turn added to its eos ids;
* a `FerretProcessor`: global view stretched to CLIP's input size with CLIP's mean/std (from the CLIP folder's
  `preprocessor_config.json` when present), tiles of the same side normalised with DINOv2's (ImageNet) mean/std, and
  the Ferret chat template of the language model's family.

Every grid gives `(S/p)^2 + rows * cols * (S/q)^2` image tokens (S = CLIP's input size, p = CLIP's patch size,
q = DINOv2's): 576 + 576 per tile for CLIP-L/14-336 with DINOv2 patch 14. The script warns, naming the numbers and the
grids that fit, when the largest grid's image tokens plus a typical one-region prompt in the chat template exceed the
language model's `max_position_embeddings` (Vicuna v1.3: 2,048, while a 2x2 grid alone gives 2,880 image tokens).
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AddedToken,
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    GenerationConfig,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretImageProcessorPil, FerretProcessor
from transformers_ferret.chat_templates import TURN_END_TOKENS, chat_template_family, chat_template_for
from transformers_ferret.configuration_ferret import FERRET_V2_GRIDS

IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region_fea>"
PAD_TOKEN = "<pad>"  # added as padding token only when a tokenizer has neither a pad, an unk nor a spare end of text
# Modules of a Ferret model that no pretrained part provides.
NEW_MODULES = ("multi_modal_projector", "tile_projector", "tile_feature_adapter", "region_sampler")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---- tokenizer and vocabulary -------------------------------------------------------------------------------------


def _has_token(tokenizer, token: str) -> bool:
    """Whether `token` is in the vocabulary. An unknown string maps to the unk id, so a token with the unk id is in the
    vocabulary only when it is the unk token itself (a Llama-2 / Vicuna tokenizer's `<unk>` is a real token)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and (token_id != tokenizer.unk_token_id or token == tokenizer.unk_token)


def add_ferret_tokens(tokenizer, image_token: str = IMAGE_TOKEN, region_token: str = REGION_TOKEN) -> list[str]:
    """Adds the region and image tokens as special tokens where the tokenizer lacks them; returns the added ones.

    The region token absorbs the space before it (`lstrip=True`), as in the converted Ferret tokenizer, so
    `"[1, 2] <region_fea>"` ends in `"]"`, `"<region_fea>"`. Tokens the tokenizer already knows keep their settings.
    """
    new_tokens = [
        AddedToken(token, lstrip=token == region_token, normalized=False, special=True)
        for token in (region_token, image_token)
        if not _has_token(tokenizer, token)
    ]
    if new_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    if hasattr(tokenizer, "legacy"):
        # SentencePiece Llama tokenizers: keep the `legacy` pre-tokenisation across save/reload (ids next to specials).
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    return [token.content for token in new_tokens]


def set_pad_token(tokenizer, turn_end: str | None, add_if_missing: bool = False) -> str | None:
    """Gives a tokenizer without a padding token one that is never supervised: its unk token (as Vicuna and LLaVA
    pad: Llama-1/2 and Vicuna tokenizers have `<unk>` and no pad token), else an end-of-text token that does not close
    assistant turns. With `add_if_missing`, a tokenizer with none of these gets a new special token `<pad>` (the caller
    must then give it an embedding row). Returns the token chosen (None when the tokenizer already had one, or when
    none fits and `add_if_missing` is False)."""
    if tokenizer.pad_token is not None:
        return None
    for candidate in (tokenizer.unk_token, "<|finetune_right_pad_id|>", "<|end_of_text|>", "<|endoftext|>",
                      tokenizer.eos_token):  # fmt: skip
        if candidate and candidate != turn_end and _has_token(tokenizer, candidate):
            tokenizer.pad_token = candidate
            return candidate
    if not add_if_missing:
        return None
    tokenizer.add_special_tokens({"pad_token": AddedToken(PAD_TOKEN, normalized=False, special=True)})
    return PAD_TOKEN


def tokens_past_the_matrix(tokenizer, num_rows: int) -> dict[str, int]:
    """The tokenizer's tokens whose ids have no row in an embedding matrix of `num_rows` rows."""
    return {
        token: token_id
        for token_id, token in sorted((token_id, token) for token, token_id in tokenizer.get_vocab().items())
        if token_id >= num_rows
    }


def warn_about_tokens_past_the_matrix(tokenizer, num_rows: int) -> dict[str, int]:
    """Warns (and returns them) when the language model's own tokenizer has tokens past its embedding matrix, e.g. a
    `<pad>` or `<image>` added to the tokenizer without resizing the model. Composition gives them rows (the mean
    embedding row, a zero `lm_head` row) like the tokens it adds: the language model alone could not embed them."""
    outside = tokens_past_the_matrix(tokenizer, num_rows)
    if outside:
        special = [token for token in outside if token in tokenizer.all_special_tokens]
        named = ", ".join(f"{token!r} = {token_id}" for token, token_id in list(outside.items())[:10])
        more = f" and {len(outside) - 10} more" if len(outside) > 10 else ""
        warnings.warn(
            f"The language model's tokenizer has {len(tokenizer)} tokens but its embedding matrix only {num_rows} "
            f"rows: {len(outside)} token(s) have no row ({named}{more}; special tokens among them: "
            f"{special or 'none'}). "
            "The matrix is resized to cover them: their embedding rows are the mean row and their lm_head rows are "
            "zero, i.e. untrained. Check that the tokenizer belongs to this language model.",
            stacklevel=3,
        )
    return outside


def check_tokenizer_fits(tokenizer, vocab_size: int, tokens: dict[str, int]) -> None:
    """Raises when the composed model's tokenizer has an id without an embedding row, naming the sizes and tokens."""
    outside = tokens_past_the_matrix(tokenizer, vocab_size)
    mismatched = {token: (tokenizer.convert_tokens_to_ids(token), token_id) for token, token_id in tokens.items()
                  if tokenizer.convert_tokens_to_ids(token) != token_id}  # fmt: skip
    if outside or mismatched:
        raise ValueError(
            f"The composed tokenizer ({len(tokenizer)} tokens) does not fit the embedding matrix ({vocab_size} rows): "
            f"tokens without a row {outside or 'none'}; special tokens whose tokenizer id differs from the model's "
            f"(tokenizer id, model id): {mismatched or 'none'}."
        )


def grow_rows(weight: torch.Tensor, vocab_size: int, new_ids: list[int], num_original: int, fill: str) -> torch.Tensor:
    """`weight` with `vocab_size` rows: rows of `new_ids` and rows past the old matrix get the mean of the first
    `num_original` rows (`fill="mean"`) or zeros (`fill="zero"`); every other row is kept as it is."""
    grown = weight.new_empty(max(vocab_size, weight.shape[0]), weight.shape[1])
    grown[: weight.shape[0]] = weight
    value = weight[:num_original].float().mean(0) if fill == "mean" else torch.zeros(weight.shape[1])
    fill_rows = sorted(set(new_ids) | set(range(weight.shape[0], grown.shape[0])))
    grown[fill_rows] = value.to(weight.dtype)
    return grown[:vocab_size]


def ferret_generation_config(source: GenerationConfig, tokenizer, family: str, image_token_id: int) -> GenerationConfig:
    """The language model's generation config, stopping at the chat template's end of turn too, never writing
    `<image>`, padding with the tokenizer's padding token."""
    config = GenerationConfig.from_dict(source.to_dict())
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    turn_end = TURN_END_TOKENS.get(family) or tokenizer.eos_token
    if turn_end is not None and _has_token(tokenizer, turn_end):
        eos.append(tokenizer.convert_tokens_to_ids(turn_end))
    eos = list(dict.fromkeys(eos))
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    config.suppress_tokens = sorted(set(config.suppress_tokens or []) | {image_token_id})
    return config


# ---- context length -----------------------------------------------------------------------------------------------

# A typical one-image, one-region Ferret question: with the chat template around it, the text an image prompt carries.
TYPICAL_QUESTION = "What is the object [120, 340, 560, 780] <region_fea> in the image? Answer with its name and box."


def typical_prompt_tokens(tokenizer, chat_template: str) -> int | None:
    """Text tokens (image tokens excluded) of `TYPICAL_QUESTION` about one image, rendered by `chat_template` with
    its default system prompt and the generation prompt; None when the template cannot render it."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TYPICAL_QUESTION}]}]
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a custom template with other conventions: the estimate is only advisory
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return len(ids) - ids.count(image_token_id)


def context_length_report(
    grids: list[tuple[int, int]], global_tokens: int, tile_tokens: int, prompt_tokens: int, max_positions: int | None
) -> tuple[dict, str | None]:
    """The token budget of the largest grid's image prompt, and a warning when it exceeds `max_positions` (the
    language model's `max_position_embeddings`). Every grid gives `global_tokens + rows * cols * tile_tokens` image
    tokens (576 + 576 per tile for CLIP-L/14-336 and DINOv2 patch 14), plus `prompt_tokens` of text."""
    rows, cols = max(grids, key=lambda grid: grid[0] * grid[1])
    image_tokens = global_tokens + rows * cols * tile_tokens
    report = {
        "largest_grid": f"{rows}x{cols}",
        "image_tokens": image_tokens,
        "typical_prompt_text_tokens": prompt_tokens,
        "typical_prompt_tokens": image_tokens + prompt_tokens,
        "max_position_embeddings": max_positions,
    }
    if max_positions is None or image_tokens + prompt_tokens <= max_positions:
        return report, None
    fitting = [f"{r}x{c}" for r, c in grids if global_tokens + r * c * tile_tokens + prompt_tokens <= max_positions]
    smallest = global_tokens + min(r * c for r, c in grids) * tile_tokens + prompt_tokens
    advice = (
        f"Grids that fit with that prompt: {', '.join(fitting)} (pass `--grids {' '.join(fitting)}`)"
        if fitting
        else f"No grid fits: even the smallest needs {smallest} positions"
    )
    message = (
        f"The language model's max_position_embeddings is {max_positions}, but an image on the largest tile grid "
        f"({rows}x{cols}, {rows * cols} tiles) gives {image_tokens} image tokens ({global_tokens} global + "
        f"{rows * cols} x {tile_tokens} tile tokens), {image_tokens + prompt_tokens} with a typical prompt "
        f"({prompt_tokens} text tokens: chat template, system prompt and a one-region question), before any answer. "
        f"Positions past {max_positions} are beyond what the language model was trained on and its output degrades "
        f"there. {advice}; or compose with a language model of a longer context."
    )
    return report, message


# ---- parts --------------------------------------------------------------------------------------------------------


def load_clip_vision(clip_dir: str | Path, dtype="auto") -> CLIPVisionModel:
    """The CLIP vision encoder of a `CLIPVisionModel` folder or of a full `CLIPModel` folder."""
    model_type = AutoConfig.from_pretrained(clip_dir).model_type
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(f"--clip {clip_dir} holds a {model_type!r} model, not CLIP (clip or clip_vision_model).")
    return CLIPVisionModel.from_pretrained(clip_dir, dtype=dtype)


def load_tile_encoder(dinov2_dir: str | Path, dtype="auto"):
    """The DINOv2 encoder (`Dinov2Model`, or `Dinov2WithRegistersModel`)."""
    model_type = AutoConfig.from_pretrained(dinov2_dir).model_type
    if not model_type.startswith("dinov2"):
        raise ValueError(f"--dinov2 {dinov2_dir} holds a {model_type!r} model, not DINOv2.")
    return AutoModel.from_pretrained(dinov2_dir, dtype=dtype)


def preprocessor_statistics(model_dir: str | Path, default_mean, default_std) -> tuple[list[float], list[float]]:
    """`image_mean`/`image_std` of a folder's `preprocessor_config.json`, else the defaults."""
    path = Path(model_dir) / "preprocessor_config.json"
    settings = json.loads(path.read_text()) if path.is_file() else {}
    return list(settings.get("image_mean", default_mean)), list(settings.get("image_std", default_std))


def parse_grids(specs: list[str] | None) -> list[tuple[int, int]]:
    """`["1x2", "2x2"]` -> `[(1, 2), (2, 2)]` (rows x cols); None -> the paper's 14 grids."""
    if not specs:
        return list(FERRET_V2_GRIDS)
    grids = []
    for spec in specs:
        rows, _, cols = spec.lower().partition("x")
        if not (rows.isdigit() and cols.isdigit()) or int(rows) < 1 or int(cols) < 1:
            raise ValueError(f"Grid {spec!r} is not ROWSxCOLS with positive integers (e.g. 2x3).")
        grids.append((int(rows), int(cols)))
    return grids


def load_projector_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A stage-I projector state dict with keys `linear_1.*` / `linear_2.*` (ours or LLaVA's layout)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        weights = load_file(path)
    else:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    renamed = {}
    for name, tensor in weights.items():
        for prefix in ("multi_modal_projector.", "mm_projector."):
            if prefix in name:
                name = name.split(prefix, 1)[1]
                break
        layer, _, param = name.partition(".")
        layer = {"0": "linear_1", "2": "linear_2"}.get(layer, layer)
        renamed[f"{layer}.{param}"] = tensor
    return renamed


# ---- composition --------------------------------------------------------------------------------------------------


def build_processor(
    tokenizer, config: FerretConfig, clip_dir, dinov2_dir, chat_template: str
) -> FerretProcessor:
    """Any-resolution FerretProcessor: CLIP statistics for the global view, DINOv2's for the tiles."""
    side = config.vision_config.image_size
    image_mean, image_std = preprocessor_statistics(clip_dir, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    tile_mean, tile_std = preprocessor_statistics(dinov2_dir, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    image_processor = FerretImageProcessorPil(
        size={"height": side, "width": side}, image_mean=image_mean, image_std=image_std,
        image_grid_pinpoints=config.image_grid_pinpoints, tile_size=config.tile_size, tile_image_mean=tile_mean,
        tile_image_std=tile_std,
    )  # fmt: skip
    return FerretProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
        patch_size=config.vision_config.patch_size, tile_patch_size=config.tile_patch_size,
        num_region_points=config.sampler_num_init_points,
    )  # fmt: skip


def initialise_new_modules(model: FerretForConditionalGeneration, dtype: torch.dtype, seed: int) -> list[str]:
    """Materialises the (meta) modules no part provides, with the model's own initialisation."""
    torch.manual_seed(seed)
    created = []
    for name in NEW_MODULES:
        module = getattr(model.model, name, None)
        if module is None:
            continue
        module.to_empty(device="cpu")
        with torch.no_grad():
            module.apply(model._init_weights)
        module.to(dtype)
        created.append(f"model.{name}")
    return created



def multimodal_embedding_scale_for(text_config) -> float:
    """`FerretConfig.multimodal_embedding_scale` for a language model: `sqrt(hidden_size)` for Gemma-family models,
    whose transformers 4 forward scaled all of `inputs_embeds` (image and region features included) by it, so that
    projectors and samplers trained there (Ferret-UI's Gemma, LLaVA-style stage-I projectors) keep their scale; 1.0
    for every other family."""
    return float(text_config.hidden_size) ** 0.5 if text_config.model_type.startswith("gemma") else 1.0


def compose(
    clip: str,
    dinov2: str,
    llm: str,
    output_dir: str,
    stage1_projector: str | None = None,
    grids: list[str] | None = None,
    region_feature_source: str = "vision",
    dtype: str | None = None,
    seed: int = 0,
    chat_template: str | None = None,
    config_overrides: dict | None = None,
) -> dict:
    """Writes a Ferret-v2 to `output_dir` (see the module docstring); returns a summary of what was done.

    `chat_template` (Jinja text) replaces the Ferret template of the language model's family; it is required for
    families without one (see `transformers_ferret.chat_templates`), and generation then stops at the eos token.
    """
    clip_model = load_clip_vision(clip)
    tile_model = load_tile_encoder(dinov2)
    language_model = AutoModelForCausalLM.from_pretrained(llm, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(llm)
    text_config = language_model.config.get_text_config()
    family = chat_template_family(text_config.model_type, tokenizer) if chat_template is None else "custom"
    torch_dtype = DTYPES[dtype] if dtype else language_model.dtype

    # Vocabulary: the new tokens' rows (see the module docstring).
    input_embeddings = language_model.get_input_embeddings().weight.detach()
    output_embeddings = language_model.get_output_embeddings().weight.detach()
    tied = output_embeddings.data_ptr() == input_embeddings.data_ptr()
    num_rows, num_original = input_embeddings.shape[0], min(len(tokenizer), input_embeddings.shape[0])
    outside_matrix = warn_about_tokens_past_the_matrix(tokenizer, num_rows)
    added = add_ferret_tokens(tokenizer)
    size_before_pad = len(tokenizer)
    pad_token = set_pad_token(tokenizer, TURN_END_TOKENS.get(family) or tokenizer.eos_token, add_if_missing=True)
    if len(tokenizer) > size_before_pad:
        added.append(pad_token)
    new_ids = [tokenizer.convert_tokens_to_ids(token) for token in added]
    vocab_size = max(num_rows, len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    region_token_id = tokenizer.convert_tokens_to_ids(REGION_TOKEN)

    grid_list = parse_grids(grids)
    side = clip_model.config.image_size
    global_width, tile_width = clip_model.config.hidden_size, tile_model.config.hidden_size
    text_dict = text_config.to_dict()
    text_dict.update(vocab_size=vocab_size, use_cache=True)
    kwargs = dict(
        vision_config=clip_model.config.to_dict(), text_config=text_dict,
        tile_vision_config=tile_model.config.to_dict(), image_token_index=image_token_id,
        region_token_index=region_token_id, projector_type="mlp2x_gelu", tile_projector_type="mlp2x_gelu",
        sampler_transposed_read=False, tie_word_embeddings=tied,
        image_grid_pinpoints=[[rows * side, cols * side] for rows, cols in grid_list], tile_size=side,
        max_num_tiles=max(rows * cols for rows, cols in grid_list), region_feature_source=region_feature_source,
        tile_feature_adapter=region_feature_source == "vision" and global_width != tile_width,
        multimodal_embedding_scale=multimodal_embedding_scale_for(text_config),
    )  # fmt: skip
    kwargs.update(config_overrides or {})
    config = FerretConfig(**kwargs)

    state_dict = {f"model.vision_tower.{name}": tensor for name, tensor in clip_model.state_dict().items()}
    state_dict.update({f"model.tile_vision_tower.{name}": tensor for name, tensor in tile_model.state_dict().items()})
    base_model = language_model.base_model
    embedding = base_model.get_input_embeddings().weight
    embedding_name = next(name for name, parameter in base_model.named_parameters() if parameter is embedding)
    for name, tensor in base_model.state_dict().items():
        state_dict[f"model.language_model.{name}"] = tensor
    state_dict[f"model.language_model.{embedding_name}"] = grow_rows(
        input_embeddings, vocab_size, new_ids, num_original, "mean"
    )
    if not tied:
        state_dict["lm_head.weight"] = grow_rows(output_embeddings, vocab_size, new_ids, num_original, "zero")
    state_dict = {name: tensor.to(torch_dtype) for name, tensor in state_dict.items()}
    del clip_model, tile_model, language_model

    with torch.device("meta"):
        model = FerretForConditionalGeneration(config)
    special_ids = {IMAGE_TOKEN: image_token_id, REGION_TOKEN: region_token_id}
    check_tokenizer_fits(tokenizer, vocab_size, special_ids)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if tied else set()
    missing = [name for name in missing if name not in allowed_missing and name.split(".")[1] not in NEW_MODULES]
    if missing or unexpected:
        raise ValueError(f"The parts do not fit the Ferret-v2 model: missing {missing}, unexpected {unexpected}.")
    created = initialise_new_modules(model, torch_dtype, seed)
    if tied:
        model.tie_weights()

    if stage1_projector is not None:
        projector_weights = load_projector_state_dict(stage1_projector)
        model.model.multi_modal_projector.load_state_dict({k: v.to(torch_dtype) for k, v in projector_weights.items()})
    try:
        model.model.init_tile_projector_from_global()
        tile_projector_init = "copied from the CLIP projector"
    except ValueError as error:
        tile_projector_init = f"own initialisation (not copied from the CLIP projector: {error})"
        print(f"Note: the DINOv2 projector keeps its own initialisation. {error}")

    model.config.dtype = torch_dtype
    model.generation_config = ferret_generation_config(
        GenerationConfig.from_pretrained(llm) if (Path(llm) / "generation_config.json").is_file()
        else GenerationConfig.from_model_config(text_config),
        tokenizer, family, image_token_id,
    )  # fmt: skip
    model.save_pretrained(output_dir)
    if chat_template is None:
        chat_template = chat_template_for(text_config.model_type, tokenizer)
    processor = build_processor(tokenizer, config, clip, dinov2, chat_template)
    processor.save_pretrained(output_dir)
    global_tokens = (side // config.vision_config.patch_size) ** 2
    tile_tokens = (config.tile_size // config.tile_patch_size) ** 2
    context, warning = context_length_report(
        grid_list, global_tokens, tile_tokens, typical_prompt_tokens(tokenizer, chat_template) or 0,
        getattr(text_config, "max_position_embeddings", None),
    )  # fmt: skip
    if warning is not None:
        warnings.warn(warning, stacklevel=2)

    summary = {
        "language_model_type": text_config.model_type,
        "chat_template": family,
        "tied_embeddings": tied,
        "added_tokens": dict(zip(added, new_ids)),
        "image_token_id": image_token_id,
        "region_token_id": region_token_id,
        "vocab_size": f"{num_rows} -> {vocab_size}",
        "pad_token_set": pad_token,
        "tokens_past_the_language_models_matrix": outside_matrix,
        "context": context,
        "new_modules": created,
        "stage1_projector": stage1_projector,
        "tile_projector": tile_projector_init,
        "tile_feature_adapter": config.tile_feature_adapter,
        "grids": [f"{rows}x{cols}" for rows, cols in grid_list],
        "dtype": str(torch_dtype).removeprefix("torch."),
    }
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True, help="CLIPVisionModel or CLIPModel folder (global view encoder)")
    parser.add_argument("--dinov2", required=True, help="Dinov2Model folder (tile encoder)")
    parser.add_argument("--llm", required=True, help="causal language model folder, with its tokenizer")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--stage1-projector", help="stage-I CLIP projector state dict (safetensors or torch)")
    parser.add_argument("--grids", nargs="+", metavar="RxC", help="tile grids (default: the paper's 14)")
    parser.add_argument("--region-feature-source", choices=["vision", "projected"], default="vision")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: the language model's dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new modules' initialisation")
    parser.add_argument("--chat-template", help="Jinja file replacing the Ferret template of the LLM's family")
    args = parser.parse_args(argv)
    chat_template = Path(args.chat_template).read_text() if args.chat_template else None
    summary = compose(
        args.clip, args.dinov2, args.llm, args.output_dir, args.stage1_projector, args.grids,
        args.region_feature_source, args.dtype, args.seed, chat_template,
    )  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
