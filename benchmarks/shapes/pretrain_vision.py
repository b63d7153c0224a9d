"""Stage 0 of the synthetic-shapes recipe: pretrain a tiny CLIP-style vision tower on the synthetic scenes.

Real Ferret starts from a pretrained CLIP (and Ferret-v2 from CLIP + DINOv2); a tiny tower trained from scratch on
the CPU needs a stand-in for that pretraining. This script trains the tower with a dense per-patch objective: every
patch of the layer Ferret reads (hidden_states[-2], CLS dropped) predicts the colour and the shape of the object whose
mask covers the patch centre (or "background"). It saves a `CLIPVisionModel` folder that `train.py` builds Ferret on.

    python benchmarks/shapes/pretrain_vision.py --output-dir runs/vision --steps 600
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from transformers_ferret import FerretImageProcessorPil
from transformers_ferret.evaluation import box_iou
from transformers_ferret.synthetic_shapes import COLOURS, SHAPES, generate_scene

from recipe import SCENE_KWARGS, scene_kwargs  # noqa: E402  (benchmarks/shapes is the script's folder)



def tiny_clip_config(image_size: int = 112, patch_size: int = 16) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=192, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=3, hidden_act="quick_gelu",
    )  # fmt: skip


def sincos_position_embeddings(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position embeddings `[1 + grid * grid, dim]` (a zero row for CLS), MAE style."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [axis.flatten()[:, None].float() * frequencies[None] for axis in (rows, cols)]
    table = torch.cat([angles[0].sin(), angles[0].cos(), angles[1].sin(), angles[1].cos()], dim=1)
    table = nn.functional.pad(table, (0, dim - table.shape[1]))
    return torch.cat([torch.zeros(1, dim), table])


def patch_labels(scene, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Per patch, `[grid * grid]` each: the colour and the shape class (0 = background) of the object under the patch
    centre, and that object's box as fractions of the image `[grid * grid, 4]` (x1, y1, x2, y2; zeros on background):
    the box is what a grounding answer writes, in 0..1 instead of 0..999.
    """
    centres = (np.arange(grid) + 0.5) / grid
    ys = (centres * scene.height).astype(int)
    xs = (centres * scene.width).astype(int)
    colour, shape = np.zeros((grid, grid), dtype=np.int64), np.zeros((grid, grid), dtype=np.int64)
    boxes = np.zeros((grid, grid, 4), dtype=np.float32)
    size = np.array([scene.width, scene.height, scene.width, scene.height], dtype=np.float32)
    for obj in scene.objects:  # a handful of objects per scene; later objects are drawn on top
        covered = obj.mask[np.ix_(ys, xs)]
        colour[covered] = list(COLOURS).index(obj.colour) + 1
        shape[covered] = SHAPES.index(obj.shape) + 1
        boxes[covered] = np.array(obj.box, dtype=np.float32) / size  # as the answer text writes it, / 1000
    return colour.reshape(-1), shape.reshape(-1), boxes.reshape(-1, 4)


def make_batch(rng, image_processor, batch_size: int, grid: int, scene_kwargs=None):
    """`batch_size` fresh scenes: pixel values and the per-patch labels of `patch_labels` (colours, shapes, boxes)."""
    scenes = [generate_scene(rng, **(scene_kwargs or SCENE_KWARGS)) for _ in range(batch_size)]
    pixels = image_processor([scene.image for scene in scenes], return_tensors="pt")["pixel_values"]
    labels = [patch_labels(scene, grid) for scene in scenes]
    return (pixels,) + tuple(torch.from_numpy(np.stack(column)) for column in zip(*labels))


class DensePatchHeads(nn.Module):
    """
    Per-patch heads on `[batch, patches, hidden]` features: colour and shape classifiers (class 0 = background), a box
    regressor (the covering object's box as fractions of the image, `[batch, patches, 4]`) and box-digit classifiers
    (the hundreds and the tens digit of each coordinate on the 0..999 grid, `[batch, patches, 4, 2, 10]`).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.colour = nn.Linear(hidden_size, len(COLOURS) + 1)
        self.shape = nn.Linear(hidden_size, len(SHAPES) + 1)
        self.box = nn.Linear(hidden_size, 4)
        self.box_digits = nn.Linear(hidden_size, 4 * 2 * 10)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        digits = self.box_digits(features).unflatten(-1, (4, 2, 10))
        return self.colour(features), self.shape(features), self.box(features), digits


def box_digit_labels(boxes: torch.Tensor) -> torch.Tensor:
    """
    `[..., 4]` box fractions -> `[..., 4, 2]` hundreds and tens digit of each coordinate's grid value `int(v * 1000)`,
    the number a grounding answer writes. (`+ 1e-3` undoes float rounding: a true grid value `x * 1000 / width` of
    integers is either whole or at least `1 / width` above the integer below it.)
    """
    grid_values = (boxes.float() * 1000 + 1e-3).floor().long().clamp(0, 999)
    return torch.stack([grid_values // 100, grid_values // 10 % 10], dim=-1)


def dense_patch_loss(colour_logits, shape_logits, colours, shapes, object_weight: float = 0.0, box_predictions=None,
                     boxes=None, box_weight: float = 0.0, box_digit_logits=None) -> torch.Tensor:
    """
    Summed cross-entropy of the colour and the shape label of every patch, plus `object_weight` times the same
    cross-entropies averaged over the patches an object covers only (most patches are background, which otherwise
    dominates the mean and leaves the shape of the few object patches with little gradient), plus `box_weight` times
    the box term over the covered patches: the L1 error of `box_predictions` against `boxes` (`[batch, patches, 4]`,
    fractions of the image) and, when `box_digit_logits` (`[batch, patches, 4, 2, 10]`) are given, the mean
    cross-entropy of the coordinates' hundreds and tens digits (`box_digit_labels`). The box term puts where each
    object is into the features, in the form a grounding answer writes it.
    """
    colour_loss = nn.functional.cross_entropy(colour_logits.float().flatten(0, 1), colours.flatten(), reduction="none")
    shape_loss = nn.functional.cross_entropy(shape_logits.float().flatten(0, 1), shapes.flatten(), reduction="none")
    loss = colour_loss.mean() + shape_loss.mean()
    covered = shapes.flatten() > 0
    if object_weight and covered.any():
        loss = loss + object_weight * (colour_loss[covered].mean() + shape_loss[covered].mean())
    if box_weight and covered.any():
        targets = boxes.flatten(0, 1)[covered]
        box_term = (box_predictions.float().flatten(0, 1)[covered] - targets).abs().mean()
        if box_digit_logits is not None:
            digit_logits = box_digit_logits.float().flatten(0, 1)[covered]
            box_term = box_term + nn.functional.cross_entropy(
                digit_logits.flatten(0, -2), box_digit_labels(targets).flatten()
            )
        loss = loss + box_weight * box_term
    return loss


class PatchClassifier(nn.Module):
    """The vision tower plus the two dense heads on the features Ferret reads."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.tower = CLIPVisionModel(config)
        grid = config.image_size // config.patch_size
        with torch.no_grad():  # a learned table, started from 2-D sin-cos so patches know where they are at step 0
            self.tower.embeddings.position_embedding.weight.copy_(sincos_position_embeddings(grid, config.hidden_size))
        self.heads = DensePatchHeads(config.hidden_size)

    def forward(self, pixel_values):
        return self.heads(self.tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:])


def object_mean_boxes(box_predictions: torch.Tensor, boxes: torch.Tensor, covered: torch.Tensor):
    """
    Per object: the mean of the box predictions of the patches it covers, and its box. `box_predictions`, `boxes`:
    `[batch, patches, 4]`; `covered`: `[batch, patches]` bool. An object is a (scene, box) pair, since every patch of
    an object carries its box (`patch_labels`). Returns two `[objects, 4]` tensors.
    """
    scene = torch.arange(boxes.shape[0])[:, None].expand(covered.shape)[covered]
    keys = torch.cat([scene[:, None].to(boxes.dtype), boxes[covered]], dim=1)
    objects, index = torch.unique(keys, dim=0, return_inverse=True)
    sums = torch.zeros(len(objects), 4, dtype=box_predictions.dtype).index_add_(0, index, box_predictions[covered])
    return sums / torch.bincount(index, minlength=len(objects))[:, None], objects[:, 1:].to(box_predictions.dtype)


@torch.no_grad()
def held_out_accuracy(model, image_processor, grid: int, scene_kwargs, num_scenes: int = 256, seed: int = 12345) -> dict:
    """Per-patch colour and shape accuracy, box L1 error, hundreds-digit accuracy and box IoU >= 0.5 rate (the REC
    Acc@0.5 of an answer that copied one object patch's box reading) on patches covered by an object, and the IoU >= 0.5
    rate of each object's box read as the mean of its patches' readings (what a head attending evenly to the object's
    patches could bring back), over fresh scenes (a fixed seed)."""
    rng = np.random.default_rng([seed, 1])
    was_training = model.training
    model.eval()
    hits, errors, digit_hits, ious, object_ious = {"colour": [], "shape": []}, [], [], [], []
    for _ in range(num_scenes // 32):
        pixels, colours, shapes, boxes = make_batch(rng, image_processor, 32, grid, scene_kwargs)
        colour_logits, shape_logits, box_predictions, digit_logits = model(pixels)
        covered = shapes > 0
        hits["colour"].append((colour_logits.argmax(-1) == colours)[covered])
        hits["shape"].append((shape_logits.argmax(-1) == shapes)[covered])
        errors.append((box_predictions - boxes).abs()[covered])
        ious.append(box_iou(box_predictions[covered].float(), boxes[covered]).diagonal())  # each patch vs its object
        object_ious.append(box_iou(*object_mean_boxes(box_predictions.float(), boxes, covered)).diagonal())
        digit_hits.append((digit_logits.argmax(-1) == box_digit_labels(boxes))[covered])
    model.train(was_training)
    results = {f"object_patch_{name}_acc": round(torch.cat(values).float().mean().item(), 4) for name, values in hits.items()}
    results["object_patch_box_l1"] = round(torch.cat(errors).mean().item(), 4)  # fractions of the image side
    results["object_patch_box_hundreds_acc"] = round(torch.cat(digit_hits)[..., 0].float().mean().item(), 4)
    results["object_patch_box_iou50"] = round(float((np.concatenate(ious) >= 0.5).mean()), 4)
    results["object_mean_box_iou50"] = round(float((np.concatenate(object_ious) >= 0.5).mean()), 4)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--object-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="object side range in source pixels (default: the recipe's SCENE_KWARGS)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--object-weight", type=float, default=0.0,
                        help="weight of the loss averaged over object patches only (see dense_patch_loss)")
    parser.add_argument("--box-weight", type=float, default=0.0,
                        help="weight of the per-patch object-box term, L1 + digit cross-entropy (see dense_patch_loss)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (about 1.8x faster on CPUs with avx512_bf16)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenes = scene_kwargs(args.object_size)
    config = tiny_clip_config(args.image_size, args.patch_size)
    grid = args.image_size // args.patch_size
    model = PatchClassifier(config).train()
    image_processor = FerretImageProcessorPil(size={"height": args.image_size, "width": args.image_size})
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng([args.seed, 0])
    log, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        pixels, colours, shapes, boxes = make_batch(rng, image_processor, args.batch_size, grid, scenes)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            colour_logits, shape_logits, box_predictions, digit_logits = model(pixels)
        loss = dense_patch_loss(colour_logits, shape_logits, colours, shapes, args.object_weight, box_predictions, boxes,
                                args.box_weight, digit_logits)  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == args.steps:
            object_patches = shapes > 0
            shape_accuracy = (shape_logits.argmax(-1) == shapes)[object_patches].float().mean().item()
            colour_accuracy = (colour_logits.argmax(-1) == colours)[object_patches].float().mean().item()
            entry = {"step": step, "loss": round(loss.item(), 4), "object_patch_colour_acc": round(colour_accuracy, 3),
                     "object_patch_shape_acc": round(shape_accuracy, 3),
                     "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
            log.append(entry)
            print(json.dumps(entry), flush=True)
    held_out = held_out_accuracy(model, image_processor, grid, scenes)
    print(json.dumps({"held_out": held_out}), flush=True)
    output = Path(args.output_dir)
    model.tower.save_pretrained(output)
    (output / "pretrain_log.json").write_text(json.dumps({"log": log, "held_out": held_out}, indent=1))


if __name__ == "__main__":
    main()
