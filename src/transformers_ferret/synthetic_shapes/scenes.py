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
Seeded synthetic scenes: coloured shapes on textured backgrounds, with exact masks and boxes.

Scenes ([`generate_scene`]) are images of random size and aspect ratio (1:4 to 4:1 by default) on a noise, stripe or
gradient background, holding 1-6 objects (a colour x a shape, no class twice in a scene). Each object keeps its exact
visible mask (`[height, width]` bool) and its inclusive pixel box. Optionally a scene holds the *same-bounding-box pair*
of the Ferret paper's Figure 2: a square split along a diagonal into two triangles of different colours, whose boxes
are identical while their masks are disjoint (one half's tight box is one pixel smaller on one side: a diagonal cannot
split a pixel square into two halves with identical pixel bounding boxes).

Everything is drawn from the `numpy` generator it is given, so a scene depends only on that generator's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


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

BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "gradient")
"""Background textures [`generate_scene`] knows."""

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


__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "ShapeObject", "ShapeScene", "diagonal_halves", "generate_scene", "shape_mask"]
