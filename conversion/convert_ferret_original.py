"""Convert an original apple/ml-ferret checkpoint to the transformers-native Ferret format.

    python conversion/convert_ferret_original.py --model-path FERRET_DIR --output-dir OUT [--vision-tower CLIP_DIR]
    python conversion/convert_ferret_original.py --delta-path DELTA_DIR --base-model-path VICUNA_DIR --output-dir OUT \
        --vision-tower CLIP_DIR [--tokenizer-path TOKENIZER_DIR]

The original checkpoint is a Llama state dict (`model.*`, `lm_head.*`) plus `model.mm_projector.*` and
`model.region_geo_sampler.*`, a config with `mm_*` fields, and a slow SentencePiece tokenizer with `<region_fea>`.
The vision tower is not in the released checkpoints: it is read from `<model-path>/vision_tower/` when present,
otherwise from `--vision-tower` (a local `openai/clip-vit-large-patch14-336` folder or Hub id).

Released Ferret weights are deltas over Vicuna v1.3: `--delta-path` + `--base-model-path` first add the base
exactly as the original `apply_delta` does (in float16; the 18 projector/sampler tensors and the `<region_fea>`
row are absolute values).

The output gains one token, `<image>` (the processor writes one per image feature). Its embedding row is the
mean of the others and its `lm_head` row is zero, and generation suppresses it, so the original vocabulary's
logits are unchanged. Pickled weights are only ever read with `weights_only=True`.

The tokenizer (the checkpoint's own files, or `--tokenizer-path`) must be the one the checkpoint was trained with:
Ferret's training resized the embedding matrix to exactly the tokenizer, so the tokenizer must have one token per
row, `<region_fea>` at the checkpoint's `im_region_fea_token`, and nothing past the matrix, leaving `<image>` the id
of the appended row. Any other tokenizer is refused before the weights are read, with an error naming its size, the
matrix's rows and the special tokens that do not land on their rows (a tokenizer smaller than the matrix would give
`<image>` an id the model does not read as image: the first `generate` would fail with "Image features and image
tokens do not match, tokens: 0"; a token past the matrix would have no embedding row). There is nothing to resize
here: the rows of such a checkpoint were trained for another tokenizer.
"""

import argparse
import gc
import json
import os
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import CLIPVisionConfig, CLIPVisionModel, GenerationConfig, LlamaConfig

from transformers_ferret import FerretConfig, FerretForConditionalGeneration
from transformers_ferret.image_processing_ferret import FerretImageProcessorPil
from transformers_ferret.processing_ferret import FerretProcessor
from transformers_ferret.conversion import convert_original_tokenizer

# Keys of the original checkpoint that are not Llama weights: absolute values in the released deltas
# (the list the original apply_delta asserts on).
MULTIMODAL_KEYS = {
    f"model.{module}.{param}"
    for module in (
        "mm_projector",
        "region_geo_sampler.diff_projector_list.0",
        "region_geo_sampler.diff_projector_list.1",
        "region_geo_sampler.agg_projector_list.0.net.0",
        "region_geo_sampler.agg_projector_list.0.norm",
        "region_geo_sampler.agg_projector_list.1.net.0",
        "region_geo_sampler.agg_projector_list.1.norm",
        "region_geo_sampler.flatten_projector",
        "region_geo_sampler.dim_projector",
    )
    for param in ("weight", "bias")
}

# (original key pattern, new key template). Applied in order; the first match wins.
KEY_RENAMES = [
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.", r"lm_head."),
    (r"^model\.mm_projector\.(weight|bias)$", r"model.multi_modal_projector.linear_1.\1"),
    (r"^model\.mm_projector\.0\.", r"model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", r"model.multi_modal_projector.linear_2."),
    (r"^model\.region_geo_sampler\.diff_projector_list\.(\d+)\.", r"model.region_sampler.layers.\1.neighbor_projection."),
    (r"^model\.region_geo_sampler\.agg_projector_list\.(\d+)\.net\.0\.", r"model.region_sampler.layers.\1.fusion."),
    (r"^model\.region_geo_sampler\.agg_projector_list\.(\d+)\.norm\.", r"model.region_sampler.layers.\1.norm."),
    (r"^model\.region_geo_sampler\.flatten_projector\.", r"model.region_sampler.flatten_projection."),
    (r"^model\.region_geo_sampler\.dim_projector\.", r"model.region_sampler.output_projection."),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", r"model.vision_tower."),
]
DROPPED_KEYS = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")  # buffers old versions saved


def _weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors or pickled `.bin`, single or sharded."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (model_dir / index_name).is_file():
            weight_map = json.loads((model_dir / index_name).read_text())["weight_map"]
            return [model_dir / name for name in sorted(set(weight_map.values()))]
        if (model_dir / single_name).is_file():
            return [model_dir / single_name]
    raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin (single or sharded) in {model_dir}.")


def load_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads every shard (pickles with `weights_only=True` only), with a progress bar over the shards."""
    files = _weight_files(Path(model_dir))
    state_dict = {}
    for path in tqdm(files, desc=f"Loading {Path(model_dir).name}", disable=len(files) == 1):
        if path.suffix == ".safetensors":
            state_dict.update(load_file(path))
        else:
            state_dict.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return state_dict


def apply_delta(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ferret's `apply_delta`, in float16 as the original: delta + base, with the original's three cases.

    * a key absent from the base must be one of the 18 projector/sampler tensors and is kept as is;
    * equal shapes: delta += base;
    * `model.embed_tokens.weight` / `lm_head.weight` with more rows than the base: base is added to the
      top-left block, the extra rows (`<region_fea>`) stay absolute.
    """
    target = {}
    for name, delta_tensor in tqdm(delta.items(), desc="Applying delta", disable=len(delta) < 1000):
        delta_tensor = delta_tensor.to(torch.float16)
        if name not in base:
            if name not in MULTIMODAL_KEYS and not DROPPED_KEYS.search(name):
                raise ValueError(f"Delta key {name!r} is neither in the base model nor a Ferret multimodal key.")
            target[name] = delta_tensor
            continue
        base_tensor = base[name].to(torch.float16)
        if base_tensor.shape == delta_tensor.shape:
            target[name] = delta_tensor + base_tensor
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            rows, cols = base_tensor.shape
            summed = delta_tensor.clone()
            summed[:rows, :cols] += base_tensor
            target[name] = summed
        else:
            raise ValueError(
                f"Delta key {name!r} has shape {tuple(delta_tensor.shape)} but the base has {tuple(base_tensor.shape)}."
            )
    return target


def build_config(original: dict, vision_config: CLIPVisionConfig) -> FerretConfig:
    """FerretConfig from an original Ferret `config.json` (dict) and the CLIP vision config it used."""
    text_fields = (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "hidden_act", "max_position_embeddings", "rms_norm_eps", "initializer_range", "bos_token_id",
        "eos_token_id", "pad_token_id", "rope_theta",
    )  # fmt: skip
    text_kwargs = {name: original[name] for name in text_fields if original.get(name) is not None}
    if original.get("rope_scaling"):
        raise ValueError("Original checkpoints with `rope_scaling` are not supported by this converter.")
    vocab_size = original["vocab_size"]
    text_config = LlamaConfig(vocab_size=vocab_size + 1, tie_word_embeddings=False, **text_kwargs)
    select_feature = original.get("mm_vision_select_feature", "patch")
    if select_feature not in ("patch", "cls_patch"):
        raise ValueError(f"Unsupported mm_vision_select_feature {select_feature!r}.")
    projector_type = original.get("mm_projector_type", "linear")
    return FerretConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=vocab_size,
        region_token_index=original["im_region_fea_token"],
        vision_feature_layer=original.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if select_feature == "patch" else "full",
        projector_type=projector_type,
        sampler_pooler_mode=original.get("sampler_pooler_mode", "mean"),
        sampler_transposed_read=True,
    )


def rename_original_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames original keys to ours, drops saved buffers (rotary frequencies, position ids) and squeezes the
    sampler's Conv1d kernels into Linear weights."""
    converted = {}
    for name, tensor in original.items():
        if DROPPED_KEYS.search(name):
            continue
        for pattern, replacement in KEY_RENAMES:
            if re.search(pattern, name):
                new_name = re.sub(pattern, replacement, name)
                break
        else:
            raise ValueError(f"Unexpected key in the original checkpoint: {name!r}.")
        if new_name.endswith(".fusion.weight") and tensor.dim() == 3:
            tensor = tensor.squeeze(-1)  # Conv1d(kernel_size=1) == Linear over channels
        converted[new_name] = tensor
    return converted


def add_image_token_rows(converted: dict[str, torch.Tensor], image_token_id: int) -> dict[str, torch.Tensor]:
    """Appends the `<image>` row at `image_token_id` (the end of the original vocabulary): embedding = mean of the
    other rows (it is always replaced by image features), `lm_head` row = 0 (its logit never depends on the input;
    generation suppresses it), so the original vocabulary's logits are unchanged. A tied checkpoint without
    `lm_head.weight` only grows the embedding."""
    converted = dict(converted)
    for name, new_row in (
        ("model.language_model.embed_tokens.weight", lambda weight: weight.float().mean(0, keepdim=True)),
        ("lm_head.weight", lambda weight: torch.zeros_like(weight[:1])),
    ):
        if name not in converted:
            continue
        weight = converted[name]
        if weight.shape[0] != image_token_id:
            raise ValueError(f"{name} has {weight.shape[0]} rows; expected the original vocabulary of {image_token_id}.")
        converted[name] = torch.cat([weight, new_row(weight).to(weight.dtype)])
    return converted


def convert_state_dict(original: dict[str, torch.Tensor], config: FerretConfig) -> dict[str, torch.Tensor]:
    """Original Ferret state dict -> ours, with the `<image>` row added (see the two functions above)."""
    return add_image_token_rows(rename_original_state_dict(original), config.image_token_id)


def check_tokenizer_fits(tokenizer, config: FerretConfig, num_rows: int, image_token: str = "<image>",
                         region_token: str = "<region_fea>") -> None:  # fmt: skip
    """Raises a `ValueError` unless the converted tokenizer (with `<region_fea>` and `<image>`) fits a checkpoint
    whose embedding matrix has `num_rows` rows: `<region_fea>` at `config.region_token_id`, `<image>` at `num_rows`
    (the row the conversion appends, `config.image_token_id`) and no other token at or past `num_rows`. The message
    names the tokenizer's size, the matrix's rows and the special tokens that are outside the matrix or on another
    row than the model's."""
    expected = {region_token: config.region_token_id, image_token: config.image_token_id}
    found = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    past_matrix = {
        token: token_id
        for token_id, token in sorted((token_id, token) for token, token_id in tokenizer.get_vocab().items())
        if token_id >= num_rows and not (token == image_token and token_id == num_rows)
    }
    if found == expected and not past_matrix:
        return
    added_image = found[image_token] == len(tokenizer) - 1
    size = len(tokenizer) - added_image
    comparison = (
        f"{num_rows - size} fewer than" if size < num_rows else f"{size - num_rows} more than" if size > num_rows
        else "as many as"
    )  # fmt: skip
    problems = []
    for token, model_id in expected.items():
        token_id = found[token]
        if token_id != model_id:
            where = ("outside the converted matrix" if token_id > num_rows else "the row appended for <image>"
                     if token_id == num_rows else "inside the matrix")  # fmt: skip
            problems.append(f"{token} has id {token_id} in the tokenizer ({where}) but {model_id} in the model")
    if past_matrix:
        named = ", ".join(f"{token!r} = {token_id}" for token, token_id in list(past_matrix.items())[:10])
        more = f" and {len(past_matrix) - 10} more" if len(past_matrix) > 10 else ""
        problems.append(f"tokens past the checkpoint's {num_rows} rows: {named}{more}")
    consequence = ""
    if found[image_token] > num_rows:
        consequence = " The converted model could not embed the tokenizer's <image> (index out of range)."
    elif found[image_token] != num_rows:
        consequence = (
            " Prompts would carry no id the model reads as an image token: the converted model's first generate "
            "would fail with 'Image features and image tokens do not match, tokens: 0'."
        )
    raise ValueError(
        f"The tokenizer does not fit the checkpoint: it has {size} tokens{' before <image> is added' * added_image}, "
        f"{comparison} the {num_rows} rows of the checkpoint's embedding matrix (config.json vocab_size; "
        f"{region_token} is row {config.region_token_id}, {image_token} becomes row {num_rows}). "
        f"{'; '.join(problems)}.{consequence} Convert with the tokenizer the checkpoint was trained with "
        f"(tokenizer.model, tokenizer_config.json and added_tokens.json with {region_token} = "
        f"{config.region_token_id}, {num_rows} tokens in all): in the checkpoint folder or through --tokenizer-path."
    )


def load_vision_tower(model_path: Path | None, vision_tower: str | None) -> CLIPVisionModel:
    """The CLIP tower: `<model_path>/vision_tower` if present (the original loader's preference), else `vision_tower`."""
    local = model_path / "vision_tower" if model_path is not None else None
    source = str(local) if local is not None and local.is_dir() else vision_tower
    if source is None:
        raise ValueError("The checkpoint has no vision_tower/ folder: pass --vision-tower (a CLIP vision folder or Hub id).")
    return CLIPVisionModel.from_pretrained(source)


def build_processor(tokenizer, vision_config: CLIPVisionConfig, clip_dir: str | None) -> FerretProcessor:
    """Tokenizer with `<image>` and `<region_fea>` (a converted tokenizer, or the folder of an original one), Ferret's
    stretch-to-square image processor, Vicuna chat template."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = convert_original_tokenizer(tokenizer)
    image_kwargs = {}
    clip_preprocessor = Path(clip_dir) / "preprocessor_config.json" if clip_dir is not None else None
    if clip_preprocessor is not None and clip_preprocessor.is_file():
        clip_settings = json.loads(clip_preprocessor.read_text())
        image_kwargs = {key: clip_settings[key] for key in ("image_mean", "image_std") if key in clip_settings}
    side = vision_config.image_size
    image_processor = FerretImageProcessorPil(size={"height": side, "width": side}, **image_kwargs)
    return FerretProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_config.patch_size)


def convert(
    output_dir: str,
    model_path: str | None = None,
    vision_tower: str | None = None,
    delta_path: str | None = None,
    base_model_path: str | None = None,
    dtype: str | None = None,
    tokenizer_path: str | None = None,
) -> None:
    """Writes `output_dir` with safetensors weights, config, generation config and processor files.

    The tokenizer comes from `tokenizer_path` when given, else from the checkpoint (or delta) folder; it is checked
    against the checkpoint before any weight is read (see `check_tokenizer_fits`)."""
    if (delta_path is None) == (model_path is None):
        raise ValueError("Pass either --model-path, or --delta-path with --base-model-path.")
    if delta_path is not None and base_model_path is None:
        raise ValueError("--delta-path needs --base-model-path (the Vicuna v1.3 weights the delta was made against).")
    source = Path(delta_path or model_path)
    original_config = json.loads((source / "config.json").read_text())
    if "mm_vision_tower" not in original_config or "im_region_fea_token" not in original_config:
        raise ValueError(f"{source}/config.json is not an original Ferret config (no mm_vision_tower/im_region_fea_token).")

    clip = load_vision_tower(source, vision_tower)
    config = build_config(original_config, clip.config)
    tokenizer = convert_original_tokenizer(tokenizer_path or source)
    check_tokenizer_fits(tokenizer, config, original_config["vocab_size"])
    weights = load_state_dict(source)
    if delta_path is not None:
        weights = apply_delta(load_state_dict(base_model_path), weights)
    state_dict = convert_state_dict(weights, config)
    del weights
    state_dict.update({f"model.vision_tower.{name}": tensor for name, tensor in clip.state_dict().items()})
    del clip
    gc.collect()

    torch_dtype = getattr(torch, dtype) if dtype else state_dict["lm_head.weight"].dtype
    state_dict = {name: tensor.to(torch_dtype) for name, tensor in state_dict.items()}
    with torch.device("meta"):
        model = FerretForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"Converted weights do not fit the model: missing {missing}, unexpected {unexpected}.")
    model.config.dtype = torch_dtype
    model.generation_config = GenerationConfig(
        bos_token_id=original_config.get("bos_token_id", 1),
        eos_token_id=original_config.get("eos_token_id", 2),
        pad_token_id=original_config.get("pad_token_id", 0),
        suppress_tokens=[config.image_token_id],
    )
    model.save_pretrained(output_dir)
    processor = build_processor(tokenizer, config.vision_config, vision_tower or original_config.get("mm_vision_tower"))
    processor.save_pretrained(output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", help="original Ferret checkpoint folder (delta already applied)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--vision-tower", help="CLIP vision folder or Hub id, used when the checkpoint has no vision_tower/")
    parser.add_argument("--delta-path", help="Apple's released Ferret delta folder")
    parser.add_argument("--base-model-path", help="Vicuna v1.3 folder the delta applies to")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the checkpoint's")
    parser.add_argument("--tokenizer-path", help="original tokenizer folder (default: the checkpoint or delta folder)")
    args = parser.parse_args(argv)
    convert(
        args.output_dir, args.model_path, args.vision_tower, args.delta_path, args.base_model_path, args.dtype,
        args.tokenizer_path,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
