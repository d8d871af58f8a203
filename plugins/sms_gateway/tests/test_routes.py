"""The public SmsReport/SmsUp routes: whatever a push holds, Aliyun gets its ack or a 401, never a 500.

A 500 made Aliyun re-send the whole push ten times and lost its good entries with the bad one. Entries that
cannot be kept (a NUL, which no database text column takes; an id longer than any Aliyun sends; an echoed
message id beyond 64 bits; a body nested beyond the parser) are recorded as errors for operators, and the
rest of the push is recorded. Re-sends (replays) of a push change nothing: every entry has a dedupe key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.config import Settings
from tongcrm.crypto import Vault
from tongcrm.messaging import service
from tongcrm.messaging.models import InboundRecord
from tongcrm.plugin.host import PluginHost
from tongcrm.privacy.sealed import INBOUND_PAYLOAD, is_sealed, unseal
from tongcrm.testing.database import TestDatabase
from tongcrm_sms_gateway import plugin as sms_plugin

ACK = {"code": 0, "msg": "接收成功"}
PHONE = "13800138000"


@pytest.fixture
async def api(make_client: Any, tongcrm_db: TestDatabase, tongcrm_settings: Settings) -> AsyncIterator[Any]:
    host = PluginHost(autoload=False)
    host.register(sms_plugin, "sms_gateway")
    async with tongcrm_db.sessions() as session, session.begin():
        await service.create_account(
            session,
            host,
            tongcrm_settings.vault(),
            "aliyun_sms",
            "sms",
            {"access_key_id": "LTAI-k", "access_key_secret": "s3cret", "endpoint": "http://127.0.0.1:9/"},
        )
    async with make_client(host=host, role=None) as client:
        client.token = service.callback_token(tongcrm_settings.vault(), "sms")
        yield client


async def push(api: Any, kind: str, body: bytes | list[Any]) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await api.post(
        f"/sms/aliyun/sms/{kind}?token={api.token}",
        content=content,
        headers={"Authorization": "", "Content-Type": "application/json"},
    )


#: the key the ``tongcrm_settings`` fixture configures: payloads are stored sealed (issue #18)
VAULT = Vault("test-secret-key-0123456789abcdef")


async def _inbound(db: TestDatabase) -> list[tuple[str, str, str]]:
    """What was recorded, payloads unsealed (each is checked to be sealed at rest)."""
    async with db.sessions() as session:
        rows = (
            await session.execute(
                sa.select(InboundRecord.kind, InboundRecord.outcome, InboundRecord.payload).order_by(
                    InboundRecord.id
                )
            )
        ).all()
    assert all(r.payload == "" or is_sealed(r.payload) for r in rows)
    return [(r.kind, r.outcome, unseal(VAULT, r.payload, context=INBOUND_PAYLOAD)) for r in rows]


def reply(**changes: Any) -> dict[str, Any]:
    entry = {
        "phone_number": PHONE,
        "send_time": "2024-05-01 10:01:00",
        "content": "好的",
        "sign_name": "通通会员",
        "dest_code": "",
        "sequence_id": 1,
    }
    return {**entry, **changes}


def report(**changes: Any) -> dict[str, Any]:
    entry = {
        "phone_number": PHONE,
        "send_time": "2024-05-01 10:00:00",
        "report_time": "2024-05-01 10:00:05",
        "success": True,
        "err_code": "DELIVERED",
        "err_msg": "用户接收成功",
        "sms_size": "1",
        "biz_id": "197703245997295588^0",
        "out_id": "",
    }
    return {**entry, **changes}


async def test_replies_with_a_nul_are_kept_or_reported_not_a_500(api: Any, tongcrm_db: TestDatabase) -> None:
    body = [
        reply(sequence_id=1, content="T\u0000D?"),  # the member's text: kept, the NUL made visible
        reply(sequence_id=2, sign_name="通通\u0000会员"),  # an identifier with a NUL: not the platform's
        reply(sequence_id="9" * 65),  # longer than any id Aliyun sends
        reply(sequence_id=3, content="x" * 5000),
    ]
    answer = await push(api, "up", body)
    assert (answer.status_code, answer.json()) == (200, ACK)
    rows = await _inbound(tongcrm_db)
    replies = [payload for kind, _, payload in rows if kind == "reply"]
    assert replies == ["T\ufffdD?", "x" * 1000]
    errors = sorted(outcome for kind, outcome, _ in rows if kind == "error")
    assert errors == ["sequence_id is longer than 64 characters", "sign_name contains a NUL character"]
    assert all("\u0000" not in payload for _, _, payload in rows)

    # Aliyun re-sends the same push until it is acked: nothing is recorded twice
    again = await push(api, "up", body)
    assert again.json() == ACK
    assert await _inbound(tongcrm_db) == rows


async def test_reports_with_odd_ids_are_kept_or_reported_not_a_500(
    api: Any, tongcrm_db: TestDatabase
) -> None:
    body = [
        report(out_id="9" * 30),  # digits, but no 64-bit message id: matched by provider id instead
        report(biz_id="B2", out_id="²"),  # a digit to str.isdigit, not to int()
        report(biz_id="b" * 600),  # would not fit the provider id column
        report(biz_id="B3", err_code="DELIVERED\u0000"),
    ]
    answer = await push(api, "report", body)
    assert (answer.status_code, answer.json()) == (200, ACK)
    rows = await _inbound(tongcrm_db)
    assert [kind for kind, _, _ in rows].count("receipt") == 2
    errors = sorted(outcome for kind, outcome, _ in rows if kind == "error")
    assert errors == ["biz_id is longer than 64 characters", "err_code contains a NUL character"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b"\x00[1]", "body is not JSON"),
        (b'{"a": 1}', "body is not a JSON array"),
    ],
)
async def test_bodies_that_are_not_a_push_are_reported(
    api: Any, tongcrm_db: TestDatabase, body: bytes, reason: str
) -> None:
    for kind in ("up", "report"):
        answer = await push(api, kind, body)
        assert (answer.status_code, answer.json()) == (200, ACK)
    rows = await _inbound(tongcrm_db)
    assert len(rows) == 2 and all(kind == "error" and reason in outcome for kind, outcome, _ in rows)
    assert all(len(payload) <= 64 * 1024 and "\u0000" not in payload for _, _, payload in rows)


async def test_a_wrong_token_is_refused_before_anything_is_read(api: Any, tongcrm_db: TestDatabase) -> None:
    api.token = "wrong"
    answer = await push(api, "up", [reply()])
    assert answer.status_code == 401
    assert answer.json()["detail"] == "unknown account or wrong callback token"
    assert await _inbound(tongcrm_db) == []
