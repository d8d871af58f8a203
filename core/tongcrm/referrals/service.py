"""Referral codes, who referred whom, and the referral points rule.

A member's referrer (``members.referrer_id``) is first-touch acquisition data: set once — when the member is
created, or later by an operator or with a referral code while it is still empty — and never overwritten (syncs
never write it; merges keep the one of the member created first).

The referral rule (an ``event`` rule with ``"event": "referral"`` in the points rule set) fires once per
referred member, when that member's **first qualifying order** — paid, completed, not refunded in full —
arrives: the referrer (or the member it has since been merged into) earns the rule's points, with the ledger's
idempotency key ``event:referral:{referred member id}:{rule}`` so a replayed order never pays twice. When that
order is later refunded in full the reward is reversed: the points are taken back as an adjustment, as far as the
referrer's available balance allows (never below zero). A reversed referral does not fire again on a later order.

An operator who recorded the wrong referrer unbinds it (:func:`unbind_referrer`): the one correction of the
set-once rule, audited with a reason; an awarded reward is then taken back through the ledger the same way.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db.dialect import among, dialect_name, insert, one_of
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.members.models import Member
from tongcrm.members.service import resolve_live_id
from tongcrm.orders.models import Order
from tongcrm.points import service as points
from tongcrm.points.service import OrderFacts, PointsContext
from tongcrm.referrals.models import ReferralCode, ReferralReward

#: No 0/O/1/I/L: codes are read aloud and typed from screenshots.
_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 8


def _qualifies(status: str, paid_fen: int, refunded_fen: int, completed_at: datetime | None) -> bool:
    return (
        completed_at is not None
        and status not in ("closed", "refunded", "created")
        and paid_fen > 0
        and refunded_fen < paid_fen
    )


def _refunded_in_full(status: str, paid_fen: int, refunded_fen: int) -> bool:
    return status in ("closed", "refunded") or (refunded_fen > 0 and refunded_fen >= paid_fen)


def _maybe_refunded_in_full(facts: OrderFacts) -> bool:
    """Whether the order may be refunded in full (:func:`_refunded_in_full`) as far as ``facts`` tell: its paid
    amount is not among them, so any refund counts."""
    return facts.status in ("closed", "refunded") or any(line.refunded_fen > 0 for line in facts.lines)


@functools.cache
def _orders_of_referred(dialect: str) -> Any:
    """The orders bound as ``order_ids`` with what :func:`on_orders` decides on: the buyer's referrer, whether
    an awarded reward hangs on the order, whether the buyer's reward exists. Built once per dialect, fixed
    text."""
    # correlated, probing ix_referral_rewards_order_id per order of the page: the uncorrelated IN read every
    # awarded reward of the shop on every page
    awarded_here = (
        sa.select(sa.literal(1))
        .where(ReferralReward.order_id == Order.id, ReferralReward.status == "awarded")
        .exists()
    )
    rewarded_before = (
        sa.select(sa.literal(1)).where(ReferralReward.referred_member_id == Order.member_id).exists()
    )
    return (
        sa.select(
            Order.id, Order.member_id, Order.status, Order.paid_fen, Order.refunded_fen, Order.completed_at,
            Member.referrer_id, Member.status.label("member_status"), awarded_here.label("awarded_here"),
            rewarded_before.label("rewarded_before"),
        )
        .outerjoin(Member, Member.id == Order.member_id)
        .where(one_of(dialect, Order.id, "order_ids"))  # a page's orders: the few rows are filtered here
        .order_by(Order.completed_at, Order.id)
    )  # fmt: skip


async def on_orders(
    session: AsyncSession,
    ctx: PointsContext,
    facts: Sequence[OrderFacts],
    *,
    unreferred: frozenset[int] = frozenset(),
    awarded: frozenset[int] | None = None,
) -> None:
    """Fire or reverse referral rewards for orders just applied (in the caller's transaction).

    Every page of every sync and every till receipt comes through here, and almost none of them concern a
    referral: so one statement reads what both halves need — each order with its buyer's referrer, whether an
    awarded reward hangs on the order, whether its buyer's reward exists already — and the locking read of
    rewards to reverse runs only when an order carrying one was refunded in full.

    ``unreferred``: members the caller read in this transaction without a referrer (identity resolution
    reports it). When every buyer is one of them, no reward can be earned; and when no order may be refunded
    in full, none can be reversed (a merge can leave a reward on an order of a member without a referrer):
    then there is nothing to read.

    ``awarded``: when the caller knows it (the order upsert returns ``orders.referral_awarded``, written in the
    transaction that awards or takes back a reward, so the row it locked tells), the orders of ``facts`` an
    awarded reward hangs on: only their refunds can reverse one. None: any order refunded in full may carry one.
    """
    order_ids = sorted({f.order_id for f in facts})
    if not order_ids:
        return
    if all(
        f.member_id in unreferred
        and not (_maybe_refunded_in_full(f) and (awarded is None or f.order_id in awarded))
        for f in facts
    ):
        return
    rows = (await session.execute(_orders_of_referred(dialect_name(session)), {"order_ids": order_ids})).all()
    to_reverse = [
        row.id
        for row in rows
        if row.awarded_here and _refunded_in_full(row.status, row.paid_fen, row.refunded_fen)
    ]
    if to_reverse:
        await _reverse_refunded(session, ctx, to_reverse)
    first: dict[int, Any] = {}
    for row in rows:
        if row.referrer_id is None or row.member_status != "active":
            continue
        if _qualifies(row.status, row.paid_fen, row.refunded_fen, row.completed_at):
            first.setdefault(int(row.member_id), row)
    for referred, row in sorted(first.items()):
        if row.rewarded_before:
            continue
        referrer = await resolve_live_id(session, int(row.referrer_id))
        if referrer is None or referrer == referred:
            continue  # a member merged into its own referrer refers nobody
        stmt = (
            insert(session, cast(sa.Table, ReferralReward.__table__))
            .values(
                referred_member_id=referred, referrer_member_id=referrer, order_id=row.id, points=0,
                status="awarded", awarded_at=ctx.clock(), reversed_points=0,
            )
            .on_conflict_do_nothing(index_elements=["referred_member_id"])
            .returning(ReferralReward.referred_member_id)
        )  # fmt: skip
        if (await session.execute(stmt)).scalar() is None:
            continue  # another transaction fired it first
        await _mark_awarded(session, row.id)
        posted = await points.award_event(
            session, ctx, referrer, "referral", str(referred), occurred_at=row.completed_at
        )
        await session.execute(
            sa.update(ReferralReward)
            .where(ReferralReward.referred_member_id == referred)
            .values(points=posted)
        )


async def _reverse_refunded(session: AsyncSession, ctx: PointsContext, order_ids: Sequence[int]) -> None:
    rewards = (
        await session.execute(
            sa.select(ReferralReward, Order.status, Order.paid_fen, Order.refunded_fen)
            .join(Order, Order.id == ReferralReward.order_id)
            .where(among(dialect_name(session), ReferralReward.order_id, order_ids))
            .where(ReferralReward.status == "awarded")
            .with_for_update(of=ReferralReward)
        )
    ).all()
    for reward, status, paid_fen, refunded_fen in rewards:
        if not _refunded_in_full(status, paid_fen, refunded_fen):
            continue
        await _take_back(
            session, ctx, reward, "reversed",
            key=f"referral-reversal:{reward.referred_member_id}",
            reason=f"referral of member {reward.referred_member_id} reversed: order {reward.order_id} refunded",
        )  # fmt: skip


async def _take_back(
    session: AsyncSession, ctx: PointsContext, reward: ReferralReward, status: str, *, key: str, reason: str
) -> None:
    """Take an awarded reward's points back from the member credited (or the one it was merged into) as a
    ledger adjustment under ``key``, as far as the available balance allows, and mark the reward ``status``."""
    taken = 0
    holder = await resolve_live_id(session, reward.referrer_member_id)
    if reward.points > 0 and holder is not None:
        available = (await points.balance(session, holder)).available
        taken = min(reward.points, max(available, 0))
        if taken > 0:
            await points.adjust(session, ctx, holder, -taken, key=key, reason=reason)
    reward.status, reward.reversed_at, reward.reversed_points = status, ctx.clock(), taken
    await _mark_awarded(session, reward.order_id)


#: ``orders`` with the two columns the marker's update names: the model's ``updated_at`` moves on every ORM
#: update, and the marker is no change of the order (the incremental RFM reads orders by ``updated_at``).
_ORDERS = sa.table("orders", sa.column("id", sa.BigInteger), sa.column("referral_awarded", sa.Boolean))


async def _mark_awarded(session: AsyncSession, order_id: int) -> None:
    """Set ``orders.referral_awarded`` of ``order_id`` to whether an awarded reward hangs on it (after a reward
    fired on it, was reversed or unbound, in the same transaction). The ORM's pending changes are flushed first,
    so the reward's new status is what is read."""
    await session.flush()
    awarded = (
        sa.select(sa.literal(1))
        .where(ReferralReward.order_id == _ORDERS.c.id, ReferralReward.status == "awarded")
        .exists()
    )
    await session.execute(sa.update(_ORDERS).where(_ORDERS.c.id == order_id).values(referral_awarded=awarded))


# -------------------------------------------------------------------------------------------------------------
# codes and who referred whom


async def code_for(session: AsyncSession, member_id: int) -> str:
    """The member's referral code, created on first ask."""
    live = await resolve_live_id(session, member_id)
    if live is None:
        raise NotFound(f"member {member_id} does not exist")
    if live != member_id:
        raise Conflict(f"member {member_id} was merged into member {live}", extra={"merged_into_id": live})
    found = (
        await session.execute(sa.select(ReferralCode.code).where(ReferralCode.member_id == member_id))
    ).scalar()
    if found is not None:
        return str(found)
    while True:
        code = "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))
        stmt = (
            insert(session, cast(sa.Table, ReferralCode.__table__))
            .values(member_id=member_id, code=code)
            .on_conflict_do_nothing()
            .returning(ReferralCode.code)
        )
        if (await session.execute(stmt)).scalar() is not None:
            return code
        again = (
            await session.execute(sa.select(ReferralCode.code).where(ReferralCode.member_id == member_id))
        ).scalar()
        if again is not None:  # created concurrently
            return str(again)


async def owner_of(session: AsyncSession, code: str) -> int:
    """The live member a code belongs to (a merged member's code refers to the survivor)."""
    owner = (
        await session.execute(
            sa.select(ReferralCode.member_id).where(ReferralCode.code == code.strip().upper())
        )
    ).scalar()
    live = await resolve_live_id(session, int(owner)) if owner is not None else None
    if live is None:
        raise Unprocessable(f"no referral code {code!r}", extra={"pointer": "/code"})
    return live


async def set_referrer(session: AsyncSession, member_id: int, code: str) -> int:
    """Record who referred ``member_id`` from a referral code, once: a member who has a referrer keeps it."""
    member = await session.get(Member, member_id, with_for_update=True)
    if member is None:
        raise NotFound(f"member {member_id} does not exist")
    if member.status != "active":
        raise Conflict(f"member {member_id} was merged into member {member.merged_into_id}")
    referrer = await owner_of(session, code)
    if referrer == member_id:
        raise Unprocessable("a member cannot refer themselves", extra={"pointer": "/code"})
    if member.referrer_id is not None:
        if member.referrer_id == referrer:
            return referrer
        raise Conflict(
            f"member {member_id} was already referred by member {member.referrer_id}; the first referrer stays",
            extra={"referrer_id": member.referrer_id},
        )
    await session.execute(
        # acquisition data, not a profile edit: the If-Match version stays
        sa.update(Member).where(Member.id == member_id).values(referrer_id=referrer)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return referrer


@dataclass(frozen=True, slots=True)
class Unbound:
    """What unbinding a referrer did: the referrer removed, the state the member's reward was left in
    (None: no reward had fired) and the points taken back from the member credited."""

    member_id: int
    referrer_id: int
    reward_status: str | None
    points_taken: int


async def unbind_referrer(
    session: AsyncSession, ctx: PointsContext, member_id: int, *, reason: str
) -> Unbound:
    """Remove a referrer recorded by mistake (an operator's correction; the caller audits it).

    The referrer field is then blank, so the right referrer can be recorded once more (code or PATCH). A reward
    already awarded for this member is taken back through the ledger (key ``referral-unbind:{member}``, as far
    as the credited member's available balance allows, like a refund's reversal) and marked ``unbound``; the
    reward row stays as history, and as a referred member's reward fires at most once (its ledger key is the
    referred member's), a referrer recorded afterwards is not rewarded automatically."""
    if not reason.strip():
        raise Unprocessable("unbinding a referrer needs a reason", extra={"pointer": "/reason"})
    member = await session.get(Member, member_id, with_for_update=True)
    if member is None:
        raise NotFound(f"member {member_id} does not exist")
    if member.status != "active":
        raise Conflict(
            f"member {member_id} was merged into member {member.merged_into_id}",
            extra={"merged_into_id": member.merged_into_id},
        )
    if member.referrer_id is None:
        raise Conflict(f"member {member_id} has no referrer to unbind")
    referrer = int(member.referrer_id)
    reward = (
        await session.execute(
            sa.select(ReferralReward).where(ReferralReward.referred_member_id == member_id).with_for_update()
        )
    ).scalar_one_or_none()
    taken = 0
    if reward is not None and reward.status == "awarded":
        await _take_back(
            session, ctx, reward, "unbound",
            key=f"referral-unbind:{member_id}",
            reason=f"referrer {referrer} of member {member_id} unbound: {reason.strip()}",
        )  # fmt: skip
        taken = reward.reversed_points
    await session.execute(
        # acquisition data, not a profile edit: the If-Match version stays
        sa.update(Member).where(Member.id == member_id).values(referrer_id=None)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return Unbound(member_id, referrer, reward.status if reward is not None else None, taken)


@dataclass(frozen=True, slots=True)
class Referred:
    member_id: int
    status: str
    created_at: datetime
    reward_status: str | None
    reward_points: int
    rewarded_at: datetime | None


async def referred_by(
    session: AsyncSession, member_id: int, *, limit: int = 100
) -> tuple[int, list[Referred]]:
    """Whom a member referred (live members, newest first) and how many, with each reward's state."""
    where = [Member.referrer_id == member_id, Member.status == "active"]
    count = (await session.execute(sa.select(sa.func.count()).select_from(Member).where(*where))).scalar_one()
    rows = (
        await session.execute(
            sa.select(Member.id, Member.status, Member.created_at, ReferralReward.status, ReferralReward.points,
                      ReferralReward.awarded_at)
            .outerjoin(ReferralReward, ReferralReward.referred_member_id == Member.id)
            .where(*where)
            .order_by(Member.id.desc())
            .limit(limit)
        )
    ).all()  # fmt: skip
    return int(count), [Referred(int(r[0]), r[1], r[2], r[3], int(r[4] or 0), r[5]) for r in rows]
