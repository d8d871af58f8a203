"""Small SVG charts the console draws on the server (no charting library in the browser, no build step).

The markup is built here and inserted into pages as-is, so every text that reaches it goes through
:func:`xml.sax.saxutils.escape`; the numbers are ints formatted by Python. Each chart carries a ``<title>`` and
``role="img"`` with an ``aria-label`` so a screen reader announces what it shows, and a table of the same
figures sits next to it on the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

_W, _H = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 36
_LINE = "#0b5cad"


@dataclass(frozen=True, slots=True)
class DailyPoint:
    on: date
    value: int


def _ticks(high: int) -> list[int]:
    """Up to five round gridline values from 0 to at least ``high``."""
    if high <= 4:
        return list(range(0, max(high, 1) + 1))
    step = 1
    while high / step > 4:
        for factor in (2, 5, 10):
            if high / (step * factor) <= 4:
                step *= factor
                break
        else:
            step *= 10
    return list(range(0, high + step, step))


def daily_counts(points: Sequence[DailyPoint], *, label: str) -> Markup:
    """A line of daily counts, oldest on the left. ``label`` names the chart for assistive technology."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label={quoteattr(label)} width="{_W}" '
        f'height="{_H}" viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11" class="chart">'
        f"<title>{escape(label)}</title>"
    )
    if not points:
        return Markup(head + f'<text x="{_W // 2}" y="{_H // 2}" text-anchor="middle">–</text></svg>')  # noqa: S704
    ticks = _ticks(max(p.value for p in points))
    top = ticks[-1] or 1
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    span = max((points[-1].on - points[0].on).days, 1)

    def x(on: date) -> float:
        return _LEFT + plot_w * (on - points[0].on).days / span if len(points) > 1 else _LEFT + plot_w / 2

    def y(value: int) -> float:
        return _TOP + plot_h - plot_h * value / top

    parts = [head]
    for tick in ticks:
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#d8dde3"/>'
            f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:,}</text>'
        )
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(p.on):.1f},{y(p.value):.1f}" for i, p in enumerate(points))
    parts.append(f'<path d="{path}" fill="none" stroke="{_LINE}" stroke-width="2"/>')
    for p in points:
        parts.append(
            f'<circle cx="{x(p.on):.1f}" cy="{y(p.value):.1f}" r="3" fill="{_LINE}">'
            f"<title>{p.on.isoformat()}: {p.value:,}</title></circle>"
        )
    base = _H - _BOTTOM + 16
    parts.append(f'<text x="{_LEFT}" y="{base}">{points[0].on.isoformat()}</text>')
    if len(points) > 1:
        parts.append(
            f'<text x="{_W - _RIGHT}" y="{base}" text-anchor="end">{points[-1].on.isoformat()}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - the label is escaped, the rest are numbers and dates
