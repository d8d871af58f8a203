"""A known member's checkout sends no statement it can fold into another (issue #22: across a socket a receipt
costs its round trips): the identity's ``last_seen_at`` and the order's lines move with the order's upsert on
PostgreSQL, and what the till shows (points earned, balance) comes back from the statement writing the
``order_changed`` event, not from a read after it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from tongcrm.testing.plugin import ApiClient

from .conftest import Receipts, enrol


async def test_a_known_members_checkout_reads_nothing_after_its_last_write(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, "13800138030")
    first = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=first)).status_code == 201
    seen: list[tuple[str, str]] = []

    def on(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append((conn.dialect.name, " ".join(statement.split())))

    event.listen(sa.engine.Engine, "before_cursor_execute", on)
    try:
        sold = await pos.post(
            "/pos/v1/receipts", json=receipts.sale((20_000,), member={"member_id": member["member_id"]})
        )
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", on)
    assert sold.status_code == 201, sold.text
    body = sold.json()
    assert body["points_earned"] == 200
    assert body["points_available"] == member["points_available"] + 100 + 200
    dialect = seen[0][0]
    statements = [s for _, s in seen if s.split()[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}]
    [changed] = [i for i, s in enumerate(statements) if "RETURNING (SELECT" in s and "outbox_events" in s]
    assert not any(s.startswith("SELECT") and "points_balances" in s for s in statements[changed:])
    touches = [s for s in statements if s.upper().startswith("UPDATE IDENTITIES")]
    assert len(touches) == (0 if dialect == "postgresql" else 1)
    lines = [s for s in statements if s.upper().startswith("INSERT INTO ORDER_LINES")]
    assert len(lines) == (0 if dialect == "postgresql" else 1)
    # claim, buyer, stored order with settings, order (+ identity seen + lines on PostgreSQL), [identity seen,
    # lines on SQLite], award gate, entries/lots/balances (one statement on PostgreSQL, three on SQLite),
    # points_changed (SQLite; PostgreSQL's is in the posting), order_changed, finish
    assert len(statements) == (8 if dialect == "postgresql" else 13)
    print(dialect, len(seen), "statements on the socket:", *(s[:90] for _, s in seen), sep="\n  ")
