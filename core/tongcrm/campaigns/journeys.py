"""Journeys: triggered campaigns. A member enters a journey when its trigger fires, waits, and then one condition
branch (a saved segment evaluated at that moment) picks one of two actions — a message and/or points. No HTTP.

Triggers come from two places:

* **events**, through the outbox (:mod:`tongcrm.campaigns.plugin` only enqueues ``journeys.enter`` keyed by the
  event id): ``lifecycle_changed`` (to a stage), ``tier_changed`` (up, down or any; optionally to a tier),
  ``first_order`` (an order reaching paid that is the member's first paid one);
* **days**, scanned once per local day of the programme's zone by ``journeys.tick``: ``birthday`` (29 February
  birthdays on 28 February in other years), ``points_expiring`` (members with an available lot expiring on local
  day D enter on D − N) and ``days_after_last_order`` (members whose last paid order was placed N local days ago).

Exactly once. Every entry is a row of ``journey_participants``, unique per (journey, member, occurrence), where the
occurrence names the trigger occurrence — the event id, the birthday's year, the expiring day, the day of the last
order — so a replayed event or a second scan adds nothing. The row is the member's state: ``waiting`` until
``due_at``, then ``done`` in the same transaction that queues its message (send-log key per participant) and
posts its points (ledger key per participant). A process that dies mid-batch rolls back the batch, and the next
tick takes the same rows again: nothing doubled, nothing skipped.

The control group is a deterministic share per journey (:mod:`tongcrm.campaigns.control`, seeded per journey);
control members take their branch like the others, but their message is queued held out (the policy decides it,
and refuses it ``hold-out`` where it would have sent) and they get no points. Budgets (messages, points) are
checked per participant when it acts: past the budget the action is left out and the reason recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import QueryableAttribute

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.campaigns import control, evaluation
from tongcrm.campaigns.evaluation import RESPONDING_STATUSES
from tongcrm.campaigns.models import Journey, JourneyParticipant
from tongcrm.campaigns.service import check_basics, check_response
from tongcrm.db.dialect import insert
from tongcrm.entitlements import service as entitlements
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.lifecycle.service import STAGES
from tongcrm.logging import get_logger
from tongcrm.members.models import Member
from tongcrm.messaging import service as messaging
from tongcrm.messaging import templates as tpl
from tongcrm.messaging.holdout import HOLDOUT_REASON
from tongcrm.messaging.jobs import request_dispatch
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.points import service as points
from tongcrm.points.ledger import AVAILABLE, MAX_ENTRY_POINTS
from tongcrm.points.models import EntryKind, PointsEntry, PointsLot
from tongcrm.segments import service as segments
from tongcrm.segments.compiler import members
from tongcrm.tiers.service import active_ladder

log = get_logger(__name__)

EVENT_TRIGGERS = ("lifecycle_changed", "tier_changed", "first_order")
DAY_TRIGGERS = ("birthday", "points_expiring", "days_after_last_order")
#: Most missed local days a returning scheduler replays for a day-based journey (the latest ones).
MAX_BACKFILL_DAYS = 31
TRIGGERS = EVENT_TRIGGERS + DAY_TRIGGERS
MAX_WAIT_HOURS = 24 * 90
MAX_DAYS = 365
_BATCH = 500
SYSTEM_ACTOR = Actor("journeys", "system")


def flow_of(journey: Journey) -> str:
    return f"journey.{journey.name}"


def occasion_of(participant_id: int) -> str:
    return f"p{participant_id}"


def grant_key(journey: Journey, participant_id: int) -> str:
    return f"journey:{journey.id}:p{participant_id}"


def entitlement_key(journey: Journey, participant_id: QueryableAttribute[int]) -> sa.ColumnElement[str]:
    """The grant key of a participant's entitlement (SQL): once per journey and participant."""
    return (
        sa.literal(f"journey:{journey.id}:p")
        + sa.cast(participant_id, sa.String)
        + sa.literal(":entitlement")
    )


def control_seed(journey: Journey) -> str:
    """Journeys and campaigns share ids' number space; the prefix keeps a journey's split its own."""
    return f"journey:{journey.control_seed}"


# -------------------------------------------------------------------------------------------------------------
# checking documents


def _whole(
    doc: Mapping[str, Any], key: str, low: int, high: int, pointer: str, default: int | None = None
) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Unprocessable(
            f"{key} must be a whole number from {low} to {high}, not {value!r}", extra={"pointer": pointer}
        )
    return value


def check_trigger(doc: Any) -> dict[str, Any]:
    """The trigger document, checked; a 422 saying what is wrong otherwise."""
    if not isinstance(doc, Mapping) or doc.get("kind") not in TRIGGERS:
        kind = doc.get("kind") if isinstance(doc, Mapping) else None
        raise Unprocessable(
            f"trigger kind {kind!r} is unknown; use one of {', '.join(TRIGGERS)}",
            extra={"pointer": "/trigger/kind"},
        )
    kind = doc["kind"]
    out: dict[str, Any] = {"kind": kind}
    allowed = {"kind"}
    if kind == "lifecycle_changed":
        allowed.add("to")
        if doc.get("to") not in STAGES:
            raise Unprocessable(
                f"trigger 'to' must be a lifecycle stage ({', '.join(STAGES)}), not {doc.get('to')!r}",
                extra={"pointer": "/trigger/to"},
            )
        out["to"] = doc["to"]
    elif kind == "tier_changed":
        allowed |= {"direction", "to"}
        direction = doc.get("direction", "any")
        if direction not in ("up", "down", "any"):
            raise Unprocessable(
                "trigger 'direction' is up, down or any", extra={"pointer": "/trigger/direction"}
            )
        out["direction"] = direction
        to = doc.get("to")
        if to is not None:
            if not isinstance(to, str) or not 1 <= len(to) <= 32:
                raise Unprocessable("trigger 'to' is a tier code", extra={"pointer": "/trigger/to"})
            out["to"] = to
    elif kind == "points_expiring":
        allowed.add("days_before")
        out["days_before"] = _whole(doc, "days_before", 0, MAX_DAYS, "/trigger/days_before")
    elif kind == "days_after_last_order":
        allowed.add("days")
        out["days"] = _whole(doc, "days", 1, MAX_DAYS, "/trigger/days")
    unknown = set(doc) - allowed
    if unknown:
        raise Unprocessable(
            f"trigger {kind!r} does not take {', '.join(sorted(unknown))}", extra={"pointer": "/trigger"}
        )
    return out


async def _check_action(session: AsyncSession, doc: Any, pointer: str) -> dict[str, Any]:
    if doc is None:
        return {"template": None, "points": 0, "entitlement": None}
    if not isinstance(doc, Mapping) or set(doc) - {"template", "points", "entitlement"}:
        raise Unprocessable(
            "an action is {'template': name or null, 'points': N, 'entitlement': benefit or null}",
            extra={"pointer": pointer},
        )
    name = doc.get("template")
    if name is not None:
        if not isinstance(name, str):
            raise Unprocessable(
                "an action's template is a template name", extra={"pointer": f"{pointer}/template"}
            )
        template = await messaging.get_template(session, name)
        if template.purpose != "marketing" or not tpl.has_opt_out_wording(template.text):
            raise Unprocessable(
                f"template {name!r} must be a marketing template carrying the opt-out wording (like 拒收请回复R)",
                extra={"pointer": f"{pointer}/template"},
            )
    grant = _whole(doc, "points", 0, MAX_ENTRY_POINTS, f"{pointer}/points", default=0)
    benefit = doc.get("entitlement")
    if benefit is not None:
        benefit = entitlements.check_benefit(benefit, f"{pointer}/entitlement")
    return {"template": name, "points": grant, "entitlement": benefit}


async def check_steps(session: AsyncSession, doc: Any) -> dict[str, Any]:
    """``{"wait_hours": N, "condition": segment or null, "then": action, "else": action or null}``, checked."""
    if not isinstance(doc, Mapping) or set(doc) - {"wait_hours", "condition", "then", "else"}:
        raise Unprocessable(
            "steps are {'wait_hours': N, 'condition': segment name or null, 'then': action, 'else': action}",
            extra={"pointer": "/steps"},
        )
    wait = _whole(doc, "wait_hours", 0, MAX_WAIT_HOURS, "/steps/wait_hours", default=0)
    condition = doc.get("condition")
    if condition is not None:
        if not isinstance(condition, str):
            raise Unprocessable(
                "steps condition is a saved segment's name", extra={"pointer": "/steps/condition"}
            )
        await segments.get_segment(session, condition)
    then = await _check_action(session, doc.get("then"), "/steps/then")
    otherwise = await _check_action(session, doc.get("else"), "/steps/else")
    if condition is None and (otherwise["template"] or otherwise["points"] or otherwise["entitlement"]):
        raise Unprocessable(
            "an 'else' action needs a condition to branch on", extra={"pointer": "/steps/else"}
        )
    if not any(a["template"] or a["points"] or a["entitlement"] for a in (then, otherwise)):
        raise Unprocessable(
            "a journey needs an action: a template, points or an entitlement",
            extra={"pointer": "/steps/then"},
        )
    return {"wait_hours": wait, "condition": condition, "then": then, "else": otherwise}


@dataclass(frozen=True, slots=True)
class Draft:
    name: str
    trigger: Mapping[str, Any]
    steps: Mapping[str, Any]
    response: Mapping[str, Any]
    goal: str = ""
    control_percent: float = 10.0
    control_seed: str = ""
    budget_messages: int | None = None
    budget_points: int | None = None
    message_cost_fen: int = 0
    #: Most entitlement grants all participants together may receive (None: no limit).
    budget_entitlements: int | None = None


def describe(j: Journey) -> dict[str, Any]:
    return {
        "name": j.name,
        "status": j.status,
        "trigger": j.trigger,
        "steps": j.steps,
        "control_bp": j.control_bp,
        "control_seed": j.control_seed,
        "response": j.response,
        "budget_messages": j.budget_messages,
        "budget_points": j.budget_points,
        "budget_entitlements": j.budget_entitlements,
    }


async def create(session: AsyncSession, draft: Draft, actor: Actor, *, now: datetime) -> Journey:
    """A new journey, active at once: members enter from the next trigger on — event triggers from the next
    event, day triggers from the first local day that starts after now (:func:`first_scan_day`)."""
    bp = check_basics(
        "journey", draft.name, draft.goal, draft.control_percent, draft.control_seed,
        {"budget_messages": draft.budget_messages, "budget_points": draft.budget_points,
         "message_cost_fen": draft.message_cost_fen, "budget_entitlements": draft.budget_entitlements},
    )  # fmt: skip
    trigger = check_trigger(draft.trigger)
    steps = await check_steps(session, draft.steps)
    response = check_response(draft.response)
    if (await session.execute(sa.select(Journey.id).where(Journey.name == draft.name))).first():
        raise Conflict(f"a journey named {draft.name!r} already exists")
    journey = Journey(
        name=draft.name, goal=draft.goal, trigger=trigger, steps=steps, control_bp=bp,
        control_seed=draft.control_seed, response=response, budget_messages=draft.budget_messages,
        budget_points=draft.budget_points, budget_entitlements=draft.budget_entitlements,
        message_cost_fen=draft.message_cost_fen, status="active",
        scanned_on=None, active_since=now, created_by=actor.name, created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(journey)
    await session.flush()
    audit.record(session, actor, "journey.create", "journey", journey.id, after=describe(journey))
    return journey


async def get(session: AsyncSession, name: str, *, lock: bool = False) -> Journey:
    stmt = sa.select(Journey).where(Journey.name == name)
    if lock:
        stmt = stmt.with_for_update()
    found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no journey named {name!r}")
    return found


async def list_all(session: AsyncSession) -> list[Journey]:
    return list((await session.execute(sa.select(Journey).order_by(Journey.name))).scalars())


async def set_status(
    session: AsyncSession, actor: Actor, name: str, status: str, *, now: datetime
) -> Journey:
    """Pause (no member enters; members waiting still act when due) or resume a journey."""
    journey = await get(session, name, lock=True)
    if journey.status == status:
        raise Conflict(f"journey {name!r} is already {status}")
    before = describe(journey)
    journey.status, journey.updated_at = status, now
    if status == "active":  # day scans start again from now: the paused days are not backfilled
        journey.active_since = now
    await session.flush()
    audit.record(session, actor, f"journey.{'pause' if status == 'paused' else 'resume'}", "journey",
                 journey.id, before=before, after=describe(journey))  # fmt: skip
    return journey


async def participant_states(session: AsyncSession, journey_id: int) -> dict[str, int]:
    rows = await session.execute(
        sa.select(JourneyParticipant.state, sa.func.count())
        .where(JourneyParticipant.journey_id == journey_id)
        .group_by(JourneyParticipant.state)
    )
    return {state: int(n) for state, n in rows.all()}


# -------------------------------------------------------------------------------------------------------------
# entering


async def enter(
    session: AsyncSession, journey: Journey, member_ids: Sequence[int], occurrence: str, *, now: datetime
) -> int:
    """Members enter ``journey`` for ``occurrence``; a member already in for it is left alone. Merged and erased
    members do not enter. Returns how many entered now."""
    if not member_ids:
        return 0
    live = list(
        (
            await session.execute(
                sa.select(Member.id).where(Member.id.in_(sorted(set(member_ids))), Member.status == "active")
            )
        ).scalars()
    )
    if not live:
        return 0
    due = now + timedelta(hours=int(journey.steps["wait_hours"]))
    seed = control_seed(journey)
    rows = [
        {
            "journey_id": journey.id, "member_id": m, "occurrence": occurrence,
            "grp": control.CONTROL if control.in_control(journey.id, m, journey.control_bp, seed)
            else control.TREATMENT,
            "state": "waiting", "entered_at": now, "due_at": due, "acted_at": None, "branch": None,
            "messaged": False, "points_granted": 0, "reason": "",
        }
        for m in live
    ]  # fmt: skip
    stmt = insert(session, JourneyParticipant.__table__).on_conflict_do_nothing(
        index_elements=["journey_id", "member_id", "occurrence"]
    )
    entered = 0
    for start in range(0, len(rows), 1000):
        result = await session.execute(
            stmt.returning(JourneyParticipant.__table__.c.id), rows[start : start + 1000]
        )
        entered += len(result.all())
    return entered


async def _active(session: AsyncSession, kind: str) -> list[Journey]:
    stmt = sa.select(Journey).where(Journey.status == "active").order_by(Journey.id)
    return [j for j in (await session.execute(stmt)).scalars() if j.trigger.get("kind") == kind]


async def _is_first_order(session: AsyncSession, member_id: int, order_id: int) -> bool:
    """True when ``order_id`` is the member's earliest paid order (and paid now)."""
    mine = (
        await session.execute(
            sa.select(Order.placed_at, Order.status).where(Order.id == order_id, Order.member_id == member_id)
        )
    ).first()
    if mine is None or mine[1] not in RESPONDING_STATUSES:
        return False
    earlier = await session.execute(
        sa.select(Order.id)
        .where(
            Order.member_id == member_id,
            Order.id != order_id,
            Order.status.in_((*RESPONDING_STATUSES, "refunded")),
            Order.placed_at <= mine[0],
        )
        .limit(1)
    )
    return earlier.first() is None


async def _tier_matches(session: AsyncSession, trigger: Mapping[str, Any], before: Any, after: Any) -> bool:
    if trigger.get("to") is not None and after != trigger["to"]:
        return False
    direction = trigger.get("direction", "any")
    if direction == "any":
        return bool(before != after)
    ladder = await active_ladder(session)
    if ladder is None:
        return False
    old, new = ladder.rank_of(before), ladder.rank_of(after)
    return new > old if direction == "up" else new < old


async def on_event(
    session: AsyncSession, name: str, event_id: int, payload: Mapping[str, Any], *, now: datetime
) -> int:
    """Members entering journeys on one domain event (delivered at least once: the occurrence is the event id,
    or, for a first order, the member's one and only first order). Returns how many entered."""
    member_id = payload.get("member_id")
    if not isinstance(member_id, int):
        return 0
    entered = 0
    if name == "lifecycle_changed":
        for j in await _active(session, "lifecycle_changed"):
            if payload.get("to") == j.trigger["to"] and payload.get("from") != payload.get("to"):
                entered += await enter(session, j, [member_id], f"event:{event_id}", now=now)
    elif name == "tier_changed":
        for j in await _active(session, "tier_changed"):
            if await _tier_matches(session, j.trigger, payload.get("from"), payload.get("to")):
                entered += await enter(session, j, [member_id], f"event:{event_id}", now=now)
    elif name == "order_changed":
        journeys = await _active(session, "first_order")
        order_id = payload.get("order_id")
        if journeys and isinstance(order_id, int) and await _is_first_order(session, member_id, order_id):
            for j in journeys:
                entered += await enter(session, j, [member_id], "first_order", now=now)
    return entered


# -- day-based triggers -----------------------------------------------------------------------------------------


def local_day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC moments a local day starts and ends (its end is the next day's start)."""
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def birthday_dates(day: date) -> list[tuple[int, int]]:
    """(month, day) of the birthdays celebrated on local ``day``: 29 February birthdays are on the 28th in a year
    without one, so nobody goes a year without."""
    out = [(day.month, day.day)]
    if (day.month, day.day) == (2, 28):
        try:
            date(day.year, 2, 29)
        except ValueError:
            out.append((2, 29))
    return out


def _day_members(trigger: Mapping[str, Any], day: date, tz: ZoneInfo) -> tuple[sa.Select[Any], str]:
    """The members a day-based trigger picks on local ``day``, and the occurrence they enter for."""
    kind = trigger["kind"]
    if kind == "birthday":
        pairs = birthday_dates(day)
        month, dom = sa.extract("month", Member.birthday), sa.extract("day", Member.birthday)
        stmt = sa.select(Member.id).where(
            Member.status == "active",
            Member.birthday.is_not(None),
            sa.or_(*(sa.and_(month == m, dom == d) for m, d in pairs)),
        )
        return stmt, f"birthday:{day.year}"
    if kind == "points_expiring":
        expiring = day + timedelta(days=int(trigger["days_before"]))
        start, end = local_day_bounds(expiring, tz)
        stmt = (
            sa.select(PointsLot.member_id)
            .where(
                PointsLot.status == AVAILABLE,
                PointsLot.remaining > 0,
                PointsLot.expires_at >= start,
                PointsLot.expires_at < end,
            )
            .distinct()
        )
        return stmt, f"expiry:{expiring.isoformat()}"
    ordered = day - timedelta(days=int(trigger["days"]))
    start, end = local_day_bounds(ordered, tz)
    last = sa.func.max(Order.placed_at)
    by_last: sa.Select[Any] = (
        sa.select(Order.member_id)
        .where(Order.member_id.is_not(None), Order.status.in_(RESPONDING_STATUSES))
        .group_by(Order.member_id)
        .having(sa.and_(last >= start, last < end))
    )
    return by_last, f"last_order:{ordered.isoformat()}"


async def scan_day(session: AsyncSession, journey: Journey, day: date, tz: ZoneInfo, *, now: datetime) -> int:
    """Members of a day-based journey for local ``day`` enter (once per occurrence)."""
    stmt, occurrence = _day_members(journey.trigger, day, tz)
    entered = 0
    after = 0
    column = stmt.selected_columns[0]
    while True:
        page = list(
            (await session.execute(stmt.where(column > after).order_by(column).limit(5000))).scalars()
        )
        if not page:
            return entered
        entered += await enter(session, journey, page, occurrence, now=now)
        after = page[-1]


def first_scan_day(journey: Journey, tz: ZoneInfo) -> date:
    """The first local day a day-based journey scans: the first whose start (local midnight, when its
    occurrences happen) is at or after the journey became active — so a journey created or resumed mid-day
    starts with the next day, and a day that began before it was active is never entered."""
    since = (journey.active_since or journey.created_at).astimezone(tz)
    day = since.date()
    return day if since == datetime.combine(day, time(0), tzinfo=tz) else day + timedelta(days=1)


def days_to_scan(journey: Journey, today: date, tz: ZoneInfo) -> list[date]:
    """The local days up to ``today`` a day-based journey has not scanned yet and was active for, oldest
    first, at most :data:`MAX_BACKFILL_DAYS` (a scheduler down longer replays only the latest of them)."""
    first = first_scan_day(journey, tz)
    if journey.scanned_on is not None:
        first = max(first, journey.scanned_on + timedelta(days=1))
    if first > today:
        return []
    oldest = today - timedelta(days=MAX_BACKFILL_DAYS - 1)
    if first < oldest:
        log.warning("journey days missed beyond the backfill window are not replayed", journey=journey.name,
                    first_missed=first.isoformat(), replayed_from=oldest.isoformat())  # fmt: skip
        first = oldest
    return [first + timedelta(days=n) for n in range((today - first).days + 1)]


async def scan_due(sessions: async_sessionmaker[AsyncSession], *, now: datetime, tz: ZoneInfo) -> int:
    """Scan each active day-based journey for every local day up to today it has not scanned, oldest first,
    one transaction per day (the day's entries and the journey's ``scanned_on`` together). A scheduler that was
    down backfills the days it missed when it returns — each day's occurrences enter once, since entries are
    unique per occurrence and a day is marked scanned with them — and a journey scans no day that began before
    it was active (:func:`first_scan_day`)."""
    today = now.astimezone(tz).date()
    entered = 0
    async with sessions() as session:
        ids = [
            j.id
            for kind in DAY_TRIGGERS
            for j in await _active(session, kind)
            if j.scanned_on is None or j.scanned_on < today
        ]
    for journey_id in ids:
        while True:
            async with sessions() as session, session.begin():
                journey = await session.get(Journey, journey_id, with_for_update=True)
                if journey is None or journey.status != "active":
                    break
                days = days_to_scan(journey, today, tz)
                if not days:
                    break
                entered += await scan_day(session, journey, days[0], tz, now=now)
                journey.scanned_on = days[0]
    return entered


# -------------------------------------------------------------------------------------------------------------
# acting


async def _in_segment(
    session: AsyncSession, host: PluginHost, name: str, ids: list[int], now: datetime
) -> set[int]:
    segment = await segments.get_segment(session, name)
    context = await segments.load_context(session, host, now)
    prepared = await segments.prepared_segment(session, context, segment)
    rows = await session.execute(sa.select(members.c.id).where(members.c.id.in_(ids), prepared.condition))
    return set(rows.scalars())


async def _used(session: AsyncSession, journey_id: int) -> tuple[int, int, int]:
    """Messages queued to treated participants, points and entitlements granted so far (the budgets used)."""
    row = (
        await session.execute(
            sa.select(
                sa.func.coalesce(
                    sa.func.sum(
                        sa.case(
                            (
                                sa.and_(
                                    JourneyParticipant.messaged, JourneyParticipant.grp == control.TREATMENT
                                ),
                                1,
                            ),
                            else_=0,
                        )
                    ),
                    0,
                ),
                sa.func.coalesce(sa.func.sum(JourneyParticipant.points_granted), 0),
                sa.func.coalesce(sa.func.sum(JourneyParticipant.entitlements_granted), 0),
            ).where(JourneyParticipant.journey_id == journey_id)
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def _act(
    session: AsyncSession, host: PluginHost, journey: Journey, batch: list[JourneyParticipant], *, now: datetime,
    tz: ZoneInfo,
) -> None:  # fmt: skip
    steps = journey.steps
    ids = [p.member_id for p in batch]
    live = set(
        (
            await session.execute(sa.select(Member.id).where(Member.id.in_(ids), Member.status == "active"))
        ).scalars()
    )
    matched = (
        await _in_segment(session, host, steps["condition"], ids, now) if steps["condition"] else set(ids)
    )
    messages_used, points_used, entitlements_used = await _used(session, journey.id)
    targets: dict[str, list[messaging.Target]] = {}
    grants: list[points.Grant] = []
    entitled: dict[str, list[int]] = {}  # branch → participants whose action grants its entitlement
    for p in sorted(batch, key=lambda x: x.id):
        p.state, p.acted_at = "done", now
        p.respond_until = now + timedelta(days=int(journey.response["within_days"]))
        if p.member_id not in live:
            p.reason = "the member was merged or erased before the step"
            continue
        p.branch = "then" if p.member_id in matched else "else"
        action = steps[p.branch]
        treated = p.grp == control.TREATMENT
        if action["template"]:
            if treated and journey.budget_messages is not None and messages_used >= journey.budget_messages:
                p.reason = f"message budget exhausted ({journey.budget_messages} messages)"
            else:
                targets.setdefault(action["template"], []).append(
                    messaging.Target(p.member_id, occasion=occasion_of(p.id), held_out=not treated)
                )
                p.messaged = True
                messages_used += 1 if treated else 0
        grant = int(action["points"])
        if grant and treated:
            if journey.budget_points is not None and points_used + grant > journey.budget_points:
                left = journey.budget_points - points_used
                p.reason = (p.reason + "; " if p.reason else "") + (
                    f"points budget exceeded: {grant} points asked and {left} left of {journey.budget_points}"
                )
            else:
                grants.append(points.Grant(p.member_id, grant, grant_key(journey, p.id)))
                p.points_granted = grant
                points_used += grant
        if action.get("entitlement") and treated:
            if journey.budget_entitlements is not None and entitlements_used >= journey.budget_entitlements:
                p.reason = (p.reason + "; " if p.reason else "") + (
                    f"entitlement budget exhausted ({journey.budget_entitlements} grants)"
                )
            else:
                entitled.setdefault(p.branch, []).append(p.id)
                p.entitlements_granted = 1
                entitlements_used += 1
    for name, group in targets.items():
        template = await messaging.get_template(session, name)
        await messaging.queue_messages(session, flow_of(journey), template, group, now=now)
    if grants:
        ctx = points.PointsContext(clock=lambda: now, tz=tz, actor=SYSTEM_ACTOR.name)
        await points.grant_many(session, ctx, grants, reason=f"journey {journey.name}")
    await session.flush()
    for branch, participant_ids in entitled.items():
        part = JourneyParticipant
        await entitlements.grant_benefit(
            session,
            host,
            steps[branch]["entitlement"],
            sa.select(part.member_id, entitlement_key(journey, part.id)).where(part.id.in_(participant_ids)),
            now=now,
            tz=tz,
        )
    if targets:
        await request_dispatch(session, now)
    await session.flush()


async def advance_due(
    sessions: async_sessionmaker[AsyncSession], host: PluginHost, *, now: datetime, tz: ZoneInfo,
    limit: int = _BATCH,
) -> int:  # fmt: skip
    """Act for participants whose wait is over, a batch per transaction: the state change, the messages and the
    points commit together, so a restart neither doubles nor skips. Returns how many acted."""
    acted = 0
    while True:
        async with sessions() as session, session.begin():
            batch = list(
                (
                    await session.execute(
                        sa.select(JourneyParticipant)
                        .where(JourneyParticipant.state == "waiting", JourneyParticipant.due_at <= now)
                        .order_by(JourneyParticipant.due_at, JourneyParticipant.id)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if not batch:
                return acted
            by_journey: dict[int, list[JourneyParticipant]] = {}
            for p in batch:
                by_journey.setdefault(p.journey_id, []).append(p)
            for journey_id, group in sorted(by_journey.items()):
                # the journey's row lock serialises its budgets: two workers acting for the same journey read
                # and spend the budget one after the other, so it stops exactly at its limit
                journey = await session.get(Journey, journey_id, with_for_update=True, populate_existing=True)
                assert journey is not None
                await _act(session, host, journey, group, now=now, tz=tz)
            acted += len(batch)
        if len(batch) < limit:
            return acted


# -------------------------------------------------------------------------------------------------------------
# the report


@dataclass(frozen=True, slots=True)
class JourneyReport:
    journey: Journey
    states: dict[str, int]
    branches: dict[str, int]
    total: evaluation.Outcome


def _responses(journey: Journey) -> sa.Subquery:
    """(participant id, orders, revenue) of participants who responded within their window: an order (or a
    visit, a redemption) of the member they are now — merges followed as the campaign report follows them
    (:func:`evaluation.credited_member`) — between acting and ``respond_until``."""
    p = JourneyParticipant
    response = journey.response
    base = sa.and_(p.journey_id == journey.id, p.state == "done", p.branch.is_not(None))
    survivors = evaluation.merged_survivors()
    joined = sa.outerjoin(p, survivors, survivors.c.origin == p.member_id)
    current = evaluation.credited_member(survivors, p.member_id)
    if response["kind"] == "redemption":
        return (
            sa.select(p.id.label("pid"), sa.literal(0).label("orders"), sa.literal(0).label("revenue"))
            .select_from(joined.join(PointsEntry, PointsEntry.member_id == current))
            .where(
                base,
                PointsEntry.kind == EntryKind.REDEEM,
                PointsEntry.occurred_at >= p.acted_at,
                PointsEntry.occurred_at < p.respond_until,
            )
            .group_by(p.id)
            .subquery("responses")
        )
    where = [base, *evaluation.order_filters(response, p.acted_at, p.respond_until)]
    return (
        sa.select(
            p.id.label("pid"),
            sa.func.count(Order.id).label("orders"),
            sa.func.sum(Order.paid_fen - Order.refunded_fen).label("revenue"),
        )
        .select_from(joined.join(Order, Order.member_id == current))
        .where(*where)
        .group_by(p.id)
        .subquery("responses")
    )


async def report(session: AsyncSession, journey: Journey) -> JourneyReport:
    """The journey's evaluation over every participant that acted, as a campaign's total: treated against
    control, each counted eligible as in a campaign (a participant whose action had no message is eligible)."""
    p = JourneyParticipant
    key = (
        sa.literal(f"{flow_of(journey)}:")
        + sa.cast(p.member_id, sa.String)
        + sa.literal(":-:p")
        + sa.cast(p.id, sa.String)
    )
    done = sa.and_(p.journey_id == journey.id, p.state == "done", p.branch.is_not(None))
    with_message = sa.outerjoin(
        p, Message, sa.and_(Message.dedupe_key == key, Message.flow == flow_of(journey))
    )
    f = evaluation.Figures()
    for grp, branch, n, granted, entitled in (
        await session.execute(
            sa.select(
                p.grp,
                p.branch,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(p.points_granted), 0),
                sa.func.coalesce(sa.func.sum(p.entitlements_granted), 0),
            )
            .where(done)
            .group_by(p.grp, p.branch)
        )
    ).all():
        f.audience += int(n)
        f.control += int(n) if grp == control.CONTROL else 0
        f.points_granted += int(granted)
        f.entitlements_granted += int(entitled)
        benefit = journey.steps[str(branch)].get("entitlement") or {}  # done: a branch was taken
        f.entitlement_cost_fen += int(entitled) * int(benefit.get("cost_fen", 0))
    messages = await session.execute(
        sa.select(Message.status, Message.reason, sa.func.count())
        .select_from(with_message)
        .where(done, Message.id.is_not(None))
        .group_by(Message.status, Message.reason)
    )
    evaluation.tally_messages(f, messages.all())
    responses = _responses(journey)
    eligible = sa.or_(
        Message.id.is_(None),
        sa.and_(p.grp == control.TREATMENT, Message.status.in_(("sent", "delivered", "failed"))),
        sa.and_(p.grp == control.CONTROL, Message.reason == HOLDOUT_REASON),
    )
    for grp, n, responders, orders, revenue in (
        await session.execute(
            sa.select(
                p.grp,
                sa.func.count(),
                sa.func.count(responses.c.pid),
                sa.func.coalesce(sa.func.sum(responses.c.orders), 0),
                sa.func.coalesce(sa.func.sum(responses.c.revenue), 0),
            )
            .select_from(with_message.outerjoin(responses, responses.c.pid == p.id))
            .where(done, eligible)
            .group_by(p.grp)
        )
    ).all():
        target = f.treated if grp == control.TREATMENT else f.held
        target.eligible, target.responders = int(n), int(responders)
        target.orders, target.revenue_fen = int(orders), int(revenue)
    branches = {
        str(b): int(n)
        for b, n in (
            await session.execute(sa.select(p.branch, sa.func.count()).where(done).group_by(p.branch))
        ).all()
    }
    return JourneyReport(
        journey, await participant_states(session, journey.id), branches, evaluation.outcome(journey, f)
    )
