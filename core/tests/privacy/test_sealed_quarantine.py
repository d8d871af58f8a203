"""A quarantined platform record is kept sealed at rest and shown whole to an operator (issue #18)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
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
        assert item["payload"] == RECORD  # the operator sees the record as the platform sent it
