"""Fuzzes FerretProcessor and `post_process_grounding` with random well- and ill-formed inputs.

Every case must either succeed with well-formed outputs or raise an *expected* error: a ValueError/TypeError whose
message names the offending argument. Anything else (another exception type, an error that names nothing, an
output that breaks an invariant, a case slower than `--slow-seconds`) is unexpected; the script then exits with 1.

    python benchmarks/fuzz.py                    # 12,000 cases, seed 0
    python benchmarks/fuzz.py --cases 50000 --seed 3

Runs offline with the tiny tokenizer of `modeling_tests/fixtures/original_ferret/ferret_tiny` (override with
`--parity-dir`).
"""

import argparse
import base64
import io
import logging
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transformers_ferret import FerretImageProcessorPil, FerretProcessor
from transformers_ferret.conversion import convert_original_tokenizer


IMAGE_TOKEN, REGION_TOKEN = "<image>", "<region_fea>"
NUM_IMAGE_TOKENS, NUM_POINTS, MAX_REGIONS = 4, 16, 8

# What an expected error's message names (the first that matches is its "argument" in the summary).
EXPECTED_MARKERS = [
    ("`images", "images"),
    ("<image> tokens", "images"),
    ("`regions`", "regions"),
    ("region placeholders", "regions"),
    ("refers to regions", "regions"),
    ("max_regions_per_sample", "regions"),
    ("Mismatch in `", "text (truncation)"),
    ("`text`", "text"),
    ("`image_sizes`", "image_sizes"),
    ("`texts`", "texts"),
]


class InvariantError(AssertionError):
    """An output that breaks a documented invariant."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantError(message)


# --- random inputs ---


def random_image(rng: np.random.Generator, clean: bool):
    """A random image-like input: PIL in many modes, numpy/torch in several layouts and dtypes, or junk; `clean`
    inputs are all valid (no empty, out-of-range, truncated or junk images)."""
    sizes, weights = [0, 1, 2, 3, 5, 17, 40, 64], [.02, .2, .05, .08, .15, .2, .2, .1]
    if clean:
        sizes, weights = sizes[1:], weights[1:]
    height, width = (int(v) for v in rng.choice(sizes, size=2, p=_norm(weights)))
    if rng.random() < 0.05:
        height, width = (1, 3000) if rng.random() < 0.5 else (3000, 1)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    kinds = ["pil", "numpy", "torch", "string", "junk"]
    kind = rng.choice(kinds, p=[0.5, 0.3, 0.2, 0, 0] if clean else [0.4, 0.3, 0.15, 0.1, 0.05])
    if kind == "pil":
        if height == 0 or width == 0:
            return Image.new("RGB", (width, height))
        mode = rng.choice(["RGB", "L", "RGBA", "P", "CMYK", "1", "LA", "I;16", "I", "F", "YCbCr"])
        image = Image.fromarray(pixels)
        if mode == "I;16":
            return Image.frombytes("I;16", (width, height), (pixels[..., 0].astype("<u2") * 257).tobytes())
        if mode == "F":
            return Image.fromarray(pixels[..., 0].astype(np.float32) / (255 if rng.random() < 0.7 else 1))
        return image.convert(str(mode))
    if kind in ("numpy", "torch"):
        layout = rng.choice(["HWC", "CHW", "HW", "HW1", "HW4"] + ([] if clean else ["HW2", "NHWC", "5D"]))
        array = {
            "HWC": pixels, "CHW": pixels.transpose(2, 0, 1), "HW": pixels[..., 0], "HW1": pixels[..., :1],
            "HW4": np.concatenate([pixels, pixels[..., :1]], -1), "HW2": pixels[..., :2], "NHWC": pixels[None],
            "5D": pixels[None, None],
        }[str(layout)]  # fmt: skip
        dtype = rng.choice(["uint8", "uint16", "float01", "bool", "int64"]
                           + ([] if clean else ["float255", "float-neg", "nan", "int-big"]))
        if dtype == "uint16":
            array = array.astype(np.uint16) * 257
        elif dtype == "float01":
            array = array.astype(np.float32) / 255
        elif dtype == "float255":
            array = array.astype(np.float64)
        elif dtype == "float-neg":
            array = array.astype(np.float32) / 255 - 0.5
        elif dtype == "nan":
            array = array.astype(np.float32) / 255
            if array.size:
                array.flat[int(rng.integers(array.size))] = np.nan
        elif dtype == "bool":
            array = array > 127
        elif dtype == "int64":
            array = array.astype(np.int64)
        elif dtype == "int-big":
            array = array.astype(np.int32) * 300 - 1000
        array = np.ascontiguousarray(array)
        if kind == "torch":
            tensor = torch.from_numpy(array)
            return tensor.to(torch.bfloat16) if tensor.is_floating_point() and rng.random() < 0.3 else tensor
        return array
    if kind == "string":
        buffer = io.BytesIO()
        Image.fromarray(pixels if height and width else np.zeros((1, 1, 3), np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue()
        choice = rng.choice(["base64", "data-uri", "truncated", "garbage", "missing-path"])
        if choice == "truncated":
            data = data[: max(8, len(data) // 2)]
        encoded = base64.b64encode(data).decode()
        return {
            "base64": encoded, "data-uri": "data:image/png;base64," + encoded, "truncated": encoded,
            "garbage": "not an image at all", "missing-path": "/nonexistent/file.png",
        }[str(choice)]  # fmt: skip
    return [None, 3, 2.5, {"image": 1}, b"bytes"][int(rng.integers(5))]


def image_size(image) -> tuple[int, int]:
    """`(height, width)` of a random image as the processor will see it (20 x 30 for junk)."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (2, 3):
        shape = tuple(image.shape)
        channels_first = image.ndim == 3 and shape[0] in (1, 3, 4) and (isinstance(image, torch.Tensor)
                                                                         or shape[-1] not in (1, 3, 4))  # fmt: skip
        return (shape[1], shape[2]) if channels_first else (shape[0], shape[1])
    return 20, 30


def random_number(rng: np.random.Generator, scale: float):
    roll = rng.random()
    if roll < 0.03:
        return float(rng.choice([np.nan, np.inf, -np.inf]))
    if roll < 0.06:
        return float(rng.choice([1e300, -1e300, 1e-300]))
    if roll < 0.08:
        return bool(rng.integers(2))
    value = rng.uniform(-0.3 * scale, 1.3 * scale)
    return int(value) if rng.random() < 0.5 else float(value)


def _norm(weights: list[float]) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum()


def clean_region(rng: np.random.Generator, height: int, width: int):
    """A valid region: a point inside, a box overlapping the image (possibly sticking out), a non-empty mask."""
    kind = rng.choice(["point", "box", "mask"])
    if kind == "point":
        return (float(rng.uniform(0, width)) * 0.999, float(rng.uniform(0, height)) * 0.999)
    if kind == "box":
        x1, y1 = rng.uniform(-width, width - 1), rng.uniform(-height, height - 1)
        return (x1, y1, rng.uniform(max(x1, 0), 2 * width), rng.uniform(max(y1, 0), 2 * height))
    mask = rng.random((height, width)) < rng.choice([0.01, 0.3, 1.0])
    mask[int(rng.integers(height)), int(rng.integers(width))] = True
    return mask if rng.random() < 0.5 else {"mask": mask.astype(np.uint8) * 255}


def random_region(rng: np.random.Generator, height: int, width: int, clean: bool):
    if clean and height > 0 and width > 0:
        return clean_region(rng, height, width)
    scale = max(height, width, 1)
    kind = rng.choice(["point", "box", "mask", "dict", "junk"], p=[0.3, 0.3, 0.2, 0.15, 0.05])
    if kind == "point":
        return tuple(random_number(rng, scale) for _ in range(2))
    if kind == "box":
        values = [random_number(rng, scale) for _ in range(int(rng.choice([4, 4, 4, 3, 5])))]
        return torch.tensor(values) if rng.random() < 0.1 and not any(isinstance(v, bool) for v in values) else values
    if kind == "mask":
        shape = (height, width) if rng.random() < 0.85 else (max(height, 1) + 1, width)
        mask = rng.random(shape) < rng.choice([0.0, 0.01, 0.3, 1.0])
        as_type = rng.choice(["bool", "uint8", "float", "soft", "nan", "torch", "pil", "3d", "str"])
        if as_type == "uint8":
            return mask.astype(np.uint8) * 255
        if as_type == "float":
            return mask.astype(np.float32)
        if as_type == "soft":
            return rng.random(shape).astype(np.float32)
        if as_type == "nan":
            soft = rng.random(shape)
            soft.flat[:1] = np.nan
            return soft
        if as_type == "torch":
            return torch.from_numpy(mask)
        if as_type == "pil" and mask.size:
            return Image.fromarray(mask)
        if as_type == "3d":
            return mask[None]
        if as_type == "str":
            return mask.astype(str)
        return mask
    if kind == "dict":
        key = rng.choice(["point", "box", "mask", "polygon"])
        size = {"point": 2, "box": 4, "polygon": 3}.get(str(key), 0)
        value = [random_number(rng, scale) for _ in range(size)] if size else rng.random((height, width)) < 0.5
        return {str(key): value}
    return ["a cat", None, 3, object(), (1, "2")][int(rng.integers(5))]


TEXT_PIECES = ["What is", " <region>", " and", "?", " <region_fea>", "[1, 2]", " the cat", "\n", " 🐞 ü", "<image>",
               "<s>", "</s>", " ", "<regio", "region>"]  # fmt: skip
CLEAN_TEXT_PIECES = [piece for piece in TEXT_PIECES if piece.strip() not in ("<region>", "<region_fea>", "<image>")]


def random_prompt(rng: np.random.Generator, num_images: int, num_regions: int, clean: bool) -> str:
    pieces = [IMAGE_TOKEN + "\n"] * num_images + [" <region>"] * num_regions
    choices = CLEAN_TEXT_PIECES if clean else TEXT_PIECES
    pieces += [str(rng.choice(choices)) for _ in range(int(rng.integers(0, 6)))]
    order = rng.permutation(len(pieces))
    return "".join(pieces[i] for i in order)


def processor_case(rng: np.random.Generator) -> dict:
    """Arguments of one processor call (one or two samples)."""
    batch = 1 if rng.random() < 0.8 else 2
    clean = rng.random() < 0.5  # half the cases are valid by construction, half anything goes
    texts, images, regions = [], [], []
    for _ in range(batch):
        num_images = int(rng.choice([0, 1, 1, 1, 2]))
        sample_images = [random_image(rng, clean) for _ in range(num_images)]
        height, width = image_size(sample_images[0]) if sample_images else (20, 30)
        if clean:
            num_regions = int(rng.integers(0, 4)) if num_images == 1 else 0
            regions_given = num_regions
        else:
            num_regions = int(rng.choice([0, 1, 2, 3, MAX_REGIONS + 1], p=[0.2, 0.4, 0.2, 0.15, 0.05]))
            regions_given = num_regions if rng.random() < 0.85 else int(rng.integers(0, 4))
        wrong_images = not clean and rng.random() < 0.1
        texts.append(random_prompt(rng, int(rng.integers(0, 3)) if wrong_images else num_images, num_regions, clean))
        images += sample_images
        regions.append([random_region(rng, height, width, clean) for _ in range(regions_given)])
    kwargs = {"return_tensors": str(rng.choice(["pt", "np"]))}
    if batch > 1:
        kwargs["padding"] = True
    if rng.random() < 0.1:
        kwargs.update(truncation=True, max_length=int(rng.integers(1, 80)))
    return {
        "images": (images if len(images) != 1 or rng.random() < 0.5 else images[0]) if images else None,
        "text": texts[0] if batch == 1 and rng.random() < 0.5 else texts,
        "regions": regions[0] if batch == 1 and rng.random() < 0.5 else regions,
        **kwargs,
    }


GROUNDING_PIECES = ["A cat", " on a mat", ".", ",", " ", "\n", "[", "]", "[[", "]]", "-", "1e9", "NaN", "１２",
                    "<region_fea>", "</s>", "🐞", "\x00", "a" * 50, " " * 300]  # fmt: skip


def random_number_text(rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.6:
        return str(int(rng.integers(0, 1000)))
    if roll < 0.75:
        return str(int(rng.integers(-10**6, 10**6)))
    if roll < 0.85:
        return f"{rng.uniform(-2000, 2000):.{int(rng.integers(0, 4))}f}"
    return "".join(rng.choice(list("0123456789.-e ,x"), size=int(rng.integers(0, 6))))


def grounding_case(rng: np.random.Generator) -> dict:
    pieces = []
    for _ in range(int(rng.integers(0, 10))):
        if rng.random() < 0.45:
            numbers = [random_number_text(rng) for _ in range(int(rng.choice([0, 1, 2, 3, 4, 4, 4, 5, 8])))]
            separator = str(rng.choice([", ", ",", " , ", " "]))
            pieces.append("[" + separator.join(numbers) + ("]" if rng.random() < 0.9 else ""))
        else:
            pieces.append(str(rng.choice(GROUNDING_PIECES)))
    text = "".join(pieces)
    height, width = int(rng.integers(1, 5000)), int(rng.integers(1, 5000))
    sizes = (height, width)
    if rng.random() < 0.03:
        sizes = [(0, width), (-1, 3), (np.nan, 3), "big", (1, 2, 3)][int(rng.integers(5))]
    texts = text if rng.random() < 0.5 else [text, text[::-1]]
    return {"texts": texts, "image_sizes": sizes}


# --- checks of successful outputs ---


def check_processor_outputs(outputs, case: dict) -> None:
    ids = outputs["input_ids"]
    ids = torch.as_tensor(np.asarray(ids)) if not isinstance(ids, torch.Tensor) else ids
    image_tokens = int((ids == case["image_token_id"]).sum())
    if "pixel_values" in outputs:
        pixel_values = torch.as_tensor(np.asarray(outputs["pixel_values"]))
        check(pixel_values.ndim == 4 and tuple(pixel_values.shape[1:]) == (3, 28, 28), "pixel_values shape")
        check(bool(torch.isfinite(pixel_values).all()), "pixel_values not finite")
        check(image_tokens == NUM_IMAGE_TOKENS * pixel_values.shape[0], "image tokens != 4 x images")
    else:
        check(image_tokens == 0, "image tokens without pixel_values")
    region_tokens = (ids == case["region_token_id"]).sum(-1)
    if "region_points" in outputs:
        points = torch.as_tensor(np.asarray(outputs["region_points"]))
        counts = torch.as_tensor(np.asarray(outputs["region_counts"]))
        check(points.dtype == torch.float32 and points.shape[-2:] == (NUM_POINTS, 2), "region_points shape/dtype")
        inside = torch.isfinite(points).all() and (points >= 0).all() and (points < 1).all()
        check(bool(inside), "points outside [0, 1)")
        check(torch.equal(counts, region_tokens), "region_counts != region tokens")
        check(int(counts.max()) <= MAX_REGIONS, "more regions than max_regions_per_sample")
    else:
        check(int(region_tokens.sum()) == 0, "region tokens without region_points")


def check_grounding_outputs(results, case: dict) -> None:
    sizes = np.asarray(case["image_sizes"], dtype=np.int64).reshape(-1, 2)
    results = [results] if isinstance(results, dict) else results
    for index, result in enumerate(results):
        height, width = sizes[index if len(sizes) > 1 else 0]
        check(isinstance(result["text"], str), "text is not a str")
        for entity in result["entities"]:
            x1, y1, x2, y2 = entity["box"]
            check(0 <= x1 <= x2 <= width - 1 and 0 <= y1 <= y2 <= height - 1, f"box {entity['box']} outside image")
            start, end = entity["span"]
            check(result["text"][start:end] == entity["phrase"], "span does not match phrase")


# --- the run ---


def classify(error: BaseException) -> str | None:
    """The argument an expected error names, or None for an unexpected error."""
    if isinstance(error, InvariantError) or not isinstance(error, (ValueError, TypeError)):
        return None
    message = str(error)
    return next((argument for marker, argument in EXPECTED_MARKERS if marker in message), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processor-share", type=float, default=0.4, help="share of processor cases")
    parser.add_argument("--slow-seconds", type=float, default=5.0, help="a case slower than this is unexpected")
    fixtures = Path(__file__).resolve().parents[1] / "modeling_tests" / "fixtures" / "original_ferret"
    parser.add_argument("--parity-dir", type=Path, default=fixtures)
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    processor = FerretProcessor(
        image_processor=FerretImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=convert_original_tokenizer(args.parity_dir / "ferret_tiny"), patch_size=14,
        num_region_points=NUM_POINTS, max_regions_per_sample=MAX_REGIONS,
    )  # fmt: skip
    token_ids = {"image_token_id": processor.image_token_id, "region_token_id": processor.region_token_id}

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    counts = {"processor": Counter(), "post_process_grounding": Counter()}
    expected_by_type, expected_by_argument, unexpected = Counter(), Counter(), []
    slowest = (0.0, "")
    start = time.perf_counter()
    for index in range(args.cases):
        target = "processor" if rng.random() < args.processor_share else "post_process_grounding"
        case = processor_case(rng) if target == "processor" else grounding_case(rng)
        case_start = time.perf_counter()
        try:
            if target == "processor":
                check_processor_outputs(processor(**case), token_ids)
            else:
                check_grounding_outputs(processor.post_process_grounding(**case), case)
            outcome = "ok"
        except Exception as error:  # noqa: BLE001  (sorting every exception is the point)
            argument = classify(error)
            if argument is None:
                outcome = "unexpected"
                unexpected.append((index, target, error, traceback.format_exc(limit=4)))
            else:
                outcome = "expected error"
                expected_by_type[type(error).__name__] += 1
                expected_by_argument[f"{target}: {argument}"] += 1
        elapsed = time.perf_counter() - case_start
        if elapsed > slowest[0]:
            slowest = (elapsed, f"case {index} ({target})")
        if elapsed > args.slow_seconds:
            outcome = "unexpected"
            unexpected.append((index, target, TimeoutError(f"took {elapsed:.1f} s"), ""))
        counts[target][outcome] += 1
    total = time.perf_counter() - start

    print(f"fuzz: {args.cases} cases, seed {args.seed}, {total:.1f} s")
    for target, counter in counts.items():
        print(f"  {target}: {sum(counter.values())} cases: {counter['ok']} ok, {counter['expected error']} expected "
              f"errors, {counter['unexpected']} unexpected")  # fmt: skip
    print("  expected errors by type: " + ", ".join(f"{name} {n}" for name, n in expected_by_type.most_common()))
    print("  expected errors by argument named:")
    for argument, n in sorted(expected_by_argument.items()):
        print(f"    {argument}: {n}")
    print(f"  unexpected exceptions: {len(unexpected)}")
    print(f"  slowest case: {slowest[0] * 1000:.0f} ms ({slowest[1]})")
    for index, target, error, trace in unexpected[:10]:
        print(f"\n--- unexpected in case {index} ({target}): {type(error).__name__}: {error}\n{trace}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
