"""Inline SVG charts for the self-contained HTML reports: labelled axes, no scripts, no network."""

from __future__ import annotations

import math
from html import escape

COLOURS = ("#3b6fb6", "#e08a2c", "#4a9d5b", "#b64a4a")


def _number(value: float) -> str:
    return f"{value:.3g}"


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _opening(width: float, height: float, title: str, x: int, small: bool = False) -> list[str]:
    """The <svg> tag and its bold title at ``x``: 14 px, or ``small``: 12 px showing the title's last 48 characters."""
    y, size, shown = (14, 12, title[-48:]) if small else (18, 14, title)
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(title)}">',
            f'<text x="{x}" y="{y}" font-size="{size}" font-weight="bold">{escape(shown)}</text>']


def horizontal_bars(labels: list[str], series: dict[str, list[float | None]], title: str, axis_label: str) -> str:
    """Grouped horizontal bars, one row per label, one bar per series (inf or None bars are not drawn)."""
    finite = _finite([v for values in series.values() for v in values]) or [0.0]
    lo, hi = min(0.0, min(finite)), max(finite)
    hi = hi if hi > lo else lo + 1.0
    left, width, bar, top = 220, 460, 9, 40
    row = bar * len(series) + 6
    scale = lambda v: left + (v - lo) / (hi - lo) * width
    parts = _opening(left + width + 30, top + row * len(labels) + 60, title, left)
    for index, (name, colour) in enumerate(zip(series, COLOURS)):
        x = left + index * 170
        parts.append(f'<rect x="{x}" y="26" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="35" font-size="11">{escape(name)}</text>')
    for i, label in enumerate(labels):
        y = top + i * row
        parts.append(f'<text x="{left - 6}" y="{y + row / 2 + 3}" font-size="10" text-anchor="end">'
                     f'{escape(label[-36:])}</text>')
        for j, (values, colour) in enumerate(zip(series.values(), COLOURS)):
            value = values[i]
            if value is None or not math.isfinite(value):
                continue
            x0, x1 = sorted((scale(0.0 if lo <= 0 <= hi else lo), scale(value)))
            parts.append(f'<rect x="{x0:.1f}" y="{y + j * bar:.1f}" width="{max(x1 - x0, 1):.1f}" height="{bar - 1}" '
                         f'fill="{colour}"><title>{escape(label)}: {_number(value)}</title></rect>')
    axis_y = top + row * len(labels) + 4
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" stroke="#333"/>')
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        parts.append(f'<text x="{scale(value):.1f}" y="{axis_y + 14}" font-size="10" text-anchor="middle">'
                     f'{_number(value)}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{axis_y + 32}" font-size="11" text-anchor="middle">'
                 f'{escape(axis_label)}</text></svg>')
    return "".join(parts)


def histogram(counts: list[int], edges: list[float], clip: tuple[float, float], title: str) -> str:
    """Bars of ``counts`` over ``edges`` (log count), with the clipping range as two red lines."""
    left, width, top, plot = 50, 320, 24, 120
    lo, hi = edges[0], edges[-1]
    scale = lambda v: left + (v - lo) / (hi - lo) * width
    peak = math.log10(max(max(counts), 1) + 1)
    step = width / len(counts)
    parts = _opening(left + width + 20, top + plot + 40, title, left, small=True)
    for i, count in enumerate(counts):
        h = math.log10(count + 1) / peak * plot
        parts.append(f'<rect x="{left + i * step:.1f}" y="{top + plot - h:.1f}" width="{max(step - 0.5, 0.5):.1f}" '
                     f'height="{h:.1f}" fill="{COLOURS[0]}"/>')
    for value in clip:
        parts.append(f'<line x1="{scale(value):.1f}" y1="{top}" x2="{scale(value):.1f}" y2="{top + plot}" '
                     f'stroke="#d62728" stroke-width="2"><title>clip {_number(value)}</title></line>')
    parts.append(f'<line x1="{left}" y1="{top + plot}" x2="{left + width}" y2="{top + plot}" stroke="#333"/>'
                 f'<text x="{left}" y="{top + plot + 14}" font-size="10">{_number(lo)}</text>'
                 f'<text x="{left + width}" y="{top + plot + 14}" font-size="10" text-anchor="end">{_number(hi)}</text>'
                 f'<text x="{left + width / 2}" y="{top + plot + 30}" font-size="10" text-anchor="middle">'
                 f'float value (red: clipping range)</text>'
                 f'<text x="12" y="{top + plot / 2}" font-size="10" transform="rotate(-90 12 {top + plot / 2})" '
                 f'text-anchor="middle">log count</text></svg>')
    return "".join(parts)


def channel_ranges(mins: list[float], maxs: list[float], title: str) -> str:
    """One vertical bar per output channel from its minimum to its maximum weight."""
    left, width, top, plot = 50, 320, 24, 120
    lo, hi = min(min(mins), 0.0), max(max(maxs), 0.0)
    hi = hi if hi > lo else lo + 1.0
    y = lambda v: top + (hi - v) / (hi - lo) * plot
    step = width / len(mins)
    parts = _opening(left + width + 20, top + plot + 40, title, left, small=True)
    for i, (a, b) in enumerate(zip(mins, maxs)):
        parts.append(f'<rect x="{left + i * step:.1f}" y="{y(b):.1f}" width="{max(step - 0.3, 0.4):.1f}" '
                     f'height="{max(y(a) - y(b), 0.5):.1f}" fill="{COLOURS[1]}"/>')
    parts.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + width}" y2="{y(0):.1f}" stroke="#333"/>'
                 f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{_number(hi)}</text>'
                 f'<text x="{left - 4}" y="{top + plot}" font-size="10" text-anchor="end">{_number(lo)}</text>'
                 f'<text x="{left + width / 2}" y="{top + plot + 30}" font-size="10" text-anchor="middle">'
                 f'output channel ({len(mins)}); bar: weight min to max</text></svg>')
    return "".join(parts)


def pareto_plot(points: list[tuple[float, float]], front: list[tuple[float, float]], chosen: tuple[float, float] | None,
                target: float, x_label: str, y_label: str, title: str) -> str:
    """Every evaluated (x, y) point in grey, the front as a blue line, the chosen point in red, the
    target as a dashed line."""
    left, width, top, plot = 70, 480, 30, 280
    xs = [p[0] for p in points] or [0.0]
    ys = _finite([p[1] for p in points] + [target]) or [0.0]
    x_lo, x_hi = min(xs + [0.0]), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    y_hi, y_lo = (y_hi, y_lo) if y_hi > y_lo else (y_lo + 1.0, y_lo - 1.0)
    fx = lambda v: left + (v - x_lo) / (x_hi - x_lo) * width
    fy = lambda v: top + (y_hi - min(max(v, y_lo), y_hi)) / (y_hi - y_lo) * plot
    parts = _opening(left + width + 30, top + plot + 50, title, left)
    parts += [f'<line x1="{left}" y1="{top + plot}" x2="{left + width}" y2="{top + plot}" stroke="#333"/>',
              f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot}" stroke="#333"/>',
              f'<line x1="{left}" y1="{fy(target):.1f}" x2="{left + width}" y2="{fy(target):.1f}" stroke="#d62728" '
              f'stroke-dasharray="6 4"><title>target {_number(target)}</title></line>']
    for x, y in points:
        if math.isfinite(y):
            parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="#999">'
                         f'<title>{_number(x)}, {_number(y)}</title></circle>')
    if len(front) > 1:
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in front if math.isfinite(y))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[0]}" stroke-width="2"/>')
    if chosen is not None:
        parts.append(f'<circle cx="{fx(chosen[0]):.1f}" cy="{fy(chosen[1]):.1f}" r="6" fill="#d62728">'
                     f'<title>chosen: {_number(chosen[0])}, {_number(chosen[1])}</title></circle>')
    for k in range(5):
        xv, yv = x_lo + (x_hi - x_lo) * k / 4, y_lo + (y_hi - y_lo) * k / 4
        parts.append(f'<text x="{fx(xv):.1f}" y="{top + plot + 14}" font-size="10" text-anchor="middle">{_number(xv)}</text>'
                     f'<text x="{left - 4}" y="{fy(yv) + 3:.1f}" font-size="10" text-anchor="end">{_number(yv)}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{top + plot + 34}" font-size="11" text-anchor="middle">'
                 f'{escape(x_label)}</text><text x="14" y="{top + plot / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + plot / 2})">{escape(y_label)}</text></svg>')
    return "".join(parts)
