"""Tier movement (upgrades at once, downgrades only at review), overrides, ladder versions, previews and the
member's tier status with its projections.

Every pass that moves tiers is one set-based pipeline, whether it touches one member (``reevaluate``, called by
ingest and POS inside their transaction) or a million (the review job): compute old and new tier per member
into ``tier_review_items`` with one ``INSERT … SELECT``, then write history, outbox events and the tier rows
from there with three more statements, and move the standing entitlement grants of the members who changed
tier with two more (:mod:`tongcrm.entitlements.standing`). Python never loops over members.

Wherever the effective tier changes — upgrade, review, override set, cleared or ended, ladder change (through
the upgrade pass it enqueues), merge and merge undo — the standing grants follow in the same transaction.
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
from tongcrm.db import txcache
from tongcrm.db.base import UTCDateTime
from tongcrm.db.dialect import dialect_name, insert
from tongcrm.db.lengths import check_fits
from tongcrm.entitlements import standing
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.jobs.models import OutboxEvent
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.queue import enqueue
from tongcrm.logging import get_logger
from tongcrm.members.models import Member
from tongcrm.members.references import MergeContext
from tongcrm.orders.models import Order
from tongcrm.points.models import PointsEntry
from tongcrm.points.multipliers import TierInfo
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
from tongcrm.tiers.models import MemberTier, TierHistory, TierLadder, TierMergeState, TierReviewItem

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


_LADDER_KEY = "tongcrm.tiers.active_ladder"


def holds_active_ladder(session: AsyncSession) -> bool:
    """Whether the transaction holds the ladder in force already (see :func:`hold_active_ladder`)."""
    return txcache.get(session, _LADDER_KEY)[0]


def hold_active_ladder(session: AsyncSession, version: int | None, definition: Any) -> None:
    """Hand the transaction the newest ladder read by a caller with other rows in one statement (a till's
    checkout), so :func:`active_ladder` needs no read of its own; ``version`` None: there is no ladder."""
    ladder = None if version is None else parse_ladder(definition, version=version)
    txcache.put(session, _LADDER_KEY, ladder)


async def active_ladder(session: AsyncSession) -> Ladder | None:
    """The ladder in force, read once per transaction: one receipt asked for it in earning and in tier
    re-evaluation, each a query and a parse."""
    found, cached = txcache.get(session, _LADDER_KEY)
    if found:
        return cast("Ladder | None", cached)
    row = (
        await session.execute(sa.select(TierLadder).order_by(TierLadder.version.desc()).limit(1))
    ).scalar_one_or_none()
    ladder = None if row is None else parse_ladder(row.definition, version=row.version)
    txcache.put(session, _LADDER_KEY, ladder)
    return ladder


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
        raise Unprocessable("say why the ladder changes (reason)", code="ladder.reason_required")
    check_fits(reason, "reason", TierLadder.reason)
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
    txcache.forget(session, _LADDER_KEY)
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
    select = _staged(
        ctx, ladder, run_id, mode=mode, members=members, member_subquery=member_subquery, id_range=id_range
    )
    await session.execute(
        sa.insert(TierReviewItem).from_select(
            ["run_id", "member_id", "old_code", "new_code", "next_review_on", "visible"], select
        )
    )


def _staged(
    ctx: TierContext,
    ladder: Ladder,
    run_id: str,
    *,
    mode: Literal["upgrade", "review"],
    members: sa.ColumnElement[bool] | None,
    member_subquery: sa.Select[Any] | None,
    id_range: tuple[int, int] | None = None,
) -> sa.Select[Any]:
    """The rows :func:`_stage` stages (see there)."""
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
    return select


async def _apply_staged(
    session: AsyncSession,
    ctx: TierContext,
    ladder: Ladder,
    run_id: str,
    reason: Reason,
    *,
    collect: bool,
    id_range: tuple[int, int] | None = None,
    all_grants: bool = False,
) -> tuple[int, list[TierChange]]:
    """Write history, events and tier rows from the staged items, then move the standing grants of the members
    who changed (``all_grants``: of every member in ``id_range``, when the pass reconciles a ladder change).
    The id range, when there is one, lets the database read grants by member-id range rather than whole."""
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
    if all_grants and id_range is not None:
        await standing.sync(session, ladder, ctx.now, _id_range(*id_range))
    elif count:
        movers = sa.select(items.c.member_id).where(changed)
        low, high = id_range if id_range is not None else (None, None)
        await standing.sync(
            session,
            ladder,
            ctx.now,
            lambda col: sa.and_(
                col.in_(movers), *([] if low is None or high is None else [col > low, col <= high])
            ),
        )
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


async def upgrade_due(session: AsyncSession, ctx: TierContext, member_id: int) -> bool:
    """Whether :func:`reevaluate` would upgrade ``member_id`` now: the select it stages, for one member, read
    without staging. A till's receipt asks this first, and re-evaluates only when the answer is yes (almost
    never): a re-evaluation that upgrades nobody writes nothing, but costs six statements."""
    ladder = await active_ladder(session)
    if ladder is None or len(ladder.tiers) < 2:
        return False
    m = _t(Member)
    select = _staged(
        ctx,
        ladder,
        "",
        mode="upgrade",
        members=m.c.id == member_id,
        member_subquery=sa.select(m.c.id).where(m.c.id == member_id),
    )
    return (await session.execute(select.limit(1))).first() is not None


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
                session,
                ctx,
                ladder,
                run_id,
                "review" if mode == "review" else "upgrade",
                collect=False,
                id_range=(low, high),
                # after a ladder change every member's standing grants are checked against the new ladder
                all_grants=mode == "upgrade",
            )
            total += count
            low = high


def _id_range(low: int, high: int, *also: sa.ColumnElement[bool]) -> standing.MemberFilter:
    """Members with ids in (low, high]; with conditions on ``members`` (``also``), those of them that meet them."""
    if not also:
        return lambda col: sa.and_(col > low, col <= high)
    m = _t(Member)
    chosen = sa.select(m.c.id).where(m.c.id > low, m.c.id <= high, *also)
    return lambda col: sa.and_(col > low, col <= high, col.in_(chosen))


async def grant_standing(
    sessions: async_sessionmaker[AsyncSession],
    ctx: TierContext,
    *,
    batch: int = 50_000,
    created_since: datetime | None = None,
) -> standing.Moved:
    """Reconcile standing entitlement grants with every member's effective tier, in member-id batches (one
    transaction and two statements each): the backfill for members who held a tier before standing benefits
    were granted, and a repair that is safe to run at any time (a second run changes nothing).

    With ``created_since``, only members created since then: the periodic pass that gives members who joined
    at the base tier (no tier change ever happened to them) the base tier's standing benefits."""
    async with sessions() as session:
        ladder = await active_ladder(session)
    total = standing.Moved(0, 0)
    if ladder is None:
        return total
    m = _t(Member)
    chosen: list[sa.ColumnElement[bool]] = []
    if created_since is not None:
        chosen.append(m.c.created_at >= created_since)
    low = 0
    while True:
        async with sessions() as session, session.begin():
            after_low = sa.and_(m.c.id > low, *chosen)
            high = (
                await session.execute(
                    sa.select(m.c.id).where(after_low).order_by(m.c.id).offset(batch - 1).limit(1)
                )
            ).scalar_one_or_none()
            if high is None:
                high = (await session.execute(sa.select(sa.func.max(m.c.id)).where(after_low))).scalar()
            if high is None:
                return total
            if dialect_name(session) == "postgresql":
                await session.execute(sa.text("SET LOCAL enable_nestloop = off"))
            moved = await standing.sync(session, ladder, ctx.now, _id_range(low, high, *chosen))
            total = standing.Moved(total.closed + moved.closed, total.opened + moved.opened)
            low = high


async def expire_overrides(session: AsyncSession, ctx: TierContext) -> int:
    """End overrides whose time is up: the member is back on the tier the rules give them, and holds that
    tier's standing benefits from now."""
    mt = _t(MemberTier)
    due = sa.and_(mt.c.override_code.is_not(None), mt.c.override_until <= ctx.now)
    ladder = await active_ladder(session)
    if ladder is not None:
        # the effective tier at ``now`` already ignores an override that is over; sync before the rows forget it
        ending = sa.select(mt.c.member_id).where(due)
        await standing.sync(session, ladder, ctx.now, lambda col: col.in_(ending))
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


def points_tier(row: Any, ladder: Ladder, at: datetime) -> TierInfo:
    """What the points seam is told of a member whose tier row is ``row`` (None: none): the tier they hold at
    ``at`` and the points multiplier it grants (100 without one). ``row``: a :class:`MemberTier` or a row of
    its columns (a till's quick checkout reads it outside the session, :mod:`tongcrm.counter_quick`)."""
    tier = ladder.tier(effective_code(row, ladder, at)) or ladder.base
    multiplier = tier.entitlement("points_multiplier")
    return TierInfo(tier.code, multiplier.value if multiplier else 100)


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
    check_fits(reason, "reason", MemberTier.override_reason)
    row = await session.get(MemberTier, member_id, with_for_update=True)
    if row is None:
        row = _base_row(session, ctx, ladder, member_id)
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
    await standing.sync(session, ladder, ctx.now, lambda col: col == member_id)
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
    await standing.sync(session, ladder, ctx.now, lambda col: col == member_id)


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


_HELD_FIELDS = ("tier_code", "since", "anchor_on", "review_on", "ladder_version")
_OVERRIDE_FIELDS = ("override_code", "override_until", "override_reason", "override_by")


def _state(row: MemberTier | None) -> dict[str, Any] | None:
    """A member's tier row as JSON (None: no row), for :class:`TierMergeState`."""
    if row is None:
        return None
    out: dict[str, Any] = {}
    for name in (*_HELD_FIELDS, *_OVERRIDE_FIELDS):
        value = getattr(row, name)
        out[name] = value.isoformat() if isinstance(value, date | datetime) else value
    return out


def _held_part(state: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if state is None else {name: state[name] for name in _HELD_FIELDS}


def _override_part(state: dict[str, Any] | None) -> dict[str, Any]:
    """No row and a row without an override are the same override: none."""
    return {name: (state or {}).get(name) for name in _OVERRIDE_FIELDS}


def _override_on(row: MemberTier | None, now: datetime) -> bool:
    return (
        row is not None
        and row.override_code is not None
        and row.override_until is not None
        and row.override_until > now
    )


def _tier_event(session: AsyncSession, member_id: int, before: str, after: str) -> None:
    if before != after:
        emit(
            session, "tier_changed", {"member_id": member_id, "from": before, "to": after, "reason": "merge"}
        )


def _history(
    session: AsyncSession,
    ctx: TierContext,
    ladder: Ladder,
    member_id: int,
    before: str,
    after: str,
    detail: str,
) -> None:
    session.add(
        TierHistory(
            member_id=member_id,
            from_code=before,
            to_code=after,
            reason="merge",
            detail=detail[:500],
            actor=ctx.actor,
            ladder_version=ladder.version,
            at=ctx.now,
        )
    )


async def _rows(session: AsyncSession, member_ids: Sequence[int]) -> dict[int, MemberTier]:
    result = await session.execute(
        sa.select(MemberTier)
        .where(MemberTier.member_id.in_(member_ids))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {r.member_id: r for r in result.scalars()}


async def after_merge(
    session: AsyncSession, survivor_id: int, other_ids: tuple[int, ...], context: MergeContext
) -> None:
    """The merge listener. Everything it writes is dated ``context.at`` in ``context.tz``, the merge's own
    time and the programme's zone, never the wall clock.

    On a merge the survivor keeps the better of its own tier and the tier of each member merged into it (with
    that member's tenure and review day), and the better of its effective tier and an override the absorbed
    member had in force (with its expiry and reason, audited), then qualifies on the combined history. The
    survivor's row before and after is kept, so that the undo (called with the roles swapped) can put back
    exactly what the merge changed. Standing grants follow in both directions."""
    ladder = await active_ladder(session)
    if ladder is None:
        return
    ctx = TierContext(context.at, context.tz, context.actor.name)
    involved = (survivor_id, *other_ids)
    if context.undo:
        await _undo_merge(session, ctx, ladder, context, other_ids)
    else:
        await _merge(session, ctx, ladder, context, survivor_id, other_ids)
    await reevaluate(session, ctx, involved)
    if not context.undo:
        # what the merge left, the upgrade on the combined history included: what an undo compares with
        row = (await _rows(session, [survivor_id])).get(survivor_id)
        state = await session.get(TierMergeState, context.merge_id)
        if state is not None:
            state.after = _state(row)
    await standing.sync(session, ladder, ctx.now, lambda col: col.in_(involved))


async def _merge(
    session: AsyncSession,
    ctx: TierContext,
    ladder: Ladder,
    context: MergeContext,
    survivor_id: int,
    other_ids: tuple[int, ...],
) -> None:
    rows = await _rows(session, (survivor_id, *other_ids))
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
    if await session.get(TierMergeState, context.merge_id) is None:  # one per merge, even if called again
        session.add(
            TierMergeState(
                merge_id=context.merge_id,
                survivor_id=survivor_id,
                before=_state(survivor),
                after=None,
                created_at=ctx.now,
            )
        )
    # the held tier, with its tenure and review day
    best = max(
        (rows[i] for i in merged_in if i in rows),
        key=lambda r: (ladder.rank_of(r.tier_code), -r.member_id),
        default=None,
    )
    held = survivor.tier_code if survivor is not None else ladder.base.code
    if best is not None and ladder.rank_of(best.tier_code) > ladder.rank_of(held):
        seen = effective_code(survivor, ladder, ctx.now)
        if survivor is None:
            survivor = MemberTier(member_id=survivor_id, ladder_version=ladder.version)
            session.add(survivor)
        survivor.tier_code = best.tier_code
        survivor.since = best.since
        survivor.anchor_on = best.anchor_on
        survivor.review_on = best.review_on
        _history(
            session,
            ctx,
            ladder,
            survivor_id,
            held,
            best.tier_code,
            f"inherited from member {best.member_id} by merge {context.merge_id}",
        )
        _tier_event(session, survivor_id, seen, effective_code(survivor, ladder, ctx.now))
    # an override in force on a member merged in, when it gives more than the survivor has now
    override = max(
        (rows[i] for i in merged_in if _override_on(rows.get(i), ctx.now)),
        key=lambda r: (ladder.rank_of(r.override_code), r.override_until, -r.member_id),
        default=None,
    )
    if override is not None and override.override_code and override.override_until:
        seen = effective_code(survivor, ladder, ctx.now)
        own_until = (
            survivor.override_until
            if survivor is not None and _override_on(survivor, ctx.now) and survivor.override_code == seen
            else None
        )
        rank, own_rank = ladder.rank_of(override.override_code), ladder.rank_of(seen)
        if rank > own_rank or (
            rank == own_rank and own_until is not None and override.override_until > own_until
        ):
            survivor = survivor or _base_row(session, ctx, ladder, survivor_id)
            previous = {
                "tier": survivor.override_code,
                "until": survivor.override_until.isoformat() if survivor.override_until else None,
            }
            note = f"carried over from member {override.member_id} by merge {context.merge_id}"
            reason = f"{override.override_reason} ({note})" if override.override_reason else note
            survivor.override_code = override.override_code
            survivor.override_until = override.override_until
            survivor.override_reason = reason[:500]
            survivor.override_by = override.override_by
            until = override.override_until.isoformat()
            _history(
                session,
                ctx,
                ladder,
                survivor_id,
                seen,
                override.override_code,
                f"override {note} until {until}: {override.override_reason or ''}",
            )
            _tier_event(session, survivor_id, seen, override.override_code)
            audit_service.record(
                session,
                context.actor,
                "tiers.override.carry",
                "member",
                survivor_id,
                before={"effective": seen, "override": previous},
                after={
                    "tier": override.override_code,
                    "until": until,
                    "reason": survivor.override_reason,
                    "from_member_id": override.member_id,
                    "merge_id": context.merge_id,
                },
                at=ctx.now,
            )
    await session.flush()


def _base_row(session: AsyncSession, ctx: TierContext, ladder: Ladder, member_id: int) -> MemberTier:
    """A tier row for a member who never had one: the base tier, as :func:`set_override` creates it."""
    row = MemberTier(
        member_id=member_id,
        tier_code=ladder.base.code,
        since=ctx.now,
        anchor_on=ctx.today,
        review_on=ladder.review.next_review(ctx.today, ctx.today),
        ladder_version=ladder.version,
    )
    session.add(row)
    return row


async def _undo_merge(
    session: AsyncSession, ctx: TierContext, ladder: Ladder, context: MergeContext, survivors: tuple[int, ...]
) -> None:
    """Put back the survivor's held tier and override as they were before the merge, each only if it is still
    what the merge left (a later change — an operator's override, a review — wins over the undo, as for the
    profile). The member who lives again never lost its own row."""
    state = await session.get(TierMergeState, context.merge_id)
    if state is None or state.survivor_id not in survivors:
        return  # merged before merges were recorded for tiers, or with no ladder: re-qualifying is all we can do
    member_id = state.survivor_id
    row = (await _rows(session, [member_id])).get(member_id)
    current = _state(row)
    held = _held_part(current)
    if held == _held_part(state.after):
        held = _held_part(state.before)
    override = _override_part(current)
    if override == _override_part(state.after):
        override = _override_part(state.before)
    if held == _held_part(current) and override == _override_part(current):
        return
    seen = effective_code(row, ladder, ctx.now)
    if held is None and override["override_code"] is None:
        if row is not None:
            await session.delete(row)
        row = None
    else:
        if row is None:
            row = _base_row(session, ctx, ladder, member_id)
        if held is not None:
            row.tier_code = held["tier_code"]
            row.since = datetime.fromisoformat(held["since"])
            row.anchor_on = date.fromisoformat(held["anchor_on"])
            row.review_on = date.fromisoformat(held["review_on"])
            row.ladder_version = held["ladder_version"]
        row.override_code = override["override_code"]
        until = override["override_until"]
        row.override_until = datetime.fromisoformat(until) if until else None
        row.override_reason = override["override_reason"]
        row.override_by = override["override_by"]
    now_code = effective_code(row, ladder, ctx.now)
    _history(
        session,
        ctx,
        ladder,
        member_id,
        seen,
        now_code,
        f"merge {context.merge_id} undone: the tier held before the merge is restored",
    )
    _tier_event(session, member_id, seen, now_code)
    audit_service.record(
        session,
        context.actor,
        "tiers.merge.undo",
        "member",
        member_id,
        before=current,
        after=_state(row),
        at=ctx.now,
    )
    await session.flush()


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


async def member_tier_rows(session: AsyncSession, member_ids: Sequence[int]) -> dict[int, MemberTier]:
    """The stored tier rows of these members, by member (a member without one is absent: the base tier)."""
    stmt = sa.select(MemberTier).where(MemberTier.member_id.in_(member_ids))
    return {r.member_id: r for r in (await session.execute(stmt)).scalars()}


async def effective_tiers(
    session: AsyncSession, member_ids: Sequence[int], at: datetime, ladder: Ladder | None = None
) -> dict[int, Tier]:
    """The tier each member holds at ``at`` (members without a row: the base tier)."""
    ladder = ladder or await active_ladder(session)
    if ladder is None:
        return {}
    rows = await member_tier_rows(session, member_ids)
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
