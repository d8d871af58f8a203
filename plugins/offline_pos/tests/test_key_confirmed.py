"""A till's lookup and checkout trust a cached till key under the API keys' revocation counter that their own
statement reads (the lookup's one statement, the receipt's claim), not a round trip of their own (issue #22):
a key revoked in another process is refused at its next request, whatever that request would have answered,
and a checkout refused so leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from tongcrm.auth.service import revoke_key
from tongcrm.db.point_reads import EngineReader
from tongcrm.orders.models import Order
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos.models import PosReceipt

from .conftest import Receipts, enrol


async def _count(pos: ApiClient, table: Any) -> int:
    async with pos.db.sessions() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()


async def test_a_till_key_revoked_elsewhere_is_refused_at_its_next_lookup_and_checkout(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, "13800138040")
    known = {"till": "T01", "mobile": "13800138040"}
    for _ in range(2):  # the key is cached as good now
        assert (await pos.post("/pos/v1/members/lookup", json=known)).status_code == 200
    first = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    sold = await pos.post("/pos/v1/receipts", json=first)
    assert sold.status_code == 201, sold.text
    orders, rows = await _count(pos, Order), await _count(pos, PosReceipt)

    async with pos.db.sessions() as session, session.begin():  # as another process would
        await revoke_key(session, str(pos.key).split("_")[1])

    lookups = (known, {"till": "T01", "mobile": "13900139041"}, {"till": "T01", "mobile": "oops"},
               {"till": "T99", "mobile": "13800138040"})  # fmt: skip
    for body in lookups:
        refused = await pos.post("/pos/v1/members/lookup", json=body)
        assert refused.status_code == 401, (body, refused.text)
        assert "points_available" not in refused.text
    checkouts = (
        receipts.sale((20_000,), member={"member_id": member["member_id"]}),
        receipts.sale((20_000,), member={"mobile": "13900139042"}),
        {**receipts.sale((20_000,)), "store": "S2"},
    )
    for body in checkouts:
        refused = await pos.post("/pos/v1/receipts", json=body)
        assert refused.status_code == 401, refused.text
    refused = await pos.post("/pos/v1/receipts", json=first)
    assert (
        refused.status_code == 401 and "points_earned" not in refused.text
    )  # a replay answers nothing either
    assert (await _count(pos, Order), await _count(pos, PosReceipt)) == (orders, rows)


async def test_a_checkout_and_a_lookup_read_the_revocation_counter_in_their_own_statement(
    pos: ApiClient, receipts: Receipts, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = await enrol(pos, "13800138043")
    buyer = {"member_id": member["member_id"]}
    assert (
        await pos.post("/pos/v1/receipts", json=receipts.sale((10_000,), member=buyer))
    ).status_code == 201
    verifier = pos.app.state.key_verifier
    asked: list[str] = []
    generation = verifier.generation

    async def counted() -> int:
        asked.append("generation")
        return int(await generation())

    monkeypatch.setattr(verifier, "generation", counted)
    seen: list[str] = []

    def on(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append(" ".join(statement.split()))

    # the lookup's statement is a point read of the app's reader (on a file or PostgreSQL), not the engine's
    reader = pos.app.state.point_reader
    read = type(reader).first

    async def through_reader(self: Any, query: Any, params: Any) -> Any:
        if not isinstance(self, EngineReader):
            on(None, None, str(query.statement), params, None, False)
        return await read(self, query, params)

    monkeypatch.setattr(type(reader), "first", through_reader)
    event.listen(sa.engine.Engine, "before_cursor_execute", on)
    try:
        sold = await pos.post("/pos/v1/receipts", json=receipts.sale((20_000,), member=buyer))
        found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138043"})
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", on)
    assert sold.status_code == 201 and found.status_code == 200
    assert asked == []  # no read of the counter of its own
    counters = [s for s in seen if "api_key_revocations" in s]
    assert len(counters) == 2, seen  # the claim carries it (PostgreSQL: the quick read), and the lookup's one
    assert (
        "INSERT INTO pos_receipts" in counters[0] or counters[0].startswith("WITH quick_ids AS")
    ) and counters[1].startswith(
        ("SELECT members.id", "SELECT card.id")  # PostgreSQL's answers a row whoever holds the mobile
    )
    # a refusal before the claim (a till the store does not have) reads it on its way out
    unknown = await pos.post(
        "/pos/v1/receipts", json={**receipts.sale((20_000,), member=buyer), "till": "T99"}
    )
    assert unknown.status_code == 404 and asked == ["generation"]
