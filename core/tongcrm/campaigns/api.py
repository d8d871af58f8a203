"""Campaigns HTTP API: create a draft, schedule, cancel, list runs, and the report (JSON and SVG). Thin: roles
and shapes here, logic in :mod:`tongcrm.campaigns.service` and :mod:`tongcrm.campaigns.evaluation`.

Operators and up create, schedule and cancel; analysts and up read reports. Refusals (an empty audience, a
template without opt-out wording, a schedule in the past, a control share outside 0–50 %, a budget exceeded) are
422 problems saying why; nothing is queued.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal
from tongcrm.campaigns import calendar, chart, evaluation, journeys, service
from tongcrm.campaigns.models import RUN_REASONS, CalendarMark, Campaign, CampaignRun, Journey
from tongcrm.config import Settings
from tongcrm.db.base import utcnow
from tongcrm.db.lengths import fits
from tongcrm.messaging.models import MessageTemplate
from tongcrm.plugin.host import PluginHost
from tongcrm.points.ledger import MAX_BALANCE, MAX_ENTRY_POINTS
from tongcrm.programme import service as programme
from tongcrm.segments.models import Segment

Sessions = async_sessionmaker[AsyncSession]
#: Points a campaign grants each treated member: at most what one ledger entry may move.
BenefitPoints = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_ENTRY_POINTS, description="points per treated member")
]
#: A points budget: at most what a balance may hold.
PointsBudget = Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE, description="points all runs may grant")]


class CampaignIn(msgspec.Struct):
    name: Annotated[str, fits(Campaign.name)]
    #: the segment's name or id
    segment: Annotated[str, fits(Segment.name)]
    template: Annotated[str, fits(MessageTemplate.name)]
    response: dict[str, Any]
    goal: Annotated[str, fits(Campaign.goal)] = ""
    control_percent: float = 10.0
    control_seed: Annotated[str, fits(Campaign.control_seed)] = ""
    budget_messages: int | None = None
    message_cost_fen: int = 0
    benefit_points: BenefitPoints = 0
    budget_points: PointsBudget | None = None
    #: Most entitlement grants all runs together may make (none: no limit).
    budget_entitlements: Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE)] | None = None
    #: ``{"kind": "monthly_coupon", "value": 1000, "validity_days": 14, "cost_fen": 1000}``: granted to each
    #: treated member of a run, never to the control group.
    benefit_entitlement: dict[str, Any] | None = None


class ScheduleIn(msgspec.Struct):
    schedule: dict[str, Any]


class CampaignOut(msgspec.Struct):
    id: int
    name: str
    goal: str
    status: str
    segment_id: int
    template_id: int
    control_percent: float
    control_seed: str
    response: dict[str, Any]
    budget_messages: int | None
    message_cost_fen: int
    benefit_points: int
    budget_points: int | None
    benefit_entitlement: dict[str, Any] | None
    budget_entitlements: int | None
    schedule: dict[str, Any] | None
    next_run_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime


#: What ``reason_code`` says in the API's reference.
REASON_CODE_HELP = (
    "why a refused run sent nothing, as a code: one of "
    + ", ".join(RUN_REASONS)
    + "; null when the run was not refused, or was refused before codes were stored (then only `reason` says"
    " why)"
)
REASON_PARAMS_HELP = (
    "the figures `reason_code` words the refusal with (e.g. members, budget and left for an over_budget code;"
    " for campaign_run.could_not_start the inner refusal's code, params and English message); null when there"
    " are none"
)


class RunOut(msgspec.Struct):
    id: int
    scheduled_for: datetime
    started_at: datetime
    segment_version: int
    status: str
    #: The refusal in English (as before the codes; kept for readers of the text).
    reason: str
    audience: int
    control: int
    points_granted: int
    entitlements_granted: int
    reason_code: Annotated[str | None, msgspec.Meta(description=REASON_CODE_HELP)]
    reason_params: Annotated[dict[str, Any] | None, msgspec.Meta(description=REASON_PARAMS_HELP)]


class GroupOut(msgspec.Struct):
    eligible: int
    responders: int
    response_rate: float
    orders: int
    revenue_fen: int


class OutcomeOut(msgspec.Struct):
    audience: int
    control: int
    sent: int
    delivered: int
    failed: int
    pending: int
    refused: dict[str, int]
    opted_out: int
    points_granted: int
    entitlements_granted: int
    entitlement_cost_fen: int
    treated: GroupOut
    control_group: GroupOut
    uplift: float
    uplift_low: float
    uplift_high: float
    relative_uplift: float | None
    conclusion: str
    too_small: str | None
    incremental_orders: float
    incremental_revenue_fen: int
    cost_fen: int
    cost_per_incremental_order_fen: int | None
    points_per_incremental_order: int | None


class RunReportOut(msgspec.Struct):
    run: RunOut
    outcome: OutcomeOut


class ReportOut(msgspec.Struct):
    campaign: str
    status: str
    interval: str
    runs: list[RunReportOut]
    total: OutcomeOut


def campaign_out(c: Campaign) -> CampaignOut:
    return CampaignOut(
        c.id, c.name, c.goal, c.status, c.segment_id, c.template_id, c.control_bp / 100, c.control_seed,
        dict(c.response), c.budget_messages, c.message_cost_fen, c.benefit_points, c.budget_points, c.benefit_entitlement, c.budget_entitlements, c.schedule, c.next_run_at, c.created_by,
        c.created_at, c.updated_at,
    )  # fmt: skip


def run_out(r: CampaignRun) -> RunOut:
    return RunOut(
        r.id, r.scheduled_for, r.started_at, r.segment_version, r.status, r.reason, r.audience, r.control,
        r.points_granted, r.entitlements_granted, r.reason_code or None,
        dict(r.reason_params) if r.reason_params else None,
    )  # fmt: skip


def _group(g: evaluation.GroupFigures) -> GroupOut:
    rate = g.responders / g.eligible if g.eligible else 0.0
    return GroupOut(g.eligible, g.responders, rate, g.orders, g.revenue_fen)


def outcome_out(o: evaluation.Outcome) -> OutcomeOut:
    f, u = o.figures, o.uplift
    return OutcomeOut(
        f.audience, f.control, f.sent, f.delivered, f.failed, f.pending, dict(sorted(f.refused.items())),
        f.opted_out, f.points_granted, f.entitlements_granted, f.entitlement_cost_fen, _group(f.treated), _group(f.held), u.absolute, u.low, u.high, u.relative,
        u.conclusion, u.too_small, o.incremental_orders, o.incremental_revenue_fen, o.cost_fen,
        o.cost_per_incremental_order_fen, o.points_per_incremental_order,
    )  # fmt: skip


def report_out(r: evaluation.Report) -> ReportOut:
    return ReportOut(
        r.campaign.name,
        r.campaign.status,
        "newcombe-95",
        [RunReportOut(run_out(x.run), outcome_out(x.outcome)) for x in r.runs],
        outcome_out(r.total),
    )


async def programme_tz(session: AsyncSession, settings: Settings) -> ZoneInfo:
    return ZoneInfo((await programme.current(session, settings)).timezone)


class CampaignController(Controller):
    path = "/api/campaigns"
    tags = ["campaigns"]

    @post("/", opt=requires(*WRITE_ROLES), status_code=201, summary="Create a campaign (a draft; audited)")
    async def create(
        self,
        data: JSONBody[CampaignIn],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> CampaignOut:
        draft = service.Draft(
            data.name, data.segment, data.template, data.response, data.goal, data.control_percent,
            data.control_seed, data.budget_messages, data.message_cost_fen, data.benefit_points, data.budget_points,
            data.benefit_entitlement, data.budget_entitlements,
        )  # fmt: skip
        async with sessions() as session, session.begin():
            return campaign_out(await service.create(session, draft, Actor.of(principal)))

    @get("/", opt=requires(*READ_ROLES), summary="Campaigns, by name")
    async def list_campaigns(self, read_sessions: NamedDependency[Sessions]) -> list[CampaignOut]:
        async with read_sessions() as session:
            return [campaign_out(c) for c in await service.list_all(session)]

    @get("/{name:str}", opt=requires(*READ_ROLES), summary="One campaign")
    async def get_campaign(
        self, name: FromPath[str], read_sessions: NamedDependency[Sessions]
    ) -> CampaignOut:
        async with read_sessions() as session:
            return campaign_out(await service.get(session, name))

    @post("/{name:str}/schedule", opt=requires(*WRITE_ROLES), status_code=200, summary="Schedule a campaign")
    async def schedule(
        self,
        name: FromPath[str],
        data: JSONBody[ScheduleIn],
        sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> CampaignOut:
        async with sessions() as session, session.begin():
            tz = await programme_tz(session, settings)
            campaign = await service.schedule(
                session, host, Actor.of(principal), name, data.schedule, now=utcnow(), tz=tz
            )
            return campaign_out(campaign)

    @post("/{name:str}/cancel", opt=requires(*WRITE_ROLES), status_code=200, summary="Cancel a campaign")
    async def cancel(
        self, name: FromPath[str], sessions: NamedDependency[Sessions], principal: NamedDependency[Principal]
    ) -> CampaignOut:
        async with sessions() as session, session.begin():
            return campaign_out(await service.cancel(session, Actor.of(principal), name, now=utcnow()))

    @get("/{name:str}/runs", opt=requires(*READ_ROLES), summary="A campaign's runs, oldest first")
    async def list_runs(self, name: FromPath[str], read_sessions: NamedDependency[Sessions]) -> list[RunOut]:
        async with read_sessions() as session:
            campaign = await service.get(session, name)
            return [run_out(r) for r in await service.runs(session, campaign.id)]

    @get("/{name:str}/report", opt=requires(*READ_ROLES), summary="Evaluation per run and in total")
    async def report(self, name: FromPath[str], read_sessions: NamedDependency[Sessions]) -> ReportOut:
        async with read_sessions() as session:
            campaign = await service.get(session, name)
            return report_out(await evaluation.report(session, campaign))

    @get("/{name:str}/report.svg", opt=requires(*READ_ROLES), summary="The report as an SVG chart")
    async def report_svg(
        self, name: FromPath[str], read_sessions: NamedDependency[Sessions]
    ) -> Response[str]:
        async with read_sessions() as session:
            campaign = await service.get(session, name)
            svg = chart.render(await evaluation.report(session, campaign))
        return Response(svg, media_type="image/svg+xml")


class MarkIn(msgspec.Struct):
    on: date
    name: Annotated[str, fits(CalendarMark.name)]
    kind: Annotated[str, fits(CalendarMark.kind)] = "festival"


class MarkOut(msgspec.Struct):
    id: int
    on: date
    name: str
    kind: str


class EntryOut(msgspec.Struct):
    day: date
    at: datetime | None
    kind: str
    name: str
    campaign: str | None
    segment_id: int | None
    status: str | None
    detail: str
    journey: str | None = None


class ClashOut(msgspec.Struct):
    day: date
    segment_id: int
    campaigns: list[str]


class CalendarOut(msgspec.Struct):
    start: date
    end: date
    timezone: str
    entries: list[EntryOut]
    care_flows: list[str]
    clashes: list[ClashOut]


def calendar_out(c: calendar.Calendar) -> CalendarOut:
    return CalendarOut(
        c.start,
        c.end,
        c.timezone,
        [
            EntryOut(e.day, e.at, e.kind, e.name, e.campaign, e.segment_id, e.status, e.detail, e.journey)
            for e in c.entries
        ],
        c.care_flows,
        [ClashOut(x.day, x.segment_id, x.campaigns) for x in c.clashes],
    )


class CalendarController(Controller):
    path = "/api/calendar"
    tags = ["campaigns"]

    @get(
        "/",
        opt=requires(*READ_ROLES),
        summary="Campaign runs, care flows, marked days and clashes by local day",
    )
    async def show(
        self,
        read_sessions: NamedDependency[Sessions],
        settings: NamedDependency[Settings],
        start: Annotated[date, QueryParameter(name="from", description="first local day")],
        end: Annotated[date, QueryParameter(name="to", description="last local day (inclusive)")],
    ) -> CalendarOut:
        async with read_sessions() as session:
            tz = await programme_tz(session, settings)
            return calendar_out(await calendar.build(session, start, end, tz=tz))

    @post(
        "/marks",
        opt=requires(*WRITE_ROLES),
        status_code=201,
        summary="Mark a day (a festival, 618…; audited)",
    )
    async def add_mark(
        self,
        data: JSONBody[MarkIn],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> MarkOut:
        async with sessions() as session, session.begin():
            mark = await calendar.add_mark(session, Actor.of(principal), data.on, data.name, data.kind)
            return MarkOut(mark.id, mark.on, mark.name, mark.kind)

    @delete(
        "/marks/{mark_id:int}", opt=requires(*WRITE_ROLES), status_code=204, summary="Remove a marked day"
    )
    async def remove_mark(
        self,
        mark_id: PathId,
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> None:
        async with sessions() as session, session.begin():
            await calendar.remove_mark(session, Actor.of(principal), mark_id)


class JourneyIn(msgspec.Struct):
    name: Annotated[str, fits(Journey.name)]
    trigger: dict[str, Any]
    steps: dict[str, Any]
    response: dict[str, Any]
    goal: Annotated[str, fits(Journey.goal)] = ""
    control_percent: float = 10.0
    control_seed: Annotated[str, fits(Journey.control_seed)] = ""
    budget_messages: Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE)] | None = None
    budget_points: PointsBudget | None = None
    message_cost_fen: Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE)] = 0
    #: Most entitlement grants all participants together may receive (none: no limit).
    budget_entitlements: Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE)] | None = None


class JourneyOut(msgspec.Struct):
    id: int
    name: str
    goal: str
    status: str
    trigger: dict[str, Any]
    steps: dict[str, Any]
    control_percent: float
    control_seed: str
    response: dict[str, Any]
    budget_messages: int | None
    budget_points: int | None
    message_cost_fen: int
    budget_entitlements: int | None
    #: Participants by state (``waiting``, ``done``).
    participants: dict[str, int]
    created_by: str
    created_at: datetime
    updated_at: datetime


class JourneyReportOut(msgspec.Struct):
    journey: str
    status: str
    interval: str
    participants: dict[str, int]
    branches: dict[str, int]
    total: OutcomeOut


def journey_out(j: Journey, states: dict[str, int]) -> JourneyOut:
    return JourneyOut(
        j.id, j.name, j.goal, j.status, dict(j.trigger), dict(j.steps), j.control_bp / 100, j.control_seed,
        dict(j.response), j.budget_messages, j.budget_points, j.message_cost_fen, j.budget_entitlements, states, j.created_by,
        j.created_at, j.updated_at,
    )  # fmt: skip


class JourneyController(Controller):
    path = "/api/journeys"
    tags = ["campaigns"]

    @post(
        "/", opt=requires(*WRITE_ROLES), status_code=201, summary="Create a journey (active at once; audited)"
    )
    async def create(
        self,
        data: JSONBody[JourneyIn],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> JourneyOut:
        draft = journeys.Draft(
            data.name, data.trigger, data.steps, data.response, data.goal, data.control_percent, data.control_seed,
            data.budget_messages, data.budget_points, data.message_cost_fen, data.budget_entitlements,
        )  # fmt: skip
        async with sessions() as session, session.begin():
            journey = await journeys.create(session, draft, Actor.of(principal), now=utcnow())
            return journey_out(journey, {})

    @get("/", opt=requires(*READ_ROLES), summary="Journeys, by name")
    async def list_journeys(self, read_sessions: NamedDependency[Sessions]) -> list[JourneyOut]:
        async with read_sessions() as session:
            return [
                journey_out(j, await journeys.participant_states(session, j.id))
                for j in await journeys.list_all(session)
            ]

    @get("/{name:str}", opt=requires(*READ_ROLES), summary="One journey, with its participants by state")
    async def get_journey(self, name: FromPath[str], read_sessions: NamedDependency[Sessions]) -> JourneyOut:
        async with read_sessions() as session:
            journey = await journeys.get(session, name)
            return journey_out(journey, await journeys.participant_states(session, journey.id))

    @post("/{name:str}/pause", opt=requires(*WRITE_ROLES), status_code=200, summary="Pause a journey")
    async def pause(
        self, name: FromPath[str], sessions: NamedDependency[Sessions], principal: NamedDependency[Principal]
    ) -> JourneyOut:
        async with sessions() as session, session.begin():
            journey = await journeys.set_status(session, Actor.of(principal), name, "paused", now=utcnow())
            return journey_out(journey, await journeys.participant_states(session, journey.id))

    @post(
        "/{name:str}/resume", opt=requires(*WRITE_ROLES), status_code=200, summary="Resume a paused journey"
    )
    async def resume(
        self, name: FromPath[str], sessions: NamedDependency[Sessions], principal: NamedDependency[Principal]
    ) -> JourneyOut:
        async with sessions() as session, session.begin():
            journey = await journeys.set_status(session, Actor.of(principal), name, "active", now=utcnow())
            return journey_out(journey, await journeys.participant_states(session, journey.id))

    @get(
        "/{name:str}/report", opt=requires(*READ_ROLES), summary="A journey's evaluation against its control"
    )
    async def report(self, name: FromPath[str], read_sessions: NamedDependency[Sessions]) -> JourneyReportOut:
        async with read_sessions() as session:
            r = await journeys.report(session, await journeys.get(session, name))
        return JourneyReportOut(
            r.journey.name, r.journey.status, "newcombe-95", r.states, r.branches, outcome_out(r.total)
        )

    @get("/{name:str}/report.svg", opt=requires(*READ_ROLES), summary="A journey's report as an SVG chart")
    async def report_svg(
        self, name: FromPath[str], read_sessions: NamedDependency[Sessions]
    ) -> Response[str]:
        async with read_sessions() as session:
            svg = chart.render_journey(await journeys.report(session, await journeys.get(session, name)))
        return Response(svg, media_type="image/svg+xml")
