"""A small programme for the operations pages' tests: members with tags, orders, a ladder, a points rule set,
a segment, a messenger with a marketing template, campaigns (a draft and one that ran), a marked day, a shop
that needs re-authorisation and a store. Everything is written through the services the pages read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import calendar
from tongcrm.campaigns import service as campaigns
from tongcrm.channels.models import ChannelAccount, SyncState
from tongcrm.config import Settings
from tongcrm.consent.service import record_consent
from tongcrm.members.models import MemberTag
from tongcrm.members.service import create_member
from tongcrm.messaging import service as messaging
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.host import PluginHost
from tongcrm.points import service as points
from tongcrm.segments import service as segments
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import service as tiers
from tongcrm.tiers.testing import LADDER
from tongcrm_offline_pos import plugin as pos_plugin
from tongcrm_sms_gateway import plugin as sms_plugin

SH = ZoneInfo("Asia/Shanghai")
SECRET_KEY = "test-secret-key-0123456789abcdef"  # the key of the tongcrm_settings fixture
RULES: dict[str, Any] = {
    "rules": [{"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1", "release": "paid"}]
}
VIP: dict[str, Any] = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}


def ops_host() -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(sms_plugin, "sms_gateway")
    host.register(pos_plugin, "offline_pos")
    return host


@dataclass
class Ops:
    members: list[int]
    vip: list[int]
    segment_id: int
    store_member: int


async def seed(db: TestDatabase, host: PluginHost, *, members: int = 40, vip: int = 36) -> Ops:
    """Everything: a ladder, a rule set, a shop needing re-authorisation, a store, orders, and the marketing."""
    now = datetime.now(UTC)
    async with db.sessions() as session, session.begin():
        await tiers.apply_ladder(session, tiers.TierContext.of(), LADDER, reason="launch", actor=SYSTEM)
        await points.create_rule_set(session, RULES, now=now - timedelta(days=400), activate=True)
    ops = await seed_marketing(db, host, members=members, vip=vip)
    async with db.sessions() as session, session.begin():
        shop = ChannelAccount(
            channel="test", name="tmall-shop", settings={}, secret_names=["app_secret"], status="needs_reauth",
            status_detail="session key expired",
        )  # fmt: skip
        store = ChannelAccount(
            channel="offline_pos", name="SH001", settings={"title": "上海南京西路店", "city": "上海"}, secret_names=[],
            status="active",
        )  # fmt: skip
        session.add_all([shop, store])
        await session.flush()
        session.add(
            SyncState(
                account_id=shop.id, pages=3, orders=12, last_success_at=now - timedelta(days=2),
                last_error="authorisation failed: invalid session", last_error_code="sync.auth_failed",
                last_error_at=now - timedelta(hours=1),
            )
        )  # fmt: skip
        for i, m in enumerate(ops.members[:5]):
            at = now - timedelta(days=10 + i)
            order = Order(
                account_id=shop.id if i else store.id, external_id=f"o{i}", member_id=m, origin_member_id=m,
                channel="test" if i else "offline_pos", store_code=None if i else "SH001", status="paid",
                total_fen=12_900, paid_fen=12_900, placed_at=at, paid_at=at, modified_at=at,
            )  # fmt: skip
            session.add(order)
            await session.flush()
            session.add(
                OrderLine(
                    order_id=order.id, external_id="1", sku="P-1", title="面霜", quantity=1, unit_price_fen=12_900,
                    amount_fen=12_900,
                )
            )  # fmt: skip
    return ops


async def seed_marketing(
    db: TestDatabase, host: PluginHost, *, members: int = 40, vip: int = 36, mobile_prefix: str = "+86139"
) -> Ops:
    """Members (the first ``vip`` tagged ``vip``, all opted in to marketing), a messenger with a marketing
    template, the segment ``vip``, a draft campaign ``spring``, a campaign ``autumn`` that ran once, and a marked
    day (会员日, today)."""
    now = datetime.now(UTC)
    vault = Settings(database_url=db.url, secret_key=SECRET_KEY).vault()
    async with db.sessions() as session, session.begin():
        ids: list[int] = []
        for n in range(members):
            member = await create_member(
                session, vault, {"name": f"会员{n}", "mobile": f"{mobile_prefix}{n:08d}"}, [], SYSTEM
            )
            await record_consent(session, member.id, "marketing", "opt_in", source="test")
            ids.append(member.id)
        session.add_all(MemberTag(member_id=m, tag="vip") for m in ids[:vip])
        await messaging.create_account(
            session, host, vault, "aliyun_sms", "sms",
            {"access_key_id": "LTAI-x", "access_key_secret": "s3cret", "endpoint": "http://127.0.0.1:9/"},
        )  # fmt: skip
        await messaging.create_template(
            session, name="promo", account="sms", purpose="marketing", signature="通通会员",
            template_code="SMS_1", text="会员日全场八折，拒收请回复R",
        )  # fmt: skip
        context = await segments.load_context(session, host, now)
        segment = await segments.save(
            session, context, "vip", VIP, SYSTEM, description="VIP 会员", create=True
        )
        await campaigns.create(
            session,
            campaigns.Draft("spring", "vip", "promo", {"kind": "order", "within_days": 7}, goal="春季唤醒"),
            SYSTEM,
        )
        await campaigns.create(
            session,
            campaigns.Draft(
                "autumn", "vip", "promo", {"kind": "order", "within_days": 7}, control_percent=25
            ),
            SYSTEM,
        )
        run_at = now + timedelta(hours=1)
        await campaigns.schedule(
            session, host, SYSTEM, "autumn", {"kind": "once", "at": run_at.isoformat()}, now=now, tz=SH
        )
        await calendar.add_mark(session, SYSTEM, now.astimezone(SH).date(), "会员日", "member_day")
        segment_id = segment.id
    await campaigns.run_due(db.sessions, host, now=run_at, tz=SH)
    return Ops(ids, ids[:vip], segment_id, ids[0])
