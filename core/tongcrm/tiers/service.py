"""Tier movement (upgrades at once, downgrades only at review), overrides, ladder versions, previews and the
member's tier status with its projections.

Every pass that moves tiers is one set-based pipeline, whether it touches one member (``reevaluate``, called by
ingest and POS inside their transaction) or a million (the review job): compute old and new tier per member
into ``tier_review_items`` with one ``INSERT … SELECT``, then write history, outbox events and the tier rows
from there with three more statements. Python never loops over members.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit_service
from tongcrm.config import PROGRAMME_TZ, Settings
from tongcrm.db.base import UTCDateTime
from tongcrm.db.dialect import dialect_name, insert
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.jobs.models import OutboxEvent
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.queue import enqueue
from tongcrm.logging import get_logger
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.points.models import PointsEntry
from tongcrm.tiers.ladder import (
    Ladder,
    Metric,
    Shortfall,
    Tier,
    describe_missing,
    end_of_local_day,
    local_date,
    missing_for,
    on_anniversary,
    parse_ladder,
)
from tongcrm.tiers.metrics import MetricSource, code_sql, metrics_for, rank_sql
from tongcrm.tiers.models import MemberTier, TierHistory, TierLadder, TierReviewItem

log = get_logger(__name__)


def _t(model: type[Any]) -> sa.Table:
    return cast(sa.Table, model.__table__)


Reason = Literal["upgrade", "review", "override", "override_expired", "merge", "ladder_change"]


@dataclass(frozen=True, slots=True)
class TierContext:
    """What tier code needs from its caller: the moment, the programme's time zone and who acts."""

    now: datetime
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo(PROGRAMME_TZ))
    actor: str = "system"

    @classmethod
    def of(
        cls, settings: Settings | None = None, *, now: datetime | None = None, actor: str = "system"
    ) -> TierContext:
        tz = settings.tz if settings is not None else ZoneInfo(PROGRAMME_TZ)
        return cls(now or datetime.now(UTC), tz, actor)

    @property
    def today(self) -> date:
        return local_date(self.now, self.tz)


@dataclass(frozen=True, slots=True)
class TierChange:
    member_id: int
    from_code: str
    to_code: str
    reason: str


# -------------------------------------------------------------------------------------------------------------
# ladders


async def active_ladder(session: AsyncSession) -> Ladder | None:
    row = (
        await session.execute(sa.select(TierLadder).order_by(TierLadder.version.desc()).limit(1))
    ).scalar_one_or_none()
    if row is None:
        return None
    return parse_ladder(row.definition, version=row.version)


async def require_ladder(session: AsyncSession) -> Ladder:
    ladder = await active_ladder(session)
    if ladder is None:
        raise NotFound("no tier ladder is configured yet: PUT /api/tiers/ladder first")
    return ladder


async def ladder_versions(session: AsyncSession) -> list[TierLadder]:
    return list((await session.execute(sa.select(TierLadder).order_by(TierLadder.version.desc()))).scalars())


async def apply_ladder(
    session: AsyncSession, ctx: TierContext, raw: Any, *, reason: str, actor: audit_service.Actor
) -> Ladder:
    """Make ``raw`` the ladder in force, as a new version. Members who qualify higher are upgraded by the
    ``tiers.upgrade_all`` job; nobody drops today: a lower tier under the new ladder waits for the member's
    review, like any other downgrade."""
    if not reason.strip():
        raise Unprocessable("say why the ladder changes (reason)")
    draft = parse_ladder(raw)
    old = await active_ladder(session)
    version = (old.version if old else 0) + 1
    ladder = parse_ladder(raw, version=version)
    session.add(
        TierLadder(
            version=version,
            definition=ladder.as_dict(),
            reason=reason,
            created_by=actor.name,
            created_at=ctx.now,
        )
    )
    if old is not None:
        await _carry_over(session, ctx, old, ladder, actor.name)
    audit_service.record(
        session,
        actor,
        "tiers.ladder.apply",
        "tier_ladder",
        version,
        before=None if old is None else {"version": old.version, **old.as_dict()},
        after={"version": version, "reason": reason, **draft.as_dict()},
        at=ctx.now,
    )
    await enqueue(
        session, "tiers.upgrade_all", {"version": version}, unique_key=f"tiers.upgrade_all:{version}"
    )
    return ladder


async def _carry_over(session: AsyncSession, ctx: TierContext, old: Ladder, new: Ladder, actor: str) -> None:
    """Codes the new ladder dropped map to its tier at the same rank (history says so); a changed review
    policy reschedules every member's next review from their anchor."""
    mt = _t(MemberTier)
    gone = [t for t in old.tiers if new.tier(t.code) is None]
    if gone:
        mapping = {t.code: new.at_rank(t.rank).code for t in gone}
        renamed = sa.case(mapping, value=mt.c.tier_code, else_=mt.c.tier_code)
        await session.execute(
            sa.insert(TierHistory).from_select(
                ["member_id", "from_code", "to_code", "reason", "detail", "actor", "ladder_version", "at"],
                sa.select(
                    mt.c.member_id,
                    mt.c.tier_code,
                    renamed,
                    sa.literal("ladder_change"),
                    sa.literal(f"tier removed in ladder version {new.version}"),
                    sa.literal(actor),
                    sa.literal(new.version),
                    sa.literal(ctx.now, UTCDateTime()),
                ).where(mt.c.tier_code.in_(list(mapping))),
            )
        )
        await session.execute(
            sa.update(mt).where(mt.c.tier_code.in_(list(mapping))).values(tier_code=renamed)
        )
        await session.execute(
            sa.update(mt)
            .where(mt.c.override_code.in_(list(mapping)))
            .values(override_code=sa.case(mapping, value=mt.c.override_code, else_=mt.c.override_code))
        )
    if old.review != new.review:
        await session.execute(
            sa.update(mt).values(
                review_on=_next_review_sql(new, ctx.today - timedelta(days=1), mt.c.anchor_on)
            )
        )


def _next_review_sql(ladder: Ladder, today: date, anchor: sa.ColumnElement[date]) -> sa.ColumnElement[date]:
    """The first review strictly after ``today`` for rows anchored at ``anchor``: one constant per anchor
    month-day, so the expression is the same for every row and evaluated by the database."""
    policy = ladder.review
    if policy.mode == "annual":
        return sa.literal(policy.next_review(today, today), sa.Date)
    md = sa.cast(sa.extract("month", anchor), sa.Integer) * 100 + sa.cast(
        sa.extract("day", anchor), sa.Integer
    )
    whens: dict[int, date] = {}
    for month in range(1, 13):
        for day in range(1, 32):
            try:
                anchor_day = date(2000, month, day)
            except ValueError:
                continue
            candidate = on_anniversary(anchor_day, today.year)
            whens[month * 100 + day] = (
                candidate if candidate > today else on_anniversary(anchor_day, today.year + 1)
            )
    return sa.case(
        {k: sa.literal(v, sa.Date) for k, v in whens.items()}, value=md, else_=sa.literal(today, sa.Date)
    )


# -------------------------------------------------------------------------------------------------------------
# the pipeline


def _json_object(session: AsyncSession, *pairs: tuple[str, sa.ColumnElement[Any]]) -> sa.ColumnElement[Any]:
    args: list[Any] = []
    for key, value in pairs:
        args.extend([sa.literal_column(f"'{key}'"), value])
    if dialect_name(session) == "postgresql":
        return sa.func.jsonb_build_object(*args)
    return sa.func.json_object(*args)


async def _stage(
    session: AsyncSession,
    ctx: TierContext,
    ladder: Ladder,
    run_id: str,
    *,
    mode: Literal["upgrade", "review"],
    members: sa.ColumnElement[bool] | None,
    member_subquery: sa.Select[Any] | None,
    id_range: tuple[int, int] | None = None,
) -> None:
    """Compute old and new tier of every selected member into ``tier_review_items``.

    ``upgrade``: every active member (rows or not) who qualifies above the tier they hold. ``review``: members
    with a tier row whose review is due, moved to what they qualify for (at most one step down when the
    ladder says so)."""
    m = _t(Member)
    mt = _t(MemberTier)
    order_filter: sa.ColumnElement[bool] | None = None
    points_filter: sa.ColumnElement[bool] | None = None
    if member_subquery is not None:
        order_filter = Order.member_id.in_(member_subquery)
        points_filter = PointsEntry.member_id.in_(member_subquery)
    if id_range is not None:
        # a plain range lets the database walk the (member_id, placed_at) index instead of every order
        low, high = id_range
        order_filter = sa.and_(
            Order.member_id > low,
            Order.member_id <= high,
            *([order_filter] if order_filter is not None else []),
        )
        points_filter = sa.and_(
            PointsEntry.member_id > low,
            PointsEntry.member_id <= high,
            *([points_filter] if points_filter is not None else []),
        )
    source = MetricSource(
        ladder,
        ref_day=ctx.today,
        upper=ctx.now,
        tz=ctx.tz,
        member_filter=order_filter,
        points_filter=points_filter,
    )
    held = sa.func.coalesce(mt.c.tier_code, ladder.base.code)
    cur = rank_sql(ladder, held)
    qualified = source.qualified_rank()
    if mode == "upgrade":
        new_rank: sa.ColumnElement[int] = qualified
        changed_review = sa.literal(ladder.review.next_review(ctx.today, ctx.today), sa.Date)
        next_review: sa.ColumnElement[date] = changed_review
    else:
        drop = cur - 1 if ladder.review.one_step else qualified
        new_rank = sa.case((qualified >= cur, qualified), else_=drop)
        changed_review = sa.literal(ladder.review.next_review(ctx.today, ctx.today), sa.Date)
        next_review = sa.case(
            (new_rank != cur, changed_review),
            else_=_next_review_sql(ladder, ctx.today, mt.c.anchor_on),
        )
    override_on = sa.and_(mt.c.override_code.is_not(None), mt.c.override_until > ctx.now)
    select = sa.select(
        sa.literal(run_id),
        m.c.id,
        held,
        code_sql(ladder, new_rank),
        next_review,
        sa.not_(sa.func.coalesce(override_on, False)),
    )
    if mode == "upgrade":
        select = select.select_from(m).outerjoin(mt, mt.c.member_id == m.c.id)
    else:
        select = select.select_from(mt).join(m, m.c.id == mt.c.member_id).where(mt.c.review_on <= ctx.today)
    select = source.join(select, m.c.id).where(m.c.status == "active")
    if mode == "upgrade":
        select = select.where(qualified > cur)
    if members is not None:
        select = select.where(members)
    await session.execute(
        sa.insert(TierReviewItem).from_select(
            ["run_id", "member_id", "old_code", "new_code", "next_review_on", "visible"], select
        )
    )


async def _apply_staged(
    session: AsyncSession, ctx: TierContext, ladder: Ladder, run_id: str, reason: Reason, *, collect: bool
) -> tuple[int, list[TierChange]]:
    items = _t(TierReviewItem)
    this_run = items.c.run_id == run_id
    changed = sa.and_(this_run, items.c.old_code != items.c.new_code)
    now = sa.literal(ctx.now, UTCDateTime())
    changes: list[TierChange] = []
    if collect:
        rows = await session.execute(
            sa.select(items.c.member_id, items.c.old_code, items.c.new_code)
            .where(changed)
            .order_by(items.c.member_id)
        )
        changes = [TierChange(r[0], r[1], r[2], reason) for r in rows]
    count = cast(
        CursorResult[Any],
        await session.execute(
            sa.insert(TierHistory).from_select(
                ["member_id", "from_code", "to_code", "reason", "detail", "actor", "ladder_version", "at"],
                sa.select(
                    items.c.member_id,
                    items.c.old_code,
                    items.c.new_code,
                    sa.literal(reason),
                    sa.literal(""),
                    sa.literal(ctx.actor),
                    sa.literal(ladder.version),
                    now,
                ).where(changed),
            )
        ),
    ).rowcount
    await session.execute(
        sa.insert(OutboxEvent).from_select(
            ["name", "payload", "occurred_at"],
            sa.select(
                sa.literal("tier_changed"),
                _json_object(
                    session,
                    ("member_id", items.c.member_id),
                    ("from", items.c.old_code),
                    ("to", items.c.new_code),
                    ("reason", sa.literal_column(f"'{reason}'")),
                ),
                now,
            ).where(changed, items.c.visible.is_(True)),
        )
    )
    mt = _t(MemberTier)
    stmt = insert(session, mt).from_select(
        ["member_id", "tier_code", "since", "anchor_on", "review_on", "ladder_version", "updated_at"],
        sa.select(
            items.c.member_id,
            items.c.new_code,
            now,
            sa.literal(ctx.today, sa.Date),
            items.c.next_review_on,
            sa.literal(ladder.version),
            now,
        ).where(this_run),
    )
    moved = stmt.excluded.tier_code != mt.c.tier_code
    stmt = stmt.on_conflict_do_update(
        index_elements=[mt.c.member_id],
        set_={
            "tier_code": stmt.excluded.tier_code,
            "since": sa.case((moved, stmt.excluded.since), else_=mt.c.since),
            "anchor_on": sa.case((moved, stmt.excluded.anchor_on), else_=mt.c.anchor_on),
            "review_on": stmt.excluded.review_on,
            "ladder_version": stmt.excluded.ladder_version,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    await session.execute(stmt)
    await session.execute(sa.delete(TierReviewItem).where(this_run))
    return int(count or 0), changes


async def reevaluate(session: AsyncSession, ctx: TierContext, member_ids: Iterable[int]) -> list[TierChange]:
    """Upgrade at once any of ``member_ids`` whose qualifying history now crosses a higher threshold.

    Called inside the caller's transaction after orders or points changed (ingest, POS, merges). Never
    downgrades: that waits for the member's review. A fixed handful of statements, whatever the batch size."""
    ids = sorted(set(member_ids))
    if not ids:
        return []
    ladder = await active_ladder(session)
    if ladder is None or len(ladder.tiers) < 2:
        return []
    run_id = uuid.uuid4().hex
    await _stage(
        session,
        ctx,
        ladder,
        run_id,
        mode="upgrade",
        members=_t(Member).c.id.in_(ids),
        member_subquery=sa.select(_t(Member).c.id).where(_t(Member).c.id.in_(ids)),
    )
    _, changes = await _apply_staged(session, ctx, ladder, run_id, "upgrade", collect=True)
    return changes


async def upgrade_all(
    sessions: async_sessionmaker[AsyncSession], ctx: TierContext, *, batch: int = 50_000
) -> int:
    """After a ladder change: upgrade every member the new ladder ranks higher, in member-id batches."""
    return await _batched(sessions, ctx, "upgrade", batch)


async def review(sessions: async_sessionmaker[AsyncSession], ctx: TierContext, *, batch: int = 50_000) -> int:
    """Review every member whose review day has come: keep, drop (one step at a time if configured), or
    upgrade; schedule the next review. Returns how many members changed tier."""
    return await _batched(sessions, ctx, "review", batch)


async def _batched(
    sessions: async_sessionmaker[AsyncSession],
    ctx: TierContext,
    mode: Literal["upgrade", "review"],
    batch: int,
) -> int:
    async with sessions() as session:
        ladder = await active_ladder(session)
    if ladder is None:
        return 0
    m = _t(Member)
    mt = _t(MemberTier)
    if mode == "review":
        id_col = mt.c.member_id
        base = sa.select(id_col).where(mt.c.review_on <= ctx.today)
    else:
        id_col = m.c.id
        base = sa.select(id_col).where(m.c.status == "active")
    total = 0
    low = 0
    while True:
        async with sessions() as session, session.begin():
            high = (
                await session.execute(base.where(id_col > low).order_by(id_col).offset(batch - 1).limit(1))
            ).scalar_one_or_none()
            if high is None:
                high = (
                    await session.execute(sa.select(sa.func.max(id_col)).where(id_col > low))
                ).scalar_one_or_none()
            if high is None:
                return total
            if dialect_name(session) == "postgresql":
                # the aggregate subqueries' row estimates are poor; a nested loop over them would be quadratic
                await session.execute(sa.text("SET LOCAL enable_nestloop = off"))
            in_range = sa.and_(m.c.id > low, m.c.id <= high)
            subquery = base.where(id_col > low, id_col <= high)
            run_id = uuid.uuid4().hex
            await _stage(
                session,
                ctx,
                ladder,
                run_id,
                mode=mode,
                members=in_range,
                member_subquery=subquery,
                id_range=(low, high),
            )
            count, _ = await _apply_staged(
                session, ctx, ladder, run_id, "review" if mode == "review" else "upgrade", collect=False
            )
            total += count
            low = high


async def expire_overrides(session: AsyncSession, ctx: TierContext) -> int:
    """End overrides whose time is up: the member is back on the tier the rules give them."""
    mt = _t(MemberTier)
    due = sa.and_(mt.c.override_code.is_not(None), mt.c.override_until <= ctx.now)
    now = sa.literal(ctx.now, UTCDateTime())
    visible = sa.and_(due, mt.c.override_code != mt.c.tier_code)
    await session.execute(
        sa.insert(TierHistory).from_select(
            ["member_id", "from_code", "to_code", "reason", "detail", "actor", "ladder_version", "at"],
            sa.select(
                mt.c.member_id,
                mt.c.override_code,
                mt.c.tier_code,
                sa.literal("override_expired"),
                sa.literal(""),
                sa.literal(ctx.actor),
                mt.c.ladder_version,
                now,
            ).where(visible),
        )
    )
    await session.execute(
        sa.insert(OutboxEvent).from_select(
            ["name", "payload", "occurred_at"],
            sa.select(
                sa.literal("tier_changed"),
                _json_object(
                    session,
                    ("member_id", mt.c.member_id),
                    ("from", mt.c.override_code),
                    ("to", mt.c.tier_code),
                    ("reason", sa.literal_column("'override_expired'")),
                ),
                now,
            ).where(visible),
        )
    )
    result = cast(
        CursorResult[Any],
        await session.execute(
            sa.update(mt)
            .where(due)
            .values(override_code=None, override_until=None, override_reason=None, override_by=None)
        ),
    )
    return int(result.rowcount or 0)


# -------------------------------------------------------------------------------------------------------------
# overrides


async def _member_or_404(session: AsyncSession, member_id: int) -> Member:
    member = await session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}", extra={"member_id": member_id})
    if member.status != "active":
        raise Conflict(
            f"member {member_id} was merged into member {member.merged_into_id}",
            extra={"member_id": member_id, "merged_into_id": member.merged_into_id},
        )
    return member


def effective_code(row: MemberTier | None, ladder: Ladder, now: datetime) -> str:
    if row is None:
        return ladder.base.code
    if row.override_code is not None and row.override_until is not None and row.override_until > now:
        return row.override_code
    return row.tier_code


async def set_override(
    session: AsyncSession,
    ctx: TierContext,
    member_id: int,
    *,
    tier: str,
    until: date,
    reason: str,
    actor: audit_service.Actor,
) -> MemberTier:
    """Hold ``member_id`` at ``tier`` until the end of ``until`` (programme time zone), whatever the rules say."""
    ladder = await require_ladder(session)
    await _member_or_404(session, member_id)
    target = ladder.tier(tier)
    if target is None:
        raise Unprocessable(
            f"no tier {tier!r} in the ladder (tiers: {', '.join(t.code for t in ladder.tiers)})",
            extra={"tier": tier},
        )
    if until <= ctx.today:
        raise Unprocessable(f"an override must last beyond today ({ctx.today.isoformat()})")
    if not reason.strip():
        raise Unprocessable("an override needs a reason")
    row = await session.get(MemberTier, member_id, with_for_update=True)
    if row is None:
        row = MemberTier(
            member_id=member_id,
            tier_code=ladder.base.code,
            since=ctx.now,
            anchor_on=ctx.today,
            review_on=ladder.review.next_review(ctx.today, ctx.today),
            ladder_version=ladder.version,
        )
        session.add(row)
    before = effective_code(row, ladder, ctx.now)
    previous = {
        "tier": row.override_code,
        "until": row.override_until.isoformat() if row.override_until else None,
    }
    row.override_code = target.code
    row.override_until = end_of_local_day(until, ctx.tz)
    row.override_reason = reason.strip()
    row.override_by = actor.name
    _record_change(
        session, ctx, ladder, member_id, before, target.code, "override", reason.strip(), actor.name
    )
    audit_service.record(
        session,
        actor,
        "tiers.override.set",
        "member",
        member_id,
        before={"effective": before, "override": previous},
        after={"tier": target.code, "until": until.isoformat(), "reason": reason.strip()},
        at=ctx.now,
    )
    await session.flush()
    return row


async def clear_override(
    session: AsyncSession, ctx: TierContext, member_id: int, *, reason: str, actor: audit_service.Actor
) -> None:
    ladder = await require_ladder(session)
    await _member_or_404(session, member_id)
    row = await session.get(MemberTier, member_id, with_for_update=True)
    if row is None or row.override_code is None:
        raise NotFound(f"member {member_id} has no tier override", extra={"member_id": member_id})
    before = effective_code(row, ladder, ctx.now)
    previous = {
        "tier": row.override_code,
        "until": row.override_until.isoformat() if row.override_until else None,
    }
    row.override_code = row.override_until = row.override_reason = row.override_by = None
    _record_change(session, ctx, ladder, member_id, before, row.tier_code, "override", reason, actor.name)
    audit_service.record(
        session, actor, "tiers.override.clear", "member", member_id, before=previous, after=None, at=ctx.now
    )
    await session.flush()


def _record_change(
    session: AsyncSession,
    ctx: TierContext,
    ladder: Ladder,
    member_id: int,
    before: str,
    after: str,
    reason: Reason,
    detail: str,
    actor: str,
) -> None:
    session.add(
        TierHistory(
            member_id=member_id,
            from_code=before,
            to_code=after,
            reason=reason,
            detail=detail[:500],
            actor=actor,
            ladder_version=ladder.version,
            at=ctx.now,
        )
    )
    if before != after:
        emit(session, "tier_changed", {"member_id": member_id, "from": before, "to": after, "reason": reason})


# -------------------------------------------------------------------------------------------------------------
# merges


async def after_merge(session: AsyncSession, survivor_id: int, other_ids: tuple[int, ...]) -> None:
    """A merge listener: the survivor keeps the better of its own tier and the tier of each member merged into
    it (with that member's tenure and review day), then qualifies on the combined history."""
    ctx = TierContext.of()
    ladder = await active_ladder(session)
    if ladder is None:
        return
    rows = {
        r.member_id: r
        for r in (
            await session.execute(
                sa.select(MemberTier).where(MemberTier.member_id.in_((survivor_id, *other_ids)))
            )
        ).scalars()
    }
    merged_in = set(
        (
            await session.execute(
                sa.select(Member.id).where(
                    Member.id.in_(other_ids), Member.status == "merged", Member.merged_into_id == survivor_id
                )
            )
        ).scalars()
    )
    survivor = rows.get(survivor_id)
    best = max(
        (rows[i] for i in merged_in if i in rows),
        key=lambda r: (ladder.rank_of(r.tier_code), -r.member_id),
        default=None,
    )
    held = survivor.tier_code if survivor is not None else ladder.base.code
    if best is not None and ladder.rank_of(best.tier_code) > ladder.rank_of(held):
        if survivor is None:
            survivor = MemberTier(member_id=survivor_id, ladder_version=ladder.version)
            session.add(survivor)
        survivor.tier_code = best.tier_code
        survivor.since = best.since
        survivor.anchor_on = best.anchor_on
        survivor.review_on = best.review_on
        visible = effective_code(survivor, ladder, ctx.now) == best.tier_code
        session.add(
            TierHistory(
                member_id=survivor_id,
                from_code=held,
                to_code=best.tier_code,
                reason="merge",
                detail=f"inherited from member {best.member_id}",
                actor=ctx.actor,
                ladder_version=ladder.version,
                at=ctx.now,
            )
        )
        if visible:
            emit(
                session,
                "tier_changed",
                {"member_id": survivor_id, "from": held, "to": best.tier_code, "reason": "merge"},
            )
        await session.flush()
    await reevaluate(session, ctx, [survivor_id])


# -------------------------------------------------------------------------------------------------------------
# status and projections


@dataclass(frozen=True, slots=True)
class MetricValue:
    metric: Metric
    months: int
    value: int


@dataclass(frozen=True, slots=True)
class Target:
    tier: Tier
    ways: list[list[Shortfall]]
    message: str


@dataclass(frozen=True, slots=True)
class Keep:
    review_on: date
    safe: bool
    drop_to: Tier | None
    ways: list[list[Shortfall]]
    projected: list[MetricValue]
    message: str


@dataclass(frozen=True, slots=True)
class TierStatus:
    member_id: int
    ladder: Ladder
    tier: Tier
    held: Tier
    qualified: Tier
    since: datetime | None
    review_on: date | None
    override: MemberTier | None
    metrics: list[MetricValue]
    next: Target | None
    keep: Keep | None


async def status(session: AsyncSession, ctx: TierContext, member_id: int) -> TierStatus:
    ladder = await require_ladder(session)
    await _member_or_404(session, member_id)
    row = await session.get(MemberTier, member_id)
    held = ladder.tier(row.tier_code) if row is not None else None
    held = held or ladder.base
    tier = ladder.tier(effective_code(row, ladder, ctx.now)) or held
    values = (await metrics_for(session, ladder, [member_id], ref_day=ctx.today, upper=ctx.now, tz=ctx.tz))[
        member_id
    ]
    metrics = [MetricValue(k[0], k[1], v) for k, v in sorted(values.items())]
    target: Target | None = None
    if tier.rank + 1 < len(ladder.tiers):
        nxt = ladder.tiers[tier.rank + 1]
        ways = missing_for(nxt.rule, values)
        message = (
            f"qualifies for {nxt.name}: the upgrade is applied with the next qualifying event"
            if not ways
            else f"{describe_missing(ways)} to reach {nxt.name}"
        )
        target = Target(nxt, ways, message)
    keep: Keep | None = None
    if row is not None and held.rank > 0:
        review_on = row.review_on
        projected_values = (
            await metrics_for(session, ladder, [member_id], ref_day=review_on, upper=ctx.now, tz=ctx.tz)
        )[member_id]
        projected = [MetricValue(k[0], k[1], v) for k, v in sorted(projected_values.items())]
        at_review = ladder.qualify(projected_values)
        if at_review.rank >= held.rank:
            keep = Keep(
                review_on,
                True,
                None,
                [],
                projected,
                f"keeps {held.name} at the review on {review_on.isoformat()}",
            )
        else:
            drop = ladder.at_rank(held.rank - 1) if ladder.review.one_step else at_review
            ways = missing_for(held.rule, projected_values)
            message = f"will drop to {drop.name} on {review_on.isoformat()} unless {describe_missing(ways)}"
            keep = Keep(review_on, False, drop, ways, projected, message)
    override = (
        row if row is not None and row.override_code is not None and tier.code == row.override_code else None
    )
    return TierStatus(
        member_id,
        ladder,
        tier,
        held,
        ladder.qualify(values),
        row.since if row else None,
        row.review_on if row else None,
        override,
        metrics,
        target,
        keep,
    )


async def history(session: AsyncSession, member_id: int, *, limit: int = 100) -> list[TierHistory]:
    stmt = (
        sa.select(TierHistory)
        .where(TierHistory.member_id == member_id)
        .order_by(TierHistory.id.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def effective_tiers(
    session: AsyncSession, member_ids: Sequence[int], at: datetime, ladder: Ladder | None = None
) -> dict[int, Tier]:
    """The tier each member holds at ``at`` (members without a row: the base tier)."""
    ladder = ladder or await active_ladder(session)
    if ladder is None:
        return {}
    rows = {
        r.member_id: r
        for r in (
            await session.execute(sa.select(MemberTier).where(MemberTier.member_id.in_(member_ids)))
        ).scalars()
    }
    out: dict[int, Tier] = {}
    for member_id in member_ids:
        out[member_id] = ladder.tier(effective_code(rows.get(member_id), ladder, at)) or ladder.base
    return out


# -------------------------------------------------------------------------------------------------------------
# preview


@dataclass(frozen=True, slots=True)
class Move:
    from_code: str
    to_code: str
    members: int
    when: Literal["now", "at_review"]


@dataclass(frozen=True, slots=True)
class TierCount:
    code: str
    members_now: int
    members_after: int
    moving_up_in: int
    moving_down_in: int
    moving_up_out: int
    moving_down_out: int


@dataclass(frozen=True, slots=True)
class Preview:
    ladder: Ladder
    moves: list[Move]
    tiers: list[TierCount]
    up: int
    down: int


async def preview(session: AsyncSession, ctx: TierContext, raw: Any) -> Preview:
    """What ``raw`` would do to today's members: who moves up (at once, when applied) and who would drop (at
    their next review). Reads only."""
    draft = parse_ladder(raw)
    current = await active_ladder(session)
    m = _t(Member)
    mt = _t(MemberTier)
    source = MetricSource(draft, ref_day=ctx.today, upper=ctx.now, tz=ctx.tz)
    base_code = current.base.code if current else draft.base.code
    held = sa.func.coalesce(mt.c.tier_code, base_code)
    # a held code the draft drops maps to the draft's tier at the same rank (as applying the draft would do)
    mapping = {t.code: draft.at_rank(t.rank).code for t in (current.tiers if current else ())}
    mapping.update({t.code: t.code for t in draft.tiers})
    held_in_draft = sa.case(mapping, value=held, else_=draft.base.code)
    cur = rank_sql(draft, held_in_draft)
    qualified = source.qualified_rank()
    target = sa.case((qualified >= cur, qualified), else_=(cur - 1) if draft.review.one_step else qualified)
    inner = (
        source.join(
            sa.select(held_in_draft.label("held"), code_sql(draft, target).label("target"))
            .select_from(m)
            .outerjoin(mt, mt.c.member_id == m.c.id),
            m.c.id,
        )
        .where(m.c.status == "active")
        .subquery("moves")
    )
    rows = (
        await session.execute(
            sa.select(inner.c.held, inner.c.target, sa.func.count()).group_by(inner.c.held, inner.c.target)
        )
    ).all()
    moves: list[Move] = []
    counts = {t.code: [0, 0, 0, 0, 0, 0] for t in draft.tiers}
    for held_code, target_code, n in rows:
        counts[held_code][0] += n
        counts[target_code][1] += n
        up = draft.rank_of(target_code) > draft.rank_of(held_code)
        if held_code == target_code:
            continue
        moves.append(Move(held_code, target_code, int(n), "now" if up else "at_review"))
        counts[target_code][2 if up else 3] += n
        counts[held_code][4 if up else 5] += n
    moves.sort(key=lambda mv: (draft.rank_of(mv.from_code), draft.rank_of(mv.to_code)))
    return Preview(
        draft,
        moves,
        [TierCount(code, *values) for code, values in counts.items()],
        sum(mv.members for mv in moves if mv.when == "now"),
        sum(mv.members for mv in moves if mv.when == "at_review"),
    )
