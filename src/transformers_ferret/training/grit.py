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
GRIT-format training data: the JSON schema of the original Ferret training code, as a `datasets.Dataset`, and a
conversion of COCO-style detection / referring-expression / caption annotations into it.

A GRIT sample (one JSON object of a list) holds:

* `image`: file name, joined with the dataset's image folder;
* `image_w`, `image_h`: the image size in pixels (read from the file when absent);
* `conversations`: `[{"from": "human" | "gpt", "value": str}, ...]`, alternating and starting with `"human"`;
* `box_x1y1x2y2`: one list per turn of pixel boxes `[x1, y1, x2, y2]` of the original image (`[]` for a turn
  without boxes). A turn's text refers to its boxes with the placeholders `<bbox_location0>`, `<bbox_location1>`, ...
  (an index into the turn's own list);
* `masks` (optional): aligned like `box_x1y1x2y2`, the segmentation mask of each box as a COCO RLE dict
  (`{"size": [h, w], "counts": str}`), or `null` for a box without a mask;
* optional extras this package understands: `id` (str) and `region_types` (aligned like the boxes: `"point"`,
  `"box"` or `"free-form"`, how a user turn presents each region; see `synthetic_shapes`).

How the columns are stored in Arrow (the `GRIT_FEATURES` schema):

| column | feature | note |
|---|---|---|
| `image` | `datasets.Image()` | the file path is stored, the image is decoded (PIL) when a row is read |
| `image_w`, `image_h` | `int32` | |
| `conversations` | `List({"from": string, "value": string})` | |
| `box_x1y1x2y2` | `List(List(List(float64)))` | turn -> box -> 4 floats; an empty turn is `[]` |
| `masks` | `List(List({"size": List(int32), "counts": string}))` | compressed RLE as ASCII text; a box without mask is `None`, a sample without masks is `None` |
| `id` | `string` | the `image` entry (or the row index) when absent |
| `region_types` | `List(List(string))` | only kept when some sample has it; `None` elsewhere |

Masks stay run-length encoded in the dataset: a decoded `[h, w]` mask per box would be megabytes per row, while
the RLE text is a few hundred bytes, survives Arrow as a plain string and round-trips exactly. Uncompressed RLE
(`counts` as a list of run lengths) and polygons are converted to compressed RLE when loading. The collator
([`FerretDataCollator`]) decodes the masks it needs with [`rle_to_mask`].
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np


BBOX_PLACEHOLDER = "<bbox_location{}>"
"""Placeholder of the `k`-th box of a turn in GRIT text."""

BBOX_PLACEHOLDER_PATTERN = re.compile(r"<bbox_location(\d+)>")

GROUNDING_SUFFIX = "Include the coordinates for each mentioned object."
"""Ferret-v2's instruction suffix for tasks whose answer must ground its objects."""

DENSE_REFERRING_QUESTION = "Please classify the objects in the following locations. {regions}."
DENSE_REFERRING_ANSWER = "Here are the categories: {categories}."
DENSE_DETECTION_QUESTION = "Please localize visible objects in the image in a raster scan order."
DENSE_DETECTION_ANSWER = "The objects are: {objects}."
REC_QUESTION = "What is the location of {expression} in the image?"
GROUNDED_CAPTION_QUESTION = "Briefly describe the image. " + GROUNDING_SUFFIX

COCO_TASKS = ("dense_referring", "dense_detection", "rec", "grounded_caption")

DEFAULT_CATEGORY_SYNONYMS = {
    "person": ("person", "people", "man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child", "children"),
}
"""Words that ground a COCO category in a caption when captions carry no phrase grounding of their own."""

_STRING, _INT = datasets.Value("string"), datasets.Value("int32")
_RLE_FEATURE = {"size": datasets.List(_INT), "counts": _STRING}

GRIT_FEATURES = datasets.Features(
    {
        "id": _STRING,
        "image": datasets.Image(),
        "image_w": _INT,
        "image_h": _INT,
        "conversations": datasets.List({"from": _STRING, "value": _STRING}),
        "box_x1y1x2y2": datasets.List(datasets.List(datasets.List(datasets.Value("float64")))),
        "masks": datasets.List(datasets.List(_RLE_FEATURE)),
        "region_types": datasets.List(datasets.List(_STRING)),
    }
)
"""Arrow schema of a GRIT dataset (see the module docstring)."""


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------


def _mask_api():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:  # pragma: no cover - optional dependency
        raise ImportError("GRIT masks are COCO RLE: install pycocotools (`pip install pycocotools`).") from error
    return mask_utils


def mask_to_rle(mask) -> dict:
    """Compressed COCO RLE of a `[h, w]` mask (nonzero = inside), `counts` as ASCII text (JSON and Arrow ready)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"A mask must be 2-D [height, width], got shape {mask.shape}.")
    rle = _mask_api().encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}


def normalize_rle(segmentation, height: int | None = None, width: int | None = None) -> dict:
    """
    Any COCO segmentation as a compressed RLE dict with text `counts`.

    Args:
        segmentation: compressed RLE (`counts` str or bytes), uncompressed RLE (`counts` a list of run lengths), or
            polygons (a list of `[x0, y0, x1, y1, ...]` lists; needs `height` and `width`).
        height, width (`int`, *optional*): image size, required for polygons and used to check RLE sizes.

    Returns:
        `{"size": [h, w], "counts": str}`.
    """
    mask_utils = _mask_api()
    if isinstance(segmentation, Mapping):
        size = [int(value) for value in segmentation["size"]]
        if height is not None and width is not None and size != [int(height), int(width)]:
            raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}].")
        counts = segmentation["counts"]
        if isinstance(counts, (list, tuple, np.ndarray)):
            rle = mask_utils.frPyObjects({"size": size, "counts": [int(count) for count in counts]}, *size)
            return {"size": size, "counts": rle["counts"].decode("ascii")}
        return {"size": size, "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts)}
    if height is None or width is None:
        raise ValueError("Polygon segmentations need the image `height` and `width`.")
    polygons = [list(map(float, polygon)) for polygon in segmentation if len(polygon) >= 6]
    if not polygons:
        raise ValueError("A polygon segmentation needs at least one polygon of 3 or more points.")
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, int(height), int(width)))
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle) -> np.ndarray:
    """`[h, w]` bool mask of a COCO RLE dict (compressed `counts` as str or bytes, or uncompressed run lengths)."""
    rle = normalize_rle(rle)
    with warnings.catch_warnings():  # pycocotools 2.0.x on numpy 2: a DeprecationWarning about `copy=False`
        warnings.simplefilter("ignore", DeprecationWarning)
        return _mask_api().decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


# ----------------------------------------------------------------------------------------------------------------
# Loading and saving GRIT JSON
# ----------------------------------------------------------------------------------------------------------------


def _read_records(source) -> list[dict]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    return list(source)


def _image_size(image) -> tuple[int, int]:
    """`(width, height)` of a PIL image, or of an image file without decoding its pixels."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image) as opened:
        return opened.size


def _check_sample(index: int, sample: dict) -> None:
    turns, boxes = sample["conversations"], sample["box_x1y1x2y2"]
    prefix = f"GRIT sample {index} ({sample.get('id') or sample.get('image')})"
    if len(boxes) != len(turns):
        raise ValueError(f"{prefix}: `box_x1y1x2y2` has {len(boxes)} entries for {len(turns)} turns.")
    for column in ("masks", "region_types"):
        values = sample.get(column)
        if values is None:
            continue
        if len(values) != len(turns) or any(
            turn_values is not None and len(turn_values) != len(turn_boxes)
            for turn_values, turn_boxes in zip(values, boxes)
        ):
            raise ValueError(f"{prefix}: `{column}` is not aligned with `box_x1y1x2y2` (one entry per box per turn).")
    for turn_index, (turn, turn_boxes) in enumerate(zip(turns, boxes)):
        expected = "human" if turn_index % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            raise ValueError(f"{prefix}: turn {turn_index} is from {turn.get('from')!r}, expected {expected!r}.")
        for box in turn_boxes:
            if len(box) != 4:
                raise ValueError(f"{prefix}: turn {turn_index} has a box with {len(box)} values: {box}.")
        used = [int(k) for k in BBOX_PLACEHOLDER_PATTERN.findall(turn["value"])]
        if used and max(used) >= len(turn_boxes):
            raise ValueError(
                f"{prefix}: turn {turn_index} refers to <bbox_location{max(used)}> but has {len(turn_boxes)} boxes."
            )


def load_grit(
    source,
    image_folder: str | os.PathLike | None = None,
    *,
    check: bool = True,
) -> datasets.Dataset:
    """
    Loads GRIT-format samples into a `datasets.Dataset` with the [`GRIT_FEATURES`] schema.

    Args:
        source: path of a JSON file holding a list of samples (or of a `.jsonl` file, one sample per line), or the
            list of sample dicts itself. A sample's `image` is a file name (joined with `image_folder`), a path, or a
            PIL image.
        image_folder (`str` or `os.PathLike`, *optional*): folder the `image` file names are relative to.
        check (`bool`, defaults to `True`): check each sample (alternating turns starting with `"human"`, boxes and
            masks aligned with the turns, 4 values per box, placeholders within the turn's boxes, image files
            present) and raise a `ValueError` naming the first bad sample.

    Returns:
        `datasets.Dataset` with columns `id, image, image_w, image_h, conversations, box_x1y1x2y2, masks` and, when
        some sample has it, `region_types`. Images are decoded lazily (to PIL) when rows are read; masks stay COCO
        RLE (decode them with [`rle_to_mask`]). Other keys of the samples are dropped.
    """
    records = _read_records(source)
    if not records:
        raise ValueError("No GRIT samples to load.")
    folder = Path(image_folder) if image_folder is not None else None
    rows = defaultdict(list)
    has_region_types = any(record.get("region_types") is not None for record in records)
    for index, record in enumerate(records):
        image = record["image"]
        default_id = str(image) if isinstance(image, (str, os.PathLike)) else str(index)
        if isinstance(image, (str, os.PathLike)):
            image = str(folder / image) if folder is not None and not os.path.isabs(image) else str(image)
            if check and not os.path.isfile(image):
                raise ValueError(f"GRIT sample {index}: image file {image} does not exist.")
        width, height = record.get("image_w"), record.get("image_h")
        if width is None or height is None:
            width, height = _image_size(image)
        if check:
            _check_sample(index, record)
        masks = record.get("masks")
        if masks is not None:
            masks = [
                [None if rle is None else normalize_rle(rle, height, width) for rle in (turn_masks or [])]
                for turn_masks in masks
            ]
        rows["id"].append(str(record.get("id") or default_id))
        rows["image"].append(image)
        rows["image_w"].append(int(width))
        rows["image_h"].append(int(height))
        turns = [{"from": turn["from"], "value": turn["value"]} for turn in record["conversations"]]
        rows["conversations"].append(turns)
        rows["box_x1y1x2y2"].append([[[float(v) for v in box] for box in turn] for turn in record["box_x1y1x2y2"]])
        rows["masks"].append(masks)
        if has_region_types:
            rows["region_types"].append(record.get("region_types"))
    features = datasets.Features({name: GRIT_FEATURES[name] for name in rows})
    return datasets.Dataset.from_dict(dict(rows), features=features)


def save_grit(dataset: datasets.Dataset, json_path: str | os.PathLike, image_folder: str | os.PathLike) -> Path:
    """
    Writes a GRIT dataset back to the JSON layout [`load_grit`] reads: a list of samples in `json_path` whose `image`
    is a file name in `image_folder`.

    An image stored as a file already inside `image_folder` keeps its file name; any other image is written there
    as `{row index:08d}.png`. `masks` / `region_types` are written only for samples that have them.

    Returns:
        The JSON path.
    """
    json_path, image_folder = Path(json_path), Path(image_folder)
    image_folder.mkdir(parents=True, exist_ok=True)
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    records = []
    for index, row in enumerate(raw):
        image = row["image"]
        path = Path(image["path"]) if image.get("path") else None
        if path is not None and path.is_file() and path.resolve().parent == image_folder.resolve():
            file_name = path.name
        else:
            from PIL import Image

            file_name = f"{index:08d}.png"
            if image.get("bytes") is not None:
                import io

                Image.open(io.BytesIO(image["bytes"])).save(image_folder / file_name)
            else:
                Image.open(path).save(image_folder / file_name)
        record = {key: value for key, value in row.items() if key != "image" and value is not None}
        records.append({"image": file_name, **record})
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(records))
    return json_path


# ----------------------------------------------------------------------------------------------------------------
# COCO -> GRIT
# ----------------------------------------------------------------------------------------------------------------


def _load_json(source):
    if source is None or isinstance(source, (dict, list)):
        return source
    return json.loads(Path(source).read_text())


def coco_box_to_xyxy(box: Sequence[float], width: int, height: int) -> list[float]:
    """COCO `[x, y, w, h]` -> `[x1, y1, x2, y2]` = `[x, y, x + w, y + h]` clamped to `[0, W-1] x [0, H-1]`."""
    x, y, w, h = (float(value) for value in box)
    x1, x2 = (min(max(value, 0.0), width - 1.0) for value in (x, x + w))
    y1, y2 = (min(max(value, 0.0), height - 1.0) for value in (y, y + h))
    return [round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3)]


def raster_sorted(boxes: Sequence[Sequence[float]]) -> list[int]:
    """
    Indices of `boxes` (`[x1, y1, x2, y2]`) in raster order: by box centre, top to bottom, then left to right
    (the order of `synthetic_shapes.raster_order`).
    """
    return sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3], boxes[i][0] + boxes[i][2], i))


def _placeholders(count: int, start: int = 0) -> list[str]:
    return [BBOX_PLACEHOLDER.format(k) for k in range(start, start + count)]


def _sample(image: dict, suffix: str, turns: list[tuple[str, list, list]], with_masks: bool) -> dict:
    """A GRIT sample from `(text, boxes, masks)` turns alternating human / gpt; `<image>\\n` starts the first."""
    conversations = [
        {"from": "human" if k % 2 == 0 else "gpt", "value": ("<image>\n" if k == 0 else "") + text}
        for k, (text, _, _) in enumerate(turns)
    ]
    sample = {
        "id": f"{image['id']}-{suffix}",
        "image": image["file_name"],
        "image_w": int(image["width"]),
        "image_h": int(image["height"]),
        "conversations": conversations,
        "box_x1y1x2y2": [boxes for _, boxes, _ in turns],
    }
    if with_masks:
        sample["masks"] = [masks for _, _, masks in turns]
    return sample


def _expression(sentence) -> str:
    text = sentence if isinstance(sentence, str) else sentence.get("sent") or sentence.get("raw") or ""
    return " ".join(text.replace(",", " ").split()).rstrip(".")


def _caption_turn(caption: dict, objects: list[dict], names: dict, synonyms: Mapping) -> tuple[str, list, list] | None:
    """
    The grounded answer of one caption: `<bbox_location*>` placeholders after each grounded phrase.

    With `caption["phrases"]` (`[{"span": [start, end], "ann_ids": [...]}]` or `"boxes": [[x, y, w, h], ...]`
    instead of `ann_ids`), those phrases are grounded. Otherwise a category name (or one of its `synonyms`, also with
    a plural "s"/"es") found as a word in the caption grounds its first occurrence with every instance of that
    category in the image, in raster order. Returns `None` when nothing is grounded.
    """
    text = caption["caption"].strip()
    by_id = {obj["ann_id"]: obj for obj in objects}
    spans: list[tuple[int, int, list[dict]]] = []
    if caption.get("phrases"):
        for phrase in caption["phrases"]:
            start, end = phrase["span"] if "span" in phrase else _find_word(text, phrase["phrase"]) or (None, None)
            if start is None:
                continue
            if "boxes" in phrase:
                size = caption["image_size"]
                grounded = [{"box": coco_box_to_xyxy(box, *size), "rle": None} for box in phrase["boxes"]]
            else:
                grounded = [by_id[ann_id] for ann_id in phrase.get("ann_ids", []) if ann_id in by_id]
            if grounded:
                spans.append((start, end, grounded))
    else:
        by_category = defaultdict(list)
        for obj in objects:
            by_category[obj["category_id"]].append(obj)
        for category_id, instances in by_category.items():
            name = names[category_id]
            for word in synonyms.get(name, (name,)):
                found = _find_word(text, word)
                if found:
                    spans.append((*found, instances))
                    break
    spans.sort(key=lambda span: span[0])
    spans = [span for k, span in enumerate(spans) if k == 0 or span[0] >= spans[k - 1][1]]  # drop overlapping
    if not spans:
        return None
    pieces, boxes, masks, copied = [], [], [], 0
    for start, end, grounded in spans:
        order = raster_sorted([obj["box"] for obj in grounded])
        pieces += [text[copied:end], " ", ", ".join(_placeholders(len(order), len(boxes)))]
        boxes += [grounded[i]["box"] for i in order]
        masks += [grounded[i]["rle"] for i in order]
        copied = end
    return "".join(pieces) + text[copied:], boxes, masks


def _find_word(text: str, word: str) -> tuple[int, int] | None:
    match = re.search(rf"\b{re.escape(word)}(?:e?s)?\b", text, flags=re.IGNORECASE)
    return match.span() if match else None


def coco_to_grit(
    instances,
    refs=None,
    captions=None,
    *,
    tasks: Iterable[str] = COCO_TASKS,
    include_masks: bool = True,
    skip_crowd: bool = True,
    max_objects: int | None = None,
    ref_split: str | None = None,
    category_synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[dict]:
    """
    Converts COCO-style annotations into GRIT samples (the schema [`load_grit`] reads).

    Tasks (each one sample per image, objects and their boxes in raster order, see [`raster_sorted`]):

    * `"dense_referring"` (Ferret-v2 stage II): "Please classify the objects in the following locations. 1:
      <bbox_location0>, 2: <bbox_location1>." -> "Here are the categories: 1: cat, 2: dog."
    * `"dense_detection"` (Ferret-v2 stage II): "Please localize visible objects in the image in a raster scan
      order." -> "The objects are: 1: cat <bbox_location0>, 2: dog <bbox_location1>."
    * `"rec"` (needs `refs`): one turn per referring expression of the image, in the order of `refs`: "What is the
      location of {expression} in the image?" (the expression without commas, as Ferret's RefCOCO evaluation asks)
      -> "{expression} <bbox_location0>".
    * `"grounded_caption"` (needs `captions`): one turn per caption of the image: "Briefly describe the image.
      Include the coordinates for each mentioned object." -> the caption with the placeholders of each grounded
      phrase right after it (several boxes of one phrase separated by ", "); captions where nothing is grounded
      are skipped. Phrases come from the caption's own grounding (`"phrases"`) or from category names found in the
      text (see `category_synonyms`).

    Boxes are COCO `[x, y, w, h]` turned into `[x, y, x + w, y + h]` and clamped to the image
    ([`coco_box_to_xyxy`]). With `include_masks`, every box carries its annotation's segmentation as compressed RLE
    (`None` when the annotation has none), in user and assistant turns alike.

    Args:
        instances (`dict` or path): COCO detection JSON with `images` (`id`, `file_name`, `width`, `height`),
            `annotations` (`id`, `image_id`, `category_id`, `bbox`, optional `segmentation`, `iscrowd`) and
            `categories` (`id`, `name`).
        refs (`list` or path, *optional*): RefCOCO-style referring expressions, each `{"ref_id", "ann_id",
            "image_id", "sentences": [{"sent": str} | {"raw": str} | str], "split"?}`.
        captions (`dict`, `list` or path, *optional*): COCO captions JSON (`{"annotations": [...]}`) or a list of
            `{"image_id", "caption", "phrases"?}`; `phrases` entries are `{"span": [start, end]}` or `{"phrase":
            str}`, with `"ann_ids"` (annotation ids) or `"boxes"` (COCO `[x, y, w, h]`).
        tasks: which of [`COCO_TASKS`] to produce.
        include_masks (`bool`): add the `masks` field.
        skip_crowd (`bool`): leave out `iscrowd` annotations.
        max_objects (`int`, *optional*): dense tasks keep the first `max_objects` objects in raster order.
        ref_split (`str`, *optional*): keep only refs of this `split`.
        category_synonyms (`dict`, *optional*): category name -> words that ground it in captions (default
            [`DEFAULT_CATEGORY_SYNONYMS`]; every other category is grounded by its own name).

    Returns:
        `list[dict]` of GRIT samples, images in the order of `instances["images"]`, for each image its tasks in the
        order of `tasks`.
    """
    tasks = list(tasks)
    unknown = set(tasks) - set(COCO_TASKS)
    if unknown:
        raise ValueError(f"Unknown tasks {sorted(unknown)}; expected some of {COCO_TASKS}.")
    instances, refs, captions = _load_json(instances), _load_json(refs), _load_json(captions)
    if isinstance(captions, dict):
        captions = captions.get("annotations", [])
    names = {category["id"]: category["name"] for category in instances["categories"]}
    synonyms = {**DEFAULT_CATEGORY_SYNONYMS, **(category_synonyms or {})}
    images = {image["id"]: image for image in instances["images"]}

    objects_per_image = defaultdict(list)
    all_objects = {}
    for annotation in instances["annotations"]:
        image = images.get(annotation["image_id"])
        if image is None:
            continue
        width, height = int(image["width"]), int(image["height"])
        segmentation = annotation.get("segmentation")
        rle = normalize_rle(segmentation, height, width) if include_masks and segmentation else None
        obj = {
            "ann_id": annotation["id"],
            "category_id": annotation["category_id"],
            "box": coco_box_to_xyxy(annotation["bbox"], width, height),
            "rle": rle,
        }
        all_objects[annotation["id"]] = obj
        if not (skip_crowd and annotation.get("iscrowd")):
            objects_per_image[annotation["image_id"]].append(obj)

    refs_per_image = defaultdict(list)
    for ref in refs or []:
        if ref_split is None or ref.get("split") == ref_split:
            refs_per_image[ref["image_id"]].append(ref)
    captions_per_image = defaultdict(list)
    for caption in captions or []:
        if caption["image_id"] in images:
            image = images[caption["image_id"]]
            captions_per_image[caption["image_id"]].append(
                {**caption, "image_size": (int(image["width"]), int(image["height"]))}
            )

    samples = []
    for image_id, image in images.items():
        image_objects = objects_per_image[image_id]
        objects = [image_objects[i] for i in raster_sorted([obj["box"] for obj in image_objects])]
        dense = objects[:max_objects] if max_objects is not None else objects
        dense_boxes, dense_masks = [obj["box"] for obj in dense], [obj["rle"] for obj in dense]
        for task in tasks:
            if task == "dense_referring" and dense:
                regions = ", ".join(f"{k + 1}: {p}" for k, p in enumerate(_placeholders(len(dense))))
                categories = ", ".join(f"{k + 1}: {names[obj['category_id']]}" for k, obj in enumerate(dense))
                turns = [
                    (DENSE_REFERRING_QUESTION.format(regions=regions), dense_boxes, dense_masks),
                    (DENSE_REFERRING_ANSWER.format(categories=categories), [], []),
                ]
                samples.append(_sample(image, task, turns, include_masks))
            elif task == "dense_detection" and dense:
                placeholders = _placeholders(len(dense))
                listed = ", ".join(
                    f"{k + 1}: {names[obj['category_id']]} {placeholders[k]}" for k, obj in enumerate(dense)
                )
                turns = [
                    (DENSE_DETECTION_QUESTION, [], []),
                    (DENSE_DETECTION_ANSWER.format(objects=listed), dense_boxes, dense_masks),
                ]
                samples.append(_sample(image, task, turns, include_masks))
            elif task == "rec" and refs_per_image.get(image_id):
                turns = []
                for ref in refs_per_image[image_id]:
                    obj = all_objects.get(ref["ann_id"])
                    if obj is None:
                        continue
                    for sentence in ref["sentences"]:
                        expression = _expression(sentence)
                        if expression:
                            turns.append((REC_QUESTION.format(expression=expression), [], []))
                            turns.append((f"{expression} {BBOX_PLACEHOLDER.format(0)}", [obj["box"]], [obj["rle"]]))
                if turns:
                    samples.append(_sample(image, task, turns, include_masks))
            elif task == "grounded_caption" and captions_per_image.get(image_id):
                turns = []
                for caption in captions_per_image[image_id]:
                    answer = _caption_turn(caption, objects_per_image[image_id], names, synonyms)
                    if answer is not None:
                        turns += [(GROUNDED_CAPTION_QUESTION, [], []), answer]
                if turns:
                    samples.append(_sample(image, task, turns, include_masks))
    return samples


__all__ = [
    "BBOX_PLACEHOLDER",
    "COCO_TASKS",
    "DEFAULT_CATEGORY_SYNONYMS",
    "GRIT_FEATURES",
    "coco_box_to_xyxy",
    "coco_to_grit",
    "load_grit",
    "mask_to_rle",
    "normalize_rle",
    "raster_sorted",
    "rle_to_mask",
    "save_grit",
]
