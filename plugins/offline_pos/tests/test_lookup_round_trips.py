"""A till's lookup by mobile reads the member, their points and whether there is a tier ladder in one statement
(issue #22: across a socket a lookup costs its round trips), and answers what the long way answered."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from tongcrm.testing.plugin import ApiClient

from .conftest import Receipts, enrol


async def test_a_lookup_by_mobile_is_one_statement(pos: ApiClient, receipts: Receipts) -> None:
    member = await enrol(pos, "13800138020")
    sale = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=sale)).status_code == 201
    seen: list[str] = []

    def on(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append(statement.split()[0].upper())

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
    assert [s for s in seen if s not in {"BEGIN", "COMMIT", "ROLLBACK"}] == ["SELECT"]
    missing = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138021"})
    assert missing.status_code == 404
