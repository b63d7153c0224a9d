"""Evaluate a Ferret checkpoint on fresh synthetic shapes: referring (ROC) per region type, binary choice,
the same-bounding-box test, REC, and small objects.

    python benchmarks/shapes/evaluate.py --model runs/ferret --num-scenes 200 [--json results.json] [--diagnostics]

Questions use the training templates of `transformers_ferret.synthetic_shapes` (seed 12345, never used in training);
answers are greedy. Metrics come from `transformers_ferret.evaluation`: ROC = exact class named (negations
stripped, as the LVIS evaluation), REC = IoU of the first predicted box >= 0.5.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import SCENE_KWARGS, scene_kwargs  # noqa: E402

import transformers_ferret  # noqa: E402,F401
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402
from transformers_ferret.training import FerretDataCollator  # noqa: E402
from transformers_ferret.evaluation import bins_to_pixels, box_iou, parse_boxes, rec_accuracy, roc_accuracy  # noqa: E402
from transformers_ferret.synthetic_shapes import SHAPES, make_sample  # noqa: E402

EVAL_SEED = 12345
SMALL_OBJECT_SCENES = dict(min_side=288, max_side=320, num_objects=(2, 5), object_size=(10, 18))


def eval_samples(task: str, num_scenes: int, region_type: str | None = None, scene_kwargs=None, seed=EVAL_SEED):
    """One single-question sample per scene; `region_type` forces how the question presents its region."""
    region_types = [region_type] if region_type and region_type != "box-of-pair" else ("point", "box", "free-form")
    samples = [
        make_sample(index, seed=seed, tasks=[task], turns_per_image=1, region_types=region_types,
                    **(scene_kwargs or SCENE_KWARGS))  # fmt: skip
        for index in range(num_scenes)
    ]
    if region_type == "box-of-pair":  # the same-bbox question asked with the (shared) box instead of the mask
        for sample in samples:
            sample["region_types"] = [["box" if kind == "free-form" else kind for kind in turn] for turn in sample["region_types"]]
    return samples


def answer(model, processor, samples, batch_size: int = 16, max_new_tokens: int = 24) -> list[str]:
    """Greedy answers to each sample's (single) question, batched with left padding."""
    collator = FerretDataCollator(processor, seed=0)
    answers = []
    for start in range(0, len(samples), batch_size):
        prepared = [collator.prepare_example(sample) for sample in samples[start : start + batch_size]]
        inputs = processor.apply_chat_template(
            [example["messages"][:-1] for example in prepared], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt",
            processor_kwargs={"regions": [example["regions"] for example in prepared], "padding": True,
                              "padding_side": "left"},
        )  # fmt: skip
        if model.config.region_token_index != processor.region_token_id:  # the coordinates-only ablation
            for key in ("region_points", "region_counts"):
                inputs.pop(key, None)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers += [text.strip() for text in processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1] :])]
    return answers


def truth(sample) -> tuple[str, list]:
    """The reference answer text and its box (pixels) when the answer has one."""
    reply = sample["conversations"][-1]["value"]
    boxes = sample["box_x1y1x2y2"][-1]
    return reply, boxes[0] if boxes else None


def class_names(samples) -> list[str]:
    """The reference class of each sample's answer ("a red star." -> "red star")."""
    return [truth(sample)[0].removeprefix("a ").removeprefix("an ").rstrip(".") for sample in samples]


def word_accuracy(predictions: list[str], names: list[str]) -> tuple[float, float]:
    """Share of answers naming the right colour, and the right shape (a name is "colour shape")."""
    colour = sum(name.split()[0] in prediction.split() for name, prediction in zip(names, predictions))
    shape = sum(name.split()[-1] in prediction.replace(".", " ").split() for name, prediction in zip(names, predictions))
    return colour / len(names), shape / len(names)


def evaluate_referring(model, processor, num_scenes: int, batch_size: int = 16, seed: int = EVAL_SEED,
                       scene_kwargs=None) -> dict:
    """ROC exact, colour and shape accuracy per region type (the first three column groups of the table)."""
    results = {}
    for region_type in ("point", "box", "free-form"):
        samples = eval_samples("roc_open", num_scenes, region_type, scene_kwargs, seed=seed)
        names = class_names(samples)
        predictions = answer(model, processor, samples, batch_size)
        results[f"roc_{region_type}"] = roc_accuracy(predictions, names)["accuracy"]
        results[f"roc_{region_type}_colour"], results[f"roc_{region_type}_shape"] = word_accuracy(predictions, names)
    return results


def evaluate_rec(model, processor, num_scenes: int, batch_size: int = 16, seed: int = EVAL_SEED,
                 scene_kwargs=None, error_kinds: bool = False) -> dict:
    """REC Acc@0.5 (first predicted box), its parse-failure rate, and the mean IoU of the first box (0 when none);
    with `error_kinds`, also where the answers land (`rec_error_kinds`)."""
    samples = eval_samples("rec", num_scenes, scene_kwargs=scene_kwargs, seed=seed)
    predictions = answer(model, processor, samples, batch_size, max_new_tokens=32)
    rec = rec_accuracy(predictions, [truth(sample)[1] for sample in samples],
                       [(sample["image_h"], sample["image_w"]) for sample in samples])  # fmt: skip
    results = {"rec_acc@0.5": rec["accuracy"], "rec_parse_failure_rate": rec["parse_failure_rate"],
               "rec_mean_iou": rec["mean_iou"]}  # fmt: skip
    if error_kinds:
        results["rec_answers"] = rec_error_kinds(predictions, samples)
    return results


def evaluate(model, processor, num_scenes: int = 200, batch_size: int = 16, seed: int = EVAL_SEED,
             scene_kwargs=None, rec_diagnostics: bool = False) -> dict:
    """Every metric of the table on `num_scenes` scenes per question set, generated with `seed`; `scene_kwargs`
    (default `recipe.SCENE_KWARGS`) sets every set's scenes but the small-object one; `rec_diagnostics` adds where the
    REC answers land (`rec_answers`, see `rec_error_kinds`)."""
    started = time.perf_counter()
    results = evaluate_referring(model, processor, num_scenes, batch_size, seed, scene_kwargs)
    samples = eval_samples("roc_choice", num_scenes, scene_kwargs=scene_kwargs, seed=seed)
    names = class_names(samples)
    results["roc_binary_choice"] = roc_accuracy(answer(model, processor, samples, batch_size), names)["accuracy"]
    for variant in ("free-form", "box-of-pair"):
        samples = eval_samples("same_bbox", num_scenes, variant, scene_kwargs, seed=seed)
        names = class_names(samples)
        colours = [name.split()[0] for name in names]
        predictions = answer(model, processor, samples, batch_size)
        results[f"same_bbox_colour_{variant}"] = sum(
            colour in prediction.split() for colour, prediction in zip(colours, predictions)
        ) / len(samples)
    results.update(evaluate_rec(model, processor, num_scenes, batch_size, seed, scene_kwargs, rec_diagnostics))
    samples = eval_samples("roc_open", num_scenes, "box", SMALL_OBJECT_SCENES, seed=seed)
    names = class_names(samples)
    predictions = answer(model, processor, samples, batch_size)
    results["roc_small_objects_box"] = roc_accuracy(predictions, names)["accuracy"]
    results["roc_small_objects_box_colour"], results["roc_small_objects_box_shape"] = word_accuracy(predictions, names)
    results = {key: value if isinstance(value, dict) else round(value, 3) for key, value in results.items()}
    results["num_scenes"] = num_scenes
    results["eval_seconds"] = round(time.perf_counter() - started)
    return results


def shape_confusion(model, processor, num_scenes: int, batch_size: int = 16, seed: int = EVAL_SEED,
                    scene_kwargs=None) -> dict:
    """
    Where referring answers go wrong (box regions, the table's questions): `{true shape: {answered shape: count}}`
    (`"none"` when no shape word is named), and the shape accuracy per object size in the model's input (the longer
    box side once the image is resized to the vision tower's input: bins of 10 px, `"70+"` the last).
    """
    samples = eval_samples("roc_open", num_scenes, "box", scene_kwargs, seed=seed)
    predictions = answer(model, processor, samples, batch_size)
    side = model.config.vision_config.image_size
    confusion = {shape: {} for shape in SHAPES}
    by_size = {}
    for sample, name, prediction in zip(samples, class_names(samples), predictions):
        true_shape = name.split()[-1]
        answered = next((word for word in prediction.replace(".", " ").split() if word in SHAPES), "none")
        confusion[true_shape][answered] = confusion[true_shape].get(answered, 0) + 1
        x1, y1, x2, y2 = sample["box_x1y1x2y2"][0][0]  # the referred region (the question's box)
        size = max((x2 - x1 + 1) * side / sample["image_w"], (y2 - y1 + 1) * side / sample["image_h"])
        key = "70+" if size >= 70 else f"{int(size // 10) * 10}-{int(size // 10) * 10 + 9}"
        by_size.setdefault(key, []).append(answered == true_shape)
    size_order = sorted(by_size, key=lambda key: int(key.split("-")[0].rstrip("+")))
    return {
        "shape_confusion_box": confusion,
        "shape_accuracy_by_input_size_box": {key: [len(by_size[key]), round(sum(by_size[key]) / len(by_size[key]), 3)]
                                             for key in size_order},  # fmt: skip
    }


def centre_inside(point: tuple[float, float], box) -> bool:
    """Whether `point` (x, y) lies inside `box` (x1, y1, x2, y2), borders included."""
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def rec_error_kinds(predictions: list[str], samples) -> dict:
    """
    Where REC answers land, as shares of the answers: `target` (IoU >= 0.5 with the named object: a hit),
    `other_object` (IoU >= 0.5 with another object of the scene: the wrong object chosen), `centre_in_target` (no
    IoU >= 0.5, but the box centre lies inside the named object's box: right object, imprecise box),
    `centre_in_other` (the same inside another object's box) and `elsewhere` (no box, or its centre on no object).
    """
    counts = dict.fromkeys(("target", "other_object", "centre_in_target", "centre_in_other", "elsewhere"), 0)
    for prediction, sample in zip(predictions, samples, strict=True):
        target = truth(sample)[1]
        others = [item["box"] for item in sample["objects"] if item["box"] != target]
        boxes = parse_boxes(prediction, reading="original")  # the first box rec_accuracy scores
        if not boxes:
            counts["elsewhere"] += 1
            continue
        box = bins_to_pixels(boxes[0][1], (sample["image_h"], sample["image_w"]))
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        if box_iou(box, target)[0, 0] >= 0.5:
            counts["target"] += 1
        elif others and box_iou(box, others).max() >= 0.5:
            counts["other_object"] += 1
        elif centre_inside(centre, target):
            counts["centre_in_target"] += 1
        elif any(centre_inside(centre, item) for item in others):
            counts["centre_in_other"] += 1
        else:
            counts["elsewhere"] += 1
    return {key: round(count / len(samples), 3) for key, count in counts.items()}


IMAGE_INPUTS = ("pixel_values", "pixel_values_tiles", "image_grids", "image_sizes")


def image_reliance(model, processor, num_scenes: int, seed: int = EVAL_SEED, scene_kwargs=None,
                   tasks=("rec", "roc_open")) -> dict:
    """
    How much each task's answers depend on the image: the teacher-forced answer loss (mean over answer tokens, one
    batch of `num_scenes` questions per task) with each sample's own image, and with the images rolled by one sample
    along the batch (each question then sees another scene; the text and the region coordinates stay).
    """
    collator = FerretDataCollator(processor, seed=0)
    results = {}
    for task in tasks:
        batch = collator(eval_samples(task, num_scenes, scene_kwargs=scene_kwargs, seed=seed))
        shuffled = {**batch, **{key: batch[key].roll(1, 0) for key in IMAGE_INPUTS if key in batch}}
        with torch.no_grad():
            results[f"{task}_answer_loss"] = round(model(**batch).loss.item(), 4)
            results[f"{task}_answer_loss_shuffled_images"] = round(model(**shuffled).loss.item(), 4)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="scene seed (training uses 0 and 99)")
    parser.add_argument("--object-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="object sizes of the scenes (default: the recipe's; 20 80 for session 2's runs)")
    parser.add_argument("--diagnostics", action="store_true",
                        help="add the shape confusion, the shape accuracy per object size, REC on one-object scenes and the "
                             "answer loss with shuffled images (image_reliance)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    scenes = scene_kwargs(args.object_size)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    results = evaluate(model, processor, args.num_scenes, args.batch_size, args.seed, scenes, args.diagnostics)
    results["object_size"] = list(scenes["object_size"])  # the scenes this row was measured on
    if args.diagnostics:
        results.update(shape_confusion(model, processor, args.num_scenes, args.batch_size, args.seed, scenes))
        single = evaluate_rec(model, processor, args.num_scenes, args.batch_size, args.seed, {**scenes, "num_objects": (1, 1)})
        results.update({f"{key}_one_object_scenes": round(value, 3) for key, value in single.items()})  # REC without choosing
        results.update(image_reliance(model, processor, 64, args.seed, scenes))
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
