"""Synthetic shapes: deterministic, valid GRIT-schema samples, exact masks, the same-box pair, raster order."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from transformers_ferret.evaluation import bins_to_pixels, box_iou, parse_boxes, rec_accuracy, roc_accuracy
from transformers_ferret.training.grit import rle_to_mask
from transformers_ferret.synthetic_shapes import (
    COLOURS,
    SHAPES,
    TASKS,
    ShapeObject,
    diagonal_halves,
    generate_scene,
    make_sample,
    make_samples,
    raster_order,
    region_inputs,
    render_conversation,
    shape_mask,
    to_dataset,
    with_article,
    write_grit_json,
)


PLACEHOLDER = re.compile(r"<bbox_location(\d+)>")
# largest per-channel distance of an object pixel from its colour: colour jitter (12) + pixel noise (6)
COLOUR_TOLERANCE = 18


@pytest.fixture(scope="module")
def samples():
    return make_samples(40, seed=11, turns_per_image=3)


def _tight_box(mask):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def _fingerprint(sample):
    fields = {key: value for key, value in sample.items() if key != "image"}
    return sample["image"].tobytes(), json.dumps(fields, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_samples(samples):
    again = make_samples(40, seed=11, turns_per_image=3)
    assert [_fingerprint(s) for s in samples] == [_fingerprint(s) for s in again]


def test_a_sample_depends_only_on_seed_and_index(samples):
    assert _fingerprint(make_sample(7, seed=11, turns_per_image=3)) == _fingerprint(samples[7])
    assert _fingerprint(make_samples(3, seed=11, start=5, turns_per_image=3)[2]) == _fingerprint(samples[7])


def test_different_seed_gives_different_samples(samples):
    other = make_samples(5, seed=12, turns_per_image=3)
    for mine, theirs in zip(samples, other):
        assert mine["image"].tobytes() != theirs["image"].tobytes()
    assert [s["conversations"] for s in samples[:5]] != [s["conversations"] for s in other]


# ---------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------


def test_turns_alternate_and_start_with_the_image(samples):
    for sample in samples:
        roles = [turn["from"] for turn in sample["conversations"]]
        assert roles == ["human", "gpt"] * 3
        assert sample["conversations"][0]["value"].startswith("<image>\n")
        assert not any("<image>" in turn["value"] for turn in sample["conversations"][1:])
        assert len(sample["tasks"]) == 3 and set(sample["tasks"]) <= set(TASKS)
        assert sample["image"].size == (sample["image_w"], sample["image_h"])


def test_placeholders_index_each_turns_boxes_once(samples):
    for sample in samples:
        turns = sample["conversations"]
        assert len(sample["box_x1y1x2y2"]) == len(sample["masks"]) == len(sample["region_types"]) == len(turns)
        for turn, boxes, masks, types in zip(turns, sample["box_x1y1x2y2"], sample["masks"], sample["region_types"]):
            indices = sorted(int(k) for k in PLACEHOLDER.findall(turn["value"]))
            assert indices == list(range(len(boxes)))
            assert len(masks) == len(types) == len(boxes)
            assert set(types) <= {"point", "box", "free-form"}
            if turn["from"] == "gpt":
                assert set(types) <= {"box"}


def test_boxes_lie_inside_the_image(samples):
    for sample in samples:
        width, height = sample["image_w"], sample["image_h"]
        for boxes in sample["box_x1y1x2y2"]:
            for x1, y1, x2, y2 in boxes:
                assert 0 <= x1 <= x2 <= width - 1 and 0 <= y1 <= y2 <= height - 1
        for obj in sample["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= width - 1 and 0 <= y1 <= y2 <= height - 1


def test_masks_decode_to_the_referred_objects(samples):
    """Each RLE has size [h, w]; its pixels carry the colour of an object with that box; a point lies in it."""
    checked = 0
    for sample in samples:
        pixels = np.asarray(sample["image"], dtype=np.int32)
        for boxes, masks, types in zip(sample["box_x1y1x2y2"], sample["masks"], sample["region_types"]):
            for box, rle, region_type in zip(boxes, masks, types):
                assert rle["size"] == [sample["image_h"], sample["image_w"]] and isinstance(rle["counts"], str)
                mask = rle_to_mask(rle)
                assert mask.shape == (sample["image_h"], sample["image_w"]) and mask.any()
                if region_type == "point":
                    assert box[0] == box[2] and box[1] == box[3] and mask[box[1], box[0]]
                    continue
                owners = [obj for obj in sample["objects"] if obj["box"] == box]
                distances = [np.abs(pixels[mask] - COLOURS[obj["colour"]]).max() for obj in owners]
                assert min(distances) <= COLOUR_TOLERANCE
                if len(owners) == 1:  # an ordinary object: the box is the mask's tight box
                    assert _tight_box(mask) == box
                checked += 1
    assert checked > 100


def test_scene_masks_are_exact_disjoint_and_painted():
    for index in range(20):
        scene = generate_scene(np.random.default_rng(index))
        pixels = np.asarray(scene.image, dtype=np.int32)
        union = np.zeros((scene.height, scene.width), dtype=int)
        for obj in scene.objects:
            assert obj.mask.shape == (scene.height, scene.width) and obj.mask.dtype == bool
            assert _tight_box(obj.mask) == list(obj.box)
            assert np.abs(pixels[obj.mask] - COLOURS[obj.colour]).max() <= COLOUR_TOLERANCE
            union += obj.mask
        assert union.max() <= 1
        names = [obj.name for obj in scene.objects]
        assert len(names) == len(set(names)) and 1 <= len(names) <= 6


def test_limited_overlap_occludes_earlier_objects_consistently():
    overlapping = 0
    for index in range(30):
        scene = generate_scene(np.random.default_rng(index), max_overlap=0.3, num_objects=(6, 6), image_size=(120, 120))
        masks = np.stack([obj.mask for obj in scene.objects])
        assert masks.sum(0).max() <= 1  # visible masks never share a pixel
        for obj in scene.objects:
            assert _tight_box(obj.mask) == list(obj.box)
        boxes = np.array([obj.box for obj in scene.objects], dtype=float) + [0, 0, 1, 1]
        overlapping += int((box_iou(boxes, boxes) > 0).sum() > len(boxes))
    assert overlapping > 0


def test_all_shapes_draw_and_fill_their_canvas():
    for shape in SHAPES:
        mask = shape_mask(shape, 40, angle_deg=10.0)
        assert mask.any(0).all() and mask.any(1).all()  # cropped: no empty border
        assert 20 <= max(mask.shape) <= 40
    assert shape_mask("ring", 40)[20, 20] == False  # noqa: E712 - the ring's hole
    with pytest.raises(ValueError):
        shape_mask("blob", 20)


def test_vocabulary_can_be_restricted_and_classes_stay_unique():
    rng = np.random.default_rng(0)
    scene = generate_scene(rng, colours=("red", "blue"), shapes=("circle", "square"), num_objects=(6, 6))
    assert sorted(obj.name for obj in scene.objects) == ["blue circle", "blue square", "red circle", "red square"]


# ---------------------------------------------------------------------------------------------------------------
# Image sizes
# ---------------------------------------------------------------------------------------------------------------


def test_aspect_ratio_extremes_and_size_range_appear():
    sizes = [generate_scene(np.random.default_rng(seed), num_objects=(1, 1)).image.size for seed in range(200)]
    ratios = np.array([w / h for w, h in sizes])
    assert all(96 <= side <= 448 for size in sizes for side in size)
    assert ratios.max() >= 3.95 and ratios.min() <= 1 / 3.95  # 4:1 and 1:4
    assert (ratios == 1).any() and ((ratios > 1.2) & (ratios < 3)).any()


def test_large_images_get_small_objects():
    small = []
    for seed in range(20):
        scene = generate_scene(np.random.default_rng(seed), min_side=400, max_side=448)
        small += [(obj.box[2] - obj.box[0] + 1) / scene.width < 0.08 for obj in scene.objects]
    assert any(small)


def test_fixed_image_size():
    assert generate_scene(np.random.default_rng(0), image_size=(64, 32)).image.size == (64, 32)


# ---------------------------------------------------------------------------------------------------------------
# The same-bounding-box pair
# ---------------------------------------------------------------------------------------------------------------


def test_diagonal_halves_hand_example():
    first, second = diagonal_halves(3, anti_diagonal=False)
    assert first.tolist() == [[True, True, True], [False, True, True], [False, False, True]]
    assert (second == ~first).all()


def test_same_bbox_pair_has_identical_boxes_and_disjoint_masks():
    for seed in range(20):
        scene = generate_scene(np.random.default_rng(seed), same_bbox_pair=True)
        pair = [obj for obj in scene.objects if obj.pair_id is not None]
        assert len(pair) == 2
        (a, b) = pair
        assert a.box == b.box and a.shape == b.shape == "triangle" and a.colour != b.colour
        assert not (a.mask & b.mask).any()
        x1, y1, x2, y2 = a.box
        assert x2 - x1 == y2 - y1  # a square
        assert (a.mask | b.mask)[y1 : y2 + 1, x1 : x2 + 1].all() and (a.mask | b.mask).sum() == (x2 - x1 + 1) ** 2
        for half in pair:  # one half's tight box may be one pixel smaller on a side
            assert np.abs(np.array(_tight_box(half.mask)) - a.box).max() <= 1
        others = [obj for obj in scene.objects if obj.pair_id is None]
        for obj in others:
            assert not (obj.mask[y1 : y2 + 1, x1 : x2 + 1]).any()
            assert obj.name not in (a.name, b.name)


def test_same_bbox_task_asks_about_each_half_with_its_mask():
    sample = make_sample(3, seed=0, tasks=["same_bbox"], turns_per_image=2)
    questions = sample["conversations"][0::2]
    answers = [turn["value"] for turn in sample["conversations"][1::2]]
    boxes = [sample["box_x1y1x2y2"][k][0] for k in (0, 2)]
    masks = [rle_to_mask(sample["masks"][k][0]) for k in (0, 2)]
    assert boxes[0] == boxes[1]
    assert not (masks[0] & masks[1]).any()
    assert [sample["region_types"][k] for k in (0, 2)] == [["free-form"], ["free-form"]]
    assert len(set(answers)) == 2 and all(answer.endswith(" triangle") for answer in answers)
    assert all("<bbox_location0>" in turn["value"] for turn in questions)


def test_pair_halves_are_never_referred_to_by_a_box():
    tasks = ["same_bbox", "roc_open", "roc_choice", "dense_referring"]
    for sample in make_samples(30, seed=4, tasks=tasks, turns_per_image=3):
        pair_boxes = [o["box"] for o in sample["objects"]]
        shared = [box for box in pair_boxes if pair_boxes.count(box) == 2]
        for turn, boxes, types in zip(sample["conversations"], sample["box_x1y1x2y2"], sample["region_types"]):
            if turn["from"] == "human":
                assert not any(box in shared and kind == "box" for box, kind in zip(boxes, types))


# ---------------------------------------------------------------------------------------------------------------
# Tasks and text
# ---------------------------------------------------------------------------------------------------------------


def test_raster_order_hand_example():
    def obj(name, box):
        return ShapeObject(colour=name, shape="circle", mask=np.zeros((1, 1), bool), box=box)

    objects = [
        obj("c", (60, 50, 80, 70)),  # centre (70, 60)
        obj("a", (50, 0, 70, 20)),  # centre (60, 10): top row
        obj("d", (0, 90, 10, 100)),  # centre (5, 95): bottom
        obj("b", (0, 50, 20, 70)),  # centre (10, 60): same row as c, further left
    ]
    assert [o.colour for o in raster_order(objects)] == ["a", "b", "c", "d"]


def test_dense_detection_lists_every_object_in_raster_order():
    for sample in make_samples(10, seed=2, tasks=["dense_detection"]):
        answer = sample["conversations"][1]["value"]
        assert answer.startswith("The objects are: 1: ")
        boxes = sample["box_x1y1x2y2"][1]
        centres = [((y1 + y2) / 2, (x1 + x2) / 2) for x1, y1, x2, y2 in boxes]
        assert centres == sorted(centres)
        assert sorted(map(tuple, boxes)) == sorted(tuple(o["box"]) for o in sample["objects"])
        names = [phrase for phrase, _ in parse_boxes(render_conversation(sample)[1]["value"])]
        by_box = {tuple(o["box"]): o["name"] for o in sample["objects"]}
        assert names == [by_box[tuple(box)] for box in boxes]


def test_each_task_writes_its_template():
    expected = {
        "roc_open": ("<bbox_location0>", r"^an? \w+ \w+$"),
        "roc_choice": (" or a", r"^an? \w+ \w+$"),
        "rec": ("", r"^The \w+ \w+ <bbox_location0>\.$"),
        "grounded_description": ("", r"^There (is 1 object|are \d objects): an? \w+ \w+ <bbox_location0>"),
        "dense_detection": ("raster scan order", r"^The objects are: 1: \w+ \w+ <bbox_location0>"),
        "dense_referring": ("1: <bbox_location0>", r"^Here are the categories: 1: \w+ \w+"),
        "same_bbox": ("<bbox_location0>", r"^an? \w+ triangle$"),
    }
    for task, (question_part, answer_pattern) in expected.items():
        sample = make_sample(0, seed=1, tasks=[task])
        question, answer = (turn["value"] for turn in sample["conversations"])
        assert question_part in question.replace(" or an", " or a"), task
        assert re.match(answer_pattern, answer), (task, answer)
        assert sample["tasks"] == [task]


def test_roc_choice_contains_the_answer_in_both_positions():
    firsts = set()
    for sample in make_samples(20, seed=3, tasks=["roc_choice"]):
        question, answer = (turn["value"] for turn in sample["conversations"])
        options = re.search(r"<bbox_location0> (.+) or (.+)\?$", question).groups()
        assert answer in options and options[0] != options[1]
        firsts.add(options.index(answer))
    assert firsts == {0, 1}


def test_whole_image_tasks_come_last_and_once():
    for sample in make_samples(20, seed=6, turns_per_image=4):
        whole = [task in ("grounded_description", "dense_detection", "dense_referring") for task in sample["tasks"]]
        assert whole == sorted(whole)
        picked = [task for task, is_whole in zip(sample["tasks"], whole) if is_whole]
        assert len(picked) == len(set(picked))


def test_task_weights_and_errors():
    sample = make_sample(0, tasks={"rec": 1.0, "roc_open": 0.0}, turns_per_image=3)
    assert sample["tasks"] == ["rec"] * 3
    with pytest.raises(ValueError):
        make_sample(0, tasks=["segment_everything"])
    with pytest.raises(ValueError):
        make_sample(0, turns_per_image=0)


def test_articles():
    assert with_article("orange star") == "an orange star" and with_article("red circle") == "a red circle"


def test_render_conversation_and_region_inputs_hand_example():
    mask = np.zeros((100, 200), dtype=bool)
    mask[30:40, 60:90] = True
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle = {"size": [100, 200], "counts": rle["counts"].decode()}
    sample = {
        "image_w": 200,
        "image_h": 100,
        "conversations": [
            {"from": "human", "value": "<image>\nIs <bbox_location1> left of <bbox_location0>?"},
            {"from": "gpt", "value": "Yes, <bbox_location0> is."},
        ],
        "box_x1y1x2y2": [[[60, 30, 89, 39], [10, 20, 10, 20]], [[60, 30, 89, 39]]],
        "masks": [[rle, rle], [rle]],
        "region_types": [["free-form", "point"], ["box"]],
    }
    rendered = render_conversation(sample)
    assert rendered[0]["value"] == "<image>\nIs [50, 200] <region_fea> left of [300, 300, 445, 390] <region_fea>?"
    assert rendered[1]["value"] == "Yes, [300, 300, 445, 390] is."
    assert render_conversation(sample, region_token=None)[0]["value"].endswith("[300, 300, 445, 390]?")
    point, free_form = region_inputs(sample)  # order of appearance in the text
    assert point == [10, 20] and (free_form == mask).all()


def test_gold_answers_score_perfectly_with_the_evaluators():
    samples = make_samples(30, seed=8, tasks=["rec", "roc_open"], turns_per_image=2)
    rec_predictions, rec_truths, sizes, roc_answers, roc_names, roc_types = [], [], [], [], [], []
    for sample in samples:
        rendered = render_conversation(sample)
        for k, task in enumerate(sample["tasks"]):
            answer = rendered[2 * k + 1]["value"]
            if task == "rec":
                rec_predictions.append(answer)
                rec_truths.append(sample["box_x1y1x2y2"][2 * k + 1][0])
                sizes.append((sample["image_h"], sample["image_w"]))
            else:
                roc_answers.append(answer)
                roc_names.append(answer.split(" ", 1)[1])
                roc_types.append(sample["region_types"][2 * k][0])
    assert rec_accuracy(rec_predictions, rec_truths, sizes)["accuracy"] == 1.0
    result = roc_accuracy(roc_answers, roc_names, region_types=roc_types)
    assert result["accuracy"] == 1.0 and set(result["per_region_type"]) == {"point", "box", "free-form"}
    for prediction, truth, size in zip(rec_predictions, rec_truths, sizes):  # quantisation costs at most 1 px a side
        pixels = bins_to_pixels(parse_boxes(prediction)[0][1], size)
        assert np.abs(np.array(pixels) - truth).max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------


def test_to_dataset_round_trip(samples):
    dataset = to_dataset(samples[:5])
    assert len(dataset) == 5
    row = dataset[2]
    assert isinstance(row["image"], Image.Image) and row["image"].tobytes() == samples[2]["image"].tobytes()
    for key in ("conversations", "box_x1y1x2y2", "masks", "region_types", "tasks", "objects", "image_w", "image_h"):
        assert row[key] == samples[2][key], key


def test_to_dataset_without_masks():
    dataset = to_dataset(make_samples(2, with_masks=False))
    assert "masks" not in dataset.column_names


def test_write_grit_json(tmp_path, samples):
    json_path = write_grit_json(samples[:3], tmp_path)
    records = json.loads(json_path.read_text())
    assert [record["image"] for record in records] == [f"{s['id']}.png" for s in samples[:3]]
    for record, sample in zip(records, samples):
        with Image.open(tmp_path / "images" / record["image"]) as image:
            assert image.tobytes() == sample["image"].tobytes()
        assert record["conversations"] == sample["conversations"] and record["masks"] == sample["masks"]
    assert isinstance(samples[0]["image"], Image.Image)  # the samples themselves are left untouched
