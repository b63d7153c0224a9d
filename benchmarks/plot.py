"""A small line-plot PNG written with PIL alone (the benchmarks need no plotting library)."""

from __future__ import annotations

import colorsys
import math

from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < high - 1e-9 * step:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"  # 10000 and 12000, not 1e+04 twice


PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (23, 190, 207), (188, 189, 34), (0, 0, 0), (128, 0, 0),
           (0, 128, 128), (128, 128, 0), (255, 0, 255), (0, 0, 128), (0, 200, 90), (255, 190, 0)]


def run_colour(index: int) -> tuple[int, int, int]:
    """The colour of the `index`-th run: the palette's, then hues a golden-ratio step apart, so no two runs share one."""
    if index < len(PALETTE):
        return PALETTE[index]
    hue = ((index - len(PALETTE)) * 0.618034) % 1.0
    return tuple(round(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.85, 0.75))


def line_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], series: dict[str, tuple[list, list]],
               title: str, xlabel: str, ylabel: str, log2_x: bool = False, y_max: float | None = None,
               colour_order: list[str] | None = None) -> None:  # fmt: skip
    """Draws `series` (`name -> (xs, ys)`) as lines with markers in the pixel `box` (left, top, right, bottom).
    `y_max` fixes the top of the y axis (default: the data's maximum); `colour_order` gives each name its colour by
    its position in that list (default: the order of `series`), so one run keeps its colour across panels."""
    left, top, right, bottom = box
    font, small = _font(14), _font(11)
    plot_left, plot_top, plot_right, plot_bottom = left + 62, top + 28, right - 12, bottom - 42
    draw.text(((left + right) // 2, top + 4), title, fill="black", font=font, anchor="mt")
    xs_all = [x for xs, _ in series.values() for x in xs]
    ys_all = [y for _, ys in series.values() for y in ys if y is not None]
    if not xs_all or not ys_all:
        draw.text(((left + right) // 2, (top + bottom) // 2), "no data", fill="grey", font=font, anchor="mm")
        return
    to_x = (lambda v: math.log2(v)) if log2_x else (lambda v: v)
    x_low, x_high = to_x(min(xs_all)), to_x(max(xs_all))
    if x_high == x_low:
        x_high = x_low + 1
    y_ticks = _nice_ticks(0.0, y_max if y_max is not None else max(ys_all) * 1.05)
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def px(x, y):
        fx = (to_x(x) - x_low) / (x_high - x_low)
        fy = (y - y_low) / (y_high - y_low)
        return plot_left + fx * (plot_right - plot_left), plot_bottom - fy * (plot_bottom - plot_top)

    for tick in y_ticks:
        _, y = px(min(xs_all), tick)
        draw.line((plot_left, y, plot_right, y), fill=(225, 225, 225))
        draw.text((plot_left - 6, y), _label(tick), fill="black", font=small, anchor="rm")
    draw.rectangle((plot_left, plot_top, plot_right, plot_bottom), outline="black")
    x_ticks = sorted(set(xs_all))
    if len(x_ticks) > 12 and not log2_x:  # too many points to label each: round ticks over the range
        x_ticks = [tick for tick in _nice_ticks(min(xs_all), max(xs_all), 8) if min(xs_all) <= tick <= max(xs_all)]
    for x in x_ticks:
        xpos, _ = px(x, y_low)
        draw.line((xpos, plot_bottom, xpos, plot_bottom + 4), fill="black")
        draw.text((xpos, plot_bottom + 6), _label(x), fill="black", font=small, anchor="mt")
    draw.text(((plot_left + plot_right) // 2, bottom - 6), xlabel, fill="black", font=small, anchor="mb")
    label_image = Image.new("RGBA", (plot_bottom - plot_top, 16), (255, 255, 255, 0))
    ImageDraw.Draw(label_image).text((label_image.width // 2, 8), ylabel, fill="black", font=small, anchor="mm")
    rotated = label_image.rotate(90, expand=True)
    draw._image.paste(rotated, (left + 4, plot_top), rotated)
    order = colour_order or list(series)
    for index, (name, (xs, ys)) in enumerate(series.items()):
        colour = run_colour(order.index(name))
        points = [px(x, y) for x, y in zip(xs, ys) if y is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.text((plot_left + 8, plot_top + 6 + 14 * index), name, fill=colour, font=small)


def growth_png(path, tiles: dict, regions: dict, subtitle: str = "") -> None:
    """2 x 2 panels: prefill time and peak memory against the number of tiles and of regions.

    `tiles` / `regions`: `{"x": [...], "seconds": [...], "peak_mb": [...], "label": str}`.
    """
    width, height = 1000, 720
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 8), "Ferret prefill growth", fill="black", font=_font(16), anchor="mt")
    if subtitle:
        draw.text((width // 2, 28), subtitle, fill=(90, 90, 90), font=_font(11), anchor="mt")
    half_w, top = width // 2, 44
    half_h = (height - top) // 2
    line_panel(draw, (0, top, half_w, top + half_h), {tiles["label"]: (tiles["x"], tiles["seconds"])},
               "prefill time vs tiles", "tiles (Ferret-v2, + 1 global view)", "seconds")  # fmt: skip
    line_panel(draw, (half_w, top, width, top + half_h), {tiles["label"]: (tiles["x"], tiles["peak_mb"])},
               "peak memory vs tiles", "tiles (Ferret-v2, + 1 global view)", "peak RSS increase, MB")  # fmt: skip
    line_panel(draw, (0, top + half_h, half_w, height), {regions["label"]: (regions["x"], regions["seconds"])},
               "prefill time vs regions", "regions (Ferret v1)", "seconds", log2_x=True)  # fmt: skip
    line_panel(draw, (half_w, top + half_h, width, height), {regions["label"]: (regions["x"], regions["peak_mb"])},
               "peak memory vs regions", "regions (Ferret v1)", "peak RSS increase, MB", log2_x=True)  # fmt: skip
    image.save(path)
