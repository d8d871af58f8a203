"""A gateway push is recorded entry by entry (issue #18): an entry with a NUL character (U+0000), which
PostgreSQL cannot store, gave a 500 and lost the ``TD`` opt-out pushed beside it. And what is kept of a push
holds no phone number in clear: replies and unparseable entries are sealed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from messaging_kit import SECRET_KEY, SIGN, Clock, World, beijing, sms_host
from tongcrm.config import Settings
from tongcrm.messaging import service
from tongcrm.messaging.models import InboundRecord, SmsOptOut
from tongcrm.plugin.types import DeliveryReceipt, InboundReply
from tongcrm.privacy.sealed import INBOUND_PAYLOAD, is_sealed, unseal
from tongcrm.testing.database import TestDatabase

pytestmark = pytest.mark.asyncio

NUMBER = "13900000007"


def _reply(content: str, sequence: int, number: str = NUMBER) -> dict[str, Any]:
    return {
        "phone_number": number,
        "send_time": "2024-05-01 10:01:00",
        "content": content,
        "sign_name": SIGN,
        "dest_code": "",
        "sequence_id": sequence,
    }


async def _token(api: Any) -> str:
    listing = await api.get("/api/messenger-accounts")
    assert listing.status_code == 200, listing.text
    token: str = listing.json()[0]["callback_token"]
    return token


async def test_a_bad_entry_does_not_take_the_opt_out_beside_it_down(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        vault = Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault()
        w = World(api.db.sessions, vault, host, Clock(beijing(2024, 5, 1, 10)))
        await w.setup("http://127.0.0.1:9/")
        member = await w.member(7)
        token = await _token(api)
        push = [_reply("hello", 1) | {"sign_name": "通通\x00会员"}, _reply("TD", 2)]
        for _ in range(2):  # Aliyun retries the push: nothing changes the second time
            ok = await api.post(f"/sms/aliyun/sms/up?token={token}", json=push, headers={"Authorization": ""})
            assert ok.status_code == 200 and ok.json() == {"code": 0, "msg": "接收成功"}, ok.text
        bad_report = [{"phone_number": NUMBER, "biz_id": "B\x001", "report_time": "2024-05-01 10:00:05"}]
        ok = await api.post(
            f"/sms/aliyun/sms/report?token={token}", json=bad_report, headers={"Authorization": ""}
        )
        assert ok.status_code == 200, ok.text

    async with tongcrm_db.sessions() as session:
        opt_outs = (await session.execute(sa.select(SmsOptOut.signature, SmsOptOut.keyword))).all()
        records = (
            (await session.execute(sa.select(InboundRecord).order_by(InboundRecord.kind, InboundRecord.id)))
            .scalars()
            .all()
        )
    assert [tuple(o) for o in opt_outs] == [(SIGN, "TD")]
    assert [(r.kind, r.member_id, r.outcome) for r in records] == [
        ("error", None, "sign_name contains a NUL character"),
        ("error", None, "biz_id contains a NUL character"),
        ("reply", member, "opt_out:TD"),
    ]
    for record in records:  # sealed at rest, readable with the key
        assert is_sealed(record.payload) and NUMBER[-8:] not in record.payload
    assert unseal(vault, records[2].payload, context=INBOUND_PAYLOAD) == "TD"
    assert NUMBER in unseal(vault, records[0].payload, context=INBOUND_PAYLOAD)


async def test_an_entry_the_database_refuses_is_kept_as_an_error_and_the_rest_applies(
    tongcrm_db: TestDatabase,
) -> None:
    """Past the parser (a plugin that lets a NUL through): each entry has its own savepoint."""
    vault = Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault()
    w = World(tongcrm_db.sessions, vault, sms_host(), Clock(beijing(2024, 5, 1, 10)))
    await w.setup("http://127.0.0.1:9/")
    at = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    replies = [
        (InboundReply(f"+86{NUMBER}", SIGN, "hello", at, "up:\x001"), None),
        (InboundReply(f"+86{NUMBER}", SIGN, "TD", at, "up:2"), "TD"),
    ]
    receipts = [
        DeliveryReceipt(
            message_id=None, provider_id="p\x00", delivered=True, code="OK", at=at, dedupe_key="r1"
        ),
        DeliveryReceipt(message_id=None, provider_id="p2", delivered=True, code="OK", at=at, dedupe_key="r2"),
    ]
    async with tongcrm_db.sessions() as session, session.begin():
        account = await service.get_account(session, "sms")
        replied = await service.record_replies(session, vault, account.id, replies)
        received = await service.record_receipts(session, vault, account.id, receipts)
    async with tongcrm_db.sessions() as session:
        opt_outs = (await session.execute(sa.select(SmsOptOut.signature))).scalars().all()
        kinds = (await session.execute(sa.select(InboundRecord.kind))).scalars().all()
    if tongcrm_db.backend == "postgresql":
        assert (replied.new, replied.errors, replied.opt_outs) == (1, 1, 1)
        assert (received.new, received.errors) == (1, 1)
        assert sorted(kinds) == ["error", "error", "receipt", "reply"]
    else:  # SQLite stores a NUL: nothing is refused
        assert (replied.new, replied.errors, received.new, received.errors) == (2, 0, 2, 0)
    assert SIGN in opt_outs


async def test_a_reply_whose_signature_the_columns_cannot_keep_is_an_error_not_a_cut_opt_out(
    tongcrm_db: TestDatabase,
) -> None:
    """A plugin's reply signature was cut to 64 characters: the opt-out then stopped marketing under a
    signature nobody sends with (or another one) and the member's own kept sending. It is the entry's error,
    kept sealed beside the others, and the reply beside it still applies."""
    vault = Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault()
    w = World(tongcrm_db.sessions, vault, sms_host(), Clock(beijing(2024, 5, 1, 10)))
    await w.setup("http://127.0.0.1:9/")
    at = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    replies = [
        (InboundReply(f"+86{NUMBER}", "签" * 65, "TD", at, "up:1"), "TD"),
        (InboundReply(f"+86{NUMBER}", SIGN, "TD", at, "up:2"), "TD"),
    ]
    async with tongcrm_db.sessions() as session, session.begin():
        account = await service.get_account(session, "sms")
        replied = await service.record_replies(session, vault, account.id, replies)
    assert (replied.new, replied.errors, replied.opt_outs) == (1, 1, 1)
    async with tongcrm_db.sessions() as session:
        opt_outs = (await session.execute(sa.select(SmsOptOut.signature))).scalars().all()
        errors = (
            (await session.execute(sa.select(InboundRecord).where(InboundRecord.kind == "error")))
            .scalars()
            .all()
        )
    assert opt_outs == [SIGN]
    assert [e.outcome for e in errors] == [
        "reply not recorded: signature is longer than 64 characters (the longest kept)"
    ]
    assert "签" * 65 in unseal(vault, errors[0].payload, context=INBOUND_PAYLOAD)
