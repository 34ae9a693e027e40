"""Charts drawn with Pillow (matplotlib is not a dependency): grouped horizontal bars, optionally with whiskers.

Used by ``seco compare`` (IoU per class, one bar per run) and ``benchmarks/ablation.py`` (metrics per variant,
mean ± std over seeds).
"""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "font", "nice_ceil", "draw_grouped_bars"]

#: bar colours, one per series (matplotlib's tab10)
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` px (a fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 (times a power of ten) that is >= ``x`` > 0: an axis end with round ticks."""
    if x <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(x))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= x * (1 - 1e-9))


def draw_grouped_bars(
    groups: Sequence[tuple[str, Sequence[float | None]]],
    series: Sequence[str],
    *,
    title: str,
    errors: Sequence[Sequence[float | None]] | None = None,
    axis_max: float = 1.0,
    scale: float = 100.0,
    digits: int = 1,
    plot_width: int = 600,
) -> tuple[Image.Image, list[tuple[int, str, tuple[int, int, int, int]]]]:
    """Horizontal grouped bars: one group per ``(name, values)`` row, one bar per series, a legend on top.

    Args:
        groups: rows of values, one per series (None = no bar, drawn as "-").
        series: the series' names, in bar order (colours from :data:`PALETTE`).
        title: drawn above the legend.
        errors: per group, per series, a half-width (e.g. a standard deviation) drawn as a whisker.
        axis_max: the value at the right end of the axis (values beyond are clipped).
        scale: multiplies values for the labels and ticks (100: fractions shown as %).
        digits: decimals of the bar labels.
        plot_width: pixels from 0 to ``axis_max``.

    Returns:
        The image (RGB), and the bars as ``(series index, group name, (x0, y0, x1, y1))``; a bar's width is
        ``value / axis_max * plot_width`` pixels.
    """
    big, small = font(13), font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(s: str, f: ImageFont.ImageFont = big) -> int:
        box = probe.textbbox((0, 0), s, font=f)
        return box[2] - box[0]

    def x_of(v: float) -> int:
        return left + round(max(0.0, min(axis_max, v)) / axis_max * plot_width)

    bar_h, gap, pad = 12, 10, 16
    left = pad + max(text_w(n) for n, _ in groups) + 10
    legend_rows: list[list[int]] = [[]]
    legend_x, max_legend = 0, plot_width + 200
    for i, name in enumerate(series):  # wrap the legend to the chart's width
        w = 18 + text_w(name) + 16
        if legend_x + w > max_legend and legend_rows[-1]:
            legend_rows.append([])
            legend_x = 0
        legend_rows[-1].append(i)
        legend_x += w
    top = pad + 22 + 18 * len(legend_rows) + 8
    group_h = len(series) * bar_h + gap
    img = Image.new("RGB", (left + plot_width + 80, top + len(groups) * group_h + 30), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill="black", font=big)
    y = pad + 22
    for row in legend_rows:
        x = pad
        for i in row:
            draw.rectangle((x, y + 2, x + 12, y + 14), fill=PALETTE[i % len(PALETTE)])
            draw.text((x + 18, y), series[i], fill="black", font=big)
            x += 18 + text_w(series[i]) + 16
        y += 18
    bottom = top + len(groups) * group_h
    for k in range(6):  # grid and axis labels at 0, 20, ..., 100 % of the axis
        tick = axis_max * k / 5
        x = x_of(tick)
        label = f"{tick * scale:.4g}"
        draw.line((x, top - 4, x, bottom), fill=(220, 220, 220) if k else "black")
        draw.text((x - text_w(label, small) // 2, bottom + 4), label, fill="black", font=small)
    bars = []
    for g, (name, values) in enumerate(groups):
        y0 = top + g * group_h
        draw.text((left - 8 - text_w(name), y0 + (len(series) * bar_h - 14) // 2), name, fill="black", font=big)
        for i, v in enumerate(values):
            by = y0 + i * bar_h
            if v is None:
                draw.text((left + 4, by - 1), "-", fill="black", font=small)
                continue
            x1 = x_of(v)
            if x1 > left:
                draw.rectangle((left, by, x1 - 1, by + bar_h - 3), fill=PALETTE[i % len(PALETTE)])
            label, label_x = f"{v * scale:.{digits}f}", x1 + 4
            err = errors[g][i] if errors is not None else None
            if err:
                lo, hi = x_of(v - err), x_of(v + err)
                mid = by + (bar_h - 3) // 2
                draw.line((lo, mid, hi, mid), fill="black")
                draw.line((lo, mid - 3, lo, mid + 3), fill="black")
                draw.line((hi, mid - 3, hi, mid + 3), fill="black")
                label, label_x = f"{v * scale:.{digits}f}±{err * scale:.{digits}f}", max(x1, hi) + 4
            draw.text((label_x, by - 1), label, fill="black", font=small)
            bars.append((i, name, (left, by, x1, by + bar_h - 2)))
    return img, bars
