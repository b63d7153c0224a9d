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
"""
Supervised fine-tuning of Ferret / Ferret-v2 on GRIT-format data with TRL's `SFTTrainer`.

Examples:

    # a tiny random Ferret on 16 synthetic samples, on the CPU in a few seconds
    python examples/train_sft.py --tiny v1 --synthetic 16 --max-steps 20 --output-dir /tmp/ferret-sft

    # Ferret-v2 stage II on GRIT JSON
    python examples/train_sft.py --model path/to/ferret-v2 --data train.json --image-folder images \\
        --stage v2-stage2 --output-dir out

    # LoRA on the language model (projectors + sampler fully trained), merged into the saved model
    python examples/train_sft.py --tiny v1 --synthetic 16 --lora --max-steps 20 --output-dir /tmp/ferret-lora

Training rows reach `FerretDataCollator` whole (`remove_unused_columns=False`): it draws point or box regions,
writes coordinate text and region tokens, and supervises only the assistant replies.

Several processes: `accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/train_sft.py ...`
trains 2 CPU processes under DDP (`--cpu` would start one). fsdp.yaml needs GPUs: on a CPU accelerate runs DDP
instead, which this script warns about; deepspeed_zero3.yaml runs on CPUs too once deepspeed is installed (see the
configs' headers). Only the main process writes the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretImageProcessorPil, FerretProcessor
from transformers_ferret.training.collator import FerretDataCollator
from transformers_ferret.training.grit import load_grit, mask_to_rle
from transformers_ferret.chat_templates import FERRET_SYSTEM_PROMPT
from transformers_ferret.training.stages import (
    STAGES,
    apply_training_stage,
    format_trainable_summary,
    trainable_summary,
)


LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
"""LoRA only on the language model's linear layers: CLIP and DINOv2 use the same projection names."""


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def random_boxes_samples(num_samples: int, seed: int = 0) -> list[dict]:
    """Fallback synthetic data: coloured rectangles on noise, one referring and one grounding question each."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230)}
    samples = []
    for index in range(num_samples):
        width, height = (int(v) for v in rng.integers(64, 160, size=2))
        pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        name = list(colours)[int(rng.integers(len(colours)))]
        w, h = int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2))
        x1, y1 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        box = [x1, y1, x1 + w - 1, y1 + h - 1]
        pixels[y1 : y1 + h, x1 : x1 + w] = colours[name]
        mask = np.zeros((height, width), dtype=bool)
        mask[y1 : y1 + h, x1 : x1 + w] = True
        rle = mask_to_rle(mask)
        samples.append(
            {
                "id": f"boxes-{seed}-{index}",
                "image": Image.fromarray(pixels),
                "image_w": width,
                "image_h": height,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is the object <bbox_location0>?"},
                    {"from": "gpt", "value": f"a {name} rectangle"},
                    {"from": "human", "value": f"Where is the {name} rectangle?"},
                    {"from": "gpt", "value": f"The {name} rectangle <bbox_location0>."},
                ],
                "box_x1y1x2y2": [[box], [], [], [box]],
                "masks": [[rle], [], [], [rle]],
            }
        )
    return samples


def synthetic_dataset(num_samples: int, seed: int = 0):
    try:
        from transformers_ferret import synthetic_shapes
    except ImportError:
        return load_grit(random_boxes_samples(num_samples, seed), check=True)
    samples = synthetic_shapes.make_samples(num_samples, seed=seed, turns_per_image=2, max_side=256)
    return synthetic_shapes.to_dataset(samples)


# ----------------------------------------------------------------------------------------------------------------
# Tiny model
# ----------------------------------------------------------------------------------------------------------------


def tiny_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer (a few hundred tokens) trained on `texts`, with Ferret's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    tokenizer.add_special_tokens(
        {
            "extra_special_tokens": [
                AddedToken("<region_fea>", lstrip=True, normalized=False, special=True),
                AddedToken("<image>", normalized=False, special=True),
            ]
        },
        replace_extra_special_tokens=False,
    )
    return tokenizer


def tiny_model_and_processor(version: str, texts: list[str], tokenizer_dir: str | None = None, seed: int = 0):
    """A randomly initialised tiny Ferret (`"v1"`) or Ferret-v2 (`"v2"`) with 28 px images, and its processor."""
    if tokenizer_dir is not None:
        from transformers_ferret.conversion import convert_original_tokenizer

        tokenizer = convert_original_tokenizer(tokenizer_dir)
    else:
        tokenizer = tiny_tokenizer([FERRET_SYSTEM_PROMPT, *texts, "0123456789 [], USER: ASSISTANT:"])
    vision = {"model_type": "clip_vision_model", "image_size": 28, "patch_size": 14, "hidden_size": 16,
              "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}  # fmt: skip
    text = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    kwargs = dict(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        region_token_index=tokenizer.convert_tokens_to_ids("<region_fea>"), sampler_num_init_points=32,
        sampler_num_sub_points=[16, 8], sampler_num_neighbors=[4, 4],
    )  # fmt: skip
    if version == "v2":
        kwargs.update(
            tile_vision_config={"model_type": "dinov2", "image_size": 28, "patch_size": 14, "hidden_size": 16,
                                "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
            projector_type="mlp2x_gelu", max_num_tiles=4,
            image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]],
        )  # fmt: skip
    config = FerretConfig(**kwargs)
    torch.manual_seed(seed)
    model = FerretForConditionalGeneration(config)
    image_processor = FerretImageProcessorPil(
        size={"height": 28, "width": 28},
        **({"image_grid_pinpoints": config.image_grid_pinpoints, "tile_size": 28} if version == "v2" else {}),
    )
    processor = FerretProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, num_region_points=32,
        tile_patch_size=14 if version == "v2" else None,
    )  # fmt: skip
    return model, processor


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def lora_config(model, stage: str, rank: int = 8):
    """LoRA on the LLM's linear layers; the stage's other trainable modules (projectors, sampler) fully trained."""
    from peft import LoraConfig

    if "language_model" not in STAGES[stage]:
        raise ValueError(f"--lora adapts the language model, which stage {stage!r} keeps frozen.")
    full = [name for name in ("multi_modal_projector", "tile_projector", "tile_feature_adapter", "region_sampler")
            if name in STAGES[stage] and hasattr(model.model, name)]  # fmt: skip
    return LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES, modules_to_save=full,
        task_type="CAUSAL_LM",
    )  # fmt: skip


def distributed_setup_warnings(state, environ=os.environ) -> list[str]:
    """What `accelerate launch` asked for and accelerate did not set up, from the launcher's environment variables
    and the training's `AcceleratorState` (empty when they agree).

    accelerate enables FSDP only on GPUs: launched with fsdp.yaml on a machine without them, a Trainer with `use_cpu`
    runs DDP over gloo (`MULTI_CPU`) with num_processes processes, each holding the whole model, in the config's
    mixed precision, and nothing says so. (The Trainer does set up DeepSpeed on CPUs; a plain Accelerator(cpu=True)
    drops it the same way.)
    """
    from accelerate.utils import DistributedType

    setup = (
        f"{state.distributed_type.value} with {state.num_processes} process(es), mixed precision "
        f"{state.mixed_precision}, on {state.device.type}"
    )
    warnings = []
    asked = {
        "FSDP": ("ACCELERATE_USE_FSDP", DistributedType.FSDP),
        "DeepSpeed": ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED),
    }
    for name, (variable, distributed_type) in asked.items():
        requested = environ.get(variable, "false").lower() in ("1", "true", "yes")
        if requested and state.distributed_type != distributed_type:
            why = " (accelerate enables FSDP on GPUs only)" if name == "FSDP" else ""
            warnings.append(
                f"`accelerate launch` was given a {name} config, but accelerate did not enable {name}{why}: this "
                f"runs as {setup}, with the whole model on every process. For sharding on CPUs see "
                "examples/accelerate/fsdp2_cpu.py; for DDP on CPUs use examples/accelerate/ddp_cpu.yaml."
            )
    launched = int(environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        warnings.append(
            f"{launched} processes were launched (WORLD_SIZE), but accelerate set up {setup}: each process trains "
            "alone on the whole data."
        )
    return warnings


def save_trained(trainer, processor, output_dir: Path, lora: bool) -> None:
    """Writes the trained model (LoRA merged, its adapter in `adapter/`) and the processor, from the main process only.

    FSDP (on GPUs) and DeepSpeed ZeRO-3 spread the parameters over the ranks: there every rank joins the Trainer's
    gather (`save_model`; fsdp.yaml uses FULL_STATE_DICT, deepspeed_zero3.yaml zero3_save_16bit_model) and rank 0
    writes the whole model; with LoRA this saves the adapter, unmerged.
    """
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        trainer.save_model(str(output_dir))  # collective; writes on the main process only
    elif trainer.is_world_process_zero():  # every rank holds the same whole model (DDP): one writes it
        trained = trainer.model
        if lora:
            trained.save_pretrained(output_dir / "adapter")
            trained = trained.merge_and_unload()
        trained.save_pretrained(output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="folder of a saved Ferret model and processor")
    source.add_argument("--tiny", choices=["v1", "v2"], help="build a tiny random Ferret (v1) or Ferret-v2 (v2)")
    parser.add_argument("--tokenizer", help="with --tiny: an original Ferret tokenizer folder (default: a tiny BPE)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="GRIT-format JSON (a list of samples) or JSONL")
    data.add_argument("--synthetic", type=int, metavar="N", help="N synthetic samples made on the fly")
    parser.add_argument("--image-folder", help="folder of the images named in --data")
    parser.add_argument("--stage", choices=sorted(STAGES), help="default: v1-stage2 (Ferret) or v2-stage3 (Ferret-v2)")
    parser.add_argument("--lora", action="store_true", help="LoRA on the LLM, merged into the saved model at the end")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on when a CUDA device supports bf16, off otherwise")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--point-probability", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 with --tiny: its ops are too small)")  # fmt: skip
    parser.add_argument("--output-dir", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from trl import SFTConfig, SFTTrainer

    args = parse_args(argv)
    start = time.time()
    threads = args.threads if args.threads is not None else (1 if args.tiny else None)
    if threads is not None:
        torch.set_num_threads(threads)
    if args.data:
        dataset = load_grit(args.data, args.image_folder)
    else:
        dataset = synthetic_dataset(args.synthetic, args.seed)

    if args.tiny:
        texts = [turn["value"] for row in dataset.select_columns(["conversations"]) for turn in row["conversations"]]
        model, processor = tiny_model_and_processor(args.tiny, texts, args.tokenizer, args.seed)
    else:
        from transformers import AutoProcessor

        model = FerretForConditionalGeneration.from_pretrained(args.model)
        processor = AutoProcessor.from_pretrained(args.model)
    is_v2 = model.config.tile_vision_config is not None
    stage = args.stage or ("v2-stage3" if is_v2 else "v1-stage2")
    summary = apply_training_stage(model, stage)
    if not args.lora:
        print(f"Stage {stage}:\n{format_trainable_summary(summary)}")

    has_cuda = torch.cuda.is_available()
    bf16 = args.bf16 if args.bf16 is not None else has_cuda and torch.cuda.is_bf16_supported()
    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not has_cuda,
        bf16=bf16,
        activation_checkpointing=args.gradient_checkpointing,  # the v5 name of `gradient_checkpointing`
        max_length=None,  # the collator truncates (--max-length) without ever cutting image tokens
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        seed=args.seed,
    )
    collator = FerretDataCollator(
        processor, point_probability=args.point_probability, seed=args.seed, max_length=args.max_length,
        image_folder=args.image_folder,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=lora_config(model, stage, args.lora_rank) if args.lora else None,
    )
    if args.lora:  # PEFT re-froze the model: LoRA on the LLM, the stage's projectors and sampler fully trained
        print(f"Stage {stage} with LoRA:\n{format_trainable_summary(trainable_summary(trainer.model))}")
    for warning in distributed_setup_warnings(trainer.accelerator.state):
        if trainer.is_world_process_zero():
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    output_dir = Path(args.output_dir)
    save_trained(trainer, processor, output_dir, args.lora)
    result = {"stage": stage, "first_loss": losses[0], "last_loss": losses[-1], "seconds": time.time() - start}
    if trainer.is_world_process_zero():
        (output_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
