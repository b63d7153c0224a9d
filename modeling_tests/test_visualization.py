"""Drawing regions and answer boxes: outlines only, so the pixels inside a region keep the colour the model saw (a
"what colour is <region>?" answer must match the picture), and labels stay off the regions, the boxes and each
other."""

import numpy as np
import pytest
from PIL import Image

from transformers_ferret.visualization import (
    HALO,
    PALETTE,
    POINT_RADIUS,
    _annotate,
    _dilate,
    draw_annotations,
    draw_grounding,
    draw_regions,
)

HEIGHT, WIDTH = 120, 200
WIDTH_PX = 2  # line width


def _image() -> Image.Image:
    """Random pixels: any fill or tint changes them."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _mask() -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (xx - 50) ** 2 + (yy - 70) ** 2 <= 22**2  # a disc, a free-form region


def _box_interior(box, inset):
    x1, y1, x2, y2 = box
    return (slice(y1 + inset, y2 - inset + 1), slice(x1 + inset, x2 - inset + 1))


def _differs(drawn: np.ndarray, original: np.ndarray, where) -> np.ndarray:
    return (drawn[where] != original[where]).any(-1)


def test_a_mask_is_outlined_and_every_pixel_of_it_keeps_its_colour():
    original, mask = np.asarray(_image()), _mask()
    drawn = np.asarray(draw_regions(_image(), [mask], width=WIDTH_PX))
    assert np.array_equal(drawn[mask], original[mask])  # the old 50 % tint changed all of them
    band = mask
    for _ in range(WIDTH_PX + 2):
        band = _dilate(band)
    contour = band & ~mask  # the outline: a black line, the region's colour, a black line
    assert _differs(drawn, original, contour).all()
    assert (drawn[_dilate(mask) & ~mask] == HALO).all()
    colour_band = _dilate(_dilate(mask)) & ~_dilate(mask)
    assert (drawn[colour_band] == PALETTE[0]).all()
    far = ~_dilate(_dilate(band))  # away from the outline (and the label, placed above the disc)
    far[: 70 - 22 - WIDTH_PX - 2] = False  # rows above the outline hold the label
    assert np.array_equal(drawn[far], original[far])


def test_a_box_is_outlined_on_its_edge_and_its_inside_keeps_its_colour():
    original, box = np.asarray(_image()), (110, 40, 170, 100)
    drawn = np.asarray(draw_regions(_image(), [box], width=WIDTH_PX))
    inside = _box_interior(box, WIDTH_PX + 1)  # inside the outline and its 1-pixel black border
    assert np.array_equal(drawn[inside], original[inside])
    x1, y1, x2, y2 = box
    for edge in [drawn[y1, x1 : x2 + 1], drawn[y2, x1 : x2 + 1], drawn[y1 : y2 + 1, x1], drawn[y1 : y2 + 1, x2]]:
        assert (edge == PALETTE[0]).all()


def test_a_point_is_ringed_and_its_centre_keeps_its_colour():
    original, (x, y) = np.asarray(_image()), (100, 60)
    drawn = np.asarray(draw_regions(_image(), [(x, y)], width=WIDTH_PX))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    centre = (xx - x) ** 2 + (yy - y) ** 2 <= (POINT_RADIUS - WIDTH_PX - 2) ** 2
    assert centre[y, x] and np.array_equal(drawn[centre], original[centre])
    ring = [(x + POINT_RADIUS, y), (x - POINT_RADIUS, y), (x, y + POINT_RADIUS), (x, y - POINT_RADIUS)]
    assert all((drawn[py, px] == PALETTE[0]).all() for px, py in ring)


def test_answer_boxes_are_outlined_and_their_inside_keeps_its_colour():
    original, box = np.asarray(_image()), [30, 40, 90, 110]
    drawn = np.asarray(draw_grounding(_image(), [{"box": box, "phrase": "a disc"}], width=WIDTH_PX))
    assert np.array_equal(drawn[_box_interior(box, WIDTH_PX + 1)], original[_box_interior(box, WIDTH_PX + 1)])
    assert (drawn[box[1], box[0] : box[2] + 1] == PALETTE[0]).all()


def test_regions_and_answer_boxes_together_keep_every_inside_and_get_their_own_colours():
    original, mask, box, entity_box = np.asarray(_image()), _mask(), (110, 40, 170, 100), [125, 55, 155, 85]
    drawn = np.asarray(draw_annotations(_image(), [mask, box], [{"box": entity_box, "phrase": "a thing"}]))
    assert np.array_equal(drawn[mask], original[mask])
    inside_answer = _box_interior(entity_box, WIDTH_PX + 1)
    assert np.array_equal(drawn[inside_answer], original[inside_answer])
    assert (drawn[entity_box[1], entity_box[0] : entity_box[2] + 1] == PALETTE[2]).all()  # after the 2 regions'
    between = np.zeros((HEIGHT, WIDTH), bool)  # inside the referred box, outside the answer box and their lines
    between[_box_interior(box, WIDTH_PX + 1)] = True
    between[entity_box[1] - 1 : entity_box[3] + 2, entity_box[0] - 1 : entity_box[2] + 2] = False
    assert np.array_equal(drawn[between], original[between])


@pytest.mark.parametrize("scale", [2, 3])
def test_an_upscaled_picture_keeps_the_insides_of_the_scaled_regions(scale):
    mask, box = _mask(), (110, 40, 170, 100)
    original = np.asarray(_image().resize((WIDTH * scale, HEIGHT * scale), Image.Resampling.NEAREST))
    drawn = np.asarray(draw_annotations(_image(), [mask, box], scale=scale, width=scale + 1))
    assert drawn.shape == original.shape
    big_mask = mask.repeat(scale, 0).repeat(scale, 1)
    assert np.array_equal(drawn[big_mask], original[big_mask])
    scaled_box = (box[0] * scale, box[1] * scale, (box[2] + 1) * scale - 1, (box[3] + 1) * scale - 1)
    inside = _box_interior(scaled_box, scale + 2)
    assert np.array_equal(drawn[inside], original[inside])
    assert (drawn[scaled_box[1], scaled_box[0] : scaled_box[2] + 1] == PALETTE[1]).all()


def test_labels_stay_off_the_regions_the_boxes_and_each_other():
    mask, box, entity_box = _mask(), (110, 40, 170, 100), [28, 48, 72, 92]  # the answer box hugs the disc
    annotator = _annotate(_image(), [mask, box], [{"box": entity_box, "phrase": "a disc"}], None, WIDTH_PX, 1)
    rectangles = [rect for _, rect in annotator.placed_labels]
    assert [text for text, _ in annotator.placed_labels] == ["region0", "region1", "a disc"]
    for index, (x1, y1, x2, y2) in enumerate(rectangles):
        assert 0 <= x1 <= x2 < WIDTH and 0 <= y1 <= y2 < HEIGHT
        for other in rectangles[index + 1 :] + annotator.shapes:
            assert x2 < other[0] or other[2] < x1 or y2 < other[1] or other[3] < y1


def test_degenerate_and_reversed_boxes_and_an_empty_mask_are_drawn_without_error():
    empty = np.zeros((HEIGHT, WIDTH), bool)
    regions = [empty, (5, 5, 5, 5), (60, 50, 40, 30), (3.4, 117.8)]  # a point at the border, with a thick line
    drawn = draw_annotations(_image(), regions, [{"box": [0, 0, WIDTH - 1, HEIGHT - 1]}], width=5)
    assert drawn.size == (WIDTH, HEIGHT)
