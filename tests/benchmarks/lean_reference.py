"""The lean reference ingest pipeline: the shortest correct pipeline we could write, as the ceiling that
``tongcrm sync`` is measured against in the same run (issue #22).

The same pages from the same fake platform through the same plugin client (fetch and normalise), then per page,
in one transaction, on asyncpg with array parameters (every statement's text is fixed, so each is prepared once
per connection): resolve the buyers' claims to members (creating the missing ones), upsert orders (forward
only: a version not newer than the stored one changes nothing), upsert lines, post one earn entry per order with
an idempotency key, add what was posted to the balances, and one outbox event per order that moved. Seven
statements a page. It has none of tongcrm's rules, tiers, merges, consent, audit or encryption: what it costs
is what moving these rows through PostgreSQL costs.

Its tables live in a schema of their own (``lean_ref``), created and dropped by :func:`run`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from tongcrm.plugin.types import NormalisedOrder, OrderStatus

SCHEMA = """
DROP SCHEMA IF EXISTS lean_ref CASCADE;
CREATE SCHEMA lean_ref;
CREATE TABLE lean_ref.members (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
CREATE TABLE lean_ref.identities (
    kind text NOT NULL, value text NOT NULL, member_id bigint NOT NULL REFERENCES lean_ref.members,
    PRIMARY KEY (kind, value));
CREATE TABLE lean_ref.orders (
    id bigserial PRIMARY KEY, account_id bigint NOT NULL, external_id text NOT NULL, member_id bigint,
    status text NOT NULL, total_fen bigint NOT NULL, paid_fen bigint NOT NULL, placed_at timestamptz NOT NULL,
    modified_at timestamptz NOT NULL, UNIQUE (account_id, external_id));
CREATE TABLE lean_ref.order_lines (
    id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES lean_ref.orders, external_id text NOT NULL,
    title text NOT NULL, quantity int NOT NULL, amount_fen bigint NOT NULL, refunded_fen bigint NOT NULL,
    UNIQUE (order_id, external_id));
CREATE TABLE lean_ref.points_entries (
    id bigserial PRIMARY KEY, member_id bigint NOT NULL, order_id bigint NOT NULL, amount bigint NOT NULL,
    idempotency_key text NOT NULL UNIQUE);
CREATE TABLE lean_ref.points_balances (member_id bigint PRIMARY KEY, available bigint NOT NULL);
CREATE TABLE lean_ref.outbox_events (
    id bigserial PRIMARY KEY, name text NOT NULL, payload jsonb NOT NULL, occurred_at timestamptz NOT NULL);
"""

KNOWN = """
SELECT i.kind, i.value, i.member_id FROM lean_ref.identities i
JOIN unnest($1::text[], $2::text[]) AS p(kind, value) ON i.kind = p.kind AND i.value = p.value
"""
NEW_MEMBERS = "INSERT INTO lean_ref.members (created_at) SELECT $2 FROM generate_series(1, $1) RETURNING id"
NEW_IDENTITIES = """
INSERT INTO lean_ref.identities (kind, value, member_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING
"""
ORDERS = """
INSERT INTO lean_ref.orders AS o (account_id, external_id, member_id, status, total_fen, paid_fen, placed_at,
    modified_at)
SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::timestamptz[],
    $8::timestamptz[])
ON CONFLICT (account_id, external_id) DO UPDATE SET member_id = excluded.member_id, status = excluded.status,
    total_fen = excluded.total_fen, paid_fen = excluded.paid_fen, modified_at = excluded.modified_at
WHERE o.modified_at < excluded.modified_at
RETURNING o.id, o.external_id, o.member_id, o.status, o.paid_fen
"""
LINES = """
INSERT INTO lean_ref.order_lines (order_id, external_id, title, quantity, amount_fen, refunded_fen)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bigint[])
ON CONFLICT (order_id, external_id) DO UPDATE SET title = excluded.title, quantity = excluded.quantity,
    amount_fen = excluded.amount_fen, refunded_fen = excluded.refunded_fen
"""
LEDGER = """
INSERT INTO lean_ref.points_entries (member_id, order_id, amount, idempotency_key)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[]) ON CONFLICT DO NOTHING
RETURNING member_id, amount
"""
BALANCES = """
INSERT INTO lean_ref.points_balances AS b (member_id, available)
SELECT m, sum(a) FROM unnest($1::bigint[], $2::bigint[]) AS t(m, a) GROUP BY m
ON CONFLICT (member_id) DO UPDATE SET available = b.available + excluded.available
"""
OUTBOX = """
INSERT INTO lean_ref.outbox_events (name, payload, occurred_at)
SELECT 'order_changed', jsonb_build_object('order_id', o, 'member_id', m, 'status', s), $4
FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS t(o, m, s)
"""

_EARNS = {
    OrderStatus.PAID.value,
    OrderStatus.SHIPPED.value,
    OrderStatus.DELIVERED.value,
    OrderStatus.COMPLETED.value,
}


async def _resolve(conn: Any, orders: Sequence[NormalisedOrder], now: datetime) -> dict[str, int | None]:
    """external id → member id: the owner of the first claim already known, else a new member per buyer."""
    pairs = sorted({(c.kind, c.value) for o in orders for c in o.claims})
    owner: dict[tuple[str, str], int] = {}
    if pairs:
        rows = await conn.fetch(KNOWN, [k for k, _ in pairs], [v for _, v in pairs])
        owner = {(r[0], r[1]): r[2] for r in rows}
    wanted: list[tuple[str, str]] = []  # the first claim of each buyer nobody knows yet
    for o in orders:
        keys = [(c.kind, c.value) for c in o.claims]
        if keys and not any(k in owner for k in keys) and keys[0] not in wanted:
            wanted.append(keys[0])
    if wanted:
        ids = [r[0] for r in await conn.fetch(NEW_MEMBERS, len(wanted), now)]
        owner.update(zip(wanted, ids, strict=True))
    member_of: dict[str, int | None] = {}
    attach: dict[tuple[str, str], int] = {}
    for o in orders:
        keys = [(c.kind, c.value) for c in o.claims]
        member = next((owner[k] for k in keys if k in owner), None)
        member_of[o.external_id] = member
        for k in keys:
            if member is not None and k not in owner:
                attach.setdefault(k, member)
    created = set(wanted)
    fresh = {k: m for k, m in owner.items() if k in created} | attach
    if fresh:
        items = sorted(fresh.items())
        await conn.execute(
            NEW_IDENTITIES, [k for (k, _), _ in items], [v for (_, v), _ in items], [m for _, m in items]
        )
    return member_of


async def apply_page(conn: Any, account_id: int, page: Sequence[NormalisedOrder]) -> int:
    """One page in one transaction; returns the orders written (new or newer)."""
    newest: dict[str, NormalisedOrder] = {}
    for o in page:
        if o.external_id not in newest or o.modified_at > newest[o.external_id].modified_at:
            newest[o.external_id] = o
    orders = list(newest.values())
    if not orders:
        return 0
    now = datetime.now(UTC)
    async with conn.transaction():
        member_of = await _resolve(conn, orders, now)
        written = await conn.fetch(
            ORDERS,
            account_id,
            [o.external_id for o in orders],
            [member_of[o.external_id] for o in orders],
            [o.status.value for o in orders],
            [o.total_fen for o in orders],
            [o.paid_fen for o in orders],
            [o.created_at for o in orders],
            [o.modified_at for o in orders],
        )
        if not written:
            return 0
        by_ext = {r[1]: r for r in written}
        lines = [
            (by_ext[o.external_id][0], line) for o in orders if o.external_id in by_ext for line in o.lines
        ]
        await conn.execute(
            LINES,
            [oid for oid, _ in lines],
            [line.external_id for _, line in lines],
            [line.title[:300] for _, line in lines],
            [line.quantity for _, line in lines],
            [line.amount_fen for _, line in lines],
            [line.refunded_fen for _, line in lines],
        )
        earning = [r for r in written if r[2] is not None and r[3] in _EARNS and r[4] >= 100]
        if earning:
            posted = await conn.fetch(
                LEDGER,
                [r[2] for r in earning],
                [r[0] for r in earning],
                [r[4] // 100 for r in earning],
                [f"earn:{r[0]}" for r in earning],
            )
            if posted:
                await conn.execute(BALANCES, [r[0] for r in posted], [r[1] for r in posted])
        await conn.execute(
            OUTBOX, [r[0] for r in written], [r[2] for r in written], [r[3] for r in written], now
        )
    return len(written)


async def run(
    dsn: str,
    account_id: int,
    fetch_page: Callable[[Any], Awaitable[tuple[Sequence[NormalisedOrder], Any, bool]]],
    *,
    server_cpu: Callable[[int], float] = lambda pid: 0.0,
) -> tuple[int, float, float]:
    """Fetch every page with ``fetch_page(cursor) -> (orders, next cursor, has more)`` and apply it; returns
    (orders written, seconds, server CPU seconds), schema set-up excluded; ``server_cpu(pid)`` reads what the
    connection's server process has used so far."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        written = 0
        cursor = None
        server_started = server_cpu(conn.get_server_pid())
        started = time.perf_counter()
        while True:
            orders, cursor, more = await fetch_page(cursor)
            written += await apply_page(conn, account_id, orders)
            if not more:
                break
        elapsed = time.perf_counter() - started
        used = server_cpu(conn.get_server_pid()) - server_started
        await conn.execute("DROP SCHEMA lean_ref CASCADE")
        return written, elapsed, used
    finally:
        await conn.close()
