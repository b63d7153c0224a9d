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
Seeded synthetic refer-and-ground data: coloured shapes on textured backgrounds, with exact masks and boxes, turned
into conversations in the GRIT-style training schema of the original Ferret code.

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
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .coordinates import coordinate_text


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 215),
    "pink": (245, 130, 200),
}
"""Object colour names and their RGB values."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring")
"""Object shape names."""

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

BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "gradient")
"""Background textures [`generate_scene`] knows."""

PLACEHOLDER = "<bbox_location{}>"
_PLACEHOLDER_PATTERN = re.compile(r"<bbox_location(\d+)>")
_PAIR_SHAPE = "triangle"
_PLACEMENT_TRIES = 64
_MIN_VISIBLE_FRACTION = 0.5


# ----------------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ShapeObject:
    """One object of a scene: its class, its exact visible mask and its inclusive pixel box."""

    colour: str
    shape: str
    mask: np.ndarray
    """`[height, width]` bool, the pixels this object covers in the image."""
    box: tuple[int, int, int, int]
    """Inclusive pixel box `(x1, y1, x2, y2)`."""
    pair_id: int | None = None
    """Set on the two halves of a same-bounding-box pair."""

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class ShapeScene:
    """An image and the objects drawn on it (in drawing order)."""

    image: Image.Image
    objects: list[ShapeObject]

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def _sample_image_size(rng, min_side, max_side, max_aspect, square_prob, extreme_aspect_prob) -> tuple[int, int]:
    """`(width, height)`: square, exactly `max_aspect` (either way) or a log-uniform aspect in between."""
    max_aspect = min(max_aspect, max_side / min_side)
    draw = rng.random()
    if draw < square_prob:
        aspect = 1.0
    elif draw < square_prob + extreme_aspect_prob:
        aspect = max_aspect ** rng.choice([-1.0, 1.0])
    else:
        aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
    height_low = math.ceil(max(min_side, min_side / aspect))
    height_high = math.floor(min(max_side, max_side / aspect))
    height = int(rng.integers(height_low, max(height_low, height_high) + 1))
    width = int(np.clip(round(height * aspect), min_side, max_side))
    return width, height


def _muted_colour(rng) -> np.ndarray:
    """A greyish colour of middle brightness, so that saturated objects stand out."""
    return rng.uniform(80, 180) + rng.uniform(-25, 25, size=3)


def _background(rng, width: int, height: int, kinds: Sequence[str]) -> np.ndarray:
    """`[height, width, 3]` float32 texture: smooth noise, stripes or a linear gradient."""
    kind = kinds[int(rng.integers(len(kinds)))]
    base, other = _muted_colour(rng), _muted_colour(rng)
    if kind == "noise":
        cells = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(cells).resize((width, height), Image.BILINEAR), dtype=np.float32)
        return (base + (smooth - 127.5) * rng.uniform(0.1, 0.3)).astype(np.float32)
    angle = rng.uniform(0, math.pi)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    along = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == "stripes":
        weight = 0.5 + 0.5 * np.sin(along * (2 * math.pi / rng.uniform(6, 40)) + rng.uniform(0, 2 * math.pi))
        other = base + rng.uniform(-40, 40, size=3)
    elif kind == "gradient":
        weight = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    else:
        raise ValueError(f"Unknown background {kind!r}; expected one of {BACKGROUNDS}.")
    weight = weight.astype(np.float32)[..., None]
    return (base * (1 - weight) + other * weight).astype(np.float32)


def _polygon(num_vertices: int, radii, angle_deg: float, size: int, squash_x: float = 1.0) -> list[tuple[float, float]]:
    """Vertices of a (star) polygon centred in a `size` canvas; `radii` cycle over the vertices."""
    centre = (size - 1) / 2
    angles = np.deg2rad(angle_deg) + np.arange(num_vertices) * (2 * math.pi / num_vertices)
    radius = np.resize(np.asarray(radii, dtype=np.float64), num_vertices) * centre
    xs = centre + squash_x * radius * np.cos(angles)
    ys = centre + radius * np.sin(angles)
    return list(zip(xs.tolist(), ys.tolist()))


def _cross(size: int, angle_deg: float) -> list[tuple[float, float]]:
    """A plus sign with arms a third of the size thick, rotated about the centre."""
    a, b = 1 / 6, 1 / 2  # half arm width and half length, relative to the size
    outline = np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    )
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    rotated = outline @ rotation.T
    points = rotated * ((size - 1) / 2 / np.abs(rotated).max()) + (size - 1) / 2
    return [tuple(point) for point in points.tolist()]


def shape_mask(shape: str, size: int, angle_deg: float = 0.0) -> np.ndarray:
    """
    The `shape` drawn in a `size` x `size` canvas, cropped to its pixels.

    Args:
        shape (`str`): one of [`SHAPES`].
        size (`int`): canvas side in pixels.
        angle_deg (`float`): rotation (circles and rings ignore it).

    Returns:
        `np.ndarray`: bool mask, at most `size` x `size`, with no empty border row or column.
    """
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape in ("circle", "ring"):
        draw.ellipse([0, 0, size - 1, size - 1], fill=1)
        if shape == "ring":
            inset = max(2, round(size * 0.22))
            draw.ellipse([inset, inset, size - 1 - inset, size - 1 - inset], fill=0)
    elif shape == "cross":
        draw.polygon(_cross(size, angle_deg), fill=1)
    else:
        vertices = {
            "square": lambda: _polygon(4, [1.0], 45 + angle_deg, size),
            "diamond": lambda: _polygon(4, [1.0], angle_deg, size, squash_x=0.65),
            "triangle": lambda: _polygon(3, [1.0], -90 + angle_deg, size),
            "hexagon": lambda: _polygon(6, [1.0], angle_deg, size),
            "star": lambda: _polygon(10, [1.0, 0.45], -90 + angle_deg, size),
        }
        if shape not in vertices:
            raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")
        draw.polygon(vertices[shape](), fill=1)
    mask = np.asarray(canvas, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def diagonal_halves(size: int, anti_diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint triangle masks covering a `size` x `size` square, split along a diagonal."""
    rows, cols = np.ogrid[:size, :size]
    first = (cols + rows <= size - 1) if anti_diagonal else (cols >= rows)
    return first, ~first


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive tight box of a mask, or `None` when it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _overlap_fractions(candidates: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """`[C, B]`: intersection area over the smaller of the two inclusive boxes' areas."""
    low = np.maximum(candidates[:, None, :2], boxes[None, :, :2])
    high = np.minimum(candidates[:, None, 2:], boxes[None, :, 2:])
    intersection = np.prod(np.clip(high - low + 1, 0, None), axis=-1)
    areas_c = (candidates[:, 2] - candidates[:, 0] + 1) * (candidates[:, 3] - candidates[:, 1] + 1)
    areas_b = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return intersection / np.minimum(areas_c[:, None], areas_b[None, :])


class _SceneCanvas:
    """Places object masks on an image without exceeding the allowed overlap; later objects occlude earlier ones."""

    def __init__(self, width: int, height: int, max_overlap: float):
        self.width, self.height, self.max_overlap = width, height, max_overlap
        self.objects: list[ShapeObject] = []

    def _allowed_overlap(self) -> np.ndarray:
        # pair halves must keep their identical boxes, so nothing may cover them
        return np.array([0.0 if obj.pair_id is not None else self.max_overlap for obj in self.objects])

    def _keeps_earlier_visible(self, local: np.ndarray, x: int, y: int) -> bool:
        window = (slice(y, y + local.shape[0]), slice(x, x + local.shape[1]))
        for obj in self.objects:
            visible = obj.mask.sum()
            lost = np.count_nonzero(obj.mask[window] & local)
            if lost and visible - lost < _MIN_VISIBLE_FRACTION * visible:
                return False
        return True

    def find_position(self, rng, local: np.ndarray) -> tuple[int, int] | None:
        """Top-left `(x, y)` for `local` (a cropped mask), or `None` if no tried position is free enough."""
        obj_h, obj_w = local.shape
        if obj_h > self.height or obj_w > self.width:
            return None
        xs = rng.integers(0, self.width - obj_w + 1, size=_PLACEMENT_TRIES)
        ys = rng.integers(0, self.height - obj_h + 1, size=_PLACEMENT_TRIES)
        if not self.objects:
            return int(xs[0]), int(ys[0])
        candidates = np.stack([xs, ys, xs + obj_w - 1, ys + obj_h - 1], axis=1)
        boxes = np.array([obj.box for obj in self.objects])
        free = (_overlap_fractions(candidates, boxes) <= self._allowed_overlap()[None, :] + 1e-9).all(axis=1)
        for index in np.flatnonzero(free):
            x, y = int(xs[index]), int(ys[index])
            if self.max_overlap == 0 or self._keeps_earlier_visible(local, x, y):
                return x, y
        return None

    def add(self, local: np.ndarray, x: int, y: int, colour: str, shape: str, pair_id=None, box=None) -> None:
        """Adds an object whose cropped mask `local` has its top-left pixel at `(x, y)`."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        mask[y : y + local.shape[0], x : x + local.shape[1]] = local
        for obj in self.objects:
            if obj.pair_id is None and obj.mask[y : y + local.shape[0], x : x + local.shape[1]].any():
                obj.mask &= ~mask
                obj.box = _box_of(obj.mask)
        self.objects.append(ShapeObject(colour, shape, mask, box or _box_of(mask), pair_id))


def _sample_object_size(rng, object_size: tuple[int, int], width: int, height: int, max_object_fraction: float) -> int:
    """Log-uniform side in pixels, capped by a fraction of the image's short side."""
    high = max(object_size[0], min(object_size[1], int(min(width, height) * max_object_fraction)))
    return int(round(math.exp(rng.uniform(math.log(object_size[0]), math.log(high)))))


def _paint(canvas: np.ndarray, objects: list[ShapeObject], rng, colour_jitter: int) -> None:
    """Fills each object's box window where its mask is set, in drawing order."""
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        colour = np.clip(np.asarray(COLOURS[obj.colour]) + rng.integers(-colour_jitter, colour_jitter + 1, 3), 0, 255)
        window = canvas[y1 : y2 + 1, x1 : x2 + 1]
        window[obj.mask[y1 : y2 + 1, x1 : x2 + 1]] = colour


def generate_scene(
    rng: np.random.Generator,
    *,
    min_side: int = 96,
    max_side: int = 448,
    max_aspect: float = 4.0,
    square_prob: float = 0.2,
    extreme_aspect_prob: float = 0.1,
    num_objects: tuple[int, int] = (1, 6),
    object_size: tuple[int, int] = (12, 96),
    max_object_fraction: float = 0.5,
    max_overlap: float = 0.0,
    max_rotation: float = 15.0,
    colours: Sequence[str] = tuple(COLOURS),
    shapes: Sequence[str] = SHAPES,
    backgrounds: Sequence[str] = BACKGROUNDS,
    colour_jitter: int = 12,
    noise: int = 6,
    same_bbox_pair: bool = False,
    image_size: tuple[int, int] | None = None,
) -> ShapeScene:
    """
    Draws one scene.

    Args:
        rng (`np.random.Generator`): the only source of randomness.
        min_side, max_side (`int`): range of each image side in pixels.
        max_aspect (`float`): widest aspect ratio (width/height or height/width); capped by `max_side / min_side`.
        square_prob, extreme_aspect_prob (`float`): chance of a square image and of an image at exactly
            `max_aspect` (1:4 or 4:1 by default); otherwise the aspect ratio is log-uniform.
        num_objects (`tuple[int, int]`): inclusive range of the number of objects (the same-bounding-box pair counts
            as two); capped by the number of classes. Objects that find no free place are dropped, so a crowded scene
            may hold fewer.
        object_size (`tuple[int, int]`): range of the drawing canvas side in pixels (log-uniform), capped to
            `max_object_fraction` of the short image side: large images get comparatively small objects.
        max_overlap (`float`): largest allowed intersection of two object boxes, as a fraction of the smaller box;
            0 keeps boxes disjoint. Later objects occlude earlier ones (masks and boxes are updated; an earlier
            object keeps at least half its pixels).
        max_rotation (`float`): polygons are rotated by up to this many degrees either way.
        colours, shapes (sequences of `str`): the vocabulary; keys of [`COLOURS`] and members of [`SHAPES`].
        backgrounds (sequence of `str`): textures to choose from ([`BACKGROUNDS`]).
        colour_jitter (`int`): per-object RGB offset range; noise (`int`): per-pixel noise range over the image.
        same_bbox_pair (`bool`): add the square split into two differently coloured triangles (drawn first, never
            covered, needs 2 colours).
        image_size (`tuple[int, int]`, *optional*): fixed `(width, height)` instead of a random size.

    Returns:
        [`ShapeScene`].
    """
    width, height = image_size or _sample_image_size(
        rng, min_side, max_side, max_aspect, square_prob, extreme_aspect_prob
    )
    classes = [(colour, shape) for colour in colours for shape in shapes]
    total = int(rng.integers(num_objects[0], num_objects[1] + 1))
    canvas = _SceneCanvas(width, height, max_overlap)
    if same_bbox_pair:
        pair_colours = _place_same_bbox_pair(rng, canvas, colours, object_size, max_object_fraction)
        classes = [(c, s) for c, s in classes if not (s == _PAIR_SHAPE and c in pair_colours)]
        total -= 2
    order = rng.permutation(len(classes))[: max(total, 0)]
    for colour, shape in (classes[index] for index in order):
        side = _sample_object_size(rng, object_size, width, height, max_object_fraction)
        local = shape_mask(shape, side, rng.uniform(-max_rotation, max_rotation))
        position = canvas.find_position(rng, local)
        if position is not None:
            canvas.add(local, *position, colour, shape)
    pixels = _background(rng, width, height, backgrounds)
    _paint(pixels, canvas.objects, rng, colour_jitter)
    pixels += rng.integers(-noise, noise + 1, size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return ShapeScene(image=image, objects=canvas.objects)


def _place_same_bbox_pair(rng, canvas: _SceneCanvas, colours, object_size, max_object_fraction) -> tuple[str, str]:
    """Adds the two diagonal halves of a square (identical boxes, disjoint masks); returns their colours."""
    if len(colours) < 2:
        raise ValueError("The same-bounding-box pair needs at least two colours.")
    first, second = (colours[i] for i in rng.choice(len(colours), size=2, replace=False))
    low = (max(object_size[0], 16), max(object_size[1], 16))
    side = _sample_object_size(rng, low, canvas.width, canvas.height, max_object_fraction)
    side = min(side, canvas.width, canvas.height)
    half_a, half_b = diagonal_halves(side, anti_diagonal=bool(rng.integers(2)))
    x, y = canvas.find_position(rng, np.ones((side, side), dtype=bool))  # the canvas is empty: always placed
    box = (x, y, x + side - 1, y + side - 1)
    canvas.add(half_a, x, y, first, _PAIR_SHAPE, pair_id=0, box=box)
    canvas.add(half_b, x, y, second, _PAIR_SHAPE, pair_id=0, box=box)
    return first, second


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


def _encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a `[h, w]` bool mask, with `counts` as `str` (JSON-ready)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:  # pragma: no cover - dev dependency
        message = "Writing masks needs pycocotools (`pip install pycocotools`), or pass with_masks=False."
        raise ImportError(message) from error
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict) -> np.ndarray:
    """`[h, w]` bool mask of a COCO RLE dict (`counts` as `str` or `bytes`)."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    with warnings.catch_warnings():  # pycocotools' numpy-2 `copy=` deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)


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
            self._rles[id(obj)] = _encode_mask(obj.mask)
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
                regions.append(decode_mask(turn_masks[k]))
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
    "BACKGROUNDS",
    "COLOURS",
    "REGION_TYPES",
    "SHAPES",
    "TASKS",
    "ShapeObject",
    "ShapeScene",
    "decode_mask",
    "diagonal_halves",
    "generate_scene",
    "make_sample",
    "make_samples",
    "raster_order",
    "region_inputs",
    "render_conversation",
    "shape_mask",
    "to_dataset",
    "with_article",
    "write_grit_json",
]
