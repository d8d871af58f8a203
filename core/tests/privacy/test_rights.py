"""A member's PIPL rights: a copy of their data, and erasure that keeps the anonymous books (issue #18)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import structlog
from click.testing import CliRunner
from tongcrm.audit import chain
from tongcrm.audit.models import AuditEntry
from tongcrm.channels import service as accounts
from tongcrm.cli import Context, build_cli
from tongcrm.config import Settings
from tongcrm.identity.models import Identity
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.members.models import Member
from tongcrm.messaging import service as messaging
from tongcrm.messaging.models import InboundRecord, Message, MessageTemplate, MessengerAccount
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import InboundReply, OrderStatus
from tongcrm.points.ledger import verify
from tongcrm.points.models import PointsBalance, PointsEntry
from tongcrm.testing.memory import make_order

MOBILE = "13812345678"
NAME = "李秘密"
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)


async def _seed(api: Any, host: PluginHost, settings: Settings) -> int:
    """A member with a profile, a tag, an order from a shop, points, a message and an SMS reply."""
    created = await api.post(
        "/api/members", json={"name": NAME, "mobile": MOBILE, "city": "杭州", "tags": ["vip"]}
    )
    assert created.status_code == 201, created.text
    member_id: int = created.json()["id"]
    adjusted = await api.post(
        f"/api/members/{member_id}/points/adjustments",
        json={"points": 300, "reason": "welcome"},
        headers={"Idempotency-Key": "welcome-1"},
    )
    assert adjusted.status_code in (200, 201), adjusted.text
    vault = settings.vault()
    async with api.db.sessions() as session, session.begin():
        shop = await accounts.create_account(
            session, host, vault, "memory", "shop", {"token": "t", "shop": "A"}
        )
        ctx = IngestContext(host=host, vault=vault, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"))
        order = make_order("T-1", "buyer-9", mobile=f"+86{MOBILE}")
        await apply_orders_page(session, ctx, shop.id, "memory", [order])
        sms = MessengerAccount(messenger="aliyun_sms", name="sms", settings={}, secret_names=[])
        session.add(sms)
        await session.flush()
        template = MessageTemplate(
            name="notice", account_id=sms.id, purpose="service", signature="通通", template_code="SMS_1",
            text="${member_name}您好", variables=["member_name"], defaults={},
        )  # fmt: skip
        session.add(template)
        await session.flush()
        session.add(
            Message(
                dedupe_key=f"flow.x:{member_id}:-", flow="flow.x", member_id=member_id, template_id=template.id,
                account_id=sms.id, purpose="service", params={"member_name": NAME}, status="sent",
                provider_id="BIZ1:abcdef", detail="",
            )
        )  # fmt: skip
        await messaging.record_replies(
            session,
            vault,
            sms.id,
            [(InboundReply(f"+86{MOBILE}", "通通", "请叫我李先生", NOW, "up:1"), None)],
        )
    return member_id


@pytest.fixture
def host(memory_host: PluginHost) -> PluginHost:
    return memory_host


async def test_export_gives_everything_kept_about_the_member_and_is_audited(
    make_client: Callable[..., Any], host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role="admin") as api:
        member_id = await _seed(api, host, tongcrm_settings)
        response = await api.get(f"/api/members/{member_id}/export")
        assert response.status_code == 200, response.text
        doc = response.json()
    assert doc["member_id"] == member_id
    assert doc["profile"]["name"] == NAME and doc["profile"]["mobile"] == f"+86{MOBILE}"
    assert {(i["kind"], i["value"]) for i in doc["identities"]} >= {
        ("mobile", f"+86{MOBILE}"),
        ("memory.buyer", "buyer-9"),
    }
    assert doc["tags"] == ["vip"]
    assert [o["external_id"] for o in doc["orders"]] == ["T-1"] and doc["orders"][0]["lines"]
    assert ("adjust", 300) in [(e["kind"], e["amount"]) for e in doc["points"]["ledger"]]
    assert doc["points"]["balance"]["available"] >= 300
    assert doc["messages"][0]["params"] == {"member_name": NAME}
    assert [r["text"] for r in doc["replies"]] == ["请叫我李先生"]
    async with api.db.sessions() as session:
        actions = (await session.execute(sa.select(AuditEntry.action, AuditEntry.role))).all()
    assert ("member.export", "admin") in [tuple(a) for a in actions]


@pytest.mark.parametrize("role", ["operator", "analyst", "pos"])
async def test_only_admins_may_export_or_erase(
    make_client: Callable[..., Any], host: PluginHost, role: str
) -> None:
    async with make_client(host=host, role="admin") as admin:
        created = await admin.post("/api/members", json={"name": NAME, "mobile": MOBILE})
        member_id = created.json()["id"]
    store = {"store_code": "S1"} if role == "pos" else {}
    async with make_client(host=host, role=role, **store) as api:
        export = await api.get(f"/api/members/{member_id}/export")
        erase = await api.post(f"/api/members/{member_id}/erasure", json={"reason": "asked"})
    assert export.status_code == 403 and erase.status_code == 403
    assert export.headers["content-type"].startswith("application/problem+json")
    async with admin.db.sessions() as session:
        member = await session.get(Member, member_id)
    assert member is not None and member.name == NAME


async def test_erasure_removes_personal_data_and_keeps_the_books(
    make_client: Callable[..., Any], host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role="admin") as api:
        member_id = await _seed(api, host, tongcrm_settings)
        async with api.db.sessions() as session:
            balance_before = (await session.get(PointsBalance, member_id)).available  # type: ignore[union-attr]
            entries_before = (
                await session.execute(sa.select(sa.func.count()).select_from(PointsEntry))
            ).scalar_one()
        no_reason = await api.post(f"/api/members/{member_id}/erasure", json={"reason": " "})
        assert no_reason.status_code == 422
        erased = await api.post(f"/api/members/{member_id}/erasure", json={"reason": "request #42"})
        assert erased.status_code == 200, erased.text
        out = erased.json()
        assert out["status"] == "erased" and not out["already_erased"]
        assert out["erased"]["identities"] == 2 and out["erased"]["replies"] == 1

        lookup = await api.get("/api/members/lookup", params={"mobile": MOBILE})
        assert lookup.status_code == 404
        view = await api.get(f"/api/members/{member_id}")
        assert view.status_code == 200 and view.json()["member"]["status"] == "erased"
        assert view.json()["member"]["name"] is None and view.json()["member"]["mobile"] is None
        change = await api.patch(
            f"/api/members/{member_id}", json={"name": "x"}, headers={"If-Match": view.headers["etag"]}
        )
        assert change.status_code == 409 and "erased" in change.json()["detail"], change.text

        again = await api.post(f"/api/members/{member_id}/erasure", json={"reason": "request #42"})
        assert again.status_code == 200 and again.json()["already_erased"] is True

    async with api.db.sessions() as session:
        member = await session.get(Member, member_id)
        assert member is not None
        assert (member.name, member.city, member.mobile_enc, member.status) == (None, None, None, "erased")
        assert (
            await session.execute(sa.select(Identity).where(Identity.member_id == member_id))
        ).first() is None
        message = (await session.execute(sa.select(Message))).scalar_one()
        assert message.params == {} and message.provider_id is None
        reply = (await session.execute(sa.select(InboundRecord))).scalar_one()
        assert reply.payload == "" and reply.member_id is None
        # the books stay: the ledger, the balance, the order
        balance = await session.get(PointsBalance, member_id)
        assert balance is not None and balance.available == balance_before
        entries = (await session.execute(sa.select(sa.func.count()).select_from(PointsEntry))).scalar_one()
        assert entries == entries_before
        order = (await session.execute(sa.select(Order))).scalar_one()
        assert order.member_id == member_id
        assert await verify(session) == []
    async with api.db.sessions() as session:
        erase_audit = (
            await session.execute(sa.select(AuditEntry.after).where(AuditEntry.action == "member.erase"))
        ).scalar_one()
        assert erase_audit is not None and erase_audit["reason"] == "request #42"
        # the audit log is hash-chained: erasure leaves its entries whole, and the chain still verifies
        assert (await chain.verify(session)).ok


async def test_a_later_order_by_the_erased_buyer_makes_a_new_member(
    make_client: Callable[..., Any], host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role="admin") as api:
        member_id = await _seed(api, host, tongcrm_settings)
        erased = await api.post(f"/api/members/{member_id}/erasure", json={"reason": "asked"})
        assert erased.status_code == 200
        vault = tongcrm_settings.vault()
        async with api.db.sessions() as session, session.begin():
            shop = await accounts.get_account(session, "shop")
            ctx = IngestContext(host=host, vault=vault, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"))
            await apply_orders_page(
                session, ctx, shop.id, "memory", [make_order("T-2", "buyer-9", mobile=f"+86{MOBILE}")]
            )
        lookup = await api.get("/api/members/lookup", params={"mobile": MOBILE})
        assert lookup.status_code == 200, lookup.text
        assert lookup.json()["id"] != member_id
    async with api.db.sessions() as session:
        owners = dict((await session.execute(sa.select(Order.external_id, Order.member_id))).all())
    assert owners["T-1"] == member_id and owners["T-2"] == lookup.json()["id"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The export command configures logging (to the runner's stderr): put it back afterwards."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield
    structlog.configure(**saved_config)
    root.handlers, root.level = saved_handlers, saved_level


@pytest.mark.usefixtures("restore_logging")
def test_cli_exports_and_erases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'rights.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-secret-key-0123456789abcdef")
    cli_host = PluginHost(autoload=True, disabled=set())

    def invoke(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(
            build_cli(cli_host), list(args), obj=Context(cli_host), catch_exceptions=False, input=input
        )

    assert invoke("db", "upgrade").exit_code == 0
    import asyncio

    from tongcrm.audit.service import SYSTEM
    from tongcrm.db.engine import create_engine, session_factory
    from tongcrm.members.service import create_member

    async def seed() -> int:
        engine = create_engine(f"sqlite:///{tmp_path / 'rights.sqlite3'}")
        try:
            async with session_factory(engine)() as session, session.begin():
                settings = Settings.from_env()
                member = await create_member(
                    session, settings.vault(), {"name": NAME, "mobile": MOBILE}, [], SYSTEM
                )
                return member.id
        finally:
            await engine.dispose()

    member_id = asyncio.run(seed())
    out_file = tmp_path / "export.json"
    exported = invoke("member", "export", str(member_id), "--out", str(out_file))
    assert exported.exit_code == 0, exported.output
    assert json.loads(out_file.read_text(encoding="utf-8"))["profile"]["mobile"] == f"+86{MOBILE}"

    refused = invoke("member", "erase", str(member_id), "--reason", "asked", input="n\n")
    assert refused.exit_code != 0
    erased = invoke("member", "erase", str(member_id), "--reason", "asked", "--yes")
    assert erased.exit_code == 0 and f"member {member_id} erased" in erased.output
    after = json.loads(invoke("member", "export", str(member_id)).stdout)  # stdout holds the document alone
    assert (
        after["profile"]["mobile"] is None
        and after["identities"] == []
        and after["profile"]["status"] == "erased"
    )
    assert "already erased" in invoke("member", "erase", str(member_id), "--reason", "asked", "--yes").output


async def test_an_update_of_an_order_from_before_the_erasure_stays_with_the_anonymous_record(
    make_client: Callable[..., Any], host: PluginHost, tongcrm_settings: Settings
) -> None:
    """The platform sends an old order again (a refund): its buyer's claims are not resolved again, so no new
    member is made from the erased buyer's old data, and the points stay exact."""
    async with make_client(host=host, role="admin") as api:
        member_id = await _seed(api, host, tongcrm_settings)
        erased = await api.post(f"/api/members/{member_id}/erasure", json={"reason": "asked"})
        assert erased.status_code == 200
        vault = tongcrm_settings.vault()
        async with api.db.sessions() as session, session.begin():
            shop = await accounts.get_account(session, "shop")
            ctx = IngestContext(host=host, vault=vault, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"))
            refunded = make_order(
                "T-1", "buyer-9", mobile=f"+86{MOBILE}", status=OrderStatus.COMPLETED, minutes=5,
                refunded={"l1": 5_000},
            )  # fmt: skip
            page = await apply_orders_page(session, ctx, shop.id, "memory", [refunded])
        assert page.applied == 1 and page.members_created == 0
        lookup = await api.get("/api/members/lookup", params={"mobile": MOBILE})
        assert lookup.status_code == 404
    async with api.db.sessions() as session:
        order = (await session.execute(sa.select(Order))).scalar_one()
        assert (order.member_id, order.refunded_fen) == (member_id, 5_000)
        assert (await session.execute(sa.select(sa.func.count()).select_from(Identity))).scalar_one() == 0
        assert await verify(session) == []
