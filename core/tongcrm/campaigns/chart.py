"""A campaign (or journey) report as an SVG chart, drawn on the server so any client (a browser, a chat bot, an e-mail) can
show it without a charting library: per run and in total, the response rate of the treated and of the control
group as two bars, and the uplift with its 95 % interval as text under them. Every text is escaped."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from tongcrm.campaigns.evaluation import Outcome, Report
from tongcrm.campaigns.models import RUN_SENT

if TYPE_CHECKING:
    from tongcrm.campaigns.journeys import JourneyReport

_W_GROUP = 120
#: The title's baseline, the legend's row under it, and the plot's top: a bar's rate is written 4 px above the
#: bar, so the tallest bar's label sits under the legend instead of on it (the legend was drawn over the rates
#: of the tallest bars, at the right where the control bars are).
_TITLE_Y = 20
_LEGEND_Y = 30
_TOP = 60
_PLOT = 150
_H = _TOP + _PLOT + 50
_TITLE_SIZE = 13
_TREATED, _CONTROL = "#2b6cb0", "#a0aec0"

#: The chart's words. ``report.svg`` and the CLI draw it in English; a caller in another language (the
#: console's Chinese campaign page) passes its own with the same keys and placeholders.
WORDS: Mapping[str, str] = {
    "heading": "{title}: response rate, treated vs control",
    "treated": "treated",
    "control": "control",
    "run": "run {n}",
    "total": "total",
    "all": "all participants",
    "too_small": "too small",
    "uplift": "{absolute:+.1f} pts [{low:+.1f}, {high:+.1f}]",
    "of": "{rate} of {n}",
}


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _bars(x0: int, label: str, o: Outcome, scale: float, words: Mapping[str, str]) -> list[str]:
    up = o.uplift
    out: list[str] = []
    for i, (rate, colour, n) in enumerate(
        (
            (up.treated_rate, _TREATED, o.figures.treated.eligible),
            (up.control_rate, _CONTROL, o.figures.held.eligible),
        )
    ):
        h = round(rate * scale)
        x = x0 + 20 + i * 42
        y = _TOP + _PLOT - h
        out.append(
            f'<rect x="{x}" y="{y}" width="36" height="{h}" fill="{colour}"><title>{escape(words["of"].format(rate=_pct(rate), n=n))}</title></rect>'
        )
        out.append(f'<text x="{x + 18}" y="{y - 4}" font-size="10" text-anchor="middle">{_pct(rate)}</text>')
    verdict = (
        words["too_small"]
        if up.too_small
        else words["uplift"].format(absolute=up.absolute * 100, low=up.low * 100, high=up.high * 100)
    )
    base = _TOP + _PLOT
    out.append(
        f'<text x="{x0 + 60}" y="{base + 16}" font-size="11" text-anchor="middle">{escape(label)}</text>'
    )
    out.append(
        f'<text x="{x0 + 60}" y="{base + 32}" font-size="10" text-anchor="middle">{escape(verdict)}</text>'
    )
    return out


def _text_width(text: str, size: int) -> int:
    """A generous estimate of the width a text takes in a sans-serif font at ``size`` px (bold): wide
    characters (Chinese) a full em, others 0.65 em, so the drawing is made wide enough for its title."""
    ems = sum(1.0 if unicodedata.east_asian_width(ch) in "WF" else 0.65 for ch in text)
    return round(ems * size)


def render(report: Report, words: Mapping[str, str] = WORDS) -> str:
    groups = [
        (words["run"].format(n=i + 1), r.outcome)
        for i, r in enumerate(report.runs)
        if r.run.status in RUN_SENT
    ]
    groups.append((words["total"], report.total))
    return render_groups(report.campaign.name, groups, words)


def render_journey(report: JourneyReport, words: Mapping[str, str] = WORDS) -> str:
    """A journey's chart: its participants pooled (it has no runs), treated against control."""
    return render_groups(report.journey.name, [(words["all"], report.total)], words)


def render_groups(title: str, groups: list[tuple[str, Outcome]], words: Mapping[str, str] = WORDS) -> str:
    highest = max([max(o.uplift.treated_rate, o.uplift.control_rate) for _, o in groups] + [0.01])
    scale = _PLOT / highest
    heading = words["heading"].format(title=title)
    # wide enough for the bars and for the title (it was cut off at the drawing's edge with one or two runs)
    width = max(40 + _W_GROUP * len(groups), 40 + _text_width(heading, _TITLE_SIZE))
    legend = _LEGEND_Y + 9
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_H}" viewBox="0 0 {width} {_H}"'
        ' font-family="sans-serif">',
        f'<text x="20" y="{_TITLE_Y}" font-size="{_TITLE_SIZE}" font-weight="bold">{escape(heading)}</text>',
        f'<rect x="20" y="{_LEGEND_Y}" width="10" height="10" fill="{_TREATED}"/>'
        f'<text x="34" y="{legend}" font-size="10">{escape(words["treated"])}</text>'
        f'<rect x="90" y="{_LEGEND_Y}" width="10" height="10" fill="{_CONTROL}"/>'
        f'<text x="104" y="{legend}" font-size="10">{escape(words["control"])}</text>',
        f'<line x1="20" y1="{_TOP + _PLOT}" x2="{width - 20}" y2="{_TOP + _PLOT}" stroke="#333"/>',
    ]
    for i, (label, o) in enumerate(groups):
        parts.extend(_bars(20 + i * _W_GROUP, label, o, scale, words))
    parts.append("</svg>")
    return "\n".join(parts)
