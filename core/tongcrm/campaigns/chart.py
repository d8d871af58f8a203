"""A campaign (or journey) report as an SVG chart, drawn on the server so any client (a browser, a chat bot, an e-mail) can
show it without a charting library: per run and in total, the response rate of the treated and of the control
group as two bars, and the uplift with its 95 % interval as text under them. Every text is escaped."""

from __future__ import annotations

from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from tongcrm.campaigns.evaluation import Outcome, Report
from tongcrm.campaigns.models import RUN_SENT

if TYPE_CHECKING:
    from tongcrm.campaigns.journeys import JourneyReport

_W_GROUP = 120
_H = 260
_TOP = 40
_PLOT = 150
_TREATED, _CONTROL = "#2b6cb0", "#a0aec0"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _bars(x0: int, label: str, o: Outcome, scale: float) -> list[str]:
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
            f'<rect x="{x}" y="{y}" width="36" height="{h}" fill="{colour}"><title>{_pct(rate)} of {n}</title></rect>'
        )
        out.append(f'<text x="{x + 18}" y="{y - 4}" font-size="10" text-anchor="middle">{_pct(rate)}</text>')
    verdict = (
        "too small"
        if up.too_small
        else f"{up.absolute * 100:+.1f} pts [{up.low * 100:+.1f}, {up.high * 100:+.1f}]"
    )
    base = _TOP + _PLOT
    out.append(
        f'<text x="{x0 + 60}" y="{base + 16}" font-size="11" text-anchor="middle">{escape(label)}</text>'
    )
    out.append(
        f'<text x="{x0 + 60}" y="{base + 32}" font-size="10" text-anchor="middle">{escape(verdict)}</text>'
    )
    return out


def render(report: Report) -> str:
    groups = [(f"run {i + 1}", r.outcome) for i, r in enumerate(report.runs) if r.run.status in RUN_SENT]
    groups.append(("total", report.total))
    return render_groups(report.campaign.name, groups)


def render_journey(report: JourneyReport) -> str:
    """A journey's chart: its participants pooled (it has no runs), treated against control."""
    return render_groups(report.journey.name, [("all participants", report.total)])


def render_groups(title: str, groups: list[tuple[str, Outcome]]) -> str:
    highest = max([max(o.uplift.treated_rate, o.uplift.control_rate) for _, o in groups] + [0.01])
    scale = _PLOT / highest
    width = 40 + _W_GROUP * len(groups)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_H}" viewBox="0 0 {width} {_H}"'
        ' font-family="sans-serif">',
        f'<text x="20" y="20" font-size="13" font-weight="bold">{escape(title)}: response rate,'
        " treated vs control</text>",
        f'<rect x="{width - 170}" y="28" width="10" height="10" fill="{_TREATED}"/>'
        f'<text x="{width - 156}" y="37" font-size="10">treated</text>'
        f'<rect x="{width - 100}" y="28" width="10" height="10" fill="{_CONTROL}"/>'
        f'<text x="{width - 86}" y="37" font-size="10">control</text>',
        f'<line x1="20" y1="{_TOP + _PLOT}" x2="{width - 20}" y2="{_TOP + _PLOT}" stroke="#333"/>',
    ]
    for i, (label, o) in enumerate(groups):
        parts.extend(_bars(20 + i * _W_GROUP, label, o, scale))
    parts.append("</svg>")
    return "\n".join(parts)
