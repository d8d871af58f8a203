"""Lifecycle stages, derived from orders rather than typed in.

For each live member, from the orders that count (paid and not refunded in full, as in segments and tier
metrics), in the programme's time zone, with ``today`` the local date:

- ``prospect``: no such order;
- ``churned`` (流失): the latest order is ``churned_days`` or more days old;
- ``dormant`` (休眠): the latest order is ``dormant_days`` or more days old;
- ``new`` (新客): the first order is less than ``new_days`` days old;
- ``repeat`` (老客, active): everyone else.

"N days old" counts local calendar days: an order placed at 23:59 in Shanghai is a day older at 00:00, whatever
the UTC time. The pass computes every stage in the database (one aggregate per batch of members), writes only
the rows whose stage changed, records each change in ``lifecycle_history`` and emits ``lifecycle_changed``
in the same transaction. Time alone moves members (new → repeat, repeat → dormant), so the pass runs hourly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.errors import Unprocessable
from tongcrm.jobs.outbox import emit_many
from tongcrm.jobs.queue import enqueue
from tongcrm.lifecycle.models import LifecycleChange, LifecyclePolicy
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.segments.compiler import counted_order
from tongcrm.tiers.ladder import local_midnight

STAGES = ("prospect", "new", "repeat", "dormant", "churned")
MAX_DAYS = 3650
members = cast(sa.Table, Member.__table__)


@dataclass(frozen=True, slots=True)
class Policy:
    new_days: int = 30
    dormant_days: int = 180
    churned_days: int = 365
    version: int = 0  # 0: the defaults, never saved

    def as_dict(self) -> dict[str, int]:
        return {
            "new_days": self.new_days,
            "dormant_days": self.dormant_days,
            "churned_days": self.churned_days,
        }


DEFAULT = Policy()


def parse_policy(raw: Mapping[str, Any], *, version: int = 0) -> Policy:
    """Check thresholds: whole days from 1 to 3650 with new < dormant < churned (a member cannot be new and
    dormant at once, nor dormant after churned)."""
    values: dict[str, int] = {}
    for name in ("new_days", "dormant_days", "churned_days"):
        value = raw.get(name, getattr(DEFAULT, name))
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DAYS:
            raise Unprocessable(
                f"{name} is a whole number of days from 1 to {MAX_DAYS}", extra={"pointer": f"/{name}"}
            )
        values[name] = value
    unknown = sorted(set(raw) - set(values))
    if unknown:
        raise Unprocessable(f"unknown setting {unknown[0]!r}", extra={"pointer": f"/{unknown[0]}"})
    if not values["new_days"] < values["dormant_days"] < values["churned_days"]:
        raise Unprocessable(
            "thresholds must grow: new_days < dormant_days < churned_days", extra={"pointer": "/dormant_days"}
        )
    return Policy(version=version, **values)


async def current_policy(session: AsyncSession) -> Policy:
    row = (
        await session.execute(sa.select(LifecyclePolicy).order_by(LifecyclePolicy.version.desc()).limit(1))
    ).scalar_one_or_none()
    if row is None:
        return DEFAULT
    return Policy(row.new_days, row.dormant_days, row.churned_days, row.version)


async def set_policy(session: AsyncSession, raw: Mapping[str, Any], actor: Actor) -> Policy:
    """Save a new policy version (audited) and enqueue a pass so every member is re-derived under it."""
    current = await current_policy(session)
    policy = parse_policy(raw, version=current.version + 1)
    session.add(LifecyclePolicy(version=policy.version, created_by=actor.name, **policy.as_dict()))
    audit.record(
        session, actor, "lifecycle.policy", "lifecycle_policy", policy.version,
        before=current.as_dict(), after=policy.as_dict(),
    )  # fmt: skip
    await enqueue(session, "lifecycle.recompute", {"policy_version": policy.version})
    return policy


@dataclass(frozen=True, slots=True)
class Edges:
    """The instants the thresholds fall on for ``today``: an order before ``churned`` is churned_days or more
    local days old, and so on; a first order at or after ``new`` is less than new_days old."""

    new: datetime
    dormant: datetime
    churned: datetime


def edges(policy: Policy, today: date, tz: ZoneInfo) -> Edges:
    def start(days: int) -> datetime:
        return local_midnight(today - timedelta(days=days - 1), tz)

    return Edges(start(policy.new_days), start(policy.dormant_days), start(policy.churned_days))


def stage_sql(
    e: Edges, first: sa.ColumnElement[datetime | None], last: sa.ColumnElement[datetime | None]
) -> sa.ColumnElement[str]:
    return sa.case(
        (last.is_(None), "prospect"),
        (last < e.churned, "churned"),
        (last < e.dormant, "dormant"),
        (first >= e.new, "new"),
        else_="repeat",
    )


def stage_of(policy: Policy, today: date, tz: ZoneInfo, first: datetime | None, last: datetime | None) -> str:
    """The same rule for one member, from its first and latest counted order (for explanations and tests)."""
    e = edges(policy, today, tz)
    if last is None or first is None:
        return "prospect"
    if last < e.churned:
        return "churned"
    if last < e.dormant:
        return "dormant"
    return "new" if first >= e.new else "repeat"


@dataclass(frozen=True, slots=True)
class Pass:
    members: int
    changed: int


async def recompute(
    sessions: async_sessionmaker[AsyncSession], now: datetime, tz: ZoneInfo, *, batch: int = 50_000
) -> Pass:
    """Re-derive every live member's stage, one transaction per batch of member ids."""
    async with sessions() as session:
        policy = await current_policy(session)
    e = edges(policy, now.astimezone(tz).date(), tz)
    low, seen, changed = 0, 0, 0
    while True:
        async with sessions() as session, session.begin():
            high = (
                await session.execute(
                    sa.select(members.c.id)
                    .where(members.c.id > low)
                    .order_by(members.c.id)
                    .offset(batch - 1)
                    .limit(1)
                )
            ).scalar()
            if high is None:
                high = (await session.execute(sa.select(sa.func.max(members.c.id)))).scalar()
            if high is None or high <= low:
                break
            seen += high - low
            changed += await _batch(session, policy, e, now, low, high)
        low = high
    return Pass(seen, changed)


async def _batch(session: AsyncSession, policy: Policy, e: Edges, now: datetime, low: int, high: int) -> int:
    agg = (
        sa.select(
            Order.member_id.label("member_id"),
            sa.func.min(Order.placed_at).label("first"),
            sa.func.max(Order.placed_at).label("last"),
        )
        .where(Order.member_id > low, Order.member_id <= high, counted_order())
        .group_by(Order.member_id)
        .subquery()
    )
    derived = stage_sql(e, agg.c["first"], agg.c["last"])
    rows = (
        await session.execute(
            sa.select(members.c.id, members.c.lifecycle_stage, derived.label("stage"))
            .select_from(members.outerjoin(agg, agg.c.member_id == members.c.id))
            .where(
                members.c.id > low,
                members.c.id <= high,
                members.c.status == "active",
                members.c.lifecycle_stage != derived,
            )
            .with_for_update(of=members)
        )
    ).all()
    if not rows:
        return 0
    await session.execute(
        sa.update(members)
        .where(members.c.id == sa.bindparam("mid"), members.c.lifecycle_stage == sa.bindparam("before"))
        # the stage is derived data, not an edit of the profile: the row version (If-Match of profile edits) stays,
        # so an operator's edit is never refused because the hourly pass ran in between
        .values(lifecycle_stage=sa.bindparam("after")),
        [{"mid": r.id, "before": r.lifecycle_stage, "after": r.stage} for r in rows],
    )
    await session.execute(
        sa.insert(LifecycleChange),
        [
            {"member_id": r.id, "from_stage": r.lifecycle_stage, "to_stage": r.stage,
             "policy_version": policy.version, "at": now}
            for r in rows
        ],
    )  # fmt: skip
    await emit_many(
        session,
        [("lifecycle_changed", {"member_id": r.id, "from": r.lifecycle_stage, "to": r.stage}) for r in rows],
        now=now,
    )
    return len(rows)


async def history(session: AsyncSession, member_id: int, *, limit: int = 100) -> list[LifecycleChange]:
    stmt = (
        sa.select(LifecycleChange)
        .where(LifecycleChange.member_id == member_id)
        .order_by(LifecycleChange.id.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())
