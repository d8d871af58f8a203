"""Campaigns as a service: create a draft, schedule it, run it (freeze the audience, split the control group,
queue the first page of messages; :mod:`tongcrm.campaigns.feed` writes the rest as the dispatcher drains them),
cancel it, and finish it. No HTTP here.

A run is one transaction: the run row (unique per campaign and scheduled moment), its frozen audience and its
first page of queued messages commit together or not at all, so a scheduler that dies mid-run leaves nothing half done and the
next tick runs it whole. Each message's send-log key carries the run (``campaign.<name>:<member>:-:run<id>``):
one message per member per run, whatever is replayed. The contact policy (consent, opt-outs, quiet hours,
fatigue budgets) decides each message when the dispatcher sends it, for the control group too — where it would
have sent, a control member's message is refused with reason ``hold-out`` — so the two groups are eligible alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.campaigns import control, feed
from tongcrm.campaigns import schedule as sched
from tongcrm.campaigns.feed import flow_of as flow_of
from tongcrm.campaigns.feed import occasion_of as occasion_of
from tongcrm.campaigns.models import RUN_SENT, Campaign, CampaignAudience, CampaignRun
from tongcrm.db.base import UTCDateTime
from tongcrm.db.dialect import dialect_name, insert
from tongcrm.entitlements import service as entitlements
from tongcrm.errors import Conflict, NotFound, TongcrmError, Unprocessable
from tongcrm.logging import get_logger
from tongcrm.messaging import service as messaging
from tongcrm.messaging import templates as tpl
from tongcrm.messaging.jobs import request_dispatch
from tongcrm.plugin.host import PluginHost
from tongcrm.points import service as points
from tongcrm.segments import service as segments
from tongcrm.segments.compiler import members

log = get_logger(__name__)

_NAME = re.compile(r"^(?![0-9]+$)[a-z0-9][a-z0-9_-]{0,63}$")
RESPONSE_KINDS = ("order", "store_visit", "redemption")
MAX_WITHIN_DAYS = 90
_PAGE = 5000
#: Statuses a campaign can be cancelled from.
_OPEN = ("draft", "scheduled", "running")


def check_response(doc: Any) -> dict[str, Any]:
    """The response definition, checked: what counts as a member responding to a run."""
    if not isinstance(doc, Mapping):
        raise Unprocessable("response must be an object with a 'kind'", extra={"pointer": "/response"})
    kind = doc.get("kind")
    if kind not in RESPONSE_KINDS:
        raise Unprocessable(
            f"response kind {kind!r} is unknown; use one of {', '.join(RESPONSE_KINDS)}",
            extra={"pointer": "/response/kind"},
        )
    within = doc.get("within_days")
    if not isinstance(within, int) or isinstance(within, bool) or not 1 <= within <= MAX_WITHIN_DAYS:
        raise Unprocessable(
            f"response within_days must be a whole number of days from 1 to {MAX_WITHIN_DAYS}",
            extra={"pointer": "/response/within_days"},
        )
    out: dict[str, Any] = {"kind": kind, "within_days": within}
    if kind == "order":
        minimum = doc.get("min_paid_fen")
        if minimum is not None:
            if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 0:
                raise Unprocessable(
                    "response min_paid_fen is an amount in fen, 0 or more",
                    extra={"pointer": "/response/min_paid_fen"},
                )
            out["min_paid_fen"] = minimum
        sku = doc.get("sku")
        if sku is not None:
            if not isinstance(sku, str) or not sku.strip() or len(sku) > 100:
                raise Unprocessable(
                    "response sku is a product code of 1 to 100 characters",
                    extra={"pointer": "/response/sku"},
                )
            out["sku"] = sku.strip()
    unknown = set(doc) - {"kind", "within_days", "min_paid_fen", "sku"}
    if unknown or (kind != "order" and {"min_paid_fen", "sku"} & set(doc)):
        raise Unprocessable(
            f"response has fields its kind {kind!r} does not take: {', '.join(sorted(set(doc) - set(out)))}",
            extra={"pointer": "/response"},
        )
    return out


@dataclass(frozen=True, slots=True)
class Draft:
    name: str
    segment: str
    template: str
    response: Mapping[str, Any]
    goal: str = ""
    control_percent: float = 10.0
    control_seed: str = ""
    budget_messages: int | None = None
    message_cost_fen: int = 0
    benefit_points: int = 0
    budget_points: int | None = None
    #: An entitlement granted to each treated member of a run (:func:`entitlements.check_benefit`).
    benefit_entitlement: Mapping[str, Any] | None = None
    #: Most entitlement grants all runs together may make (None: no limit).
    budget_entitlements: int | None = None


def check_basics(
    what: str,
    name: str,
    goal: str,
    control_percent: float,
    control_seed: str,
    amounts: Mapping[str, int | None],
) -> int:
    """What campaigns and journeys check alike — the name, the goal, the control share (returned in basis points)
    and seed, amounts that cannot be negative — each refusal a 422 naming the field."""
    if not _NAME.match(name):
        raise Unprocessable(
            f"{what} name {name!r} is invalid: 1 to 64 of a-z, 0-9, '-' and '_', not digits only",
            extra={"pointer": "/name"},
            code="campaign.name_invalid",
            params={"name": name[:40]},
        )
    if len(goal) > 500:
        raise Unprocessable("goal is longer than 500 characters", extra={"pointer": "/goal"})
    try:
        bp = control.share_bp(control_percent)
    except ValueError as exc:
        raise Unprocessable(str(exc), extra={"pointer": "/control_percent"}) from exc
    if len(control_seed) > 64:
        raise Unprocessable("control_seed is longer than 64 characters", extra={"pointer": "/control_seed"})
    for field, value in amounts.items():
        if value is not None and value < 0:
            raise Unprocessable(f"{field} cannot be negative", extra={"pointer": f"/{field}"})
    return bp


async def create(session: AsyncSession, draft: Draft, actor: Actor) -> Campaign:
    """A new campaign in ``draft``; everything it refers to is checked now, not at its first run."""
    bp = check_basics(
        "campaign", draft.name, draft.goal, draft.control_percent, draft.control_seed,
        {"budget_messages": draft.budget_messages, "message_cost_fen": draft.message_cost_fen,
         "benefit_points": draft.benefit_points, "budget_points": draft.budget_points,
         "budget_entitlements": draft.budget_entitlements},
    )  # fmt: skip
    response = check_response(draft.response)
    benefit = (
        None if draft.benefit_entitlement is None else entitlements.check_benefit(draft.benefit_entitlement)
    )
    segment = await segments.get_segment(session, draft.segment)
    template = await messaging.get_template(session, draft.template)
    if template.purpose != "marketing":
        raise Unprocessable(
            f"template {template.name!r} is a {template.purpose} template; a campaign sends marketing",
            extra={"pointer": "/template"},
        )
    if not tpl.has_opt_out_wording(template.text):
        raise Unprocessable(
            f"template {template.name!r} lacks the opt-out wording marketing must carry (like 拒收请回复R)",
            extra={"pointer": "/template"},
            code="campaign.no_opt_out",
            params={"template": template.name},
        )
    if (await session.execute(sa.select(Campaign.id).where(Campaign.name == draft.name))).first():
        raise Conflict(
            f"a campaign named {draft.name!r} already exists",
            code="campaign.exists",
            params={"name": draft.name},
        )
    campaign = Campaign(
        name=draft.name,
        goal=draft.goal,
        segment_id=segment.id,
        template_id=template.id,
        control_bp=bp,
        control_seed=draft.control_seed,
        response=response,
        budget_messages=draft.budget_messages,
        message_cost_fen=draft.message_cost_fen,
        benefit_points=draft.benefit_points,
        budget_points=draft.budget_points,
        benefit_entitlement=benefit,
        budget_entitlements=draft.budget_entitlements,
        schedule=None,
        status="draft",
        created_by=actor.name,
    )
    session.add(campaign)
    await session.flush()
    audit.record(session, actor, "campaign.create", "campaign", campaign.id, after=describe(campaign))
    return campaign


def describe(c: Campaign) -> dict[str, Any]:
    """The audited view of a campaign (no personal data in it)."""
    return {
        "name": c.name,
        "status": c.status,
        "segment_id": c.segment_id,
        "template_id": c.template_id,
        "control_bp": c.control_bp,
        "control_seed": c.control_seed,
        "response": c.response,
        "budget_messages": c.budget_messages,
        "benefit_points": c.benefit_points,
        "budget_points": c.budget_points,
        "benefit_entitlement": c.benefit_entitlement,
        "budget_entitlements": c.budget_entitlements,
        "schedule": c.schedule,
        "next_run_at": c.next_run_at.isoformat() if c.next_run_at else None,
    }


async def get(session: AsyncSession, name: str, *, lock: bool = False) -> Campaign:
    stmt = sa.select(Campaign).where(Campaign.name == name)
    if lock:
        stmt = stmt.with_for_update()
    found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no campaign named {name!r}")
    return found


async def list_all(session: AsyncSession) -> list[Campaign]:
    return list((await session.execute(sa.select(Campaign).order_by(Campaign.name))).scalars())


async def runs(session: AsyncSession, campaign_id: int) -> list[CampaignRun]:
    stmt = (
        sa.select(CampaignRun)
        .where(CampaignRun.campaign_id == campaign_id)
        .order_by(CampaignRun.scheduled_for)
    )
    return list((await session.execute(stmt)).scalars())


async def _queued_to_treatment(session: AsyncSession, campaign_id: int, *, besides: int | None = None) -> int:
    """Messages earlier runs queued to their treatment groups (the budget they used); ``besides`` leaves out
    the run being decided, whose row already exists."""
    used = await session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(CampaignRun.audience - CampaignRun.control), 0)).where(
            CampaignRun.campaign_id == campaign_id,
            CampaignRun.status.in_(RUN_SENT),
            CampaignRun.id != (besides or 0),
        )
    )
    return int(used.scalar_one())


async def _granted(
    session: AsyncSession, column: Any, campaign_id: int, *, besides: int | None = None
) -> int:
    """What earlier runs granted (``CampaignRun.points_granted`` or ``entitlements_granted``): the budget used."""
    used = await session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(column), 0)).where(
            CampaignRun.campaign_id == campaign_id,
            CampaignRun.status.in_(RUN_SENT),
            CampaignRun.id != (besides or 0),
        )
    )
    return int(used.scalar_one())


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """A refusal's ``params`` as a JSON column holds them: numbers, text, booleans and lists of them as they are,
    anything else (a date, a decimal) as its text."""

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value)

    return {str(k): plain(v) for k, v in params.items()}


async def _over_budget(
    session: AsyncSession, campaign: Campaign, treated: int, *, run_id: int | None, first: bool = False
) -> Unprocessable | None:
    """Why a run to ``treated`` members would pass the message, points or entitlement budget (None when it
    fits), as the refusal :func:`schedule` raises: its English message is also a refused run's ``reason``, its
    code and params what the console says in Chinese. Checked before anything is queued or granted, so a refused
    run costs nothing."""
    what = "the first run" if first else "the run"
    if campaign.budget_messages is not None:
        left = campaign.budget_messages - await _queued_to_treatment(session, campaign.id, besides=run_id)
        if treated > left:
            return Unprocessable(
                f"budget exceeded: {what} would message {treated} members and {left} messages are left"
                f" of the budget of {campaign.budget_messages}",
                code="campaign.over_budget_messages",
                params={"treated": treated, "left": left, "budget": campaign.budget_messages},
            )
    if campaign.budget_points is not None and campaign.benefit_points:
        needed = treated * campaign.benefit_points
        left = campaign.budget_points - await _granted(
            session, CampaignRun.points_granted, campaign.id, besides=run_id
        )
        if needed > left:
            return Unprocessable(
                f"points budget exceeded: {what} would grant {treated} members × {campaign.benefit_points}"
                f" = {needed} points and {left} points are left of the budget of {campaign.budget_points}",
                code="campaign.over_budget_points",
                params={
                    "treated": treated,
                    "each": campaign.benefit_points,
                    "needed": needed,
                    "left": left,
                    "budget": campaign.budget_points,
                },
            )
    if campaign.budget_entitlements is not None and campaign.benefit_entitlement:
        left = campaign.budget_entitlements - await _granted(
            session, CampaignRun.entitlements_granted, campaign.id, besides=run_id
        )
        if treated > left:
            return Unprocessable(
                f"entitlement budget exceeded: {what} would grant {treated} entitlements and {left} are left"
                f" of the budget of {campaign.budget_entitlements}",
                code="campaign.over_budget_entitlements",
                params={"treated": treated, "left": left, "budget": campaign.budget_entitlements},
            )
    return None


async def schedule(
    session: AsyncSession,
    host: PluginHost,
    actor: Actor,
    name: str,
    document: Any,
    *,
    now: datetime,
    tz: ZoneInfo,
) -> Campaign:
    """Schedule a draft (or reschedule a scheduled campaign). Refused, with the reason, when the schedule is
    in the past or has no run left, when the audience is empty now, or when its first run alone would exceed
    the message budget."""
    campaign = await get(session, name, lock=True)
    if campaign.status not in ("draft", "scheduled"):
        raise Conflict(
            f"campaign {name!r} is {campaign.status}; only a draft or scheduled campaign is (re)scheduled",
            code="campaign.not_schedulable",
            params={"name": name, "status": campaign.status},
        )
    try:
        parsed = sched.parse(document)
    except sched.InvalidSchedule as exc:
        raise Unprocessable(str(exc), extra={"pointer": "/schedule"}) from exc
    if parsed.kind == "once" and parsed.at is not None and parsed.at <= now:
        # said in the programme's zone to the minute, as the operator typed it (it said "2020-01-01T02:00:00+00:00
        # is before now, 2026-12-07T07:45:22.452417+00:00" of a 10:00 typed in Shanghai)
        def shown_local(moment: datetime) -> str:
            return f"{moment.astimezone(tz):%Y-%m-%d %H:%M}"

        raise Unprocessable(
            f"the schedule is in the past ({shown_local(parsed.at)} is before now, {shown_local(now)}, {tz.key})",
            extra={"pointer": "/schedule/at"},
            code="campaign.schedule_past",
            params={"at": shown_local(parsed.at), "now": shown_local(now), "zone": tz.key},
        )
    first = sched.next_after(parsed, now, tz)
    if first is None:
        raise Unprocessable(
            "the schedule has no run left after now",
            extra={"pointer": "/schedule"},
            code="campaign.no_run_left",
        )
    audience = await _count_now(session, host, campaign, now)
    if audience == 0:
        raise Unprocessable(
            "the audience is empty: the campaign's segment has no member now",
            code="campaign.audience_empty",
        )
    if any(
        b is not None
        for b in (campaign.budget_messages, campaign.budget_points, campaign.budget_entitlements)
    ):
        treated = audience - len(await _control_ids_now(session, host, campaign, now))
        over = await _over_budget(session, campaign, treated, run_id=None, first=True)
        if over is not None:
            raise over
    before = describe(campaign)
    campaign.schedule = parsed.document()
    campaign.next_run_at = first
    campaign.status = "scheduled"
    campaign.updated_at = now
    await session.flush()
    audit.record(
        session, actor, "campaign.schedule", "campaign", campaign.id, before=before, after=describe(campaign)
    )
    return campaign


async def cancel(session: AsyncSession, actor: Actor, name: str, *, now: datetime) -> Campaign:
    """Stop a campaign: no further run starts. Messages of runs already started still go out."""
    campaign = await get(session, name, lock=True)
    if campaign.status not in _OPEN:
        raise Conflict(
            f"campaign {name!r} is already {campaign.status}",
            code="campaign.not_open",
            params={"name": name, "status": campaign.status},
        )
    before = describe(campaign)
    campaign.status = "cancelled"
    campaign.next_run_at = None
    campaign.updated_at = now
    await session.flush()
    audit.record(
        session, actor, "campaign.cancel", "campaign", campaign.id, before=before, after=describe(campaign)
    )
    return campaign


async def _prepared(
    session: AsyncSession, host: PluginHost, campaign: Campaign, now: datetime
) -> tuple[segments.Prepared, int]:
    segment = await segments.get_segment(session, campaign.segment_id)
    context = await segments.load_context(session, host, now)
    return await segments.prepared_segment(session, context, segment), segment.version


async def _count_now(session: AsyncSession, host: PluginHost, campaign: Campaign, now: datetime) -> int:
    prepared, _ = await _prepared(session, host, campaign, now)
    return await segments.count(session, prepared)


async def _control_ids_now(
    session: AsyncSession, host: PluginHost, campaign: Campaign, now: datetime
) -> list[int]:
    prepared, _ = await _prepared(session, host, campaign, now)
    out: list[int] = []
    after: int | None = None
    while True:
        ids = await segments.member_ids(session, prepared, after_id=after, limit=_PAGE)
        if not ids:
            return out
        out.extend(control.split(campaign.id, ids, campaign.control_bp, campaign.control_seed))
        after = ids[-1]


def grant_key(campaign: Campaign, run_id: int, member_id: int) -> str:
    """The ledger key of a run's points to one member: once per (campaign, run, member)."""
    return f"campaign:{campaign.id}:run{run_id}:{member_id}"


def entitlement_key_prefix(campaign: Campaign, run_id: int) -> str:
    """The grant key of a run's entitlement to a member, less the member id: once per (campaign, run, member)."""
    return f"campaign:{campaign.id}:run{run_id}:entitlement:"


async def execute_run(
    session: AsyncSession,
    host: PluginHost,
    campaign: Campaign,
    scheduled_for: datetime,
    *,
    now: datetime,
    tz: ZoneInfo,
) -> CampaignRun:
    """Start the run of ``campaign`` due at ``scheduled_for``, or return it if it already exists."""
    prepared, version = await _prepared(session, host, campaign, now)
    run_id = (
        await session.execute(
            insert(session, CampaignRun.__table__)
            .values(
                campaign_id=campaign.id,
                scheduled_for=scheduled_for,
                started_at=now,
                segment_version=version,
                status="queued",
                reason="",
                audience=0,
                control=0,
            )
            .on_conflict_do_nothing(index_elements=["campaign_id", "scheduled_for"])
            .returning(CampaignRun.__table__.c.id)
        )
    ).scalar_one_or_none()
    if run_id is None:
        existing = (
            await session.execute(
                sa.select(CampaignRun).where(
                    CampaignRun.campaign_id == campaign.id, CampaignRun.scheduled_for == scheduled_for
                )
            )
        ).scalar_one()
        return existing
    # freeze the audience and split the control group: one set-based INSERT … SELECT from the segment's compiled
    # SQL, the group drawn by the database (the digest in a fenced subquery, so once per member)
    dialect = dialect_name(session)
    drawn = (
        sa.select(
            members.c.id.label("member_id"),
            control.draw_sql(dialect, campaign.id, members.c.id, campaign.control_seed).label("draw"),
        )
        .where(prepared.condition)
        .offset(0)
        .subquery("drawn")
    )
    await session.execute(
        sa.insert(CampaignAudience).from_select(
            ["run_id", "member_id", "grp"],
            sa.select(
                sa.literal(run_id, CampaignAudience.run_id.type),
                drawn.c.member_id,
                control.group_sql(dialect, drawn.c.draw, campaign.control_bp),
            ),
        )
    )
    counted: dict[str, int] = {}
    groups = await session.execute(
        sa.select(CampaignAudience.grp, sa.func.count())
        .where(CampaignAudience.run_id == run_id)
        .group_by(CampaignAudience.grp)
    )
    for grp, n in groups.all():
        counted[grp] = int(n)
    controlled = int(counted.get(control.CONTROL, 0))
    audience = controlled + int(counted.get(control.TREATMENT, 0))
    run = await session.get(CampaignRun, run_id)
    assert run is not None
    run.audience, run.control = audience, controlled
    reason, code, params = "", "", None
    if audience == 0:
        reason, code = "empty audience: the segment had no member at the run", "campaign_run.empty_audience"
    else:
        over = await _over_budget(session, campaign, audience - controlled, run_id=run_id)
        if over is not None:
            reason, code, params = over.message, over.code or "", over.params
    if reason:
        run.status, run.reason, run.reason_code, run.reason_params = "refused", reason, code, params
        await session.execute(sa.delete(CampaignAudience).where(CampaignAudience.run_id == run_id))
        await session.flush()
        log.warning("campaign run refused", campaign=campaign.name, run_id=run_id, reason=reason)
        return run
    # the first page of messages now (a small audience whole); the rest is written page by page as the
    # dispatcher drains them (:mod:`tongcrm.campaigns.feed`). The contact policy decides each when it is sent.
    await feed.write_page(session, campaign, run, now=now, limit=feed.FIRST_PAGE)
    if campaign.benefit_entitlement:
        run.entitlements_granted = await entitlements.grant_benefit(
            session,
            host,
            campaign.benefit_entitlement,
            sa.select(
                CampaignAudience.member_id,
                sa.literal(entitlement_key_prefix(campaign, run_id))
                + sa.cast(CampaignAudience.member_id, sa.String),
            ).where(CampaignAudience.run_id == run_id, CampaignAudience.grp == control.TREATMENT),
            now=now,
            tz=tz,
        )
    if campaign.benefit_points:
        after = 0
        ctx = points.PointsContext(clock=lambda: now, tz=tz, actor=SYSTEM_ACTOR.name)
        while True:
            treated = list(
                (
                    await session.execute(
                        sa.select(CampaignAudience.member_id)
                        .where(
                            CampaignAudience.run_id == run_id,
                            CampaignAudience.grp == control.TREATMENT,
                            CampaignAudience.member_id > after,
                        )
                        .order_by(CampaignAudience.member_id)
                        .limit(_PAGE)
                    )
                ).scalars()
            )
            if not treated:
                break
            grants = [
                points.Grant(m, campaign.benefit_points, grant_key(campaign, run_id, m)) for m in treated
            ]
            await points.grant_many(session, ctx, grants, reason=f"campaign {campaign.name}, run {run_id}")
            run.points_granted += campaign.benefit_points * len(grants)
            after = treated[-1]
    await request_dispatch(session, now)
    await session.flush()
    log.info(
        "campaign run queued", campaign=campaign.name, run_id=run_id, audience=audience, control=controlled
    )
    return run


SYSTEM_ACTOR = Actor("scheduler", "system")


async def run_due(
    sessions: async_sessionmaker[AsyncSession], host: PluginHost, *, now: datetime, tz: ZoneInfo
) -> list[int]:
    """Start every run that is due, each campaign in its own transaction; then finish campaigns whose last
    response window has closed. Returns the ids of the runs started (or found already started)."""
    started: list[int] = []
    async with sessions() as session:
        due = list(
            (
                await session.execute(
                    sa.select(Campaign.id)
                    .where(Campaign.status.in_(("scheduled", "running")), Campaign.next_run_at <= now)
                    .order_by(Campaign.next_run_at)
                )
            ).scalars()
        )
    for campaign_id in due:
        async with sessions() as session, session.begin():
            campaign = await session.get(Campaign, campaign_id, with_for_update=True)
            if campaign is None or campaign.next_run_at is None or campaign.next_run_at > now:
                continue  # another scheduler got there first
            if campaign.status not in ("scheduled", "running"):
                continue
            before = describe(campaign)
            scheduled_for = campaign.next_run_at
            try:
                async with session.begin_nested():
                    run = await execute_run(session, host, campaign, scheduled_for, now=now, tz=tz)
            except TongcrmError as exc:
                # the segment broke (a tier taken out of the ladder…): this run is refused with the reason, the
                # schedule goes on, and the other campaigns due in this tick still run
                run = CampaignRun(
                    campaign_id=campaign.id, scheduled_for=scheduled_for, started_at=now, segment_version=0,
                    status="refused", reason=f"the run could not start: {exc.message}"[:500], audience=0, control=0,
                    reason_code="campaign_run.could_not_start",
                    reason_params={"code": exc.code, "params": _plain(exc.params), "message": exc.message},
                )  # fmt: skip
                session.add(run)
                await session.flush()
                log.warning("campaign run refused", campaign=campaign.name, reason=run.reason)
            started.append(run.id)
            assert campaign.schedule is not None
            parsed = sched.parse(campaign.schedule)
            following = sched.next_after(parsed, max(scheduled_for, now), tz)
            skipped = scheduled_for < now - timedelta(days=1) and following is not None
            if skipped:
                log.warning("campaign runs missed while the scheduler was down", campaign=campaign.name)
            campaign.next_run_at = following
            campaign.status = "running"
            campaign.updated_at = now
            audit.record(
                session, SYSTEM_ACTOR, "campaign.run", "campaign", campaign.id, before=before,
                after={**describe(campaign), "run_id": run.id, "run_status": run.status, "reason": run.reason},
            )  # fmt: skip
    await finish_done(sessions, now=now)
    return started


def _window_end(dialect: str, started_at: Any, days: Any) -> sa.ColumnElement[datetime]:
    """``started_at`` + ``days`` whole days, in SQL, to the microsecond. SQLite stores a time as naive UTC text
    with six decimals (:class:`~tongcrm.db.base.UTCDateTime`): ``datetime()`` shifts the date and time but drops
    the fraction, which is put back, so the result compares with a bound time as the stored text does."""
    if dialect == "postgresql":
        shifted: Any = started_at + sa.func.make_interval(0, 0, 0, days)
    else:
        shifted = sa.func.datetime(started_at, sa.func.printf("+%d days", days)).op("||")(
            sa.func.substr(started_at, 20)
        )
    return sa.type_coerce(shifted, UTCDateTime())


async def _finish_runs(session: AsyncSession, now: datetime) -> int:
    """Move to ``finished`` the ``queued`` runs fully written to the send log whose response window (the
    campaign's ``within_days`` after the run started) has closed; how many. One statement: the windows are
    compared in SQL, so a tick reads none of the runs still open (it read every queued run into Python)."""
    within = (
        sa.select(Campaign.response["within_days"].as_integer())
        .where(Campaign.id == CampaignRun.campaign_id)
        .scalar_subquery()
    )
    result = cast(
        sa.CursorResult[Any],
        await session.execute(
            sa.update(CampaignRun)
            .where(
                CampaignRun.status == "queued",
                CampaignRun.enqueued >= CampaignRun.audience,
                _window_end(dialect_name(session), CampaignRun.started_at, within) <= now,
            )
            .values(status="finished")
            .execution_options(synchronize_session=False)
        ),
    )
    done = int(result.rowcount or 0)
    if done:
        log.info("campaign runs finished", runs=done)
    return done


async def finish_done(sessions: async_sessionmaker[AsyncSession], *, now: datetime) -> int:
    """Mark ``finished`` every run whose audience is all in the send log and whose response window has closed,
    and every running campaign with no run left whose last response window has closed. (A run used to stay
    ``queued`` for good: nothing moved it after its start, so a finished campaign listed its runs as queued.)"""
    finished = 0
    async with sessions() as session, session.begin():
        await _finish_runs(session, now)
        candidates = list(
            (
                await session.execute(
                    sa.select(Campaign)
                    .where(Campaign.status == "running", Campaign.next_run_at.is_(None))
                    .with_for_update()
                )
            ).scalars()
        )
        for campaign in candidates:
            last = (
                await session.execute(
                    sa.select(sa.func.max(CampaignRun.started_at)).where(
                        CampaignRun.campaign_id == campaign.id
                    )
                )
            ).scalar_one()
            if last is not None and last + timedelta(days=int(campaign.response["within_days"])) > now:
                continue
            before = describe(campaign)
            campaign.status = "finished"
            campaign.updated_at = now
            audit.record(
                session,
                SYSTEM_ACTOR,
                "campaign.finish",
                "campaign",
                campaign.id,
                before=before,
                after=describe(campaign),
            )
            finished += 1
    return finished
