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
"""Drawing Ferret's inputs and outputs on the image: referred regions and grounded boxes with their phrases."""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, colour: tuple[int, int, int]) -> None:
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def draw_grounding(image: Image.Image, entities: Sequence[dict], width: int = 2) -> Image.Image:
    """A copy of `image` with each entity's box and phrase drawn on it.

    Args:
        image: the original image (the boxes are in its pixels).
        entities: as `FerretProcessor.post_process_grounding` returns them: dicts with `"box"` `[x1, y1, x2, y2]`
            and `"phrase"`.
        width: line width in pixels.
    """
    canvas = ImageOps.exif_transpose(image).convert("RGB")  # boxes refer to the image as displayed
    draw = ImageDraw.Draw(canvas)
    for index, entity in enumerate(entities):
        colour = PALETTE[index % len(PALETTE)]
        x1, y1, x2, y2 = (int(value) for value in entity["box"])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        phrase = entity.get("phrase") or f"obj{index}"
        _label(draw, (x1 + 2, max(y1 - 12, 0)), phrase, colour)
    return canvas


def draw_regions(image: Image.Image, regions: Sequence, labels: Sequence[str] | None = None) -> Image.Image:
    """A copy of `image` with referred regions drawn: a point as a circle, a box as a rectangle, a mask tinted.

    Args:
        image: the original image.
        regions: points `(x, y)`, boxes `(x1, y1, x2, y2)` or `[height, width]` masks, in the image's pixels.
        labels: optional text per region (default `region0`, `region1`, ...).
    """
    canvas = ImageOps.exif_transpose(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for index, region in enumerate(regions):
        colour = PALETTE[index % len(PALETTE)]
        label = labels[index] if labels is not None else f"region{index}"
        array = np.asarray(region)
        if array.ndim == 2:
            tint = Image.new("RGB", canvas.size, colour)
            canvas.paste(Image.blend(canvas, tint, 0.5), mask=Image.fromarray((array > 0).astype(np.uint8) * 255))
            draw = ImageDraw.Draw(canvas)
            ys, xs = np.nonzero(array)
            anchor = (int(xs.min()), int(ys.min())) if len(xs) else (0, 0)
        elif array.shape == (2,):
            x, y = (int(value) for value in array)
            draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=colour, width=2)
            anchor = (x + 7, y - 6)
        else:
            x1, y1, x2, y2 = (int(value) for value in array)
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
            anchor = (x1 + 2, max(y1 - 12, 0))
        _label(draw, anchor, label, colour)
    return canvas


__all__ = ["draw_grounding", "draw_regions"]
