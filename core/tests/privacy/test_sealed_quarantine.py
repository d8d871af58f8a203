"""A quarantined platform record is kept sealed at rest (issue #18), shown by its shape to every read role and
whole only to an admin who reveals it, audited (issue #21)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.channels import service as accounts
from tongcrm.channels.models import QuarantinedRecord
from tongcrm.config import Settings
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import QuarantinedRecord as QuarantinedIn
from tongcrm.privacy.sealed import is_sealed

NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)
RECORD = '{"tid": "o7", "receiver_mobile": "13812345678", "payment": "abc"}'


async def test_a_quarantined_record_is_sealed_and_its_reason_scrubbed(
    make_client: Callable[..., Any], memory_host: PluginHost, tongcrm_settings: Settings
) -> None:
    vault = tongcrm_settings.vault()
    async with make_client(host=memory_host, role="admin") as api:
        async with api.db.sessions() as session, session.begin():
            account = await accounts.create_account(
                session, memory_host, vault, "memory", "shop", {"token": "t0ken", "shop": "A"}
            )
            ctx = IngestContext(
                host=memory_host, vault=vault, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai")
            )
            bad = QuarantinedIn("o7", "receiver_mobile 13812345678 does not match the buyer", RECORD)
            await apply_orders_page(session, ctx, account.id, "memory", [], (bad,))
        async with api.db.sessions() as session:
            row = (await session.execute(sa.select(QuarantinedRecord))).scalar_one()
        assert is_sealed(row.payload) and "12345678" not in row.payload
        assert "12345678" not in row.reason and row.reason.startswith("receiver_mobile <hidden>")

        listing = await api.get("/api/ingest/quarantine")
        assert listing.status_code == 200, listing.text
        (item,) = listing.json()["items"]
        assert item["payload"] is None and listing.json()["revealed"] is False  # masked by default
        assert json.loads(item["payload_shape"]) == {
            "tid": "<text 2>", "receiver_mobile": "<text 11>", "payment": "<text 3>"
        }  # fmt: skip
        assert "13812345678" not in listing.text
        revealed = await api.get("/api/ingest/quarantine", params={"reveal": "payload"})
        assert revealed.status_code == 200, revealed.text
        assert revealed.json()["items"][0]["payload"] == RECORD  # the record as the platform sent it
        assert revealed.json()["revealed"] is True
        async with api.db.sessions() as session:
            reveals = (
                (await session.execute(sa.select(AuditEntry).where(AuditEntry.action == "quarantine.reveal")))
                .scalars()
                .all()
            )
        assert [r.after for r in reveals] == [{"fields": ["payload"], "record_ids": [item["id"]]}]
        bad = await api.get("/api/ingest/quarantine", params={"reveal": "reason"})
        assert bad.status_code == 400
        for role in ("operator", "analyst"):
            auth = {"Authorization": f"Bearer {await api.create_key(role)}"}
            listed = await api.get("/api/ingest/quarantine", headers=auth)
            assert listed.status_code == 200 and listed.json()["items"][0]["payload"] is None
            refused = await api.get("/api/ingest/quarantine", params={"reveal": "payload"}, headers=auth)
            assert refused.status_code == 403, refused.text
            assert "13812345678" not in refused.text
