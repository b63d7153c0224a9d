# Copyright 2026 The transformers-ferret authors.
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
"""Drawing Ferret's inputs and outputs on the image: referred regions and grounded boxes with their phrases.

Everything is drawn as an outline, never as a fill, so the pixels inside a region or a box keep their colour and an
answer to "what colour is <region>?" can be checked against the picture:

* a box (referred region or grounded answer) as a rectangle on its edge pixels, `width` pixels thick, inwards;
* a free-form mask as its contour: a band `width` pixels thick just outside the mask, no mask pixel is touched;
* a point as a small ring around it, its centre left untouched.

Each line has a 1-pixel black border on both sides, so it stays visible on an object of its own colour. Labels are
placed outside the regions and boxes (above, else below, else beside them) and off each other, when the image has
room for them there.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]
HALO = (0, 0, 0)
POINT_RADIUS = 6
MAX_LABEL_STEPS = 4  # how many label heights a label may move away from its region or box


def _rectangles_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One step of 8-neighbour dilation of a bool array."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    grown = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


class _Annotator:
    """A copy of the image to draw on; outlines first, labels last so they can avoid every outline and each other."""

    def __init__(self, image: Image.Image, width: int, scale: int = 1):
        self.canvas = ImageOps.exif_transpose(image).convert("RGB")  # coordinates refer to the image as displayed
        self.scale = max(int(scale), 1)
        if self.scale > 1:
            size = (self.canvas.width * self.scale, self.canvas.height * self.scale)
            self.canvas = self.canvas.resize(size, Image.Resampling.NEAREST)
        self.draw = ImageDraw.Draw(self.canvas)
        # Pillow's default font (10 px); a scaled picture gets a larger one, but less than `scale` times larger
        self.font = ImageFont.load_default() if self.scale == 1 else ImageFont.load_default(size=round(10 * scale**0.5))
        self.width = max(int(width), 1)
        self.shapes: list[tuple[int, int, int, int]] = []  # extent of every outline drawn (labels keep off them)
        self.labels: list[tuple[tuple[int, int, int, int], str, tuple[int, int, int]]] = []
        self.placed_labels: list[tuple[str, tuple[int, int, int, int]]] = []  # (text, rectangle) as drawn

    # ---- outlines ---------------------------------------------------------------------------------------------
    def box(self, box, colour) -> None:
        x1, x2 = sorted(int(round(float(value))) for value in (box[0], box[2]))
        y1, y2 = sorted(int(round(float(value))) for value in (box[1], box[3]))
        s, w = self.scale, self.width
        x1, y1, x2, y2 = x1 * s, y1 * s, (x2 + 1) * s - 1, (y2 + 1) * s - 1  # the pixels' blocks in the scaled image
        self.draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=HALO, width=1)
        if x2 - x1 >= 2 * w and y2 - y1 >= 2 * w:
            self.draw.rectangle((x1 + w, y1 + w, x2 - w, y2 - w), outline=HALO, width=1)
        self.draw.rectangle((x1, y1, x2, y2), outline=colour, width=w)
        self.shapes.append((x1 - 1, y1 - 1, x2 + 1, y2 + 1))

    def mask(self, mask: np.ndarray, colour) -> tuple[int, int, int, int] | None:
        """The contour of `mask`, outside it; returns the outline's extent (None for an empty mask)."""
        mask = mask > 0
        if self.scale > 1:
            mask = mask.repeat(self.scale, 0).repeat(self.scale, 1)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return None
        margin = self.width + 2
        top, left = max(int(ys.min()) - margin, 0), max(int(xs.min()) - margin, 0)
        bottom, right = min(int(ys.max()) + margin + 1, mask.shape[0]), min(int(xs.max()) + margin + 1, mask.shape[1])
        inside = mask[top:bottom, left:right]  # only the mask's neighbourhood is dilated
        rings, grown = [], inside
        for _ in range(self.width + 2):
            larger = _dilate(grown)
            rings.append(larger & ~grown)
            grown = larger
        pixels = np.array(self.canvas)
        window = pixels[top:bottom, left:right]
        window[rings[0] | rings[-1]] = HALO
        window[np.logical_or.reduce(rings[1:-1])] = colour
        self.canvas.paste(Image.fromarray(pixels))
        self.draw = ImageDraw.Draw(self.canvas)
        extent = (left, top, right - 1, bottom - 1)
        self.shapes.append(extent)
        return extent

    def point(self, point, colour) -> None:
        x, y = (int(round(float(value))) * self.scale + self.scale // 2 for value in point)
        w = self.width
        r = max(POINT_RADIUS, 2 * w + 2)  # the ring leaves the point and its neighbours untouched
        self.draw.ellipse((x - r - 1, y - r - 1, x + r + 1, y + r + 1), outline=HALO, width=1)
        self.draw.ellipse((x - r + w, y - r + w, x + r - w, y + r - w), outline=HALO, width=1)
        self.draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=w)
        self.shapes.append((x - r - 1, y - r - 1, x + r + 1, y + r + 1))

    def region(self, region, colour, label: str) -> None:
        array = np.asarray(region)
        if array.ndim == 2:
            extent = self.mask(array, colour)
            target = extent if extent is not None else (0, 0, 0, 0)
        elif array.shape == (2,):
            self.point(array, colour)
            target = self.shapes[-1]
        else:
            self.box(array, colour)
            target = self.shapes[-1]
        self.labels.append((target, label, colour))

    # ---- labels -----------------------------------------------------------------------------------------------
    def finish(self) -> Image.Image:
        placed: list[tuple[int, int, int, int]] = []
        for target, text, colour in self.labels:
            left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font)
            label_w, label_h = right - left + 2, bottom - top + 2  # text plus a 1-pixel background margin
            x1, y1, x2, y2 = target
            canvas_w, canvas_h = self.canvas.size
            step = label_h + 1
            candidates = []
            for k in range(MAX_LABEL_STEPS):  # nearest first: above, below, then beside
                candidates += [
                    (x1, y1 - (k + 1) * step),
                    (x1, y2 + 2 + k * step),
                    (x2 - label_w + 1, y1 - (k + 1) * step),
                    (x2 - label_w + 1, y2 + 2 + k * step),
                    (x2 + 2, y1 + k * step),
                    (x1 - label_w - 1, y1 + k * step),
                ]
            chosen = None
            # Off every outline and label; failing that, off the other labels and this label's own region.
            for keep_off in (self.shapes + placed, [target] + placed):
                for x, y in candidates:
                    x = min(max(x, 0), canvas_w - label_w)
                    rect = (x, y, x + label_w - 1, y + label_h - 1)
                    if y >= 0 and rect[3] < canvas_h and not any(_rectangles_overlap(rect, o) for o in keep_off):
                        chosen = rect
                        break
                if chosen is not None:
                    break
            if chosen is None:  # no room anywhere near: just above the target, else inside its top-left corner
                x = min(max(x1, 0), max(canvas_w - label_w, 0))
                y = y1 - step if y1 >= step else min(max(y1 + self.width + 2, 0), max(canvas_h - label_h, 0))
                chosen = (x, y, x + label_w - 1, y + label_h - 1)
            placed.append(chosen)
            self.placed_labels.append((text, chosen))
            self.draw.rectangle(chosen, fill=colour)
            self.draw.text((chosen[0] + 1 - left, chosen[1] + 1 - top), text, fill=(255, 255, 255), font=self.font)
        self.labels = []
        return self.canvas


def draw_annotations(
    image: Image.Image,
    regions: Sequence = (),
    entities: Sequence[dict] = (),
    region_labels: Sequence[str] | None = None,
    width: int = 2,
    scale: int = 1,
) -> Image.Image:
    """A copy of `image` with referred regions and grounded boxes outlined, each labelled; no label covers another
    label or any region or box when there is room for it elsewhere.

    Args:
        image: the original image (regions and boxes are in its pixels).
        regions: points `(x, y)`, boxes `(x1, y1, x2, y2)` or `[height, width]` masks, in the image's pixels; region
            `i` is drawn in `PALETTE[i]`.
        entities: as `FerretProcessor.post_process_grounding` returns them: dicts with `"box"` `[x1, y1, x2, y2]`
            and `"phrase"`; entity `i` is drawn in `PALETTE[len(regions) + i]`, so an answer box does not take a
            referred region's colour (until the palette's 7 colours run out and repeat).
        region_labels: text per region (default `region0`, `region1`, ...).
        width: line width in pixels (of the output image).
        scale: integer upscaling of the output (nearest neighbour), so that lines and labels stay thin on a small
            image; coordinates are still given in the original image's pixels.
    """
    return _annotate(image, regions, entities, region_labels, width, scale).canvas


def _annotate(image, regions, entities, region_labels, width, scale) -> _Annotator:
    """The finished `_Annotator` of `draw_annotations` (its `canvas`, and where its labels went)."""
    annotator = _Annotator(image, width, scale)
    for index, region in enumerate(regions):
        label = region_labels[index] if region_labels is not None else f"region{index}"
        annotator.region(region, PALETTE[index % len(PALETTE)], label)
    for index, entity in enumerate(entities, start=len(regions)):  # answer boxes in the colours after the regions'
        colour = PALETTE[index % len(PALETTE)]
        annotator.box(entity["box"], colour)
        annotator.labels.append((annotator.shapes[-1], entity.get("phrase") or f"obj{index - len(regions)}", colour))
    annotator.finish()
    return annotator


def draw_grounding(image: Image.Image, entities: Sequence[dict], width: int = 2) -> Image.Image:
    """A copy of `image` with each entity's box outlined and its phrase written next to it.

    Args:
        image: the original image (the boxes are in its pixels).
        entities: as `FerretProcessor.post_process_grounding` returns them: dicts with `"box"` `[x1, y1, x2, y2]`
            and `"phrase"`.
        width: line width in pixels.
    """
    return draw_annotations(image, entities=entities, width=width)


def draw_regions(
    image: Image.Image, regions: Sequence, labels: Sequence[str] | None = None, width: int = 2
) -> Image.Image:
    """A copy of `image` with referred regions outlined: a point as a ring around it, a box as a rectangle, a mask as
    its contour (outside the mask). The pixels inside a region keep their colour.

    Args:
        image: the original image.
        regions: points `(x, y)`, boxes `(x1, y1, x2, y2)` or `[height, width]` masks, in the image's pixels.
        labels: optional text per region (default `region0`, `region1`, ...).
        width: line width in pixels.
    """
    return draw_annotations(image, regions=regions, region_labels=labels, width=width)


__all__ = ["PALETTE", "draw_annotations", "draw_grounding", "draw_regions"]
