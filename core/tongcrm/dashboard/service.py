"""The dashboard's figures, computed by aggregate SQL that runs the same on SQLite and PostgreSQL.

The console page and ``GET /api/dashboard`` both call :func:`dashboard`, so what an operator sees in the browser
is what the API answers. Channel overlap is channel-neutral: a member is "on" every channel named by one of
its identities' accounts or one of its orders, and members are counted per combination of channel names, so
a channel plugin installed tomorrow shows up without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels.models import ChannelAccount, QuarantinedRecord, SyncState
from tongcrm.db.base import utcnow
from tongcrm.identity.models import Identity
from tongcrm.members.models import Member
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order
from tongcrm.points.models import PointsBalance, PointsLot
from tongcrm.tiers.models import MemberTier

#: Messages that left (or reached) the handset's gateway.
SENT_STATUSES = ("sent", "delivered")
#: Channels beyond this many are counted together in the last bit (a combination key is a 63-bit mask).
_MAX_CHANNELS = 62
EXPIRY_WINDOW = timedelta(days=30)
MESSAGE_WINDOWS = (7, 30)


@dataclass(frozen=True, slots=True)
class Overlap:
    #: Channel names, sorted; empty for members with no channel identity or order yet.
    channels: list[str]
    members: int


@dataclass(frozen=True, slots=True)
class Count:
    key: str
    members: int


@dataclass(frozen=True, slots=True)
class AccountSync:
    id: int
    name: str
    channel: str
    status: str
    needs_reauth: bool
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True, slots=True)
class MessageVolume:
    days: int
    sent: int
    refused: int
    total: int


@dataclass(frozen=True, slots=True)
class Dashboard:
    at: datetime
    members: int
    overlap: list[Overlap]
    tiers: list[Count]
    lifecycle: list[Count]
    #: Points members hold and may spend (positive available balances) and points still pending release.
    points_liability: int
    points_pending: int
    points_expiring_30d: int
    accounts: list[AccountSync]
    messages: list[MessageVolume]
    quarantine: int


_ACTIVE = Member.status == "active"


async def _overlap(session: AsyncSession) -> list[Overlap]:
    member_channels = sa.union(
        sa.select(Identity.member_id, ChannelAccount.channel).join(
            ChannelAccount, ChannelAccount.id == Identity.account_id
        ),
        sa.select(Order.member_id, Order.channel).where(Order.member_id.is_not(None)),
    ).subquery("member_channels")
    names = sorted((await session.execute(sa.select(member_channels.c.channel).distinct())).scalars())
    if not names:
        return []
    bits = {name: 1 << min(i, _MAX_CHANNELS) for i, name in enumerate(names)}
    bit = sa.case(*((member_channels.c.channel == n, b) for n, b in bits.items()), else_=0)
    per_member = (
        sa.select(member_channels.c.member_id, sa.func.sum(sa.distinct(bit)).label("mask"))
        .join(Member, Member.id == member_channels.c.member_id)
        .where(_ACTIVE)
        .group_by(member_channels.c.member_id)
        .subquery("per_member")
    )
    rows = await session.execute(sa.select(per_member.c.mask, sa.func.count()).group_by(per_member.c.mask))
    out = [Overlap([n for n, b in bits.items() if int(mask) & b], int(count)) for mask, count in rows]
    return sorted(out, key=lambda o: (-o.members, o.channels))


async def _tiers(session: AsyncSession, now: datetime) -> list[Count]:
    effective = sa.case(
        (
            sa.and_(MemberTier.override_code.is_not(None), MemberTier.override_until > now),
            MemberTier.override_code,
        ),
        else_=MemberTier.tier_code,
    )
    rows = await session.execute(
        sa.select(effective.label("tier"), sa.func.count())
        .select_from(Member)
        .outerjoin(MemberTier, MemberTier.member_id == Member.id)
        .where(_ACTIVE)
        .group_by(effective)
    )
    return sorted((Count(tier or "", int(n)) for tier, n in rows), key=lambda c: (-c.members, c.key))


async def dashboard(session: AsyncSession, *, now: datetime | None = None) -> Dashboard:
    """Every figure of the dashboard as of ``now``, in one read transaction (a consistent picture)."""
    now = now or utcnow()
    members = int(await session.scalar(sa.select(sa.func.count()).select_from(Member).where(_ACTIVE)) or 0)
    lifecycle = [
        Count(stage, int(n))
        for stage, n in await session.execute(
            sa.select(Member.lifecycle_stage, sa.func.count())
            .where(_ACTIVE)
            .group_by(Member.lifecycle_stage)
            .order_by(Member.lifecycle_stage)
        )
    ]
    liability, pending = (
        await session.execute(
            sa.select(
                sa.func.coalesce(
                    sa.func.sum(sa.case((PointsBalance.available > 0, PointsBalance.available), else_=0)), 0
                ),
                sa.func.coalesce(sa.func.sum(PointsBalance.pending), 0),
            )
        )
    ).one()
    expiring = await session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(PointsLot.remaining), 0)).where(
            PointsLot.status == "available",
            PointsLot.remaining > 0,
            PointsLot.expires_at > now,
            PointsLot.expires_at <= now + EXPIRY_WINDOW,
        )
    )
    accounts = [
        AccountSync(
            row.id,
            row.name,
            row.channel,
            row.status,
            row.status == "needs_reauth",
            row.last_success_at,
            row.last_error,
            row.last_error_at,
        )
        for row in await session.execute(
            sa.select(
                ChannelAccount.id,
                ChannelAccount.name,
                ChannelAccount.channel,
                ChannelAccount.status,
                SyncState.last_success_at,
                SyncState.last_error,
                SyncState.last_error_at,
            )
            .outerjoin(SyncState, SyncState.account_id == ChannelAccount.id)
            .order_by(ChannelAccount.channel, ChannelAccount.name)
        )
    ]
    since = {days: now - timedelta(days=days) for days in MESSAGE_WINDOWS}
    volume_columns = []
    for days in MESSAGE_WINDOWS:
        recent = Message.created_at >= since[days]
        volume_columns += [
            sa.func.coalesce(
                sa.func.sum(sa.case((sa.and_(recent, Message.status.in_(SENT_STATUSES)), 1), else_=0)), 0
            ),
            sa.func.coalesce(
                sa.func.sum(sa.case((sa.and_(recent, Message.status == "refused"), 1), else_=0)), 0
            ),
            sa.func.coalesce(sa.func.sum(sa.case((recent, 1), else_=0)), 0),
        ]
    volumes = (
        await session.execute(
            sa.select(*volume_columns).where(Message.created_at >= since[max(MESSAGE_WINDOWS)])
        )
    ).one()
    messages = [
        MessageVolume(days, int(volumes[3 * i]), int(volumes[3 * i + 1]), int(volumes[3 * i + 2]))
        for i, days in enumerate(MESSAGE_WINDOWS)
    ]
    quarantine = int(
        await session.scalar(
            sa.select(sa.func.count())
            .select_from(QuarantinedRecord)
            .where(QuarantinedRecord.resolved_at.is_(None))
        )
        or 0
    )
    return Dashboard(
        at=now,
        members=members,
        overlap=await _overlap(session),
        tiers=await _tiers(session, now),
        lifecycle=lifecycle,
        points_liability=int(liability),
        points_pending=int(pending),
        points_expiring_30d=int(expiring or 0),
        accounts=accounts,
        messages=messages,
        quarantine=quarantine,
    )
