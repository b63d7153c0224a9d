"""Train a tiny Ferret on fresh synthetic shapes with TRL's SFTTrainer (stage 1 of the recipe; stage 0 is
`pretrain_vision.py`).

    python benchmarks/shapes/train.py --vision runs/vision --output-dir runs/ferret --max-steps 1500

Every step sees fresh scenes (an endless `datasets.IterableDataset`); the collator is the library's
`FerretDataCollator`; fp32 by default. `--bf16` (autocast) depends on the CPU: 2x slower per Linear on one Xeon,
steps 1.2x faster on an AMX Xeon, where the S3 run used it (see README).
Writes the model + processor (loadable with `from_pretrained`) and `train_log.json` (loss per logging step).
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_vision import DensePatchHeads, dense_patch_loss, held_out_accuracy, make_batch  # noqa: E402
from rec_pointer import digit_token_ids, pointer_loss, pointer_targets, readout_loss  # noqa: E402
from evaluate import evaluate_referring, evaluate_rec  # noqa: E402
from recipe import build_model, build_processor, sample_stream, scene_kwargs, to_any_resolution, train_tokenizer  # noqa: E402

import transformers_ferret  # noqa: E402,F401  (registers Ferret with the Auto classes)
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from transformers_ferret.training import FerretDataCollator  # noqa: E402
from transformers_ferret.training.grit import GRIT_FEATURES  # noqa: E402

GRIT_COLUMNS = list(GRIT_FEATURES)


SMALL_OBJECT_START = 10**9
"""First sample index of the small-object stream (`--small-object-share`): far past any index the main stream reaches,
so the two streams never draw the same scene."""


def grit_rows(seed: int, turns_per_image: int, scene_overrides: dict, tasks: dict | None = None,
              small_object_share: float = 0.0, small_object_overrides: dict | None = None):  # fmt: skip
    """GRIT rows of fresh scenes; with `small_object_share`, that share of the rows (drawn at random, seeded) come
    from a second stream whose scenes take `small_object_overrides` (e.g. smaller objects) instead."""
    main = sample_stream(seed, turns_per_image=turns_per_image, tasks=tasks, **scene_overrides)
    small = sample_stream(seed, turns_per_image=turns_per_image, tasks=tasks, start=SMALL_OBJECT_START,
                          **{**scene_overrides, **(small_object_overrides or {})})  # fmt: skip
    choice = np.random.default_rng([seed, 2])
    while True:
        sample = next(small if choice.random() < small_object_share else main)
        yield {column: sample.get(column) for column in GRIT_COLUMNS}


class CoordinatesOnlyCollator(FerretDataCollator):
    """The coordinates-only ablation: the same text (coordinates + the region token), but no region points reach
    the model, whose `region_token_index` points at an unused token, so the region token is a plain learned
    embedding."""

    def __call__(self, examples):
        batch = super().__call__(examples)
        batch.pop("region_points", None)
        batch.pop("region_counts", None)
        return batch


class DenseAuxiliaryTrainer(SFTTrainer):
    """SFTTrainer plus stage 0's dense per-patch colour/shape (and optionally box) loss on a separate batch of fresh
    scenes each step.

    The CPU notes measured that keeping this loss during instruction tuning is what makes the tiny tower learn shape;
    the two linear heads live on the model as `dense_auxiliary_heads` during training and are removed before saving.
    """

    def __init__(self, *args, aux_weight: float, aux_batch_size: int, aux_seed: int, aux_object_weight: float = 0.0,
                 aux_box_weight: float = 0.0, aux_box_digits: bool = True, scene_kwargs: dict | None = None,
                 pointer_weight: float = 0.0, pointer_layer: int = 1, pointer_head: int = 0,
                 readout_weight: float = 0.0, pointer_first_weight: float = 0.0, pointer_name_weight: float = 0.0,
                 **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.pointer_weight, self.pointer_layer, self.pointer_head = pointer_weight, pointer_layer, pointer_head
        self.readout_weight, self.pointer_first_weight = readout_weight, pointer_first_weight
        self.pointer_name_weight = pointer_name_weight
        # the auxiliary losses since the last log, by their name in the log: dense, REC pointer (all digits, first digit
        # only, name tokens), read-out
        self.loss_history = defaultdict(list)
        if pointer_weight:  # the pointer head's attention probabilities (and output), caught as its layer computes them
            self.digit_ids = digit_token_ids(self.processing_class.tokenizer)
            self.pointer_attention = self.pointer_output = None
            attention = self.model.model.language_model.layers[pointer_layer].self_attn
            attention.register_forward_hook(self.catch_pointer_attention)
            attention.o_proj.register_forward_pre_hook(self.catch_pointer_output)
        self.aux_weight, self.aux_batch_size, self.aux_object_weight = aux_weight, aux_batch_size, aux_object_weight
        self.aux_box_weight, self.aux_box_digits = aux_box_weight, aux_box_digits
        self.scene_kwargs = scene_kwargs
        self.aux_rng = np.random.default_rng([aux_seed, 1])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.pointer_weight and model.training:
            result = self.add_pointer_loss(model, inputs, return_outputs, num_items_in_batch)
        else:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not model.training or self.aux_weight == 0:
            return result
        vision_config = model.config.vision_config
        grid = vision_config.image_size // vision_config.patch_size
        pixels, colours, shapes, boxes = (tensor.to(model.device) for tensor in make_batch(
            self.aux_rng, self.processing_class.image_processor, self.aux_batch_size, grid, self.scene_kwargs
        ))  # fmt: skip
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        colour_logits, shape_logits, box_predictions, digit_logits = model.dense_auxiliary_heads(
            hidden[model.config.vision_feature_layer][:, 1:]  # CLS dropped
        )
        aux = dense_patch_loss(colour_logits, shape_logits, colours, shapes, self.aux_object_weight, box_predictions,
                               boxes, self.aux_box_weight, digit_logits if self.aux_box_digits else None)  # fmt: skip
        self.loss_history["aux_loss"].append(aux.item())
        if return_outputs:
            return result[0] + self.aux_weight * aux, result[1]
        return result + self.aux_weight * aux

    def catch_pointer_attention(self, module, args, output):
        """Forward hook on the pointer layer's attention: keeps its probabilities `[batch, heads, seq, seq]` (eager
        attention returns them with their graph; the `output_attentions` copies of TRL's forward come detached)."""
        self.pointer_attention = output[1]

    def catch_pointer_output(self, module, args):
        """Forward pre-hook on the pointer layer's output projection: keeps the pointer head's slice of its input,
        the head's attention output `[batch, seq, head_dim]`."""
        head_dim = module.in_features // self.model.config.text_config.num_attention_heads
        self.pointer_output = args[0][..., self.pointer_head * head_dim: (self.pointer_head + 1) * head_dim]

    def add_pointer_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """The answer loss plus `pointer_weight` times the REC pointer loss of one attention head, plus
        `pointer_first_weight` times that loss at each answer's first digit only (where the object is chosen), plus
        `pointer_name_weight` times it at the answer's name tokens, plus `readout_weight` times the read-out loss of
        that head's output (rec_pointer.py)."""
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        found = pointer_targets(inputs["input_ids"], inputs["labels"], self.processing_class.tokenizer,
                                model.config.image_token_id, grid, self.digit_ids)  # fmt: skip
        attention = self.pointer_attention[:, self.pointer_head]
        pointer = pointer_loss(attention, found.targets)
        self.loss_history["pointer_loss"].append(pointer.item())
        extra = self.pointer_weight * pointer
        if self.pointer_first_weight:
            pointer_first = pointer_loss(attention, found.targets & found.first_queries[..., None])
            self.loss_history["pointer_first_loss"].append(pointer_first.item())
            extra = extra + self.pointer_first_weight * pointer_first
        if self.pointer_name_weight:
            pointer_name = pointer_loss(attention, found.name_targets)
            self.loss_history["pointer_name_loss"].append(pointer_name.item())
            extra = extra + self.pointer_name_weight * pointer_name
        if self.readout_weight:
            readout = readout_loss(self.pointer_output, found.query_boxes, model.rec_readout_head)
            self.loss_history["readout_loss"].append(readout.item())
            extra = extra + self.readout_weight * readout
        self.pointer_attention = self.pointer_output = None
        if return_outputs:
            return result[0] + extra, result[1]
        return result + extra

    def log(self, logs, *args, **kwargs):
        for name, history in self.loss_history.items():
            if history and "loss" in logs:
                logs[name] = round(sum(history) / len(history), 4)
                history.clear()
        super().log(logs, *args, **kwargs)


class TowerWithDenseHeads(torch.nn.Module):
    """The trained global vision tower and the dense heads on the layer Ferret reads, as `held_out_accuracy` wants."""

    def __init__(self, model):
        super().__init__()
        self.tower, self.heads, self.layer = model.model.vision_tower, model.dense_auxiliary_heads, model.config.vision_feature_layer

    def forward(self, pixel_values):
        return self.heads(self.tower(pixel_values, output_hidden_states=True).hidden_states[self.layer][:, 1:])


class ReferringCurveCallback(TrainerCallback):
    """Every `every` steps, greedy referring accuracy on `num_scenes` fresh scenes per region type (seed 4242, not the
    table's), and with `rec` REC Acc@0.5 and mean IoU on as many scenes, added to the log history: the learning curves
    of the README."""

    def __init__(self, every: int, num_scenes: int, scene_kwargs: dict, rec: bool = False):
        self.every, self.num_scenes, self.scene_kwargs, self.rec = every, num_scenes, scene_kwargs, rec

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        model.eval()
        with torch.no_grad():
            results = evaluate_referring(model, processing_class, self.num_scenes, seed=4242, scene_kwargs=self.scene_kwargs)
            if self.rec:
                results.update(evaluate_rec(model, processing_class, self.num_scenes, seed=4242, scene_kwargs=self.scene_kwargs))
        model.train()
        state.log_history.append({"step": state.global_step, **{f"curve_{key}": value for key, value in results.items()}})
        print(json.dumps(state.log_history[-1]), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", help="stage-0 vision tower folder (default: a randomly initialised tower)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--turns-per-image", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                        help="bf16 autocast (weights stay float32); faster only on CPUs with fast bf16, e.g. AMX")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="data-loader processes (overlap scene generation)")
    parser.add_argument("--aux-weight", type=float, default=1.0, help="dense per-patch loss weight (0 = off)")
    parser.add_argument("--aux-batch-size", type=int, default=16)
    parser.add_argument("--aux-object-weight", type=float, default=0.0,
                        help="extra dense loss averaged over object patches only (pretrain_vision.dense_patch_loss)")
    parser.add_argument("--aux-box-weight", type=float, default=0.0,
                        help="dense per-patch object-box term, L1 + digit cross-entropy (pretrain_vision.dense_patch_loss)")
    parser.add_argument("--aux-box-digits", action=argparse.BooleanOptionalAction, default=True,
                        help="the box term includes the digit cross-entropy (--no-aux-box-digits: L1 only)")
    parser.add_argument("--rec-pointer-weight", type=float, default=0.0,
                        help="REC pointer loss: one attention head must look at the answer box's patches (rec_pointer.py)")
    parser.add_argument("--rec-pointer-layer", type=int, default=1, help="language-model layer of the pointer head")
    parser.add_argument("--rec-pointer-head", type=int, default=0, help="attention head of the pointer")
    parser.add_argument("--rec-pointer-first-weight", type=float, default=0.0,
                        help="with the pointer: an extra pointer loss at each answer's first box digit only, where the "
                             "object is chosen (later digits can find it from the coordinates already written)")
    parser.add_argument("--rec-pointer-name-weight", type=float, default=0.0,
                        help="with the pointer: an extra pointer loss at the answer's name tokens before its box "
                             "(\"cyan\", \"star\" in \"The cyan star [...\"), where the name is at hand")
    parser.add_argument("--rec-readout-weight", type=float, default=0.0,
                        help="with the pointer: a linear read-out of the pointer head's output must give the box digits")
    parser.add_argument("--init-from", help="continue from this checkpoint (model + processor) instead of a new model")
    parser.add_argument("--any-resolution", action="store_true",
                        help="train a Ferret-v2 (recipe.to_any_resolution of the --init-from or the new model)")  # fmt: skip
    parser.add_argument("--object-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="object sizes in source pixels (default: the recipe's 20 80)")  # fmt: skip
    parser.add_argument("--small-object-share", type=float, default=0.0,
                        help="share of training scenes drawn with --small-object-size objects instead (0 = none)")
    parser.add_argument("--small-object-size", type=int, nargs=2, metavar=("MIN", "MAX"), default=(10, 40),
                        help="object sizes in source pixels of the --small-object-share scenes")  # fmt: skip
    parser.add_argument("--sampler-init", help="stage 0b: a region-sampler state dict (probe_regions.py --save-sampler)")
    parser.add_argument("--eval-every", type=int, default=0, help="referring accuracy every N steps (0 = off)")
    parser.add_argument("--eval-scenes", type=int, default=48)
    parser.add_argument("--eval-rec", action="store_true", help="with --eval-every: REC accuracy curves too")
    parser.add_argument("--task-weights", help="e.g. roc_open=6,roc_choice=2,same_bbox=1 (default: recipe.TASK_WEIGHTS)")
    parser.add_argument("--coordinates-only", action="store_true",
                        help="ablation: the region token is a plain embedding, no region features")  # fmt: skip
    args = parser.parse_args(argv)
    pointer_terms = {"--rec-pointer-first-weight": args.rec_pointer_first_weight,
                     "--rec-pointer-name-weight": args.rec_pointer_name_weight,
                     "--rec-readout-weight": args.rec_readout_weight}  # fmt: skip
    if not args.rec_pointer_weight and any(pointer_terms.values()):  # they read the pointer head it sets up
        given = ", ".join(name for name, weight in pointer_terms.items() if weight)
        parser.error(f"{given} needs --rec-pointer-weight > 0 (the pointer head they supervise)")

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.init_from:
        processor = AutoProcessor.from_pretrained(args.init_from)
        model = AutoModelForImageTextToText.from_pretrained(args.init_from)
        tokenizer = processor.tokenizer
    else:
        tokenizer = train_tokenizer(extra_tokens=["<unused_region>"] if args.coordinates_only else ())
        processor = build_processor(tokenizer)
        model = build_model(tokenizer, args.vision, seed=args.seed)
    if args.any_resolution:  # a new model too: its tile tower starts as a copy of the (stage-0) global tower
        model, processor = to_any_resolution(model, processor)
    if args.sampler_init:
        model.model.region_sampler.load_state_dict(torch.load(args.sampler_init, weights_only=True))
    if args.coordinates_only:
        model.config.region_token_index = tokenizer.convert_tokens_to_ids("<unused_region>")
    if args.aux_weight:
        model.dense_auxiliary_heads = DensePatchHeads(model.config.vision_config.hidden_size)
    if args.rec_pointer_weight:  # attention probabilities are needed: the eager kernel returns them, SDPA does not
        attention_implementation = model.config.text_config._attn_implementation
        model.set_attn_implementation("eager")
        if args.rec_readout_weight:  # training-only, like the dense heads
            text = model.config.text_config
            model.rec_readout_head = torch.nn.Linear(text.hidden_size // text.num_attention_heads, 4 * 2 * 10)
    scene_overrides = {"object_size": tuple(args.object_size)} if args.object_size else {}
    task_weights = None
    if args.task_weights:
        task_weights = {name: float(weight) for name, weight in (item.split("=") for item in args.task_weights.split(","))}
    dataset = datasets.IterableDataset.from_generator(
        grit_rows, features=GRIT_FEATURES,
        gen_kwargs={"seed": args.seed, "turns_per_image": args.turns_per_image, "scene_overrides": scene_overrides,
                    "tasks": task_weights, "small_object_share": args.small_object_share,
                    "small_object_overrides": {"object_size": tuple(args.small_object_size)}},
    )  # fmt: skip
    config = SFTConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, args.max_steps // 25),
        weight_decay=0.01, adam_beta2=0.98, max_grad_norm=1.0, logging_steps=args.logging_steps, save_strategy="no",
        report_to="none",
        use_cpu=True, bf16=args.bf16, activation_checkpointing=False, max_length=None, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=args.workers, seed=args.seed,
    )  # fmt: skip
    collator_class = CoordinatesOnlyCollator if args.coordinates_only else FerretDataCollator
    trainer = DenseAuxiliaryTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=processor,
        data_collator=collator_class(processor, seed=args.seed), aux_weight=args.aux_weight,
        aux_batch_size=args.aux_batch_size, aux_seed=args.seed, aux_object_weight=args.aux_object_weight,
        aux_box_weight=args.aux_box_weight, aux_box_digits=args.aux_box_digits, scene_kwargs=scene_kwargs(args.object_size),
        pointer_weight=args.rec_pointer_weight, pointer_layer=args.rec_pointer_layer, pointer_head=args.rec_pointer_head,
        readout_weight=args.rec_readout_weight, pointer_first_weight=args.rec_pointer_first_weight,
        pointer_name_weight=args.rec_pointer_name_weight,
    )  # fmt: skip
    if args.eval_every:
        trainer.add_callback(ReferringCurveCallback(
            args.eval_every, args.eval_scenes, scene_kwargs(args.object_size), args.eval_rec
        ))
    trainer.train()
    dense_held_out = None
    if args.aux_weight:  # what the features say per object patch at the end (colour, shape, box, box digits)
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        dense_held_out = held_out_accuracy(TowerWithDenseHeads(model), processor.image_processor, grid,
                                           scene_kwargs(args.object_size), num_scenes=128)  # fmt: skip
        del model.dense_auxiliary_heads
    if args.rec_pointer_weight:
        model.set_attn_implementation(attention_implementation)
    if args.rec_readout_weight:
        del model.rec_readout_head
    output = Path(args.output_dir)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    log = [entry for entry in trainer.state.log_history if "loss" in entry or "curve_roc_box" in entry]
    summary = {"steps": args.max_steps, "batch_size": args.batch_size, "seconds": round(time.perf_counter() - started),
               "vision": args.vision, "aux_weight": args.aux_weight, "coordinates_only": args.coordinates_only,
               "turns_per_image": args.turns_per_image, "init_from": args.init_from, "task_weights": task_weights,
               "any_resolution": args.any_resolution, "object_size": args.object_size,
               "aux_object_weight": args.aux_object_weight, "aux_box_weight": args.aux_box_weight,
               "aux_box_digits": args.aux_box_digits, "rec_pointer_weight": args.rec_pointer_weight,
               "rec_pointer_layer": args.rec_pointer_layer, "rec_pointer_head": args.rec_pointer_head,
               "rec_readout_weight": args.rec_readout_weight,
               "rec_pointer_first_weight": args.rec_pointer_first_weight,
               "rec_pointer_name_weight": args.rec_pointer_name_weight,
               "small_object_share": args.small_object_share, "small_object_size": list(args.small_object_size),
               "sampler_init": args.sampler_init, "dense_held_out": dense_held_out, "log": log}  # fmt: skip
    (output / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({key: value for key, value in summary.items() if key != "log"}))
    return summary


if __name__ == "__main__":
    main()
