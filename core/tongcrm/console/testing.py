"""Seeding helpers for the console's tests and benchmark: a Tmall shop and a store, a tier ladder and points
rules, and shoppers whose orders go through the real ingest path (identity resolution, points, tiers), so the
pages show what a programme would hold."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.identity.models import Identity
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.members.merge import merge_members
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import BuyerProfile, IdentityClaim, NormalisedOrder, OrderLine, OrderStatus
from tongcrm.points import service as points
from tongcrm.tiers import service as tiers

T0 = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
TMALL = "tmall-flagship"
STORE = "SH001"
#: 金卡 at ¥1,000 within 12 months: the seeded shopper spent ¥888 himself (¥112 short), ¥988 with the buyer
#: merged into him (¥12 short).
LADDER = {
    "window_months": 12,
    "review": {"mode": "anniversary", "one_step": False},
    "tiers": [
        {"code": "regular", "name": "普卡"},
        {"code": "gold", "name": "金卡", "rule": {"metric": "spend_fen", "min": 100_000}},
    ],
}
RULES = {
    "rules": [{"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1", "release": "paid"}]
}
MOBILE = "+8613800138000"


@dataclass(frozen=True, slots=True)
class Seeded:
    shopper: int
    absorbed: int
    merge_id: int
    tmall_account: int
    store_account: int


def order(
    external_id: str,
    fen: int,
    claims: tuple[IdentityClaim, ...],
    *,
    at: datetime = T0,
    store_code: str | None = None,
    name: str | None = None,
) -> NormalisedOrder:
    return NormalisedOrder(
        external_id=external_id,
        status=OrderStatus.PAID,
        created_at=at,
        modified_at=at,
        total_fen=fen,
        paid_fen=fen,
        paid_at=at,
        claims=claims,
        store_code=store_code,
        lines=(OrderLine("l1", "商品", 1, fen, fen),),
        buyer=BuyerProfile(name=name),
    )


async def setup_programme(
    sessions: async_sessionmaker[AsyncSession], host: PluginHost, vault: Vault
) -> tuple[int, int]:
    """The two accounts (a Tmall shop on the taobao plugin, a store on offline_pos), the ladder and rules."""
    async with sessions() as s, s.begin():
        tmall = await accounts.create_account(
            s, host, vault, "taobao", TMALL, {"app_key": "k", "app_secret": "secret", "session": "sess"}
        )
        store = await accounts.create_account(
            s, host, vault, "offline_pos", STORE, {"title": "上海南京西路店"}
        )
        await points.create_rule_set(s, RULES, now=T0 - timedelta(days=30), activate=True)
        await tiers.apply_ladder(
            s, tiers.TierContext.of(now=T0 - timedelta(days=30)), LADDER, reason="seed", actor=SYSTEM
        )
    return tmall.id, store.id


async def ingest(
    sessions: async_sessionmaker[AsyncSession],
    host: PluginHost,
    vault: Vault,
    account_id: int,
    channel: str,
    orders: list[NormalisedOrder],
) -> None:
    ctx = IngestContext(
        host=host, vault=vault, clock=lambda: T0 + timedelta(hours=1), tz=ZoneInfo("Asia/Shanghai")
    )
    async with sessions() as s, s.begin():
        await apply_orders_page(s, ctx, account_id, channel, orders)


async def member_of(sessions: async_sessionmaker[AsyncSession], kind: str, value: str) -> int:
    async with sessions() as s:
        found = await s.scalar(
            sa.select(Identity.member_id).where(Identity.kind == kind, Identity.value == value)
        )
    assert found is not None, (kind, value)
    return int(found)


async def seed_shoppers(sessions: async_sessionmaker[AsyncSession], host: PluginHost, vault: Vault) -> Seeded:
    """李雷 bought on Tmall (¥588) and in the store (¥300) with the same mobile: one member with 888 points. A
    second Tmall buyer (¥100, 100 points) was merged into him by an operator (988 points, ¥12 short of 金卡;
    undone, ¥112 short)."""
    tmall, store = await setup_programme(sessions, host, vault)
    mobile = IdentityClaim("mobile", MOBILE, "receiver mobile")
    await ingest(
        sessions,
        host,
        vault,
        tmall,
        "taobao",
        [
            order("T1001", 58_800, (IdentityClaim("taobao.open_uid", "AAlilei"), mobile), name="李雷"),
            order(
                "T1002", 10_000, (IdentityClaim("taobao.open_uid", "AAother"),), at=T0 + timedelta(minutes=5)
            ),
        ],
    )
    await ingest(
        sessions,
        host,
        vault,
        store,
        "offline_pos",
        [order("S-0001", 30_000, (IdentityClaim("pos.card", "CARD0001"), mobile), store_code=STORE)],
    )
    shopper = await member_of(sessions, "taobao.open_uid", "AAlilei")
    absorbed = await member_of(sessions, "taobao.open_uid", "AAother")
    async with sessions() as s, s.begin():
        await s.execute(sa.update(Member).where(Member.id == shopper).values(name="李雷"))
        merge = await merge_members(
            s, shopper, absorbed, actor=SYSTEM, reason="same person (store check)", at=T0 + timedelta(hours=2)
        )
    return Seeded(shopper, absorbed, merge.id, tmall, store)
