"""GRIT-format data: JSON <-> datasets.Dataset, COCO RLE masks, and the COCO -> GRIT conversion."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from transformers_ferret.training.grit import (
    GRIT_FEATURES,
    coco_to_grit,
    load_grit,
    mask_to_rle,
    normalize_rle,
    rle_to_mask,
    save_grit,
)


def _ellipse(height, width, centre, radii):
    rows, cols = np.mgrid[:height, :width]
    return ((cols - centre[0]) / radii[0]) ** 2 + ((rows - centre[1]) / radii[1]) ** 2 <= 1


def _records(folder):
    """Two GRIT samples with their image files: one with masks (one box without), one with none."""
    rng = np.random.default_rng(0)
    for name, (height, width) in (("a.png", (40, 60)), ("b.jpg", (30, 20))):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    mask = _ellipse(40, 60, (30, 20), (12, 8))
    return mask, [
        {
            "id": "first",
            "image": "a.png",
            "image_w": 60,
            "image_h": 40,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is <bbox_location0> next to <bbox_location1>?"},
                {"from": "gpt", "value": "An ellipse <bbox_location0>."},
            ],
            "box_x1y1x2y2": [[[18, 12, 42, 28], [0.5, 1.25, 10, 10]], [[18, 12, 42, 28]]],
            "masks": [[mask_to_rle(mask), None], [mask_to_rle(mask)]],
            "unknown_key": "dropped",
        },
        {
            "image": "b.jpg",  # no id, no size: read from the file
            "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Noise."}],
            "box_x1y1x2y2": [[], []],
        },
    ]


def test_json_round_trip(tmp_path):
    mask, records = _records(tmp_path)
    (tmp_path / "train.json").write_text(json.dumps(records))
    dataset = load_grit(tmp_path / "train.json", tmp_path)

    assert dataset.features == datasets.Features({name: GRIT_FEATURES[name] for name in dataset.column_names})
    assert dataset.column_names == ["id", "image", "image_w", "image_h", "conversations", "box_x1y1x2y2", "masks"]
    first, second = dataset[0], dataset[1]
    assert first["id"] == "first" and second["id"] == "b.jpg"
    assert isinstance(first["image"], Image.Image) and first["image"].size == (60, 40)
    assert (second["image_w"], second["image_h"]) == (20, 30)
    assert first["conversations"] == records[0]["conversations"]
    assert first["box_x1y1x2y2"] == [[[18.0, 12.0, 42.0, 28.0], [0.5, 1.25, 10.0, 10.0]], [[18.0, 12.0, 42.0, 28.0]]]
    assert first["masks"][0][1] is None and second["masks"] is None
    assert second["box_x1y1x2y2"] == [[], []]

    # Saved back (images kept as files of the folder) and reloaded: identical rows.
    out = tmp_path / "out"
    json_path = save_grit(dataset, out / "train.json", tmp_path)
    saved = json.loads(json_path.read_text())
    assert [record["image"] for record in saved] == ["a.png", "b.jpg"]
    assert "masks" not in saved[1] and saved[0]["masks"] == records[0]["masks"]
    reloaded = load_grit(json_path, tmp_path)
    for row, again in zip(dataset, reloaded):
        assert {k: v for k, v in row.items() if k != "image"} == {k: v for k, v in again.items() if k != "image"}
        assert np.array_equal(np.asarray(row["image"]), np.asarray(again["image"]))

    # In-memory images are written out as PNG files.
    in_memory = datasets.Dataset.from_dict(
        {"image": [Image.open(tmp_path / "a.png")], "conversations": [records[1]["conversations"]]},
        features=datasets.Features({"image": GRIT_FEATURES["image"], "conversations": GRIT_FEATURES["conversations"]}),
    )
    save_grit(in_memory, out / "memory.json", out / "images")
    assert json.loads((out / "memory.json").read_text())[0]["image"] == "00000000.png"
    assert np.array_equal(np.asarray(Image.open(out / "images" / "00000000.png")), np.asarray(first["image"]))


def test_rle_decode_equals_the_mask(tmp_path):
    mask, records = _records(tmp_path)
    dataset = load_grit(records, tmp_path)
    decoded = rle_to_mask(dataset[0]["masks"][0][0])
    assert decoded.dtype == bool and decoded.shape == (40, 60) and np.array_equal(decoded, mask)

    # Uncompressed RLE (column-major run lengths starting with zeros) and bytes counts are normalised.
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    runs = runs if not flat[0] else [0, *runs]
    uncompressed = {"size": [40, 60], "counts": runs}
    assert np.array_equal(rle_to_mask(uncompressed), mask)
    assert normalize_rle(uncompressed) == mask_to_rle(mask)
    compressed = mask_to_rle(mask)
    assert np.array_equal(rle_to_mask({"size": [40, 60], "counts": compressed["counts"].encode()}), mask)
    records[0]["masks"][0][0] = uncompressed
    assert load_grit(records, tmp_path)[0]["masks"][0][0] == compressed

    # Polygons become the filled polygon.
    square = rle_to_mask(normalize_rle([[10, 5, 30, 5, 30, 25, 10, 25]], 40, 60))
    rows, cols = np.nonzero(square)
    assert (cols.min(), rows.min(), cols.max(), rows.max()) == (10, 5, 29, 24)
    assert square.sum() == 20 * 20


def test_load_errors(tmp_path):
    _, records = _records(tmp_path)
    bad = json.loads(json.dumps(records))
    bad[0]["box_x1y1x2y2"] = [[[18, 12, 42, 28]], [[18, 12, 42, 28]]]
    del bad[0]["masks"]
    with pytest.raises(ValueError, match="sample 0.*bbox_location1"):
        load_grit(bad, tmp_path)
    bad = json.loads(json.dumps(records))
    bad[1]["box_x1y1x2y2"] = [[]]
    with pytest.raises(ValueError, match="sample 1.*2 turns"):
        load_grit(bad, tmp_path)
    bad = json.loads(json.dumps(records))
    bad[0]["masks"] = [[None], [None]]
    with pytest.raises(ValueError, match="`masks` is not aligned"):
        load_grit(bad, tmp_path)
    bad = json.loads(json.dumps(records))
    bad[1]["conversations"].reverse()
    with pytest.raises(ValueError, match="expected 'human'"):
        load_grit(bad, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_grit(records, tmp_path / "missing")


def _coco():
    """Two images; image 1 holds a crowd annotation and three objects out of raster order."""
    return {
        "images": [
            {"id": 1, "file_name": "one.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "two.jpg", "width": 50, "height": 50},
            {"id": 3, "file_name": "empty.jpg", "width": 50, "height": 50},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"}],
        "annotations": [
            # bottom-left cat, top-right dog, top-left cat (centres: (20, 60), (80, 15), (15, 12))
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 50, 20, 20],
             "segmentation": [[10, 50, 30, 50, 30, 70, 10, 70]], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [70, 5, 20.5, 20], "segmentation": [], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [5, 4, 20, 16],
             "segmentation": [[5, 4, 25, 4, 25, 20, 5, 20]], "iscrowd": 0},
            {"id": 13, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 80],
             "segmentation": {"size": [80, 100], "counts": [0, 8000]}, "iscrowd": 1},
            # partly outside the image: clamped to [40, 30, 49, 49]
            {"id": 20, "image_id": 2, "category_id": 3, "bbox": [40, 30, 15, 25],
             "segmentation": [[40, 30, 49, 30, 49, 49, 40, 49]], "iscrowd": 0},
        ],  # fmt: skip
    }


REFS = [
    {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "sentences": [{"sent": "dog, on the right"}, {"raw": "brown dog."}]},
    {"ref_id": 1, "ann_id": 12, "image_id": 1, "split": "val", "sentences": [{"sent": "top left cat"}]},
    {"ref_id": 2, "ann_id": 20, "image_id": 2, "split": "train", "sentences": ["a man"]},
]  # fmt: skip
CAPTIONS = {
    "annotations": [
        {"image_id": 1, "caption": "Two cats and a dog sit in a room."},
        {"image_id": 1, "caption": "An empty room."},  # nothing to ground: left out
        {"image_id": 2, "caption": "A woman is standing on the right.",
         "phrases": [{"span": [0, 7], "ann_ids": [20]}]},  # fmt: skip
    ]
}


def test_coco_to_grit_dense_tasks_in_raster_order():
    samples = coco_to_grit(_coco(), tasks=("dense_referring", "dense_detection"))
    assert [sample["id"] for sample in samples] == [
        "1-dense_referring", "1-dense_detection", "2-dense_referring", "2-dense_detection",
    ]  # fmt: skip
    referring, detection = samples[0], samples[1]
    raster = [[5.0, 4.0, 25.0, 20.0], [70.0, 5.0, 90.5, 25.0], [10.0, 50.0, 30.0, 70.0]]  # cat, dog, cat
    assert referring["conversations"] == [
        {"from": "human", "value": "<image>\nPlease classify the objects in the following locations. "
                                   "1: <bbox_location0>, 2: <bbox_location1>, 3: <bbox_location2>."},
        {"from": "gpt", "value": "Here are the categories: 1: cat, 2: dog, 3: cat."},
    ]  # fmt: skip
    assert referring["box_x1y1x2y2"] == [raster, []]
    assert detection["conversations"] == [
        {"from": "human", "value": "<image>\nPlease localize visible objects in the image in a raster scan order."},
        {"from": "gpt", "value": "The objects are: 1: cat <bbox_location0>, 2: dog <bbox_location1>, "
                                 "3: cat <bbox_location2>."},
    ]  # fmt: skip
    assert detection["box_x1y1x2y2"] == [[], raster]
    assert (referring["image"], referring["image_w"], referring["image_h"]) == ("one.jpg", 100, 80)

    masks = referring["masks"][0]
    assert masks[1] is None  # the dog has no segmentation
    top_left = rle_to_mask(masks[0])
    rows, cols = np.nonzero(top_left)
    assert top_left.shape == (80, 100) and (cols.min(), rows.min(), cols.max(), rows.max()) == (5, 4, 24, 19)
    assert samples[2]["box_x1y1x2y2"] == [[[40.0, 30.0, 49.0, 49.0]], []]  # clamped to the 50 x 50 image

    capped = coco_to_grit(_coco(), tasks=["dense_detection"], max_objects=2, include_masks=False)
    assert capped[0]["conversations"][1]["value"] == "The objects are: 1: cat <bbox_location0>, 2: dog <bbox_location1>."
    assert "masks" not in capped[0]
    crowd = coco_to_grit(_coco(), tasks=["dense_referring"], skip_crowd=False)[0]
    assert crowd["conversations"][1]["value"].endswith("3: person, 4: cat.")  # the crowd box's centre is (49.5, 39.5)


def test_coco_to_grit_rec_and_grounded_captions(tmp_path):
    samples = coco_to_grit(_coco(), refs=REFS, captions=CAPTIONS, tasks=("rec", "grounded_caption"))
    assert [sample["id"] for sample in samples] == ["1-rec", "1-grounded_caption", "2-rec", "2-grounded_caption"]
    rec = samples[0]
    assert [turn["value"] for turn in rec["conversations"]] == [
        "<image>\nWhat is the location of dog on the right in the image?", "dog on the right <bbox_location0>",
        "What is the location of brown dog in the image?", "brown dog <bbox_location0>",
        "What is the location of top left cat in the image?", "top left cat <bbox_location0>",
    ]  # fmt: skip
    dog, cat = [70.0, 5.0, 90.5, 25.0], [5.0, 4.0, 25.0, 20.0]
    assert rec["box_x1y1x2y2"] == [[], [dog], [], [dog], [], [cat]]
    assert len(coco_to_grit(_coco(), refs=REFS, tasks=["rec"], ref_split="train")[0]["conversations"]) == 4

    caption = samples[1]
    assert caption["conversations"] == [
        {"from": "human", "value": "<image>\nBriefly describe the image. Include the coordinates for each mentioned object."},
        {"from": "gpt", "value": "Two cats <bbox_location0>, <bbox_location1> and a dog <bbox_location2> sit in a room."},
    ]  # fmt: skip
    assert caption["box_x1y1x2y2"] == [[], [cat, [10.0, 50.0, 30.0, 70.0], dog]]
    assert samples[3]["conversations"][1]["value"] == "A woman <bbox_location0> is standing on the right."
    assert samples[3]["box_x1y1x2y2"][1] == [[40.0, 30.0, 49.0, 49.0]]

    # The samples load as a GRIT dataset.
    for name in ("one.jpg", "two.jpg", "empty.jpg"):
        size = 100 if name == "one.jpg" else 50
        Image.new("RGB", (size, 80 if name == "one.jpg" else 50)).save(tmp_path / name)
    dataset = load_grit(coco_to_grit(_coco(), refs=REFS, captions=CAPTIONS), tmp_path)
    assert len(dataset) == 8 and dataset[0]["masks"] is not None

    with pytest.raises(ValueError, match="Unknown tasks"):
        coco_to_grit(_coco(), tasks=["captioning"])
