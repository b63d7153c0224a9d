"""The synthetic-shapes recipe (benchmarks/shapes) runs end to end, and the tiny checkpoint shipped for the demo
scores what its row in benchmarks/shapes/README.md says."""

import json
import math
from pathlib import Path

import pytest
import torch

import transformers_ferret  # noqa: F401
from transformers import AutoModelForImageTextToText, AutoProcessor

# The recipe's modules (train, evaluate, recipe, ...) are imported by bare name: benchmarks/shapes is on pytest's
# `pythonpath` (pyproject.toml), as it is on `sys.path` when they run as scripts.
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "checkpoints" / "ferret-shapes-tiny"

FRESH_SEED = 2026  # neither the training stream (0), the tokenizer corpus (99) nor the table's evaluation (12345)


def test_smoke_training_loss_falls_and_the_evaluation_runs(tmp_path):
    import evaluate
    import train

    summary = train.main(["--output-dir", str(tmp_path), "--max-steps", "40", "--batch-size", "4",
                          "--turns-per-image", "2", "--logging-steps", "5", "--threads", "1", "--workers", "0",
                          "--learning-rate", "2e-3", "--aux-batch-size", "4"])  # fmt: skip
    losses = [entry["loss"] for entry in summary["log"]]
    assert len(losses) == 8 and all(entry["aux_loss"] > 0 for entry in summary["log"])
    assert sum(losses[-2:]) / 2 < 0.6 * losses[0], losses  # the answer format is learned within 40 steps
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert not hasattr(model, "dense_auxiliary_heads")  # the auxiliary heads are training-only
    results = evaluate.evaluate(model, AutoProcessor.from_pretrained(tmp_path), num_scenes=3, batch_size=3)
    metrics = {key: value for key, value in results.items() if key not in ("num_scenes", "eval_seconds", "object_size")}
    roc = [f"roc_{kind}{part}" for kind in ("point", "box", "free-form", "small_objects_box") for part in ("", "_colour", "_shape")]
    assert set(metrics) == {*roc, "roc_binary_choice", "same_bbox_colour_free-form", "same_bbox_colour_box-of-pair",
                            "rec_acc@0.5", "rec_parse_failure_rate", "rec_mean_iou"}  # fmt: skip
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    held_out = summary["dense_held_out"]  # the dense heads' held-out accuracy, measured before they are removed
    assert set(held_out) == {"object_patch_colour_acc", "object_patch_shape_acc", "object_patch_box_l1",
                             "object_patch_box_hundreds_acc", "object_patch_box_iou50", "object_mean_box_iou50"}  # fmt: skip
    assert held_out["object_patch_colour_acc"] > 1 / 8  # the tower learned colour in 40 steps


def test_any_resolution_builds_a_ferret_v2_from_scratch_too(tmp_path):
    import train

    summary = train.main(["--any-resolution", "--output-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "2",
                          "--turns-per-image", "1", "--threads", "1", "--workers", "0", "--aux-batch-size", "2"])  # fmt: skip
    assert summary["any_resolution"] and summary["init_from"] is None
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert model.config.tile_vision_config is not None and model.config.image_grid_pinpoints  # tiles, not a v1
    assert AutoProcessor.from_pretrained(tmp_path).image_processor.tile_size == model.config.vision_config.image_size


def test_bf16_autocast_training_changes_the_numerics_but_not_the_losses(tmp_path):
    """S3 trains with `--bf16`: autocast must really run (other losses than float32's) and stay close to float32."""
    import train

    def losses(precision):
        summary = train.main([precision, "--output-dir", str(tmp_path / precision), "--max-steps", "4", "--seed", "5",
                              "--batch-size", "2", "--turns-per-image", "2", "--logging-steps", "2", "--threads", "1",
                              "--workers", "0", "--aux-batch-size", "2"])  # fmt: skip
        return [(entry["loss"], entry["aux_loss"]) for entry in summary["log"]]

    bf16, fp32 = losses("--bf16"), losses("--no-bf16")
    assert len(bf16) == len(fp32) == 2 and bf16 != fp32, (bf16, fp32)
    for got, want in zip(bf16, fp32):
        assert got == pytest.approx(want, rel=0.02), (bf16, fp32)


def test_rec_pointer_loss_falls_when_training_with_it(tmp_path):
    import train

    summary = train.main(["--init-from", str(SHIPPED), "--output-dir", str(tmp_path), "--max-steps", "12",
                          "--batch-size", "4", "--turns-per-image", "2", "--logging-steps", "4", "--threads", "1",
                          "--workers", "0", "--learning-rate", "1e-3", "--aux-batch-size", "4",
                          "--rec-pointer-weight", "1", "--rec-readout-weight", "1", "--task-weights", "rec=1",
                          "--rec-pointer-first-weight", "1", "--rec-pointer-name-weight", "1",
                          # a head the shipped model was not trained to point with (it was: layer 1, head 0)
                          "--rec-pointer-layer", "2", "--rec-pointer-head", "3"])  # fmt: skip
    pointer = [entry["pointer_loss"] for entry in summary["log"]]
    assert len(pointer) == 3 and pointer[-1] < pointer[0], pointer  # the head learns to look at the boxes' patches
    # the first-digit and name-token terms are measured on their own: while the head is fresh (the first logging window)
    # it spreads its attention, -log of a small mass; how fast they fall after that depends on the shipped weights
    first = [entry["pointer_first_loss"] for entry in summary["log"]]
    names = [entry["pointer_name_loss"] for entry in summary["log"]]
    assert len(first) == 3 and first[0] > 0.5 and all(0 < value < 20 for value in first), first
    assert len(names) == 3 and names[0] > 0.5 and all(0 < value < 20 for value in names), names
    assert first != names and first != pointer, (first, names, pointer)
    readout = [entry["readout_loss"] for entry in summary["log"]]
    # the read-out is computed on real box digits (0 if it found none): a fresh head starts near chance, ln 10 per digit
    assert len(readout) == 3 and all(abs(value - math.log(10)) < 0.3 for value in readout), readout
    assert not hasattr(AutoModelForImageTextToText.from_pretrained(tmp_path), "rec_readout_head")  # training-only


def test_pointer_terms_without_the_pointer_are_refused_by_name(capsys):
    import train

    with pytest.raises(SystemExit):
        train.main(["--output-dir", "unused", "--rec-pointer-first-weight", "2", "--rec-pointer-name-weight", "2"])
    assert "--rec-pointer-first-weight, --rec-pointer-name-weight needs --rec-pointer-weight > 0" in capsys.readouterr().err


def test_small_object_share_mixes_rows_of_a_second_stream_with_small_objects_at_that_rate():
    from itertools import islice

    import train
    from recipe import SCENE_KWARGS

    def rows(share, count):
        stream = train.grit_rows(3, 1, {}, {"roc_open": 1}, small_object_share=share,
                                 small_object_overrides={"object_size": (10, 20)})  # fmt: skip
        return [(row["image_w"], row["image_h"], row["box_x1y1x2y2"]) for row in islice(stream, count)]

    def largest_side(row):  # of the referred boxes (0 when the question refers with a point)
        return max(max(x2 - x1, y2 - y1) for turn in row[2] for x1, y1, x2, y2 in turn)

    main, small, mixed = rows(0.0, 40), rows(1.0, 40), rows(0.5, 40)
    main_sides, small_sides = [largest_side(row) for row in main], [largest_side(row) for row in small]
    assert max(small_sides) <= 20 and sum(side > 0 for side in small_sides) >= 20  # the second stream's objects
    assert all(side > 20 for side in main_sides if side > 0) and sum(side > 0 for side in main_sides) >= 20
    # the mix takes the next row of one stream or the other, in order, about half from each
    from_small = [row in small for row in mixed]
    assert 12 <= sum(from_small) <= 28
    assert [row for row, is_small in zip(mixed, from_small) if is_small] == small[: sum(from_small)]
    assert [row for row, is_small in zip(mixed, from_small) if not is_small] == main[: 40 - sum(from_small)]
    assert SCENE_KWARGS["object_size"][0] > 20  # (the main stream's objects are larger than the second stream's)


def test_shipped_checkpoint_scores_its_table_row_on_fresh_scenes():
    import evaluate

    table_row = json.loads((SHIPPED / "eval.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(SHIPPED).eval()
    scene_kwargs = {**evaluate.SCENE_KWARGS, "object_size": tuple(table_row["object_size"])}  # the row's scenes
    results = evaluate.evaluate(model, AutoProcessor.from_pretrained(SHIPPED), num_scenes=50, seed=FRESH_SEED,
                                scene_kwargs=scene_kwargs)  # fmt: skip
    for metric in ("roc_point", "roc_box", "roc_free-form", "roc_box_colour", "roc_box_shape", "roc_binary_choice",
                   "same_bbox_colour_free-form", "same_bbox_colour_box-of-pair", "rec_acc@0.5", "roc_small_objects_box",
                   "roc_small_objects_box_colour"):  # fmt: skip
        expected = table_row[metric]
        # 5 points, or 2.5 binomial standard errors of a 50-question estimate where that is larger: between 10 % and
        # 90 % the sampling noise of 50 fresh scenes alone is 4-7 points (measured: up to 10.5 points on this seed)
        tolerance = max(0.05, 2.5 * math.sqrt(expected * (1 - expected) / 50))
        assert abs(results[metric] - expected) <= tolerance, (metric, results[metric], expected, tolerance)


def test_dense_patch_loss_object_term_is_the_mean_over_covered_patches_only():
    import torch
    from pretrain_vision import dense_patch_loss

    # 1 image, 3 patches: background, then two object patches; 2 colour classes + background, same for shape
    colour_logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.2, 0.2, 0.6]]]))
    shape_logits = torch.log(torch.tensor([[[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.7, 0.2]]]))
    colours, shapes = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])
    colour_ce = [-math.log(0.5), -math.log(0.5), -math.log(0.6)]
    shape_ce = [-math.log(0.8), -math.log(0.8), -math.log(0.7)]
    plain = sum(colour_ce) / 3 + sum(shape_ce) / 3
    object_only = sum(colour_ce[1:]) / 2 + sum(shape_ce[1:]) / 2
    assert dense_patch_loss(colour_logits, shape_logits, colours, shapes).item() == pytest.approx(plain, rel=1e-6)
    weighted = dense_patch_loss(colour_logits, shape_logits, colours, shapes, object_weight=2.0).item()
    assert weighted == pytest.approx(plain + 2.0 * object_only, rel=1e-6)
    # no object patch in the batch: the object term is skipped, not a NaN
    assert dense_patch_loss(colour_logits, shape_logits, colours, torch.zeros_like(shapes), 2.0).isfinite()
    # the box term: L1 over the 4 coordinates of the two object patches only (the background patch's box is ignored)
    predictions = torch.tensor([[[9.0, 9.0, 9.0, 9.0], [0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]])
    boxes = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]]])
    box_l1 = (0.0 + 0.1 + 0.0 + 0.1 + 0.2 + 0.2 + 0.4 + 0.4) / 8
    with_boxes = dense_patch_loss(colour_logits, shape_logits, colours, shapes, 0.0, predictions, boxes, box_weight=3.0)
    assert with_boxes.item() == pytest.approx(plain + 3.0 * box_l1, rel=1e-6)
    no_objects = dense_patch_loss(colour_logits, shape_logits, colours, torch.zeros_like(shapes), 0.0, predictions,
                                  boxes, box_weight=3.0)  # fmt: skip
    # with digit logits the box term adds the digits' cross-entropy: uniform logits cost ln 10 per digit
    uniform_digits = torch.zeros(1, 3, 4, 2, 10)
    with_digits = dense_patch_loss(colour_logits, shape_logits, colours, shapes, 0.0, predictions, boxes, 3.0, uniform_digits)
    assert with_digits.item() == pytest.approx(plain + 3.0 * (box_l1 + math.log(10)), rel=1e-6)
    # no object patch: the box term is skipped, not a NaN
    assert no_objects.item() == dense_patch_loss(colour_logits, shape_logits, colours, torch.zeros_like(shapes)).item()


def test_box_digit_labels_are_the_hundreds_and_tens_of_the_truncated_grid_value_the_answer_writes():
    import torch
    from pretrain_vision import box_digit_labels

    # a 291 x 200 image: x 53 -> int(53000 / 291) = 182; x 100 of 200 -> exactly 500 (no float drift below it)
    boxes = torch.tensor([[53 / 291, 100 / 200, 290 / 291, 0.0]], dtype=torch.float32)
    assert box_digit_labels(boxes).tolist() == [[[1, 8], [5, 0], [9, 9], [0, 0]]]  # 290 -> 996 -> (9, 9)


def test_object_mean_boxes_average_the_readings_of_each_objects_patches_scene_by_scene():
    from pretrain_vision import object_mean_boxes

    box_a, box_b = [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]
    boxes = torch.tensor([[box_a, box_a, box_b, [0.0] * 4], [box_a, [0.0] * 4, [0.0] * 4, [0.0] * 4]])
    covered = torch.tensor([[True, True, True, False], [True, False, False, False]])
    predictions = torch.tensor([[[0.0, 0.0, 0.2, 0.2], [0.2, 0.2, 0.6, 0.6], [0.5, 0.5, 1.0, 1.0], [9.0] * 4],
                                [[0.3, 0.3, 0.3, 0.3], [9.0] * 4, [9.0] * 4, [9.0] * 4]])  # fmt: skip
    means, targets = object_mean_boxes(predictions, boxes, covered)
    # scene 0's box a (two patches, averaged), scene 0's box b, scene 1's box a (the same box, another object)
    torch.testing.assert_close(targets, torch.tensor([box_a, box_b, box_a]))
    torch.testing.assert_close(means, torch.tensor([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0], [0.3] * 4]))


def test_patch_labels_give_each_patch_the_topmost_covering_object_and_its_box_as_image_fractions():
    import numpy as np
    from PIL import Image
    from pretrain_vision import patch_labels

    from transformers_ferret.synthetic_shapes import COLOURS, SHAPES, ShapeObject, ShapeScene

    # a 200 x 100 image, grid 2: patch centres at x 50 / 150, y 25 / 75
    under = np.zeros((100, 200), dtype=bool)
    under[0:60, 0:120] = True  # covers the centre (50, 25) only
    over = np.zeros((100, 200), dtype=bool)
    over[50:100, 20:200] = True  # covers the centres (50, 75) and (150, 75); (150, 25) stays background
    objects = [ShapeObject("red", "star", under, (0, 0, 119, 59)), ShapeObject("blue", "ring", over, (20, 50, 199, 99))]
    colour, shape, boxes = patch_labels(ShapeScene(Image.new("RGB", (200, 100)), objects), grid=2)
    red, blue = list(COLOURS).index("red") + 1, list(COLOURS).index("blue") + 1
    star, ring = SHAPES.index("star") + 1, SHAPES.index("ring") + 1
    assert colour.tolist() == [red, 0, blue, blue] and shape.tolist() == [star, 0, ring, ring]
    np.testing.assert_allclose(boxes, [[0, 0, 0.595, 0.59], [0, 0, 0, 0], [0.1, 0.5, 0.995, 0.99], [0.1, 0.5, 0.995, 0.99]])


def test_report_puts_each_continuation_after_its_parent_on_the_step_axis():
    from report import step_offsets

    def run(folder, steps, init_from=None):
        return {"folder": folder, "train": {"steps": steps, "init_from": init_from}}

    runs = {"G": run("roc_v1", 1500), "K": run("roc_anyres", 250, "/somewhere/roc_v1"),
            "L": run("roc_anyres_more", 300, "runs/roc_anyres"), "J": run("roc_fixed", 250, "runs/roc_v1"),
            "X": run("orphan", 100, "runs/not_in_the_table")}  # fmt: skip
    assert step_offsets(runs) == {"G": 0, "K": 1500, "L": 1750, "J": 1500}


def test_report_takes_runs_missing_here_from_the_previous_report_by_folder_or_name_and_reads_present_ones(tmp_path):
    from report import load_run

    previous = {"L. old": {"folder": "elsewhere", "train": {"steps": 300}, "eval": {"roc_box": 0.77}}}
    missing = load_run(tmp_path / "roc_anyres_more", "L. old", previous)
    assert missing == {"folder": "roc_anyres_more", "train": {"steps": 300}, "eval": {"roc_box": 0.77}}
    present = tmp_path / "roc_q"
    present.mkdir()
    (present / "train_log.json").write_text(json.dumps({"steps": 2000}))
    (present / "eval.json").write_text(json.dumps({"roc_box": 0.9}))
    assert load_run(present, "L. old", previous) == {"folder": "roc_q", "train": {"steps": 2000}, "eval": {"roc_box": 0.9}}
    relabelled = load_run(tmp_path / "elsewhere", "L. new label", previous)  # matched by folder
    assert relabelled["eval"] == {"roc_box": 0.77}
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nowhere", "not in the previous report", previous)


def test_rec_pointer_targets_link_each_box_digit_prediction_to_the_global_patches_inside_the_answer_box():
    from rec_pointer import box_patch_mask, pointer_targets

    tokenizer = AutoProcessor.from_pretrained(SHIPPED).tokenizer
    image_id = json.loads((SHIPPED / "config.json").read_text())["image_token_index"]
    question = tokenizer("Where is the red star? ASSISTANT:", add_special_tokens=False)["input_ids"]
    box_answer = tokenizer("The red star [100, 0, 400, 300].", add_special_tokens=False)["input_ids"]
    plain_answer = tokenizer(" a red star", add_special_tokens=False)["input_ids"]
    assert image_id not in question + box_answer + plain_answer
    ids = [1] + [image_id] * 49 + question + box_answer + question + plain_answer
    box_start = 50 + len(question)
    plain_start = box_start + len(box_answer) + len(question)
    labels = [-100] * len(ids)
    labels[box_start: box_start + len(box_answer)] = box_answer
    labels[plain_start:] = plain_answer
    input_ids, label_ids = torch.tensor([ids, ids]), torch.tensor([labels, labels])
    input_ids[1, 40:50] = 0  # the second sample has only 39 image tokens: no global view to point into

    targets, query_boxes, first_queries, name_targets = pointer_targets(input_ids, label_ids, tokenizer, image_id, grid=7)

    # patch centres on the 0..999 grid are 71, 214, 357, 500, ...: x in [100, 400] -> columns 1, 2; y in [0, 300] -> rows 0, 1
    expected_patches = [1, 2, 8, 9]
    assert box_patch_mask((100, 0, 400, 300), 7).nonzero().flatten().tolist() == expected_patches
    digit_positions = [box_start + i for i, token in enumerate(box_answer) if tokenizer.decode([token]).strip().isdigit()]
    assert len(digit_positions) == len("1000400300")
    queries = targets[0].any(-1).nonzero().flatten().tolist()
    assert queries == [position - 1 for position in digit_positions]  # the positions that predict each digit
    for query in queries:
        assert targets[0, query].nonzero().flatten().tolist() == [1 + patch for patch in expected_patches]
    assert not targets[1].any()
    assert (query_boxes[0, queries] == torch.tensor([100, 0, 400, 300])).all()
    assert (query_boxes[0].clamp(max=0).sum(-1) == -4).sum() == len(ids) - len(queries) and (query_boxes[1] == -1).all()
    # the first digit's query, the position of "[" (the object is chosen there), is the only first query
    assert first_queries[0].nonzero().flatten().tolist() == [queries[0]] and not first_queries[1].any()
    assert tokenizer.decode([ids[queries[0]]]).strip() == "["
    # the name tokens between the answer's first token and "[" ("red", "star") point at the same patches
    names = name_targets[0].any(-1).nonzero().flatten().tolist()
    assert [tokenizer.decode([ids[position]]).strip() for position in names] == ["red", "star"]
    assert all(name_targets[0, position].nonzero().flatten().tolist() == [1 + patch for patch in expected_patches]
               for position in names) and not name_targets[1].any()  # fmt: skip


def test_rec_error_kinds_sort_each_first_box_into_hit_wrong_object_imprecise_box_or_elsewhere():
    from evaluate import rec_error_kinds

    target, other = [0, 0, 50, 50], [100, 0, 150, 50]
    sample = {"image_w": 200, "image_h": 100, "box_x1y1x2y2": [[], [target]],
              "conversations": [{"from": "human", "value": "Where is the red star?"}, {"from": "gpt", "value": "..."}],
              "objects": [{"box": other}, {"box": target}]}  # fmt: skip
    predictions = [  # 0..999 bins; x pixels = bin / 5, y pixels = bin / 10
        "The red star [0, 0, 250, 500].",  # [0, 0, 50, 50]: the target itself
        "The red star [500, 0, 750, 500].",  # [100, 0, 150, 50]: the other object
        "The red star [0, 0, 400, 900].",  # [0, 0, 80, 90]: IoU 0.35 with the target, centre (40, 45) inside it
        "The red star [450, 0, 900, 900].",  # [90, 0, 180, 90]: IoU 0.31 with the other, centre (135, 45) inside it
        "The red star [800, 600, 900, 900].",  # on no object
        "The red star.",  # no box
        "The red star [0, 0, 260, 500] [500, 0, 750, 500].",  # only the first box counts: a hit
    ]
    kinds = rec_error_kinds(predictions, [sample] * len(predictions))
    assert kinds == {"target": round(2 / 7, 3), "other_object": round(1 / 7, 3), "centre_in_target": round(1 / 7, 3),
                     "centre_in_other": round(1 / 7, 3), "elsewhere": round(2 / 7, 3)}  # fmt: skip


def test_rec_choice_reads_the_pointer_mass_per_digit_and_probes_the_name_at_the_answer_tokens_that_hold_it():
    import rec_choice

    results = rec_choice.main(["--model", str(SHIPPED), "--num-scenes", "128", "--threads", "1"])
    assert results["scenes"] == 128  # every REC answer has one-token colour and shape names
    masses = results["pointer_mass_by_digit"]
    assert len(masses) == 12 and all(0.0 <= mass <= 1.0 for mass in masses)  # x1..y2: up to 3 digits each
    probes = results["name_probes"]
    assert set(probes) == {"colour_token", "shape_token", "first_digit_query", "named_object_patches"}
    # at the embedding layer a token's state is its own embedding: the colour token says the colour, the shape token
    # the shape, and the first digit query ("[", the same token in every answer) neither
    assert probes["colour_token"][0]["colour"] == 1.0 and probes["shape_token"][0]["shape"] == 1.0
    assert probes["first_digit_query"][0]["colour"] < 0.4 and probes["first_digit_query"][0]["shape"] < 0.4


def test_rec_readout_loss_is_the_cross_entropy_of_the_box_hundreds_and_tens_digits_at_the_query_positions():
    from rec_pointer import readout_loss

    readout = torch.nn.Linear(2, 80, bias=True)
    with torch.no_grad():  # logits independent of the input: log-probabilities 0 for one digit class, -inf-ish else
        readout.weight.zero_()
        readout.bias.copy_(torch.full((4, 2, 10), -30.0).index_fill(-1, torch.tensor([1]), 0.0).flatten())
    query_boxes = torch.full((1, 3, 4), -1)
    query_boxes[0, 1] = torch.tensor([110, 115, 190, 199])  # every hundreds digit 1; tens 1, 1, 9, 9
    loss = readout_loss(torch.zeros(1, 3, 2), query_boxes, readout)
    assert loss.item() == pytest.approx(30.0 * 2 / 8, rel=1e-4)  # 2 of the 8 digits (the tens 9s) are wrong by 30 nats
    assert readout_loss(torch.zeros(1, 3, 2), torch.full((1, 3, 4), -1), readout).item() == 0.0


def test_rec_pointer_box_smaller_than_a_patch_points_at_the_patch_under_its_centre():
    from rec_pointer import box_patch_mask

    assert box_patch_mask((150, 440, 180, 470), 7).nonzero().flatten().tolist() == [3 * 7 + 1]  # row 455/143, col 165/143


def test_rec_pointer_loss_is_minus_log_the_attention_mass_on_the_target_patches():
    from rec_pointer import pointer_loss

    attention = torch.full((1, 3, 10), 0.1)
    targets = torch.zeros(1, 3, 10, dtype=torch.bool)
    targets[0, 1, [2, 5]] = True  # query 1: mass 0.2 on its targets
    targets[0, 2, 0] = True  # query 2: mass 0.1
    assert pointer_loss(attention, targets).item() == pytest.approx(-(math.log(0.2) + math.log(0.1)) / 2)
    assert pointer_loss(attention, torch.zeros_like(targets)).item() == 0.0


def test_region_probe_masks_are_the_object_its_box_and_an_11px_window_at_the_pixel_nearest_its_centroid():
    import numpy as np
    from probe_regions import region_masks

    from transformers_ferret.synthetic_shapes import ShapeObject

    mask = np.zeros((40, 60), dtype=bool)
    mask[10:31, 20:26] = True  # a vertical bar x 20..25, y 10..30 (126 pixels)
    mask[10:13, 26:41] = True  # a top arm x 26..40, y 10..12 (45 pixels)
    # centroid x = (126 * 22.5 + 45 * 33) / 171 = 25.26, y = (126 * 20 + 45 * 11) / 171 = 17.63: nearest pixel (25, 18)
    obj = ShapeObject("red", "cross", mask, (20, 10, 40, 30))
    cx, cy = 25, 18
    masks = region_masks(obj, 40, 60)
    assert (masks["free-form"] == mask).all()
    expected_box = np.zeros_like(mask)
    expected_box[10:31, 20:41] = True
    assert (masks["box"] == expected_box).all()
    window_ys, window_xs = np.nonzero(masks["point"])
    assert masks["point"].sum() == 121 and mask[cy, cx]
    assert (window_xs.min(), window_xs.max(), window_ys.min(), window_ys.max()) == (cx - 5, cx + 5, cy - 5, cy + 5)
