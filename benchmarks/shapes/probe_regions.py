"""Region probe: can a frozen stage-0 tower's features, read through Ferret's region sampler, tell an object's colour
and shape, and how fast does the sampler learn to read them? (A diagnostic for the recipe, no language model.)

    python benchmarks/shapes/probe_regions.py --vision runs/vision --steps 300

A frozen tower encodes fresh scenes; every object becomes three regions (its free-form mask, its box, an 11x11 px
point window at the mask pixel nearest its centroid), whose points (`mask_to_points`, as the processor) go through
either Ferret's sampler (`--reader sampler`: the model's own `FerretRegionSampler`, tiny recipe config) or a mean of
the bilinear point features (`--reader mean`), then two linear heads (8 colours, 8 shapes). Only the reader and the
heads train. Prints held-out colour / shape accuracy per region type. With `--save-sampler` the trained sampler is
the recipe's stage 0b: `train.py --sampler-init` starts the model's region sampler from it.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import SAMPLER_KWARGS, scene_kwargs  # noqa: E402

from transformers_ferret import FerretConfig, FerretImageProcessorPil  # noqa: E402
from transformers_ferret.modeling_ferret_sampler import FerretRegionSampler, sample_point_features  # noqa: E402
from transformers_ferret.region_utils import mask_to_points, normalize_region  # noqa: E402
from transformers_ferret.synthetic_shapes import COLOURS, SHAPES, generate_scene  # noqa: E402

REGION_TYPES = ("free-form", "box", "point")


def region_masks(obj, height: int, width: int) -> dict[str, np.ndarray]:
    """The three region masks `[height, width]` of one object, built as the processor builds them
    (`normalize_region`); the point is the mask pixel nearest the mask's centroid."""
    ys, xs = np.nonzero(obj.mask)
    nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    box, _ = normalize_region(obj.box, (height, width))
    point, _ = normalize_region((int(xs[nearest]), int(ys[nearest])), (height, width))
    return {"free-form": obj.mask, "box": box, "point": point}


def make_batch(rng, image_processor, batch_size: int, num_points: int, generator, scene_kwargs):
    """Pixels `[B, 3, S, S]`, then per region type: points `[R, N, 2]`, image index `[R]`, colour and shape `[R]`."""
    scenes = [generate_scene(rng, **scene_kwargs) for _ in range(batch_size)]
    pixels = image_processor([scene.image for scene in scenes], return_tensors="pt")["pixel_values"]
    regions = {}
    for kind in REGION_TYPES:
        points, index, colours, shapes = [], [], [], []
        for image, scene in enumerate(scenes):
            masks = [region_masks(obj, scene.height, scene.width)[kind] for obj in scene.objects]
            points.append(mask_to_points(np.stack(masks), num_points, generator))
            index += [image] * len(masks)
            colours += [list(COLOURS).index(obj.colour) for obj in scene.objects]
            shapes += [SHAPES.index(obj.shape) for obj in scene.objects]
        regions[kind] = (torch.cat(points), torch.tensor(index), torch.tensor(colours), torch.tensor(shapes))
    return pixels, regions


class RegionProbe(nn.Module):
    def __init__(self, config: FerretConfig, reader: str):
        super().__init__()
        width = config.vision_config.hidden_size
        self.reader = reader
        self.sampler = FerretRegionSampler(config) if reader == "sampler" else None
        out = config.text_config.hidden_size if reader == "sampler" else width
        self.colour, self.shape = nn.Linear(out, len(COLOURS)), nn.Linear(out, len(SHAPES))

    def forward(self, feature_maps, points, image_index):
        if self.sampler is not None:
            region = self.sampler.encode_regions(feature_maps, points, image_index)
        else:
            region = sample_point_features(feature_maps[image_index], points, transposed_read=False).mean(1)
        return self.colour(region), self.shape(region)


def feature_maps(tower, pixels, grid: int) -> torch.Tensor:
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # the layer Ferret reads, CLS dropped
    return hidden.transpose(1, 2).reshape(hidden.shape[0], -1, grid, grid)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", required=True)
    parser.add_argument("--reader", choices=("sampler", "mean"), default="sampler")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-scenes", type=int, default=128)
    parser.add_argument("--object-size", type=int, nargs=2, metavar=("MIN", "MAX"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--save-sampler", help="with --reader sampler: save the trained sampler's state dict here "
                        "(train.py --sampler-init starts Ferret's region sampler from it)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenes = scene_kwargs(args.object_size)
    num_points = SAMPLER_KWARGS["sampler_num_init_points"]
    torch.manual_seed(0)
    tower = CLIPVisionModel.from_pretrained(args.vision).eval()
    vision_config = tower.config
    grid = vision_config.image_size // vision_config.patch_size
    config = FerretConfig(
        vision_config=vision_config.to_dict(), text_config={"model_type": "llama", "hidden_size": 256}, **SAMPLER_KWARGS
    )  # the recipe's sampler, with the tiny Llama's width as output
    probe = RegionProbe(config, args.reader)
    image_processor = FerretImageProcessorPil(size={"height": vision_config.image_size, "width": vision_config.image_size})
    optimizer = torch.optim.AdamW(probe.parameters(), lr=args.lr, weight_decay=0.01)
    rng, generator = np.random.default_rng([0, 3]), torch.Generator().manual_seed(0)
    started, log = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        pixels, regions = make_batch(rng, image_processor, args.batch_size, num_points, generator, scenes)
        maps = feature_maps(tower, pixels, grid)
        loss = 0
        for points, index, colours, shapes in regions.values():
            colour_logits, shape_logits = probe(maps, points, index)
            loss = loss + nn.functional.cross_entropy(colour_logits, colours) + nn.functional.cross_entropy(shape_logits, shapes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            log.append({"step": step, "loss": round(loss.item() / 3, 4), "seconds": round(time.perf_counter() - started)})
            print(json.dumps(log[-1]), flush=True)
    probe.eval()
    rng = np.random.default_rng([12345, 3])
    hits = {f"{kind}_{part}": [] for kind in REGION_TYPES for part in ("colour", "shape")}
    with torch.no_grad():
        for _ in range(args.eval_scenes // 32):
            pixels, regions = make_batch(rng, image_processor, 32, num_points, None, scenes)
            maps = feature_maps(tower, pixels, grid)
            for kind, (points, index, colours, shapes) in regions.items():
                colour_logits, shape_logits = probe(maps, points, index)
                hits[f"{kind}_colour"].append(colour_logits.argmax(-1) == colours)
                hits[f"{kind}_shape"].append(shape_logits.argmax(-1) == shapes)
    results = {key: round(torch.cat(value).float().mean().item(), 3) for key, value in hits.items()}
    results.update(reader=args.reader, vision=args.vision, steps=args.steps, log=log)
    print(json.dumps({key: value for key, value in results.items() if key != "log"}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.save_sampler and probe.sampler is not None:
        torch.save(probe.sampler.state_dict(), args.save_sampler)


if __name__ == "__main__":
    main()
