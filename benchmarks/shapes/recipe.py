"""The synthetic-shapes recipe's pieces: tokenizer, tiny Ferret, processor, data stream (used by train.py / evaluate.py).

Everything is built locally and offline: a small BPE tokenizer trained on rendered synthetic conversations, a tiny
Ferret whose vision tower comes from stage 0 (`pretrain_vision.py`), and an endless stream of fresh GRIT-format
samples from `transformers_ferret.synthetic_shapes`.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast

from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretImageProcessorPil, FerretProcessor
from transformers_ferret.chat_templates import DEFAULT_CHAT_TEMPLATE, FERRET_SYSTEM_PROMPT
from transformers_ferret.synthetic_shapes import make_sample, render_conversation

SYSTEM_PROMPT = "A chat about an image. Points are [x, y], boxes [x1, y1, x2, y2], on a 1000x1000 grid. "
"""A short system text: the tiny model's context is small and every token costs CPU time."""

SCENE_KWARGS = dict(min_side=160, max_side=320, num_objects=(2, 5), object_size=(40, 110))
"""Training and evaluation scenes. Objects of 40-110 source pixels are 14-77 px in the 112 px input, at least about one
16 px patch, so their shape is visible to the tiny tower (session 2 used 20-80 px, i.e. down to 7 px, and its tower
never learned shape). Small objects are measured separately (evaluate.SMALL_OBJECT_SCENES), for any-resolution."""


def scene_kwargs(object_size=None) -> dict:
    """`SCENE_KWARGS`, with `object_size` `(min, max)` instead of the recipe's when given (the scripts' --object-size)."""
    return {**SCENE_KWARGS, **({"object_size": tuple(object_size)} if object_size else {})}


SAMPLER_KWARGS = dict(sampler_num_init_points=256, sampler_num_sub_points=[64, 16], sampler_num_neighbors=[16, 16])
"""The reduced region sampler of the tiny model (256 points, stages of 64 and 16 points, 16 neighbours)."""
TASK_WEIGHTS = {"roc_open": 4, "roc_choice": 2, "rec": 2, "dense_detection": 1, "same_bbox": 1}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def train_tokenizer(
    num_samples: int = 1500, vocab_size: int = 320, seed: int = 99, extra_tokens=()
) -> PreTrainedTokenizerFast:
    """A BPE over rendered synthetic conversations; digits are single tokens, as in LLaMA. `extra_tokens` are added
    after Ferret's two special tokens (so every other id is unchanged)."""
    texts = [SYSTEM_PROMPT, "USER: ASSISTANT:"]
    for index in range(num_samples):
        sample = make_sample(index, seed=seed, tasks=list(TASK_WEIGHTS) + ["grounded_description", "dense_referring"],
                             turns_per_image=3, with_masks=False, **SCENE_KWARGS)  # fmt: skip
        texts += [turn["value"].replace("<image>", "") for turn in render_conversation(sample, region_token=None)]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken("<region_fea>", lstrip=True, normalized=False, special=True),
                                       AddedToken("<image>", normalized=False, special=True)]}  # fmt: skip
    )
    if extra_tokens:
        tokenizer.add_tokens([AddedToken(token, normalized=False, special=True) for token in extra_tokens], special_tokens=True)
    tokenizer.add_bos_token = True
    return tokenizer


def build_processor(tokenizer, image_size: int = 112, patch_size: int = 16, num_region_points: int = 256) -> FerretProcessor:
    chat_template = DEFAULT_CHAT_TEMPLATE.replace(FERRET_SYSTEM_PROMPT, SYSTEM_PROMPT)
    return FerretProcessor(
        image_processor=FerretImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, chat_template=chat_template, patch_size=patch_size, num_region_points=num_region_points,
    )  # fmt: skip


def build_model(tokenizer, vision_dir: str | Path | None, seed: int = 0):
    """Tiny Ferret v1: the stage-0 CLIP tower (192 wide, 4 layers, 112 px / patch 16), a 2-layer projector, a
    4-layer Llama of width 256, and a reduced sampler (256 points, stages of 64 and 16 points, 16 neighbours)."""
    torch.manual_seed(seed)
    if vision_dir is not None:
        vision_config = CLIPVisionConfig.from_pretrained(vision_dir)
    else:
        from pretrain_vision import tiny_clip_config

        vision_config = tiny_clip_config()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=672, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    config = FerretConfig(
        vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), tie_word_embeddings=True,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        region_token_index=tokenizer.convert_tokens_to_ids("<region_fea>"), projector_type="mlp2x_gelu",
        **SAMPLER_KWARGS,
    )  # fmt: skip
    model = FerretForConditionalGeneration(config)
    if vision_dir is not None:
        from transformers import CLIPVisionModel

        model.model.vision_tower.load_state_dict(CLIPVisionModel.from_pretrained(vision_dir).state_dict())
    model.generation_config.suppress_tokens = [config.image_token_id]
    return model


ANY_RESOLUTION_GRIDS = ((1, 2), (2, 1), (2, 2))
"""Tile grids (rows, columns) of the any-resolution ablation: up to 4 tiles, 224 px on the long side."""


def to_any_resolution(model, processor, grids=ANY_RESOLUTION_GRIDS):
    """A Ferret-v2 made from a tiny Ferret v1 (a trained one for the any-resolution ablation, or a new one).

    The tiles get their own encoder and projector, as in Ferret-v2: the tile encoder starts as a copy of the trained
    global tower (stage 0 stands in for both CLIP's and DINOv2's pretraining here), the tile projector as a copy of
    the global projector (Ferret-v2's stage II does the same); the sampler then reads the merged tile map plus the
    upsampled global map. Every other weight is the v1 model's.
    """
    config = model.config
    side = config.vision_config.image_size
    any_resolution = FerretConfig.from_dict({
        **config.to_dict(), "tile_vision_config": config.vision_config.to_dict(), "tile_size": side,
        "image_grid_pinpoints": [[rows * side, columns * side] for rows, columns in grids],
        "tile_vision_feature_layer": config.vision_feature_layer, "tile_projector_type": config.projector_type,
    })  # fmt: skip
    converted = FerretForConditionalGeneration(any_resolution)
    missing, unexpected = converted.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".tile_" in name for name in missing), (missing, unexpected)
    converted.model.tile_vision_tower.load_state_dict(model.model.vision_tower.state_dict())
    converted.model.init_tile_projector_from_global()
    converted.generation_config = model.generation_config
    global_processor = processor.image_processor
    image_processor = FerretImageProcessorPil(
        size={"height": side, "width": side}, image_mean=global_processor.image_mean, image_std=global_processor.image_std,
        image_grid_pinpoints=any_resolution.image_grid_pinpoints, tile_size=side,
        tile_image_mean=global_processor.image_mean, tile_image_std=global_processor.image_std,
    )  # fmt: skip
    any_resolution_processor = FerretProcessor(
        image_processor=image_processor, tokenizer=processor.tokenizer, chat_template=processor.chat_template,
        patch_size=processor.patch_size, tile_patch_size=any_resolution.tile_patch_size,
        num_region_points=processor.num_region_points,
    )  # fmt: skip
    return converted, any_resolution_processor


def sample_stream(seed: int, turns_per_image: int = 4, tasks=None, start: int = 0, **scene_overrides):
    """An endless stream of fresh samples (index `start`, `start + 1`, ...)."""
    scene_kwargs = {**SCENE_KWARGS, **scene_overrides}
    index = start
    while True:
        yield make_sample(index, seed=seed, tasks=tasks or TASK_WEIGHTS, turns_per_image=turns_per_image, **scene_kwargs)
        index += 1

