"""Console pages for campaigns (营销活动), care-flow reports and the calendar.

They call the services behind ``/api/campaigns``, ``/api/care-flows`` and ``/api/calendar`` with that API's
roles: analysts read reports and the calendar; operators and admins create drafts, schedule, cancel and mark
days. A refusal (an empty audience, a schedule in the past, a template without opt-out wording…) shows the
page again with the service's reason and keeps what was typed. The report's chart is the SVG
:mod:`tongcrm.campaigns.chart` draws for ``report.svg``, inlined.
"""

from __future__ import annotations

import calendar as monthly
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from litestar import Request, Response, get, post
from litestar.params import FromPath, QueryParameter
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.api.inputs import PathId
from tongcrm.campaigns import calendar, chart, evaluation, service, stats
from tongcrm.campaigns.api import programme_tz
from tongcrm.campaigns.models import RUN_SENT, CalendarMark, Campaign, CampaignRun
from tongcrm.campaigns.schedule import InvalidSchedule
from tongcrm.console.forms import form_fields, form_lists
from tongcrm.console.money import yuan_to_fen
from tongcrm.console.problems import explain_text
from tongcrm.console.web import (
    PREFIX,
    WRITE_ROLES,
    ConsoleController,
    action,
    actor_of,
    context_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.db.base import utcnow
from tongcrm.db.engine import transaction
from tongcrm.errors import Forbidden, TongcrmError, Unprocessable
from tongcrm.messaging import flows
from tongcrm.messaging import service as messaging
from tongcrm.messaging.models import MessageTemplate
from tongcrm.segments import service as segments
from tongcrm.segments.models import Segment

CAMPAIGNS = PREFIX + "/campaigns"
CALENDAR = PREFIX + "/calendar"
RESPONSE_KINDS = ("order", "store_visit", "redemption")
SCHEDULE_KINDS = ("once", "daily", "weekly", "monthly", "yearly")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


def _refusable(exc: TongcrmError) -> bool:
    """Refusals worth showing on the form (the operator can fix them); 403s and server errors go to the
    console's error page."""
    return 400 <= exc.status_code < 500 and not isinstance(exc, Forbidden)


# -------------------------------------------------------------------------------------------------------------
# form parsing (no HTTP here: plain strings in, documents the services check out)


def _int(text: str, field_name: str, most: int) -> int | None:
    """A form's whole number (None when empty); past ``most`` (the field's own bound: a weekday's 7, a budget's
    :data:`MAX_BUDGET_MESSAGES`) refused with that bound, which the sentence names."""
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise Unprocessable(
            f"{field_name}: {text!r} is not a whole number",
            code="form.not_whole",
            params={"field": field_name, "value": text},
        ) from exc
    if abs(value) > most:
        raise Unprocessable(
            f"{field_name}: {text!r} is more than the most it may be ({most:,})",
            code="form.too_large",
            params={"field": field_name, "value": text[:40], "max": most},
        )
    return value


#: The most messages a campaign's budget may name in the console's form: 10 亿条 (1,000,000,000), more than a
#: programme's whole member base gets in years; a larger figure is a slip, refused with a bound an operator reads
#: (the 64-bit column's own, 9,223,372,036,854,775,807, said nothing).
MAX_BUDGET_MESSAGES = 1_000_000_000


def draft_from_form(form: dict[str, str]) -> service.Draft:
    """A campaign draft from the create form; the service checks everything else (names, template, share)."""
    kind = form.get("response_kind", "order")
    response: dict[str, Any] = {
        "kind": kind,
        "within_days": _int(form.get("within_days", ""), "within_days", service.MAX_WITHIN_DAYS),
    }
    if kind == "order":
        min_paid = yuan_to_fen(form.get("min_paid_yuan", ""), "min_paid_yuan")
        if min_paid is not None:
            response["min_paid_fen"] = min_paid
        if form.get("sku", "").strip():
            response["sku"] = form["sku"].strip()
    try:
        percent = float(form.get("control_percent", "10") or "10")
        if not math.isfinite(percent):
            raise ValueError(percent)
    except ValueError as exc:
        raise Unprocessable(
            f"control_percent: {form.get('control_percent')!r} is not a number",
            code="form.not_number",
            params={"field": "control_percent", "value": form.get("control_percent", "")},
        ) from exc
    return service.Draft(
        name=form.get("name", "").strip(),
        segment=form.get("segment", ""),
        template=form.get("template", ""),
        response=response,
        goal=form.get("goal", "").strip(),
        control_percent=percent,
        control_seed=form.get("control_seed", "").strip(),
        budget_messages=_int(form.get("budget_messages", ""), "budget_messages", MAX_BUDGET_MESSAGES),
        message_cost_fen=yuan_to_fen(form.get("message_cost_yuan", ""), "message_cost_yuan") or 0,
    )


def schedule_from_form(form: dict[str, list[str]], tz: Any) -> dict[str, Any]:
    """A schedule document from the schedule form: a local date and time for ``once`` (in the programme's time
    zone, as the calendar shows it), a time of day and the recurrence's fields otherwise."""

    def one(name: str) -> str:
        return (form.get(name) or [""])[0].strip()

    kind = one("kind")
    if kind not in SCHEDULE_KINDS:
        raise Unprocessable(f"kind must be one of {', '.join(SCHEDULE_KINDS)}")
    if kind == "once":
        try:
            local = datetime.fromisoformat(one("at"))
        except ValueError as exc:
            raise Unprocessable(
                f"at: {one('at')!r} is not a date and time",
                code="form.not_datetime",
                params={"field": "at", "value": one("at")},
            ) from exc
        # a browser's datetime-local has no offset: it is the programme's local time, as the calendar shows it
        return {"kind": "once", "at": (local if local.tzinfo else local.replace(tzinfo=tz)).isoformat()}
    doc: dict[str, Any] = {"kind": kind, "time": one("time")}
    if kind == "weekly":
        doc["weekdays"] = [_int(d, "weekdays", 7) for d in form.get("weekdays", [])]
    if kind in ("monthly", "yearly"):
        doc["day"] = _int(one("day"), "day", 31)
    if kind == "yearly":
        doc["month"] = _int(one("month"), "month", 12)
    for key in ("from", "until"):
        if one(key):
            doc[key] = one(key)
    return doc


# -------------------------------------------------------------------------------------------------------------
# view models


@dataclass(frozen=True, slots=True)
class CampaignRow:
    campaign: Campaign
    segment: str


@dataclass(frozen=True, slots=True)
class CampaignChoices:
    segments: list[Segment]
    templates: list[MessageTemplate]


async def campaign_rows(session: AsyncSession) -> tuple[list[CampaignRow], CampaignChoices]:
    segs = await segments.list_segments(session)
    names = {s.id: s.name for s in segs}
    rows = [
        CampaignRow(c, names.get(c.segment_id, str(c.segment_id))) for c in await service.list_all(session)
    ]
    templates = [t for t in await messaging.list_templates(session) if t.purpose == "marketing"]
    return rows, CampaignChoices(segs, templates)


@dataclass(frozen=True, slots=True)
class CampaignDetail:
    campaign: Campaign
    segment: str
    template: str
    runs: list[CampaignRun]
    report: evaluation.Report
    chart: Markup
    #: Whether a run has sent (or is sending): before that the page says there is nothing to report yet,
    #: instead of a chart of two 0.0 % bars, "+0.0 [-100.0, +100.0]" and "too small (treated 0, control 0)".
    reported: bool
    #: Why the pooled total cannot support a conclusion, as figures the page words in its own language (the
    #: API's reason is an English sentence).
    too_small: stats.TooSmall | None


#: The report chart's words on a Chinese page (:data:`tongcrm.campaigns.chart.WORDS` has the English ones).
CHART_WORDS_ZH: Mapping[str, str] = {
    "heading": "{title}：响应率，触达组 vs 对照组",
    "treated": "触达组",
    "control": "对照组",
    "run": "第 {n} 次",
    "total": "合计",
    "all": "全部参与者",
    "too_small": "样本太小",
    "uplift": "{absolute:+.1f} 个百分点 [{low:+.1f}, {high:+.1f}]",
    "of": "{n} 人中 {rate}",
}


async def campaign_detail(session: AsyncSession, name: str, lang: str = "en") -> CampaignDetail:
    campaign = await service.get(session, name)
    segment = await session.get(Segment, campaign.segment_id)
    template = await session.get(MessageTemplate, campaign.template_id)
    report = await evaluation.report(session, campaign)
    treated, held = report.total.figures.treated, report.total.figures.held
    return CampaignDetail(
        campaign,
        segment.name if segment else str(campaign.segment_id),
        template.name if template else str(campaign.template_id),
        await service.runs(session, campaign.id),
        report,
        # chart.render escapes every text it writes; it is the same document /report.svg answers
        Markup(chart.render(report, CHART_WORDS_ZH if lang == "zh" else chart.WORDS)),  # noqa: S704 - chart.render escapes every text it writes
        any(r.run.status in RUN_SENT for r in report.runs),
        stats.too_small_why(treated.responders, treated.eligible, held.responders, held.eligible),
    )


@dataclass(frozen=True, slots=True)
class Day:
    on: date
    in_month: bool
    entries: list[calendar.Entry] = field(default_factory=list)
    marks: list[CalendarMark] = field(default_factory=list)
    clashes: list[calendar.Clash] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Month:
    first: date
    previous: str
    next: str
    weeks: list[list[Day]]
    care_flows: list[str]
    timezone: str
    segment_names: dict[int, str]
    clashes: list[calendar.Clash]


def month_of(text: str | None, today: date) -> date:
    if not text:
        return today.replace(day=1)
    try:
        year, month = (int(p) for p in text.split("-"))
        return date(year, month, 1)
    except ValueError as exc:
        raise Unprocessable(f"month must look like 2026-11, not {text!r}") from exc


async def month_view(session: AsyncSession, first: date, tz: Any) -> Month:
    """The calendar's month as weeks Monday to Sunday, days outside the month included to fill the weeks."""
    weeks_days = monthly.Calendar(firstweekday=0).monthdatescalendar(first.year, first.month)
    built = await calendar.build(session, weeks_days[0][0], weeks_days[-1][-1], tz=tz)
    days = {d: Day(d, d.month == first.month) for week in weeks_days for d in week}
    for entry in built.entries:
        days[entry.day].entries.append(entry)
    for clash in built.clashes:
        days[clash.day].clashes.append(clash)
    # the marks again as rows: the page offers to remove each one by its id
    marks = await session.execute(
        sa.select(CalendarMark)
        .where(CalendarMark.on >= weeks_days[0][0], CalendarMark.on <= weeks_days[-1][-1])
        .order_by(CalendarMark.on, CalendarMark.id)
    )
    for mark in marks.scalars():
        days[mark.on].marks.append(mark)
    names = {s.id: s.name for s in await segments.list_segments(session)}
    prev_month = (first - timedelta(days=1)).replace(day=1)
    next_month = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return Month(
        first,
        prev_month.strftime("%Y-%m"),
        next_month.strftime("%Y-%m"),
        [[days[d] for d in week] for week in weeks_days],
        built.care_flows,
        built.timezone,
        names,
        [c for c in built.clashes if c.day.month == first.month],
    )


# -------------------------------------------------------------------------------------------------------------
# pages


async def _list_page(
    request: Request[Any, Any, Any], *, form: dict[str, str] | None = None, problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:  # fmt: skip
    async with request.app.state.read_sessions() as session:
        rows, choices = await campaign_rows(session)
    return render(
        request,
        "campaigns/list.html",
        {
            "rows": rows,
            "choices": choices,
            "form": form or {},
            "problem": problem,
            "response_kinds": RESPONSE_KINDS,
        },
        title="camp.title",
        status_code=status_code,
    )


async def _detail_page(
    request: Request[Any, Any, Any],
    name: str,
    *,
    problem: str | None = None,
    status_code: int = 200,
    typed: dict[str, list[str]] | None = None,
) -> Response[str]:
    """The campaign's page; after a refused schedule, ``typed`` (the schedule form as posted) fills the form
    again, so the operator corrects what was refused instead of typing it all anew."""
    async with request.app.state.read_sessions() as session:
        detail = await campaign_detail(session, name, context_of(request).lang)
        tz = await programme_tz(session, request.app.state.settings)
    return render(
        request,
        "campaigns/detail.html",
        {
            "d": detail,
            "problem": problem,
            "schedule_kinds": SCHEDULE_KINDS,
            "typed": typed or {},
            "timezone": str(tz),
            "min_group": stats.MIN_GROUP,
            "min_expected": f"{stats.MIN_EXPECTED:g}",
            "pct": lambda x: f"{x * 100:.1f}%",
            "pts": lambda x: f"{x * 100:+.1f}",
        },
        title="camp.detail_title",
        status_code=status_code,
    )


class CampaignPages(ConsoleController):
    path = CAMPAIGNS

    @get("/", opt=page())
    async def list_page(self, request: Request[Any, Any, Any]) -> Response[str]:
        return await _list_page(request)

    @post("/", opt=action(*WRITE_ROLES))
    async def create(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await form_fields(request)
        try:
            draft = draft_from_form(form)
            async with transaction(request.app.state.sessions) as session:
                created = await service.create(session, draft, actor_of(request))
                name = created.name
        except TongcrmError as exc:
            if not _refusable(exc):
                raise
            return await _list_page(
                request, form=form, problem=problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, f"{CAMPAIGNS}/{name}?created=1")

    @get("/{name:str}", opt=page())
    async def show(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
        return await _detail_page(request, name)

    @post("/{name:str}/schedule", opt=action(*WRITE_ROLES))
    async def schedule(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        form = await form_lists(request)
        state = request.app.state
        try:
            async with transaction(state.sessions) as session:
                tz = await programme_tz(session, state.settings)
                document = schedule_from_form(form, tz)
                await service.schedule(
                    session, state.host, actor_of(request), name, document, now=utcnow(), tz=tz
                )
        except InvalidSchedule as exc:
            shown = explain_text(context_of(request).lang, str(exc))
            return await _detail_page(request, name, problem=shown, status_code=422, typed=form)
        except TongcrmError as exc:
            if not _refusable(exc):
                raise
            return await _detail_page(
                request, name, problem=problem_text(request, exc), status_code=exc.status_code, typed=form
            )
        return redirect(request, f"{CAMPAIGNS}/{name}?scheduled=1")

    @post("/{name:str}/cancel", opt=action(*WRITE_ROLES))
    async def cancel(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        try:
            async with transaction(request.app.state.sessions) as session:
                await service.cancel(session, actor_of(request), name, now=utcnow())
        except TongcrmError as exc:
            if not _refusable(exc):
                raise
            return await _detail_page(
                request, name, problem=problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, f"{CAMPAIGNS}/{name}?cancelled=1")


class CareFlowPage(ConsoleController):
    path = PREFIX + "/care-flows"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        async with request.app.state.read_sessions() as session:
            reports = await flows.reports(session)
        return render(request, "campaigns/care_flows.html", {"reports": reports}, title="care.title")


async def _calendar_page(
    request: Request[Any, Any, Any], month: str | None, *, problem: str | None = None, status_code: int = 200
) -> Response[str]:
    state = request.app.state
    async with state.read_sessions() as session:
        tz = await programme_tz(session, state.settings)
        first = month_of(month, utcnow().astimezone(tz).date())
        view = await month_view(session, first, tz)
    return render(
        request,
        "campaigns/calendar.html",
        {"m": view, "problem": problem, "mark_kinds": calendar.MARK_KINDS},
        title="cal.title",
        status_code=status_code,
    )


class CalendarPage(ConsoleController):
    path = CALENDAR

    @get("/", opt=page())
    async def show(
        self,
        request: Request[Any, Any, Any],
        month: Annotated[str | None, QueryParameter(pattern=r"^\d{4}-\d{1,2}$", max_length=7)] = None,
    ) -> Response[str]:
        return await _calendar_page(request, month)

    @post("/marks", opt=action(*WRITE_ROLES))
    async def add_mark(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await form_fields(request)
        try:
            on = date.fromisoformat(form.get("on", ""))
        except ValueError:
            refused = Unprocessable(
                f"on: {form.get('on')!r} is not a date",
                code="form.not_date",
                params={"field": "on", "value": form.get("on", "")[:40]},
            )
            return await _calendar_page(
                request, None, problem=problem_text(request, refused), status_code=422
            )
        try:
            async with transaction(request.app.state.sessions) as session:
                await calendar.add_mark(
                    session, actor_of(request), on, form.get("name", "").strip(), form.get("kind", "")
                )
        except TongcrmError as exc:
            if not _refusable(exc):
                raise
            month = on.strftime("%Y-%m")
            return await _calendar_page(
                request, month, problem=problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, f"{CALENDAR}?month={on.strftime('%Y-%m')}")

    @post("/marks/{mark_id:int}/remove", opt=action(*WRITE_ROLES))
    async def remove_mark(self, request: Request[Any, Any, Any], mark_id: PathId) -> Response[Any]:
        form = await form_fields(request)
        async with transaction(request.app.state.sessions) as session:
            await calendar.remove_mark(session, actor_of(request), mark_id)
        month = form.get("month", "")
        return redirect(request, f"{CALENDAR}?month={month}" if _MONTH.match(month) else CALENDAR)
