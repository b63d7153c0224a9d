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
Seeded synthetic refer-and-ground conversations about [`generate_scene`]'s scenes, in the GRIT training schema of
the original Ferret code (the rows `transformers_ferret.training` reads).

Scenes ([`generate_scene`]) are images of random size and aspect ratio (1:4 to 4:1 by default) on a noise, stripe or
gradient background, holding 1-6 objects (a colour x a shape, no class twice in a scene). Each object keeps its exact
visible mask (`[height, width]` bool) and its pixel box. Optionally a scene holds the *same-bounding-box pair* of the
Ferret paper's Figure 2: a square split along a diagonal into two triangles of different colours, whose boxes are
identical while their masks are disjoint.

Samples ([`make_sample`], [`make_samples`]) follow the schema of the original training data:

* `image` (a PIL image; a file name once written by [`write_grit_json`]), `image_w`, `image_h`;
* `conversations`: `[{"from": "human" | "gpt", "value": str}, ...]`, alternating and starting with `"human"`; the
  first human turn starts with `"<image>\\n"`;
* `box_x1y1x2y2`: one list per turn of pixel boxes `[x1, y1, x2, y2]`, referenced in that turn's text by the
  placeholders `<bbox_location0>`, `<bbox_location1>`, ... (index into the turn's list);
* `masks`: aligned like the boxes, the referenced object's mask as a COCO RLE dict (`size=[h, w]`, `counts` str);
* `region_types`: aligned like the boxes, how a user turn presents the region: `"point"`, `"box"` or `"free-form"`
  (always `"box"` in gpt turns, whose boxes are plain coordinate text);
* extra keys the original loader ignores: `id`, `tasks` (the task of each question/answer pair) and `objects` (every
  object of the scene: `name`, `colour`, `shape`, `box`).

Conventions:

* Boxes are *inclusive* pixel boxes (columns `x1..x2`, rows `y1..y2`), as in `region_utils`, so they always lie inside
  the image and `int(x2 * 1000 / width) <= 999`.
* A *point* region is stored as the degenerate box `[x, y, x, y]` (a pixel of the object's mask near its centre).
* Every referenced box keeps its object's mask, whatever the region type, so a consumer can build any region: a box
  mask for `"box"`, the mask for `"free-form"`, the 11x11 window for `"point"`. Changing a `"free-form"` entry to
  `"box"` gives the box-only variant of the same question (used for the same-bounding-box ablation).
* Boxes of ordinary objects are the tight boxes of their masks. The two halves of a same-bounding-box pair both get the
  square's box; one half's tight box is one pixel smaller on one side (a diagonal cannot split a pixel square into two
  halves with identical pixel bounding boxes).

Everything is drawn from `numpy.random.default_rng([seed, index])`, so a sample depends only on its seed, its index
and the arguments: same seed, same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..coordinates import coordinate_text
from .scenes import COLOURS, SHAPES, ShapeObject, ShapeScene, generate_scene


REGION_TYPES: tuple[str, ...] = ("point", "box", "free-form")
"""How a referring question presents its region."""

TASKS: tuple[str, ...] = (
    "roc_open",
    "roc_choice",
    "rec",
    "grounded_description",
    "dense_detection",
    "dense_referring",
    "same_bbox",
)
"""Tasks [`make_sample`] knows."""

PLACEHOLDER = "<bbox_location{}>"
_PLACEHOLDER_PATTERN = re.compile(r"<bbox_location(\d+)>")


# ----------------------------------------------------------------------------------------------------------------
# Conversations
# ----------------------------------------------------------------------------------------------------------------

_ROC_QUESTIONS = (
    "What is the object {region}?",
    "What is the class of the object {region}?",
    "What kind of object is {region}?",
)
_CHOICE_QUESTION = "Is the object {region} {first} or {second}?"
_REC_QUESTIONS = ("Where is the {name}?", "What is the location of the {name} in the image?")
_DESCRIPTION_QUESTIONS = (
    "Describe the image with the locations of the objects.",
    "What objects are in the image? Include the coordinates for each mentioned object.",
)
_DETECTION_QUESTION = "Please localize visible objects in the image in a raster scan order."
_DENSE_REFERRING_QUESTION = "Please classify the objects in the following locations. {regions}."


def with_article(name: str) -> str:
    """`"a red circle"`, `"an orange star"`."""
    return ("an " if name[0] in "aeiou" else "a ") + name


def raster_order(objects: Sequence[ShapeObject]) -> list[ShapeObject]:
    """Objects sorted top to bottom, then left to right, by the centre of their box."""
    return sorted(objects, key=lambda obj: (obj.box[1] + obj.box[3], obj.box[0] + obj.box[2]))


def _rle(mask: np.ndarray) -> dict:
    """The object's mask as a GRIT row stores it (COCO RLE; needs the `train` extra's pycocotools)."""
    from ..training.grit import mask_to_rle

    return mask_to_rle(mask)


def _mask(rle: dict) -> np.ndarray:
    from ..training.grit import rle_to_mask

    return rle_to_mask(rle)


def _point_in(obj: ShapeObject, rng, nearest: int = 16) -> list[int]:
    """`[x, y, x, y]`: one of the `nearest` mask pixels closest to the box centre, at random."""
    x1, y1, x2, y2 = obj.box
    rows, cols = np.nonzero(obj.mask[y1 : y2 + 1, x1 : x2 + 1])
    distances = (cols - (x2 - x1) / 2) ** 2 + (rows - (y2 - y1) / 2) ** 2
    closest = np.argpartition(distances, min(nearest, distances.size) - 1)[:nearest]
    pick = closest[int(rng.integers(closest.size))]
    x, y = int(cols[pick]) + x1, int(rows[pick]) + y1
    return [x, y, x, y]


class _ConversationBuilder:
    """Accumulates question/answer turns about one scene in the GRIT schema."""

    def __init__(self, scene: ShapeScene, rng, region_types: Sequence[str], with_masks: bool, class_names: list[str]):
        self.scene, self.rng, self.region_types, self.with_masks = scene, rng, tuple(region_types), with_masks
        self.class_names = class_names
        self.turns: list[dict] = []
        self.tasks: list[str] = []
        self.asked: set[int] = set()
        self._rles: dict[int, dict] = {}

    # -- references -------------------------------------------------------------------------------------------
    def _rle(self, obj: ShapeObject) -> dict:
        if id(obj) not in self._rles:
            self._rles[id(obj)] = _rle(obj.mask)
        return self._rles[id(obj)]

    def _region_type_for(self, obj: ShapeObject) -> str:
        allowed = [kind for kind in self.region_types if not (obj.pair_id is not None and kind == "box")]
        allowed = allowed or ["free-form"]  # a box cannot tell the two halves of a pair apart
        return allowed[int(self.rng.integers(len(allowed)))]

    def _reference(self, obj: ShapeObject, region_type: str) -> dict:
        box = _point_in(obj, self.rng) if region_type == "point" else list(obj.box)
        return {"box": box, "mask": self._rle(obj) if self.with_masks else None, "type": region_type}

    def _pick(self, candidates: Sequence[ShapeObject]) -> ShapeObject:
        """A random candidate not asked about yet in this conversation (any candidate once all were asked)."""
        fresh = [obj for obj in candidates if id(obj) not in self.asked] or list(candidates)
        obj = fresh[int(self.rng.integers(len(fresh)))]
        self.asked.add(id(obj))
        return obj

    def _choose(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def add_turn(self, task: str, question: str, answer: str, question_refs=(), answer_refs=()) -> None:
        self.tasks.append(task)
        self.turns.append({"from": "human", "value": question, "refs": list(question_refs)})
        self.turns.append({"from": "gpt", "value": answer, "refs": list(answer_refs)})

    # -- tasks ------------------------------------------------------------------------------------------------
    def roc_open(self, candidates=None, task: str = "roc_open") -> None:
        obj = self._pick(candidates or self.scene.objects)
        question = self._choose(_ROC_QUESTIONS).format(region=PLACEHOLDER.format(0))
        self.add_turn(task, question, with_article(obj.name), [self._reference(obj, self._region_type_for(obj))])

    def roc_choice(self) -> None:
        obj = self._pick(self.scene.objects)
        present = {o.name for o in self.scene.objects}
        names = [name for name in self.class_names if name not in present] or [n for n in present if n != obj.name]
        if obj.pair_id is not None:  # the other half is the hard negative
            names = [o.name for o in self.scene.objects if o.pair_id == obj.pair_id and o is not obj]
        choices = [obj.name, self._choose(names)]
        if self.rng.integers(2):
            choices.reverse()
        question = _CHOICE_QUESTION.format(
            region=PLACEHOLDER.format(0), first=with_article(choices[0]), second=with_article(choices[1])
        )
        reference = self._reference(obj, self._region_type_for(obj))
        self.add_turn("roc_choice", question, with_article(obj.name), [reference])

    def rec(self) -> None:
        obj = self._pick(self.scene.objects)
        question = self._choose(_REC_QUESTIONS).format(name=obj.name)
        answer = f"The {obj.name} {PLACEHOLDER.format(0)}."
        self.add_turn("rec", question, answer, answer_refs=[self._reference(obj, "box")])

    def grounded_description(self) -> None:
        objects = raster_order(self.scene.objects)
        listed = ", ".join(f"{with_article(obj.name)} {PLACEHOLDER.format(k)}" for k, obj in enumerate(objects))
        count = "There is 1 object" if len(objects) == 1 else f"There are {len(objects)} objects"
        answer = f"{count}: {listed}."
        refs = [self._reference(obj, "box") for obj in objects]
        self.add_turn("grounded_description", self._choose(_DESCRIPTION_QUESTIONS), answer, answer_refs=refs)

    def dense_detection(self) -> None:
        objects = raster_order(self.scene.objects)
        listed = ", ".join(f"{k + 1}: {obj.name} {PLACEHOLDER.format(k)}" for k, obj in enumerate(objects))
        refs = [self._reference(obj, "box") for obj in objects]
        self.add_turn("dense_detection", _DETECTION_QUESTION, f"The objects are: {listed}.", answer_refs=refs)

    def dense_referring(self) -> None:
        objects = raster_order(self.scene.objects)
        regions = ", ".join(f"{k + 1}: {PLACEHOLDER.format(k)}" for k in range(len(objects)))
        answer = "Here are the categories: " + ", ".join(f"{k + 1}: {o.name}" for k, o in enumerate(objects)) + "."
        refs = [self._reference(obj, self._region_type_for(obj)) for obj in objects]
        self.add_turn("dense_referring", _DENSE_REFERRING_QUESTION.format(regions=regions), answer, refs)

    def same_bbox(self) -> None:
        halves = [obj for obj in self.scene.objects if obj.pair_id is not None]
        obj = self._pick(halves)
        question = self._choose(_ROC_QUESTIONS).format(region=PLACEHOLDER.format(0))
        self.add_turn("same_bbox", question, with_article(obj.name), [self._reference(obj, "free-form")])

    # -- output -----------------------------------------------------------------------------------------------
    def to_sample(self, sample_id: str, image_token: str | None) -> dict:
        conversations = [{"from": turn["from"], "value": turn["value"]} for turn in self.turns]
        if image_token:
            conversations[0]["value"] = f"{image_token}\n{conversations[0]['value']}"
        sample = {
            "id": sample_id,
            "image": self.scene.image,
            "image_w": self.scene.width,
            "image_h": self.scene.height,
            "conversations": conversations,
            "box_x1y1x2y2": [[ref["box"] for ref in turn["refs"]] for turn in self.turns],
            "region_types": [
                [ref["type"] if turn["from"] == "human" else "box" for ref in turn["refs"]] for turn in self.turns
            ],
            "tasks": list(self.tasks),
            "objects": [
                {"name": obj.name, "colour": obj.colour, "shape": obj.shape, "box": list(obj.box)}
                for obj in self.scene.objects
            ],
        }
        if self.with_masks:
            sample["masks"] = [[ref["mask"] for ref in turn["refs"]] for turn in self.turns]
        return sample


_WHOLE_IMAGE_TASKS = ("grounded_description", "dense_detection", "dense_referring")


def _task_sequence(rng, tasks, turns_per_image: int) -> list[str]:
    """
    `turns_per_image` tasks drawn from a sequence (uniform) or a `{task: weight}` mapping. A whole-image task (which
    lists every object) is drawn at most once while other tasks remain, and whole-image turns come last, so that
    their answers cannot give away the answers of per-object turns.
    """
    names = list(tasks)
    unknown = set(names) - set(TASKS)
    if unknown or not names:
        raise ValueError(f"Unknown or no tasks {sorted(unknown)}; expected some of {TASKS}.")
    weights = np.array([tasks[name] for name in names] if isinstance(tasks, Mapping) else [1.0] * len(names))
    drawn, available = [], weights > 0
    for _ in range(turns_per_image):
        if not available.any():
            available = weights > 0
        probabilities = np.where(available, weights, 0.0)
        index = int(rng.choice(len(names), p=probabilities / probabilities.sum()))
        drawn.append(names[index])
        if names[index] in _WHOLE_IMAGE_TASKS:
            available[index] = False
    return [task for task in drawn if task not in _WHOLE_IMAGE_TASKS] + [
        task for task in drawn if task in _WHOLE_IMAGE_TASKS
    ]


def make_sample(
    index: int,
    *,
    seed: int = 0,
    tasks: Sequence[str] | Mapping[str, float] = TASKS,
    turns_per_image: int = 1,
    region_types: Sequence[str] = REGION_TYPES,
    with_masks: bool = True,
    image_token: str | None = "<image>",
    **scene_kwargs,
) -> dict:
    """
    One image and a conversation of `turns_per_image` question/answer pairs about it.

    Each turn's task is drawn from `tasks`:

    * `"roc_open"`: "What is the object <bbox_location0>?" -> "a red triangle" (region: point, box or free-form,
      drawn from `region_types`);
    * `"roc_choice"`: "Is the object <bbox_location0> a red triangle or a blue star?" -> "a red triangle" (the true
      class first or second at random; the negative is a class absent from the scene, or the other half of a
      same-bounding-box pair);
    * `"rec"`: "Where is the blue star?" -> "The blue star <bbox_location0>.";
    * `"grounded_description"`: -> "There are 2 objects: a red circle <bbox_location0>, a blue star <bbox_location1>.";
    * `"dense_detection"`: "Please localize visible objects in the image in a raster scan order." ->
      "The objects are: 1: red circle <bbox_location0>, 2: blue star <bbox_location1>.";
    * `"dense_referring"`: "Please classify the objects in the following locations. 1: <bbox_location0>, ..." ->
      "Here are the categories: 1: red circle, 2: blue star.";
    * `"same_bbox"`: the scene gets the same-bounding-box pair and the question asks about one half with its
      free-form mask (a second such turn asks about the other half).

    Listings are in raster order ([`raster_order`]). Per-object questions avoid asking about an object twice until
    all were asked; a whole-image task appears at most once while other tasks remain, and after the per-object
    turns. Halves of a pair are never referred to by a box region (it could not tell them apart).

    Args:
        index (`int`): sample index; with `seed` it fixes every random draw.
        seed (`int`): dataset seed.
        tasks: task names (uniform) or `{task: weight}`.
        turns_per_image (`int`): question/answer pairs in the conversation.
        region_types (sequence of `str`): region presentations the referring tasks draw from.
        with_masks (`bool`): add the `masks` field (needs pycocotools).
        image_token (`str`, *optional*): put `"{image_token}\\n"` before the first question; `None` leaves it out.
        **scene_kwargs: passed to [`generate_scene`].

    Returns:
        `dict` in the GRIT schema described in the module docstring.
    """
    if turns_per_image < 1:
        raise ValueError("turns_per_image must be at least 1.")
    rng = np.random.default_rng([seed, index])
    turn_tasks = _task_sequence(rng, tasks, turns_per_image)
    same_bbox_pair = scene_kwargs.pop("same_bbox_pair", False) or "same_bbox" in turn_tasks
    scene = generate_scene(rng, same_bbox_pair=same_bbox_pair, **scene_kwargs)
    if not scene.objects:
        raise ValueError("The scene holds no object: check `num_objects` and `object_size` against the image size.")
    class_names = [
        f"{colour} {shape}"
        for colour in scene_kwargs.get("colours", COLOURS)
        for shape in scene_kwargs.get("shapes", SHAPES)
    ]
    builder = _ConversationBuilder(scene, rng, region_types, with_masks, class_names)
    for task in turn_tasks:
        getattr(builder, task)()
    return builder.to_sample(f"synthetic-shapes-{seed}-{index}", image_token)


def make_samples(num_images: int, *, seed: int = 0, start: int = 0, **kwargs) -> list[dict]:
    """Samples `start .. start + num_images - 1` of the dataset with this `seed`; `kwargs` go to [`make_sample`]."""
    return [make_sample(index, seed=seed, **kwargs) for index in range(start, start + num_images)]


# ----------------------------------------------------------------------------------------------------------------
# Rendering and export
# ----------------------------------------------------------------------------------------------------------------


def render_conversation(sample: dict, region_token: str | None = "<region_fea>") -> list[dict]:
    """
    The conversation with every placeholder replaced by its coordinate text, as the original training code writes it:
    in human turns followed by `" " + region_token` (left out when `None`), in gpt turns plain box text.
    """
    rendered = []
    for turn, boxes, types in zip(sample["conversations"], sample["box_x1y1x2y2"], sample["region_types"]):
        suffix = f" {region_token}" if region_token and turn["from"] == "human" else ""

        def replace(match, boxes=boxes, types=types, suffix=suffix):
            k = int(match.group(1))
            values = boxes[k][:2] if types[k] == "point" else boxes[k]
            return coordinate_text(values, sample["image_w"], sample["image_h"]) + suffix

        rendered.append({"from": turn["from"], "value": _PLACEHOLDER_PATTERN.sub(replace, turn["value"])})
    return rendered


def region_inputs(sample: dict) -> list:
    """
    The referred regions of the human turns, in order of appearance, in the form `region_utils.normalize_region`
    takes: `[x, y]` for a point, `[x1, y1, x2, y2]` for a box, a `[h, w]` bool mask for a free-form region (its box
    when the sample has no masks).
    """
    regions = []
    masks = sample.get("masks") or [[None] * len(boxes) for boxes in sample["box_x1y1x2y2"]]
    turns = zip(sample["conversations"], sample["box_x1y1x2y2"], sample["region_types"], masks)
    for turn, boxes, types, turn_masks in turns:
        if turn["from"] != "human":
            continue
        order = [int(k) for k in _PLACEHOLDER_PATTERN.findall(turn["value"])]
        for k in order:
            if types[k] == "point":
                regions.append(list(boxes[k][:2]))
            elif types[k] == "box" or turn_masks[k] is None:
                regions.append(list(boxes[k]))
            else:
                regions.append(_mask(turn_masks[k]))
    return regions


def to_dataset(samples: Sequence[dict]):
    """A `datasets.Dataset` of the samples, images as `datasets.Image` (PIL on access)."""
    import datasets

    integer, text = datasets.Value("int32"), datasets.Value("string")
    all_features = {
        "id": text,
        "image": datasets.Image(),
        "image_w": integer,
        "image_h": integer,
        "conversations": datasets.List({"from": text, "value": text}),
        "box_x1y1x2y2": datasets.List(datasets.List(datasets.List(integer))),
        "masks": datasets.List(datasets.List({"size": datasets.List(integer), "counts": text})),
        "region_types": datasets.List(datasets.List(text)),
        "tasks": datasets.List(text),
        "objects": datasets.List({"name": text, "colour": text, "shape": text, "box": datasets.List(integer)}),
    }
    keys = [key for key in all_features if key in samples[0]]
    features = datasets.Features({key: all_features[key] for key in keys})
    return datasets.Dataset.from_list([{key: sample[key] for key in keys} for sample in samples], features=features)


def write_grit_json(
    samples: Sequence[dict], folder, image_folder: str = "images", json_name: str = "annotations.json"
) -> Path:
    """
    Writes each image as `{folder}/{image_folder}/{id}.png` and the samples, with `image` set to that file name, as a
    JSON list in `{folder}/{json_name}` (the layout the original loader reads with `image_folder`). Returns the JSON
    path.
    """
    folder = Path(folder)
    (folder / image_folder).mkdir(parents=True, exist_ok=True)
    records = []
    for sample in samples:
        file_name = f"{sample['id']}.png"
        sample["image"].save(folder / image_folder / file_name)
        records.append({**sample, "image": file_name})
    json_path = folder / json_name
    json_path.write_text(json.dumps(records))
    return json_path


__all__ = [
    "PLACEHOLDER",
    "REGION_TYPES",
    "TASKS",
    "make_sample",
    "make_samples",
    "raster_order",
    "region_inputs",
    "render_conversation",
    "to_dataset",
    "with_article",
    "write_grit_json",
]
