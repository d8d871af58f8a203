"""A till's lookup by mobile reads the member, their points and whether there is a tier ladder in one statement
(issue #22: across a socket a lookup costs its round trips), and answers what the long way answered."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from tongcrm.db.point_reads import EngineReader
from tongcrm.testing.plugin import ApiClient

from .conftest import Receipts, enrol


async def test_a_lookup_by_mobile_is_one_statement(
    pos: ApiClient, receipts: Receipts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one statement is a point read of the app's reader: the unit of work's session never takes a
    connection, so no ``BEGIN``/``COMMIT`` (SQLite) and no pool checkout go with it (issue #22, session 14)."""
    member = await enrol(pos, "13800138020")
    sale = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=sale)).status_code == 201
    seen: list[str] = []
    reader = pos.app.state.point_reader
    read = type(reader).first
    reads: list[str] = []

    async def counted(self: Any, query: Any, params: Any) -> Any:
        reads.append(str(query.statement).split()[0].upper())
        return await read(self, query, params)

    def on(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append(statement.split()[0].upper())

    monkeypatch.setattr(type(reader), "first", counted)
    event.listen(sa.engine.Engine, "before_cursor_execute", on)
    try:
        found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138020"})
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", on)
    assert found.status_code == 200, found.text
    body = found.json()
    assert (
        body["member_id"] == member["member_id"]
        and body["points_available"] == member["points_available"] + 100
    )
    assert body["mobile"] == member["mobile"] and body["tier"] is None
    if isinstance(reader, EngineReader):  # an in-memory database: the reader runs on the engine
        assert [s for s in seen if s not in {"BEGIN", "COMMIT", "ROLLBACK"}] == ["SELECT"]
    else:
        assert seen == [] and reads == ["SELECT"]
    missing = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138021"})
    assert missing.status_code == 404


async def test_a_lookup_that_finds_nobody_reads_the_key_counter_in_its_statement(
    pos: ApiClient, receipts: Receipts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup that finds nobody (a new customer's first) confirms the till's key under the revocation
    counter its own statement read on PostgreSQL: one read, not a second round trip for the counter. SQLite
    reads the counter on its own (a point read of microseconds; the outer join would cost every lookup)."""
    member = await enrol(pos, "13800138030")
    sale = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=sale)).status_code == 201  # the till's key is cached now
    reader = pos.app.state.point_reader
    reads: list[str] = []
    read, read_by_keys = type(reader).first, type(reader).first_by_keys

    async def counted(self: Any, query: Any, params: Any) -> Any:
        reads.append("card")
        return await read(self, query, params)

    async def counted_by_keys(self: Any, query: Any, group: Any, keys: Any) -> Any:
        reads.append("counter")
        return await read_by_keys(self, query, group, keys)

    monkeypatch.setattr(type(reader), "first", counted)
    monkeypatch.setattr(type(reader), "first_by_keys", counted_by_keys)
    missing = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138031"})
    assert missing.status_code == 404, missing.text
    assert missing.json()["detail"] == "no member has this mobile number"
    found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138030"})
    assert found.status_code == 200 and found.json()["member_id"] == member["member_id"]
    if isinstance(reader, EngineReader):
        return
    postgres = pos.db.backend == "postgresql"
    assert reads == (["card", "card"] if postgres else ["card", "counter", "card"])
