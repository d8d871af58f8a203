"""The member activity summary: one narrow row per member that the common segment conditions read instead of
building sets over the order, tier and consent tables (issue #19: a four-condition count at a million members).

It is a **derived cache**, never written by the writers of orders, tiers or consent: every row is recomputed
from those tables by one statement (:func:`rows_of`; the per-channel rows of ``member_channel_activity`` by
:func:`channel_rows_of`, kept together with them), so the summary cannot hold anything the sources do not say. What keeps it exact is knowing when it is behind:

- :func:`refresh` recomputes the rows of the members whose sources changed since the last refresh (orders by
  ``updated_at``, tier rows by ``updated_at``, consent statements by id and ``recorded_at``, merges by id and
  their undos by count) — looking back :data:`MARGIN` further, as the RFM incremental run does, so a transaction that
  committed late with an earlier stamp is still picked up — and records the newest change it saw per source;
- :func:`is_current` says whether any source has a change newer than that (one statement). The segment
  compiler uses the summary only when it is current; otherwise it reads the orders, exactly as before.

Nothing stored moves with the clock (lifetime counts and the times of the latest two orders, not rolling
windows; an override's end rather than the effective tier), so there is no daily roll: "one (two) orders on a
channel within N days" compares the channel's latest (second-latest) order with the moment counted at, and other
windowed conditions are answered from the orders, for the few members the summary's other conditions leave (see
:mod:`tongcrm.segments.summary`).

``tongcrm verify`` compares the stored rows of both tables with a full recomputation (:func:`differences`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.consent.models import ConsentEvent
from tongcrm.db.base import utcnow
from tongcrm.db.dialect import dialect_name
from tongcrm.identity.models import Merge
from tongcrm.orders.models import Order
from tongcrm.segments.compiler import counted_order, net_spend
from tongcrm.segments.models import ActivityState, MemberActivity, MemberChannelActivity
from tongcrm.tiers.models import MemberTier

#: How far before the newest change seen a refresh looks again (late commits with earlier stamps).
MARGIN = timedelta(minutes=5)
#: Members recomputed per statement by an incremental refresh.
BATCH = 5_000
#: Serialises refreshes on PostgreSQL (two at once would each rewrite the rows the other read).
_LOCK_KEY = 0x7465_6719

activity = cast(sa.Table, MemberActivity.__table__)
_COLUMNS = [c.name for c in activity.columns]
per_channel = cast(sa.Table, MemberChannelActivity.__table__)
_CHANNEL_COLUMNS = [c.name for c in per_channel.columns]


def rows_of(members: Sequence[int] | None = None) -> sa.Select[Any]:
    """The summary rows of ``members`` (every member with a tier row, a consent statement or a counted order
    when None), computed from the sources, in the column order of ``member_activity``."""

    def only(column: Any) -> list[sa.ColumnElement[bool]]:
        return [] if members is None else [column.in_(members)]

    orders = (
        sa.select(
            Order.member_id.label("member_id"),
            sa.func.count().label("orders"),
            net_spend().label("spend"),
            sa.func.min(Order.placed_at).label("first_at"),
            sa.func.max(Order.placed_at).label("last_at"),
            sa.func.count(Order.store_code).label("store_orders"),
        )
        .where(Order.member_id.is_not(None), counted_order(), *only(Order.member_id))
        .group_by(Order.member_id)
        .subquery("o")
    )
    # the second-latest counted order per member: row 2 of each member's orders, latest first (which of two
    # orders at the same moment comes first does not change the time; and without the id the orders are read
    # from ix_orders_member_activity alone)
    ranked = (
        sa.select(
            Order.member_id,
            Order.placed_at,
            sa.func.row_number()
            .over(partition_by=Order.member_id, order_by=Order.placed_at.desc())
            .label("rn"),
        )
        .where(Order.member_id.is_not(None), counted_order(), *only(Order.member_id))
        .subquery("ranked")
    )
    second = (
        sa.select(ranked.c.member_id, ranked.c.placed_at.label("last2_at"))
        .where(ranked.c.rn == 2)
        .subquery("s")
    )
    ce = sa.inspect(ConsentEvent).local_table
    latest = (
        sa.select(ce.c.member_id, sa.func.max(ce.c.id).label("id"))
        .where(ce.c.signature == "*", *only(ce.c.member_id))
        .group_by(ce.c.member_id, ce.c.purpose)
        .subquery("latest")
    )

    def status(purpose: str) -> sa.ColumnElement[str]:
        return sa.func.max(sa.case((ce.c.purpose == purpose, ce.c.status), else_=None))

    consent = (
        sa.select(
            latest.c.member_id, status("marketing").label("marketing"), status("service").label("service")
        )
        .select_from(latest.join(ce, ce.c.id == latest.c.id))
        .group_by(latest.c.member_id)
        .subquery("c")
    )
    mt = sa.inspect(MemberTier).local_table
    tiers = sa.select(mt).where(*only(mt.c.member_id)).subquery("t")
    ids = sa.union(
        sa.select(orders.c.member_id), sa.select(consent.c.member_id), sa.select(tiers.c.member_id)
    ).subquery("ids")
    return sa.select(
        ids.c.member_id,
        tiers.c.tier_code,
        tiers.c.override_code,
        tiers.c.override_until,
        consent.c.marketing,
        consent.c.service,
        sa.func.coalesce(orders.c.orders, 0),
        sa.func.coalesce(orders.c.spend, 0),
        orders.c.first_at,
        orders.c.last_at,
        second.c.last2_at,
        sa.func.coalesce(orders.c.store_orders, 0),
    ).select_from(
        ids.outerjoin(orders, orders.c.member_id == ids.c.member_id)
        .outerjoin(second, second.c.member_id == ids.c.member_id)
        .outerjoin(consent, consent.c.member_id == ids.c.member_id)
        .outerjoin(tiers, tiers.c.member_id == ids.c.member_id)
    )


def channel_rows_of(members: Sequence[int] | None = None) -> sa.Select[Any]:
    """The per-channel summary rows of ``members`` (every member with a counted order when None): one per
    member and channel with a counted order, in the column order of ``member_channel_activity``."""
    only = [] if members is None else [Order.member_id.in_(members)]
    counted = [Order.member_id.is_not(None), counted_order(), *only]
    ranked = (
        sa.select(
            Order.member_id,
            Order.channel,
            Order.placed_at,
            sa.func.row_number()
            .over(partition_by=(Order.member_id, Order.channel), order_by=Order.placed_at.desc())
            .label("rn"),
        )
        .where(*counted)
        .subquery("ranked")
    )
    second = (
        sa.select(ranked.c.member_id, ranked.c.channel, ranked.c.placed_at.label("last2_at"))
        .where(ranked.c.rn == 2)
        .subquery("s")
    )
    groups = (
        sa.select(
            Order.member_id.label("member_id"),
            Order.channel.label("channel"),
            sa.func.count().label("orders"),
            net_spend().label("spend"),
            sa.func.max(Order.placed_at).label("last_at"),
        )
        .where(*counted)
        .group_by(Order.member_id, Order.channel)
        .subquery("g")
    )
    return sa.select(
        groups.c.member_id,
        groups.c.channel,
        groups.c.orders,
        groups.c.spend,
        groups.c.last_at,
        second.c.last2_at,
    ).select_from(
        groups.outerjoin(
            second, sa.and_(second.c.member_id == groups.c.member_id, second.c.channel == groups.c.channel)
        )
    )


async def _write(session: AsyncSession, members: Sequence[int] | None) -> None:
    await session.execute(sa.insert(activity).from_select(_COLUMNS, rows_of(members)))
    await session.execute(sa.insert(per_channel).from_select(_CHANNEL_COLUMNS, channel_rows_of(members)))


_MARKS = ("orders_seen", "tiers_seen", "consent_seen", "merges_seen", "undone_seen")


def _marks_now() -> list[sa.ScalarSelect[Any]]:
    """The newest change in each source, as :data:`_MARKS`: maxima of indexed columns (each read at one end of
    its index whatever the plan) and the count of undone merges (few rows)."""
    return [
        sa.select(sa.func.max(Order.updated_at)).scalar_subquery(),
        sa.select(sa.func.max(MemberTier.updated_at)).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.max(ConsentEvent.id), 0)).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.max(Merge.id), 0)).scalar_subquery(),
        sa.select(sa.func.count()).where(Merge.undone_at.is_not(None)).scalar_subquery(),
    ]


async def _marks(session: AsyncSession) -> dict[str, Any]:
    """The newest change in each source now (read before the rows are recomputed, so a change that lands in
    between is newer than the marks and seen again next time)."""
    row = (await session.execute(sa.select(*_marks_now()))).one()
    return {name: row[i] if i < 2 else int(row[i]) for i, name in enumerate(_MARKS)}


async def _state(session: AsyncSession) -> ActivityState | None:
    return (await session.execute(sa.select(ActivityState).where(ActivityState.id == 1))).scalar_one_or_none()


async def is_current(session: AsyncSession) -> bool:
    """Whether the summary holds every change the sources hold: no source has a change newer than the last
    refresh saw. One read only statement: the state row beside the sources' newest changes now.

    The newest changes are read as maxima, not as "is there a row newer than the mark" with the mark bound as a
    parameter: PostgreSQL plans a statement prepared again and again generically after five runs, and its
    generic plan for ``updated_at > $1`` scanned all five million orders (3-4 s a probe on the benchmark base);
    a maximum is read at the end of the index under any plan."""
    state = sa.inspect(ActivityState).local_table
    row = (
        await session.execute(sa.select(*(state.c[n] for n in _MARKS), *_marks_now()).where(state.c.id == 1))
    ).first()
    if row is None:
        return False
    orders, tiers, consent, merges, undone = row[: len(_MARKS)]
    orders_now, tiers_now, consent_now, merges_now, undone_now = row[len(_MARKS) :]

    def newer(latest: datetime | None, then: datetime | None) -> bool:
        return latest is not None and (then is None or latest > then)

    # an undo is dated by its caller, so it is known by the count only
    return not (
        newer(orders_now, orders)
        or newer(tiers_now, tiers)
        or int(consent_now) > int(consent)
        or int(merges_now) > int(merges)
        or int(undone_now) != int(undone)
    )


async def _affected(session: AsyncSession, state: ActivityState) -> list[int]:
    """Members whose summary row may have changed since ``state``: anyone with an order, tier row or consent
    statement stamped since (less :data:`MARGIN`), and both sides of a merge done or undone since."""

    def since(seen: datetime | None) -> datetime:
        return (seen if seen is not None else state.refreshed_at) - MARGIN

    undos = (
        await session.execute(sa.select(sa.func.count()).where(Merge.undone_at.is_not(None)))
    ).scalar_one()
    # an undo is dated by its caller, so a new one is known by the count only: then every undone merge is looked at
    new_undo = Merge.undone_at.is_not(None) if undos != state.undone_seen else sa.false()
    merged = sa.or_(Merge.id > state.merges_seen, new_undo)
    changed: sa.CompoundSelect[Any] = sa.union(
        sa.select(Order.member_id).where(
            Order.updated_at >= since(state.orders_seen), Order.member_id.is_not(None)
        ),
        sa.select(MemberTier.member_id).where(MemberTier.updated_at >= since(state.tiers_seen)),
        sa.select(ConsentEvent.member_id).where(
            sa.or_(
                ConsentEvent.id > state.consent_seen, ConsentEvent.recorded_at >= state.refreshed_at - MARGIN
            )
        ),
        sa.select(Merge.survivor_id).where(merged),
        sa.select(Merge.absorbed_id).where(merged),
    )
    return sorted(int(i) for i in (await session.execute(changed)).scalars())


async def refresh(session: AsyncSession, *, progress: Callable[[int, int], None] | None = None) -> bool:
    """Bring the summary up to date inside the caller's transaction: rebuild it whole the first time, else
    recompute the rows of the members affected since the last refresh. Returns False (and changes nothing)
    when another refresh holds the lock on PostgreSQL; the caller then reads the orders instead."""
    if dialect_name(session) == "postgresql":
        taken = await session.execute(sa.select(sa.func.pg_try_advisory_xact_lock(_LOCK_KEY)))
        if not taken.scalar_one():
            return False
    started = utcnow()
    marks = await _marks(session)
    state = await _state(session)
    if state is None:
        await session.execute(sa.delete(activity))
        await session.execute(sa.delete(per_channel))
        await _write(session, None)
        session.add(ActivityState(id=1, refreshed_at=started, **marks))
        await session.flush()
        return True
    affected = await _affected(session, state)
    await recompute(session, affected, progress=progress)
    await session.execute(
        sa.update(ActivityState).where(ActivityState.id == 1).values(refreshed_at=started, **marks)
    )
    return True


async def recompute(
    session: AsyncSession, members: Sequence[int], *, progress: Callable[[int, int], None] | None = None
) -> None:
    """Recompute the rows of ``members`` from the sources, :data:`BATCH` at a time (what a refresh does for
    the members it found changed; also a repair for rows a bypassing write left behind)."""
    if progress:
        progress(0, len(members))
    for i in range(0, len(members), BATCH):
        chunk = list(members[i : i + BATCH])
        await session.execute(sa.delete(activity).where(activity.c.member_id.in_(chunk)))
        await session.execute(sa.delete(per_channel).where(per_channel.c.member_id.in_(chunk)))
        await _write(session, chunk)
        if progress:
            progress(min(i + BATCH, len(members)), len(members))


async def rebuild(session: AsyncSession) -> None:
    """Recompute every row (what a first refresh does; also the repair after ``tongcrm verify`` finds drift)."""
    await session.execute(sa.delete(ActivityState))
    await refresh(session)


async def differences(session: AsyncSession, *, limit: int = 20) -> list[int]:
    """Members whose stored summary row differs from a recomputation from the sources (missing, extra or
    different), at most ``limit`` of them: empty when the summary is exact."""
    pairs: list[tuple[sa.Select[Any], sa.Select[Any]]] = [
        (sa.select(*(activity.c[name] for name in _COLUMNS)), rows_of(None)),
        (sa.select(*(per_channel.c[name] for name in _CHANNEL_COLUMNS)), channel_rows_of(None)),
    ]
    differing = []
    for stored, derived in pairs:
        differing.append(sa.select(sa.except_(stored, derived).subquery().c[0]))
        differing.append(sa.select(sa.except_(derived, stored).subquery().c[0]))
    ids = sa.union(*differing).subquery()
    found = await session.execute(sa.select(ids.c[0]).order_by(ids.c[0]).limit(limit))
    return [int(i) for i in found.scalars()]
