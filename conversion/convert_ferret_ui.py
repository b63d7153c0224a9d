"""Convert an original Ferret-UI checkpoint (apple/ml-ferret, `ferretui/`) to the transformers-native Ferret format.

    python conversion/convert_ferret_ui.py --model-path FERRET_UI_DIR --output-dir OUT [--vision-tower CLIP_DIR] \
        [--tokenizer-path TOKENIZER_DIR] [--vision-tower-weights mm_vision_tower|checkpoint] \
        [--resize-embeddings-to-tokenizer] [--dtype float32|float16|bfloat16]

A Ferret-UI checkpoint is a Gemma-2B (`model_type` `ferret_gemma`) or Llama-3-8B (`ferret_llama`) state dict plus
`model.mm_projector.{0,2}.*` (the `mlp2x_gelu` projector), `model.region_geo_sampler.*` and possibly
`model.vision_tower.vision_tower.vision_model.*` (ZeRO-2 training saves the frozen CLIP); a `config.json` with `mm_*`
fields, `image_aspect_ratio="anyres"`, `mm_patch_merge_type="spatial"`; and the backbone's tokenizer, which may
already hold `<region_fea>` (its id is `im_region_fea_token` in the config, or the tokenizer's when the config has
none).

Ferret-UI reads any resolution with one encoder: the global 336 px view and every 336 px tile of the chosen grid go
through CLIP and the same projector, giving 576 tokens each (global first, then the tiles' maps merged row by row, no
newline tokens); the region sampler reads the merged tile map plus the global map upsampled by nearest neighbour.
In our config that is: no `tile_vision_config`, `image_grid_pinpoints` = Ferret-UI's five grids 1x2, 2x1, 2x2, 1x3,
3x1 (its pinpoints are (width, height); ours are [height, width]; no 1x1), `tile_size` = CLIP's input size,
`global_upsample_mode="nearest"`, `sampler_transposed_read=True` (the original's transposed feature read), and CLIP's
mean/std for the tiles too. What the original did under transformers 4.39 that transformers 5 does differently is
written into the converted folder as explicit settings:

* Gemma: transformers 4.39's `GemmaModel` multiplied the whole `inputs_embeds` by `sqrt(hidden_size)`, image tokens
  and region features included; in transformers 5 the scaling lives in Gemma's embedding layer, so the converted config
  gets `multimodal_embedding_scale = sqrt(hidden_size)` (1.0 for Llama-3).
* Coordinates: Ferret-UI writes `int(v * (1000.0 / S))`, not Ferret's `int(v * 1000 / S)`: the processor gets
  `coordinate_rule="ferret_ui"`.
* Llama-3: Ferret-UI's `ferret_llama_3` system text starts with a literal `<|begin_of_text|>` and the tokenizer adds
  its own, so the released model saw two at the start of every prompt: the processor gets
  `FERRET_UI_LLAMA3_CHAT_TEMPLATE`, which writes both.

The CLIP tower is the one Ferret-UI's loader uses: `mm_vision_tower` of the config (a Hub id or a path), or
`--vision-tower`, a local copy of it. The loader never reads the tower weights a checkpoint may hold; neither does
the converter, unless `--vision-tower-weights checkpoint` asks for them. Either way a stored copy is compared with the
tower: when the two differ (ZeRO-2 with bf16 saves CLIP rounded to bf16) a warning names the largest difference and
the copy used.

The tokenizer (the checkpoint's own, or `--tokenizer-path`) must have one token per embedding row: Ferret-UI's loader
resizes the embedding matrix to the tokenizer, so a different size means the model would read and write other ids
than the original's; the conversion stops with both sizes, unless `--resize-embeddings-to-tokenizer` asks to resize
as the original loader does. As for Ferret, `<image>` is added to the tokenizer (the processor writes one per image
feature): its embedding row is the mean of the original vocabulary's rows, its `lm_head` row zero (with Gemma's tied
embeddings the one shared row is the mean row), and generation suppresses it.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPVisionModel, GenerationConfig, PreTrainedConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_ferret_v2 import (  # noqa: E402
    DTYPES,
    IMAGE_TOKEN,
    REGION_TOKEN,
    add_ferret_tokens,
    ferret_generation_config,
    grow_rows,
    multimodal_embedding_scale_for,
    preprocessor_statistics,
    set_pad_token,
)
from convert_ferret_original import load_state_dict, rename_original_state_dict  # noqa: E402

from transformers_ferret import FerretConfig, FerretForConditionalGeneration  # noqa: E402
from transformers_ferret.chat_templates import (  # noqa: E402
    FERRET_UI_LLAMA3_CHAT_TEMPLATE,
    TURN_END_TOKENS,
    chat_template_family,
    chat_template_for,
)
from transformers_ferret.image_processing_ferret import FerretImageProcessorPil  # noqa: E402
from transformers_ferret.processing_ferret import FerretProcessor  # noqa: E402

# Ferret-UI's grids, set in its trainer for image_aspect_ratio == "anyres": (width, height) in units of the tile.
FERRET_UI_GRIDS_WH = [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]
BACKBONES = {"ferret_gemma": "gemma", "ferret_llama": "llama"}
ARCHITECTURES = {"FerretGemmaForCausalLM": "gemma", "FerretLlamaForCausalLM": "llama"}
# config.json fields of Ferret-UI's multimodal wrapper (not the language model's).
FERRET_UI_FIELDS = {
    "architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_mm_proj",
    "image_aspect_ratio", "image_grid_pinpoints", "im_region_fea_token", "region_geo_sampler", "region_fea_adapter",
    "sampler_pooler_mode", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "tokenizer_model_max_length",
    "tokenizer_padding_side", "add_region_feature", "use_cache", "auto_map",
}  # fmt: skip


def backbone_type(original: dict) -> str:
    """`gemma` or `llama`, from Ferret-UI's model_type or architectures."""
    if original.get("model_type") in BACKBONES:
        return BACKBONES[original["model_type"]]
    for architecture in original.get("architectures") or []:
        if architecture in ARCHITECTURES:
            return ARCHITECTURES[architecture]
    raise ValueError(
        f"Unsupported Ferret-UI backbone (model_type {original.get('model_type')!r}, architectures "
        f"{original.get('architectures')}); supported: ferret_gemma (Gemma) and ferret_llama (Llama-3)."
    )


def check_original_config(original: dict) -> None:
    """ValueError unless the config describes Ferret-UI's any-resolution "spatial" model."""
    if "mm_vision_tower" not in original:
        raise ValueError("config.json is not an original Ferret-UI config (no mm_vision_tower).")
    if original.get("image_aspect_ratio") != "anyres":
        raise ValueError(f"Expected image_aspect_ratio 'anyres', got {original.get('image_aspect_ratio')!r}.")
    if original.get("mm_patch_merge_type", "flat") != "spatial":
        raise ValueError(
            f"Only mm_patch_merge_type 'spatial' (the released models') is supported, got "
            f"{original.get('mm_patch_merge_type')!r}."
        )
    if original.get("mm_projector_type", "linear") not in ("linear", "mlp2x_gelu"):
        raise ValueError(f"Unsupported mm_projector_type {original['mm_projector_type']!r}.")
    if original.get("mm_vision_select_feature", "patch") != "patch":
        raise ValueError(f"Unsupported mm_vision_select_feature {original['mm_vision_select_feature']!r}.")


def grid_pinpoints(original: dict, tile_size: int) -> list[list[int]]:
    """Our `[height, width]` pinpoints from Ferret-UI's `(width, height)` ones (its five grids when not saved)."""
    pinpoints = original.get("image_grid_pinpoints") or [[w * tile_size, h * tile_size] for w, h in FERRET_UI_GRIDS_WH]
    return [[int(height), int(width)] for width, height in pinpoints]


def build_text_config(original: dict, vocab_size: int) -> PreTrainedConfig:
    """The backbone's config (Gemma or Llama) from Ferret-UI's config.json, with the grown vocabulary."""
    fields = {name: value for name, value in original.items()
              if name not in FERRET_UI_FIELDS and not name.startswith("mm_")}  # fmt: skip
    fields.update(vocab_size=vocab_size, use_cache=True)
    return CONFIG_MAPPING[backbone_type(original)](**fields)


def load_tokenizer(model_dir: Path):
    # The folder's config.json describes Ferret-UI (model_type ferret_gemma/ferret_llama, unknown to transformers):
    # a neutral config lets AutoTokenizer pick the class from tokenizer_config.json alone.
    return AutoTokenizer.from_pretrained(model_dir, config=PreTrainedConfig())


def region_token_id(original: dict, tokenizer) -> int:
    """`im_region_fea_token` of the config, checked against the tokenizer (the tokenizer's id when absent)."""
    from_tokenizer = tokenizer.convert_tokens_to_ids(REGION_TOKEN)
    known = from_tokenizer is not None and from_tokenizer != tokenizer.unk_token_id
    from_config = original.get("im_region_fea_token")
    if from_config is not None and known and from_config != from_tokenizer:
        raise ValueError(
            f"config.json says im_region_fea_token={from_config} but the tokenizer maps {REGION_TOKEN} to "
            f"{from_tokenizer}."
        )
    if not known:
        raise ValueError(f"The Ferret-UI tokenizer has no {REGION_TOKEN} token.")
    return from_tokenizer


def rename_weights(weights: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Our key names for every tensor of the checkpoint (the vocabulary is grown later, for any tokenizer layout)."""
    if "lm_head.weight" not in weights and not tied:
        raise ValueError("The checkpoint has no lm_head.weight, but its config does not tie the embeddings.")
    renamed = rename_original_state_dict(weights)
    if tied:
        renamed.pop("lm_head.weight", None)
    return renamed


VISION_TOWER_WEIGHTS = ("mm_vision_tower", "checkpoint")


def load_ferret_ui_vision_tower(original: dict, vision_tower: str | None) -> tuple[CLIPVisionModel, str]:
    """The CLIP tower Ferret-UI's loader uses: `vision_tower` (a local copy) when given, else `mm_vision_tower`."""
    source = vision_tower or original["mm_vision_tower"]
    try:
        return CLIPVisionModel.from_pretrained(source), source
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not load the CLIP tower {source!r}: Ferret-UI loads its vision tower from `mm_vision_tower` "
            f"({original['mm_vision_tower']!r} in config.json), not from the copy a checkpoint may hold. Pass "
            "--vision-tower with a local copy of that tower (the released models name "
            "openai/clip-vit-large-patch14-336)."
        ) from error


def choose_vision_tower_weights(
    state_dict: dict[str, torch.Tensor], clip: CLIPVisionModel, source: str, use: str
) -> tuple[dict[str, torch.Tensor], str]:
    """Sets the `model.vision_tower.*` entries of `state_dict` to the CLIP weights `use` names: the tower's
    (`"mm_vision_tower"`, what Ferret-UI's loader runs) or the checkpoint's stored copy (`"checkpoint"`). Warns when the
    checkpoint holds a copy that differs from the tower, naming the largest difference and the copy used. Returns the
    state dict and a one-line account for the summary."""
    if use not in VISION_TOWER_WEIGHTS:
        raise ValueError(f"--vision-tower-weights must be one of {VISION_TOWER_WEIGHTS}, got {use!r}.")
    stored = {name: state_dict.pop(name) for name in [n for n in state_dict if n.startswith("model.vision_tower.")]}
    tower = {f"model.vision_tower.{name}": tensor for name, tensor in clip.state_dict().items()}
    if not stored:
        if use == "checkpoint":
            raise ValueError("--vision-tower-weights checkpoint: the checkpoint holds no vision tower weights.")
        state_dict.update(tower)
        return state_dict, f"{source} (the checkpoint stores no copy)"
    if set(stored) != set(tower) or any(stored[n].shape != tower[n].shape for n in tower):
        raise ValueError(f"The checkpoint's vision tower weights do not fit the CLIP tower {source!r}.")
    largest = max(float((stored[n].float() - tower[n].float()).abs().max()) for n in tower)
    state_dict.update(stored if use == "checkpoint" else tower)
    if largest == 0:
        return state_dict, f"{source} (identical to the checkpoint's copy)"
    used = "the checkpoint's copy (--vision-tower-weights checkpoint)" if use == "checkpoint" else (
        f"{source}, as Ferret-UI's loader does (--vision-tower-weights checkpoint takes the stored copy)")
    warnings.warn(
        f"The checkpoint's vision tower weights differ from the CLIP tower {source!r} (largest difference "
        f"{largest:.3g}); Ferret-UI never reads the stored copy. Using {used}.",
        stacklevel=2,
    )
    return state_dict, f"{used}; the stored copy differs by up to {largest:.3g}"


def check_vocabulary(tokenizer, num_rows: int, resize: bool) -> int:
    """The number of original embedding rows the conversion keeps: `num_rows` when the tokenizer has one token per
    row; otherwise a `ValueError` naming both sizes, or, with `resize`, the tokenizer's size (with a warning), as
    Ferret-UI's loader calls `model.resize_token_embeddings(len(tokenizer))`."""
    if len(tokenizer) == num_rows:
        return num_rows
    message = (
        f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's embedding matrix has {num_rows} rows. "
        "Ferret-UI's loader resizes the matrix to the tokenizer (`resize_token_embeddings(len(tokenizer))`), so the "
        "model it runs reads and writes the tokenizer's ids only; a tokenizer of another size is most likely not the "
        "one the checkpoint was saved with (give that one with --tokenizer-path)."
    )
    if not resize:
        raise ValueError(
            message + " To convert anyway, resized as the original loader would, pass --resize-embeddings-to-tokenizer."
        )
    change = (
        f"the {num_rows - len(tokenizer)} rows past the tokenizer are dropped" if len(tokenizer) < num_rows else
        f"the {len(tokenizer) - num_rows} new rows get the mean embedding and a zero lm_head row (the original draws "
        "them at random)"
    )  # fmt: skip
    warnings.warn(f"{message} Resizing as the original loader does: {change}.", stacklevel=2)
    return len(tokenizer)


def convert(
    output_dir: str,
    model_path: str,
    vision_tower: str | None = None,
    dtype: str | None = None,
    tokenizer_path: str | None = None,
    vision_tower_weights: str = "mm_vision_tower",
    resize_embeddings_to_tokenizer: bool = False,
) -> dict:
    """Writes `output_dir` (safetensors weights, config, generation config, processor); returns a summary."""
    source = Path(model_path)
    original = json.loads((source / "config.json").read_text())
    check_original_config(original)
    clip, clip_source = load_ferret_ui_vision_tower(original, vision_tower)
    if original.get("mm_hidden_size", clip.config.hidden_size) != clip.config.hidden_size:
        raise ValueError(
            f"mm_hidden_size is {original['mm_hidden_size']} but the CLIP tower is {clip.config.hidden_size} wide."
        )
    side, patch = clip.config.image_size, clip.config.patch_size

    tokenizer = load_tokenizer(Path(tokenizer_path) if tokenizer_path else source)
    region_id = region_token_id(original, tokenizer)
    weights = load_state_dict(source)
    num_original = check_vocabulary(
        tokenizer, weights["model.embed_tokens.weight"].shape[0], resize_embeddings_to_tokenizer
    )
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in weights:
            weights[name] = weights[name][:num_original]
    added = add_ferret_tokens(tokenizer)  # `<image>` only: the region token was checked above
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab_size = len(tokenizer)
    text_config = build_text_config(original, vocab_size)
    family = chat_template_family(text_config.model_type, tokenizer)
    set_pad_token(tokenizer, TURN_END_TOKENS.get(family) or tokenizer.eos_token)
    tied = bool(text_config.tie_word_embeddings)

    state_dict = rename_weights(weights, tied)
    del weights
    new_ids = [tokenizer.convert_tokens_to_ids(token) for token in added]
    name = "model.language_model.embed_tokens.weight"
    state_dict[name] = grow_rows(state_dict[name], vocab_size, new_ids, num_original, "mean")
    if not tied:
        lm_head = state_dict["lm_head.weight"]
        state_dict["lm_head.weight"] = grow_rows(lm_head, vocab_size, new_ids, num_original, "zero")
    state_dict, tower_account = choose_vision_tower_weights(state_dict, clip, clip_source, vision_tower_weights)
    vision_config = clip.config
    del clip

    # transformers 4's Gemma scaled image and region features with the text embeddings; see FerretConfig
    embedding_scale = multimodal_embedding_scale_for(text_config)
    pinpoints = grid_pinpoints(original, side)
    config = FerretConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_id,
        region_token_index=region_id,
        vision_feature_layer=original.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default",
        projector_type=original.get("mm_projector_type", "linear"),
        sampler_pooler_mode=original.get("sampler_pooler_mode", "mean"),
        sampler_transposed_read=True,
        tie_word_embeddings=tied,
        multimodal_embedding_scale=embedding_scale,
        image_grid_pinpoints=pinpoints,
        tile_size=side,
        max_num_tiles=max((height // side) * (width // side) for height, width in pinpoints),
        global_upsample_mode="nearest",
    )

    torch_dtype = DTYPES[dtype] if dtype else state_dict["model.language_model.embed_tokens.weight"].dtype
    state_dict = {name: tensor.to(torch_dtype) for name, tensor in state_dict.items()}
    with torch.device("meta"):
        model = FerretForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [name for name in missing if not (tied and name == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"Converted weights do not fit the model: missing {missing}, unexpected {unexpected}.")
    if tied:
        model.tie_weights()
    model.config.dtype = torch_dtype
    generation_source = (
        GenerationConfig.from_pretrained(source) if (source / "generation_config.json").is_file()
        else GenerationConfig.from_model_config(text_config)
    )  # fmt: skip
    model.generation_config = ferret_generation_config(generation_source, tokenizer, family, image_id)
    model.save_pretrained(output_dir)

    mean, std = preprocessor_statistics(clip_source, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    image_processor = FerretImageProcessorPil(
        size={"height": side, "width": side}, image_mean=mean, image_std=std, image_grid_pinpoints=pinpoints,
        tile_size=side, tile_image_mean=mean, tile_image_std=std,
    )  # fmt: skip
    # Ferret-UI's Llama-3 prompts start with two <|begin_of_text|> (see the module docstring)
    chat_template = FERRET_UI_LLAMA3_CHAT_TEMPLATE if family == "llama3" else chat_template_for(
        text_config.model_type, tokenizer)  # fmt: skip
    processor = FerretProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
        patch_size=patch, tile_patch_size=patch, num_region_points=config.sampler_num_init_points,
        coordinate_rule="ferret_ui",
    )  # fmt: skip
    processor.save_pretrained(output_dir)
    return {
        "backbone": text_config.model_type,
        "chat_template": "ferret_ui_llama3" if family == "llama3" else family,
        "tied_embeddings": tied,
        "region_token_id": region_id,
        "image_token_id": image_id,
        "vocab_size": f"{num_original} -> {vocab_size}",
        "vision_tower_weights": tower_account,
        "multimodal_embedding_scale": embedding_scale,
        "coordinate_rule": "ferret_ui",
        "image_grid_pinpoints": pinpoints,
        "dtype": str(torch_dtype).removeprefix("torch."),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, help="original Ferret-UI checkpoint folder")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--vision-tower", help="local copy of the CLIP tower the config's mm_vision_tower names (default: that name)"
    )
    parser.add_argument("--tokenizer-path", help="tokenizer folder (default: the checkpoint folder)")
    parser.add_argument(
        "--vision-tower-weights", choices=VISION_TOWER_WEIGHTS, default="mm_vision_tower",
        help="CLIP weights to convert: the tower's, as Ferret-UI's loader (default), or the checkpoint's stored copy",
    )  # fmt: skip
    parser.add_argument(
        "--resize-embeddings-to-tokenizer", action="store_true",
        help="convert although the embedding rows differ from the tokenizer's size, resized as the original loader",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: the checkpoint's")
    args = parser.parse_args(argv)
    summary = convert(
        args.output_dir, args.model_path, args.vision_tower, args.dtype, args.tokenizer_path,
        args.vision_tower_weights, args.resize_embeddings_to_tokenizer,
    )  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
