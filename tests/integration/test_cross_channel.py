"""One member across channels: a buyer bound through Tmall's brand membership on Taobao and registered with
the same mobile on JD is one member, with both order histories and their spend combined for the tier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from tongcrm.audit.service import Actor
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.members.models import Member
from tongcrm.membership import MembershipService
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim, NormalisedOrder, OrderLine, OrderStatus
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import service as tiers
from tongcrm.tiers.testing import LADDER

NOW = datetime(2026, 11, 11, 12, 0, tzinfo=UTC)
MOBILE = "+86 139-1234-5678"


def _order(external_id: str, claim: IdentityClaim, amount_fen: int) -> NormalisedOrder:
    return NormalisedOrder(
        external_id=external_id,
        status=OrderStatus.COMPLETED,
        created_at=NOW - timedelta(days=3),
        modified_at=NOW - timedelta(days=1),
        paid_at=NOW - timedelta(days=3),
        completed_at=NOW - timedelta(days=1),
        total_fen=amount_fen,
        paid_fen=amount_fen,
        claims=(claim,),
        lines=(OrderLine("1", "商品", 1, amount_fen, amount_fen),),
    )


async def test_taobao_binding_and_jd_registration_make_one_member_with_combined_spend(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings
) -> None:
    host = PluginHost(autoload=True, disabled=set())
    vault = tongcrm_settings.vault()
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(
            session, host, vault, "taobao", "tmall", {"app_key": "1", "app_secret": "s", "session": "t"}
        )
        await accounts.create_account(
            session, host, vault, "jd", "jd-pop", {"app_key": "1", "app_secret": "s", "access_token": "t"}
        )
        await tiers.apply_ladder(
            session, tiers.TierContext(now=NOW), LADDER, reason="launch", actor=Actor("test", "admin")
        )
    membership = MembershipService(tongcrm_db.sessions, host, tongcrm_settings, clock=lambda: NOW)
    ouid = IdentityClaim("taobao.ouid", "OUID-7")
    open_id = IdentityClaim("jd.open_id", "JD-OPEN-7")
    on_taobao = await membership.bind(
        mobile=MOBILE, claims=[ouid], account_name="tmall", register=True, actor="tmall"
    )
    on_jd = await membership.bind(
        mobile="13912345678", claims=[open_id], account_name="jd-pop", register=True, actor="jd"
    )
    assert on_taobao is not None and on_jd is not None
    assert on_taobao.member_id == on_jd.member_id and on_jd.created is False

    ctx = IngestContext(host=host, vault=vault, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"))
    async with tongcrm_db.sessions() as session, session.begin():
        tmall = await accounts.get_account(session, "tmall")
        jd = await accounts.get_account(session, "jd-pop")
        await apply_orders_page(session, ctx, tmall.id, "taobao", [_order("T1", ouid, 60_000)])
        await apply_orders_page(session, ctx, jd.id, "jd", [_order("J1", open_id, 50_000)])

    async with tongcrm_db.sessions() as session:
        owners = dict((await session.execute(sa.select(Order.channel, Order.member_id))).all())
        live = (
            await session.execute(
                sa.select(sa.func.count()).select_from(Member).where(Member.status == "active")
            )
        ).scalar_one()
        status = await tiers.status(session, tiers.TierContext(now=NOW), on_taobao.member_id)
    assert live == 1
    assert owners == {"taobao": on_taobao.member_id, "jd": on_taobao.member_id}
    # neither channel alone reaches Silver (¥1,000); together (¥1,100) they do, at once
    assert status.tier.code == "silver"
