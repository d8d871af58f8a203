"""A bad receipt is refused on its own (issue #18, defect 4), and receipts keep no mobile at rest (defect 3).

A NUL character (U+0000) cannot be stored in PostgreSQL text or JSON: a line title holding one gave a 500,
and an offline batch holding such a receipt was refused whole, so the till could never get its day through.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos import receipts as receipts_module
from tongcrm_offline_pos.models import PosReceipt

from .conftest import Receipts, enrol

MOBILE = "13912340001"
NOW = datetime(2025, 3, 14, 7, 0, tzinfo=UTC)


def _with_nul(body: dict[str, Any]) -> dict[str, Any]:
    body["lines"][0]["title"] = "bad\x00title"
    return body


async def test_an_online_receipt_with_a_nul_character_is_a_422(pos: ApiClient, receipts: Receipts) -> None:
    response = await pos.post("/pos/v1/receipts", json=_with_nul(receipts.sale()))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["reason"] == "invalid_text"
    assert "lines[0].title" in problem["detail"]


async def test_a_text_that_only_spells_a_nul_escape_is_stored(pos: ApiClient, receipts: Receipts) -> None:
    """The NUL check reads the receipt's JSON first (``\\u0000`` there: look closer); a title holding a
    backslash then ``u0000`` is six ordinary characters, found so by the closer look, and stored as sent."""
    sale = receipts.sale()
    sale["lines"][0]["title"] = "C:\\u0000 tea"
    response = await pos.post("/pos/v1/receipts", json=sale)
    assert response.status_code == 201, response.text
    async with pos.db.sessions() as session:
        body = (await session.execute(sa.select(PosReceipt.body))).scalar_one()
    assert body["lines"][0]["title"] == "C:\\u0000 tea"


async def test_a_batch_applies_its_good_receipts_and_refuses_the_bad_one(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, MOBILE)
    good1 = receipts.sale((10_000,), member={"mobile": MOBILE})
    bad = _with_nul(receipts.sale((20_000,), member={"mobile": MOBILE}))
    good2 = receipts.sale((5_000,), member={"mobile": MOBILE})
    response = await pos.post("/pos/v1/receipts/batch", json={"receipts": [good1, bad, good2]})
    assert response.status_code == 200, response.text
    out = response.json()
    assert (out["applied"], out["rejected"]) == (2, 1)
    statuses = [(r["sequence"], r["status"], r["reason"]) for r in out["results"]]
    assert statuses == [
        (good1["sequence"], "applied", None),
        (bad["sequence"], "rejected", "invalid_text"),
        (good2["sequence"], "applied", None),
    ]
    assert out["results"][1]["detail"] and "U+0000" in out["results"][1]["detail"]
    assert out["results"][2]["member_id"] == member["member_id"]

    # the till fixes the title and sends the receipt again: it applies
    bad["lines"][0]["title"] = "fixed title"
    again = await pos.post("/pos/v1/receipts/batch", json={"receipts": [good1, bad, good2]})
    assert [r["status"] for r in again.json()["results"]] == ["applied"] * 3
    assert [r["replayed"] for r in again.json()["results"]] == [True, False, True]


async def test_a_stored_receipt_keeps_no_mobile_but_replays_and_returns(
    pos: ApiClient, receipts: Receipts
) -> None:
    await enrol(pos, MOBILE)
    sale = receipts.sale((10_000, 2_000), member={"mobile": MOBILE})
    first = await pos.post("/pos/v1/receipts", json=sale)
    assert first.status_code == 201, first.text
    async with pos.db.sessions() as session:
        bodies = (await session.execute(sa.select(PosReceipt.body))).scalars().all()
    assert bodies and all(MOBILE not in repr(b) and MOBILE[-8:] not in repr(b) for b in bodies)
    assert bodies[0]["member"] == {"member_id": first.json()["member_id"], "mobile": None, "card": None}

    replay = await pos.post("/pos/v1/receipts", json=sale)  # the same body, mobile included: a replay
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    changed = dict(sale, member={"mobile": "13912340002"})
    conflict = await pos.post("/pos/v1/receipts", json=changed)  # the key with another buyer: refused
    assert conflict.status_code == 409

    back = await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {2: 2_000}))
    assert back.status_code == 201, back.text
    assert back.json()["points_reversed"] > 0


async def test_what_the_database_refuses_of_one_receipt_leaves_the_others_applied(
    pos: ApiClient, receipts: Receipts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation is the first guard; a receipt the database still refuses (here: the NUL check switched off,
    so PostgreSQL meets the NUL) is refused on its own savepoint, and the batch goes on."""
    monkeypatch.setattr(receipts_module, "unstorable_text", lambda *_args: None)
    good1, bad, good2 = receipts.sale(), _with_nul(receipts.sale()), receipts.sale()
    response = await pos.post("/pos/v1/receipts/batch", json={"receipts": [good1, bad, good2]})
    assert response.status_code == 200, response.text
    statuses = [(r["status"], r["reason"]) for r in response.json()["results"]]
    if pos.db.backend == "postgresql":
        assert statuses == [("applied", None), ("rejected", "not_stored"), ("applied", None)]
    else:  # SQLite stores a NUL: nothing to refuse
        assert statuses == [("applied", None)] * 3
    async with pos.db.sessions() as session:
        applied = (
            await session.execute(
                sa.select(sa.func.count()).select_from(PosReceipt).where(PosReceipt.status == "applied")
            )
        ).scalar_one()
    assert applied == (2 if pos.db.backend == "postgresql" else 3)


async def test_the_migration_strips_mobiles_from_receipts_stored_before(tongcrm_backend: str) -> None:
    from tongcrm.db import migrate
    from tongcrm.plugin.host import PluginHost
    from tongcrm.testing.database import open_database, scratch_url

    host = PluginHost(autoload=True, disabled=set())
    body = {"store": "S1", "lines": [{"title": "tea"}], "member": {"member_id": None, "mobile": MOBILE}}
    async with scratch_url(tongcrm_backend) as url, open_database(tongcrm_backend, url) as db:
        await migrate.upgrade(db.engine, host)
        await migrate.downgrade(db.engine, host, "pos_0002")  # as a database of before this change
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO channel_accounts (id, channel, name, settings, secret_names, status, "
                    "status_detail, created_at, updated_at) VALUES (1, 'offline_pos', 'S1', '{}', '[]', "
                    "'active', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(
                sa.insert(PosReceipt.__table__).values(
                    id=1, account_id=1, till_code="T01", business_day=date(2025, 3, 14), sequence=1,
                    receipt_key="S1:T01:20250314:1", kind="sale", status="applied", offline=True,
                    body_hash="x", till_time=NOW, received_at=NOW, effective_at=NOW, refunds={},
                    returns_applied=0, body=body, result={}, updated_at=NOW,
                )
            )  # fmt: skip
        await migrate.upgrade(db.engine, host)
        async with db.engine.connect() as conn:
            stored = (await conn.execute(sa.select(PosReceipt.__table__.c.body))).scalar_one()
    assert stored["member"] == {"member_id": None, "mobile": None, "card": None}
    assert stored["lines"] == [{"title": "tea"}]
