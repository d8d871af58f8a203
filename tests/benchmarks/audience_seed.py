"""A large, deterministic audience base for the segment and RFM benchmarks, generated inside the database.

``members`` members and ``5 x members`` orders (lines, identities on two or three channels, tiers, tags, consent
statements, points lots and balances) are written by set-based ``INSERT ... SELECT`` statements over
``generate_series`` (PostgreSQL) or a recursive CTE (SQLite): nothing is built row by row in Python, so a
million members take minutes, not hours. Pseudo-random choices are a multiplicative hash of the row number
(:func:`_h`), the same on both databases, so both hold the same data.

Distributions (meant to look like a brand's base, not uniform noise):

- 80% of members ever bought; orders go to buyers through four pools of shrinking size (40% of orders spread
  over all buyers, then 30%, 20%, 10% over the top quarter, sixteenth and sixty-fourth), so most buyers have a
  few orders and a few thousand have dozens;
- orders are placed over two years, 55% on taobao, 30% on jd, 15% in one of 40 stores (``offline_pos``); 92%
  are paid, 3% never paid, 2% closed unpaid, 3% refunded in full and 4% in part; 40% have a second line;
- tiers member/silver/gold/platinum at 55/25/14/6%; 0-3 of 30 tags; marketing consent: 45% opted in, 15% out,
  the rest never asked; 70% hold a points lot expiring within the next year.

A finished seed leaves a ``bench_seed`` row naming its size and :data:`SEED_VERSION`; a later run finding it
reuses the database (the seed is the expensive part), otherwise the tables are dropped and seeded again.

    python tests/benchmarks/audience_seed.py sqlite:////tmp/aud.sqlite3 100000
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tongcrm.db.base import metadata
from tongcrm.db.engine import create_engine
from tongcrm.db.models import import_models

#: Bump when the generated data changes: an older seed is then rebuilt rather than reused.
SEED_VERSION = 1
#: The moment the seed is relative to (orders are placed up to it); measures evaluate at it.
NOW = datetime(2026, 12, 1, tzinfo=UTC)
ORDERS_PER_MEMBER = 5
CHUNK = 1_000_000
_NOW_SQL = "2026-12-01 00:00:00"
_P = 2_147_483_647  # a prime: i * a mod p runs through every residue
_SALTS = {
    "city": 48_271, "gender": 69_621, "source": 16_807, "joined": 39_373, "birthday": 41_077, "tier": 62_089,
    "tag": 40_692, "tagn": 92_717, "consent": 30_031, "points": 11_261, "pexp": 29_363, "ident": 99_991,
    "pool": 24_691, "slot": 35_317, "days": 71_483, "secs": 57_037, "chan": 83_621, "store": 18_143,
    "status": 77_213, "amount": 66_587, "line2": 51_413, "sku": 22_073, "cat": 90_271, "split": 33_037,
}  # fmt: skip
#: Tables the seed writes, in dependency order; everything the benchmarks read lives in the core schema.
SEEDED = (
    "channel_accounts", "members", "identities", "member_tiers", "member_tags", "consent_events",
    "points_entries", "points_lots", "points_balances", "orders", "order_lines",
)  # fmt: skip
CHANNELS = {1: ("taobao", "bench-tmall"), 2: ("jd", "bench-jd"), 3: ("offline_pos", "bench-stores")}
#: Derived tables the benchmarks build from the seed (not seeded): their indexes are kept current too.
DERIVED = ("member_activity", "member_channel_activity")


def _h(expr: str, salt: str) -> str:
    """A pseudo-random whole number in [0, 2^31 - 1) for each value of ``expr`` (a row number): a linear step
    (different per salt) squared modulo a prime, so values of different salts, and of neighbouring rows, are
    not in step (a linear hash alone repeats with the row number modulo 100)."""
    linear = f"((({expr}) * {_SALTS[salt]} + {_SALTS[salt] // 7}) % {_P})"
    return f"(({linear} * {linear} + {_SALTS[salt]}) % {_P})"


def _pct(expr: str, salt: str) -> str:
    return f"({_h(expr, salt)} % 100)"


class Dialect:
    """The few SQL pieces that differ between the two databases."""

    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    def series(self, lo: int, hi: int) -> tuple[str, str]:
        """(prefix, from-clause) producing ``i`` from lo to hi."""
        if self.pg:
            return "", f"generate_series({lo}::bigint, {hi}::bigint) AS g(i)"
        return f"WITH RECURSIVE g(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM g WHERE i < {hi}) ", "g"  # noqa: S608

    def ago(self, seconds: str) -> str:
        """The stored form of NOW minus ``seconds`` (an integer expression; negative: the future)."""
        if self.pg:
            return f"(TIMESTAMPTZ '{_NOW_SQL}+00' - ({seconds}) * INTERVAL '1 second')"
        # SQLAlchemy's SQLite storage format (naive UTC, microseconds), so stored strings compare in time order
        return (
            f"(strftime('%Y-%m-%d %H:%M:%S', '{_NOW_SQL}', printf('%+d seconds', -({seconds}))) || '.000000')"
        )

    def day(self, days_since_1970: str) -> str:
        if self.pg:
            return f"(DATE '1970-01-01' + ({days_since_1970})::int)"
        return f"date('1970-01-01', printf('%+d days', {days_since_1970}))"

    def floor(self, expr: str) -> str:
        return f"floor({expr})::bigint" if self.pg else f"CAST({expr} AS INTEGER)"


def _statements(d: Dialect, n: int) -> list[tuple[str, int, Callable[[int, int], str]]]:
    """(table, rows to number, SQL for a chunk of row numbers lo..hi) per seeded table."""
    buyers = max(1, n * 4 // 5)
    # a multiplier coprime with n: slot -> member id is a permutation, so buyers are spread over the ids
    mult = next(m for m in range(7919, 7919 + 10_000) if math.gcd(m, n) == 1)
    orders = n * ORDERS_PER_MEMBER
    stmts: list[tuple[str, int, Callable[[int, int], str]]] = []

    def add(table: str, rows: int, columns: str, select: Callable[[], str], where: str = "") -> None:
        def sql(lo: int, hi: int) -> str:
            prefix, source = d.series(lo, hi)
            # built from this module's constants and numbers only: no outside input reaches the SQL
            return f"{prefix}INSERT INTO {table} ({columns}) SELECT {select()} FROM {source} {where}"  # noqa: S608

        stmts.append((table, rows, sql))

    joined = f"(86400 * 30 + {_h('i', 'joined')} % (86400 * 1000))"
    birthday = d.day(f"3650 + {_h('i', 'birthday')} % 12000")
    add(
        "members", n,
        "id, status, version, created_at, updated_at, name, gender, birthday, province, city, profile_meta, "
        "source_channel, source_store, lifecycle_stage",
        lambda: (
            f"i, 'active', 1, {d.ago(joined)}, {d.ago(joined)}, 'bench' || i, "
            f"CASE {_pct('i', 'gender')} / 45 WHEN 0 THEN 'female' WHEN 1 THEN 'male' ELSE NULL END, "
            f"CASE WHEN {_pct('i', 'birthday')} < 60 THEN {birthday} END, "
            f"CASE {_pct('i', 'city')} % 5 WHEN 0 THEN '浙江' WHEN 1 THEN '上海' WHEN 2 THEN '北京' "
            "WHEN 3 THEN '广东' ELSE NULL END, "
            f"CASE {_pct('i', 'city')} % 5 WHEN 0 THEN '杭州' WHEN 1 THEN '上海' WHEN 2 THEN '北京' "
            "WHEN 3 THEN '深圳' ELSE NULL END, '{}', "
            f"CASE WHEN {_pct('i', 'source')} < 55 THEN 'taobao' WHEN {_pct('i', 'source')} < 85 THEN 'jd' "
            "ELSE 'offline_pos' END, "
            f"CASE WHEN {_pct('i', 'source')} >= 85 THEN 'S' || ({_h('i', 'store')} % 40) END, 'prospect'"
        ),
    )  # fmt: skip
    # identities: two or three channels per member (taobao+jd, taobao+pos, jd+pos, all three)
    for k, (kind, prefix, cond) in enumerate(
        (
            ("taobao.ouid", "ou", f"{_pct('i', 'ident')} % 10 IN (0, 1, 2, 3, 4, 5, 6, 9)"),
            ("jd.open_id", "jd", f"{_pct('i', 'ident')} % 10 IN (0, 1, 2, 3, 7, 8, 9)"),
            ("pos.card", "pc", f"{_pct('i', 'ident')} % 10 IN (4, 5, 6, 7, 8, 9)"),
        )
    ):
        add(
            "identities", n,
            "id, kind, value, member_id, account_id, evidence, first_seen_at, last_seen_at",
            lambda kind=kind, prefix=prefix, k=k: (
                f"{k} * {n} + i, '{kind}', '{prefix}' || i, i, {k + 1}, 'seed', {d.ago(joined)}, {d.ago(joined)}"
            ),
            f"WHERE {cond}",
        )  # fmt: skip
    tier = f"{_pct('i', 'tier')}"
    add(
        "member_tiers", n,
        "member_id, tier_code, since, anchor_on, review_on, ladder_version, updated_at",
        lambda: (
            f"i, CASE WHEN {tier} < 55 THEN 'member' WHEN {tier} < 80 THEN 'silver' WHEN {tier} < 94 THEN 'gold' "
            f"ELSE 'platinum' END, {d.ago(joined)}, {d.day('20000')}, {d.day('20800')}, 1, {d.ago(joined)}"
        ),
    )  # fmt: skip
    for t in range(3):
        add(
            "member_tags", n,
            "id, member_id, tag, created_at",
            lambda t=t: f"{t} * {n} + i, i, 'tag' || (({_h('i', 'tag')} + {t * 10}) % 30), {d.ago(joined)}",
            f"WHERE {_pct('i', 'tagn')} < {(60, 35, 15)[t]}",
        )  # fmt: skip
    consent = _pct("i", "consent")
    recorded = d.ago(f"{_h('i', 'consent')} % (86400 * 600)")
    add(
        "consent_events", n,
        "id, member_id, purpose, signature, status, source, proof, actor, recorded_at",
        lambda: (
            f"i, i, 'marketing', '*', CASE WHEN {consent} < 45 THEN 'opt_in' ELSE 'opt_out' END, 'seed', '', "
            f"'seed', {recorded}"
        ),
        f"WHERE {consent} < 60",
    )  # fmt: skip
    points = f"(100 + {_h('i', 'points')} % 5000)"
    expires = f"(-86400 - {_h('i', 'pexp')} % (86400 * 365))"
    has_points = f"WHERE {_pct('i', 'points')} < 70"
    add(
        "points_entries", n,
        "id, member_id, kind, amount, shortfall, idempotency_key, actor, occurred_at, expires_at, created_at",
        lambda: (
            f"i, i, 'opening', {points}, 0, 'bench-opening-' || i, 'seed', {d.ago(joined)}, {d.ago(expires)}, "
            f"{d.ago(joined)}"
        ),
        has_points,
    )  # fmt: skip
    add(
        "points_lots", n,
        "id, member_id, amount, remaining, reversed, status, release_on, return_window_days, available_at, "
        "expires_at, earned_at",
        lambda: (
            f"i, i, {points}, {points}, 0, 'available', 'paid', 0, {d.ago(joined)}, {d.ago(expires)}, "
            f"{d.ago(joined)}"
        ),
        has_points,
    )  # fmt: skip
    add(
        "points_balances", n,
        "member_id, available, pending, owed, updated_at",
        lambda: f"i, {points}, 0, 0, {d.ago(joined)}",
        has_points,
    )  # fmt: skip

    # orders: the pool an order draws its buyer from, then a slot in it, then the member id of that slot
    pool = _pct("i", "pool")
    size = (
        f"CASE WHEN {pool} < 40 THEN {buyers} WHEN {pool} < 70 THEN {max(1, buyers // 4)} "
        f"WHEN {pool} < 90 THEN {max(1, buyers // 16)} ELSE {max(1, buyers // 64)} END"
    )
    member = f"(1 + ({_h('i', 'slot')} % ({size})) * {mult} % {n})"
    placed = f"({_h('i', 'days')} % 730 * 86400 + {_h('i', 'secs')} % 86400)"
    chan = _pct("i", "chan")
    status = _pct("i", "status")
    total = f"(1000 + {_h('i', 'amount')} % 60000)"
    paid = f"CASE WHEN {status} < 5 THEN 0 ELSE {total} END"
    refunded = f"CASE WHEN {status} BETWEEN 5 AND 7 THEN {total} WHEN {status} BETWEEN 8 AND 11 THEN {total} / 3 ELSE 0 END"
    add(
        "orders", orders,
        "id, account_id, external_id, member_id, origin_member_id, channel, status, platform_status, store_code, "
        "total_fen, paid_fen, refunded_fen, post_fee_fen, discount_fen, placed_at, paid_at, completed_at, "
        "modified_at, ingested_at, updated_at",
        lambda: (
            f"i, CASE WHEN {chan} < 55 THEN 1 WHEN {chan} < 85 THEN 2 ELSE 3 END, 'o' || i, {member}, {member}, "
            f"CASE WHEN {chan} < 55 THEN 'taobao' WHEN {chan} < 85 THEN 'jd' ELSE 'offline_pos' END, "
            f"CASE WHEN {status} < 3 THEN 'created' WHEN {status} < 5 THEN 'closed' "
            f"WHEN {status} < 8 THEN 'refunded' ELSE 'completed' END, '', "
            f"CASE WHEN {chan} >= 85 THEN 'S' || ({_h('i', 'store')} % 40) END, "
            f"{total}, {paid}, {refunded}, 0, 0, {d.ago(placed)}, "
            f"CASE WHEN {status} >= 5 THEN {d.ago(placed)} END, CASE WHEN {status} >= 5 THEN {d.ago(placed)} END, "
            f"{d.ago(placed)}, {d.ago(placed)}, {d.ago(placed)}"
        ),
    )  # fmt: skip
    # lines: every order has one; 40% have a second (line ids: order id, then orders + order id)
    for k in range(2):
        if k == 0:
            amount = f"CASE WHEN {_pct('i', 'line2')} < 40 THEN {total} * 2 / 3 ELSE {total} END"
        else:
            amount = f"({total} - {total} * 2 / 3)"
        add(
            "order_lines", orders,
            "id, order_id, external_id, sku, category, title, quantity, unit_price_fen, amount_fen, "
            "refunded_fen, refund_status",
            lambda k=k, amount=amount: (
                f"{k} * {orders} + i, i, 'l{k}', 'SKU' || (({_h('i', 'sku')} + {k * 7}) % 500), "
                f"'C' || (({_h('i', 'cat')} + {k * 3}) % 30), 'bench item', 1, {amount}, {amount}, "
                f"CASE WHEN {status} BETWEEN 5 AND 7 THEN {amount} ELSE 0 END, "
                f"CASE WHEN {status} BETWEEN 5 AND 7 THEN 'refunded' ELSE 'none' END"
            ),
            "" if k == 0 else f"WHERE {_pct('i', 'line2')} < 40",
        )  # fmt: skip
    return stmts


def bench_postgres_url(env_var: str, database: str) -> str | None:
    """The PostgreSQL URL of a kept benchmark database: ``env_var`` names one outright, else ``database`` on the
    test server (``TONGCRM_TEST_POSTGRES_URL``); ``None`` when neither is set."""
    if explicit := os.environ.get(env_var):
        return explicit
    server = os.environ.get("TONGCRM_TEST_POSTGRES_URL")
    if not server:
        return None
    return sa.make_url(server).set(database=database).render_as_string(hide_password=False)


async def create_database(url: str) -> None:
    """Create the database ``url`` names unless it exists (the seed is kept between runs)."""
    target = sa.make_url(url)
    engine = create_engine(target.set(database="postgres").render_as_string(hide_password=False))
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            found = await conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            )
            if found.first() is None:
                await conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    finally:
        await engine.dispose()


async def _autocommit(engine: AsyncEngine, sql: str) -> None:
    async with engine.connect() as conn:
        await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(sa.text(sql))


async def seeded(engine: AsyncEngine, members: int) -> bool:
    async with engine.connect() as conn:
        if not await conn.run_sync(lambda c: sa.inspect(c).has_table("bench_seed")):
            return False
        row = (await conn.execute(sa.text("SELECT members, version FROM bench_seed"))).first()
    return row is not None and tuple(row) == (members, SEED_VERSION)


async def ensure_indexes(engine: AsyncEngine) -> None:
    """The tables and indexes of the current models, exactly: a kept seed predates indexes added (or dropped)
    since, and measuring with a stale set would measure another schema."""
    import_models()

    def sync(conn: sa.Connection) -> bool:
        metadata.create_all(conn)
        inspector = sa.inspect(conn)
        changed = False
        for name in (*SEEDED, *DERIVED):
            table = metadata.tables[name]
            # an index is stale when its name is gone from the models or its columns changed
            wanted = {index.name: [c.name for c in index.columns] for index in table.indexes}
            present = {found["name"]: found["column_names"] for found in inspector.get_indexes(name)}
            for stale in sorted(
                n for n in present if n and n.startswith("ix_") and wanted.get(n) != present[n]
            ):
                conn.execute(sa.text(f"DROP INDEX {stale}"))
                del present[stale]
                changed = True
            for index in table.indexes:
                if index.name not in present:
                    index.create(conn)
                    changed = True
        return changed

    async with engine.begin() as conn:
        changed = await conn.run_sync(sync)
    if changed:  # the planner's statistics must know the indexes it now has (SQLite's are per index)
        await _autocommit(engine, "ANALYZE")


async def seed(url: str, members: int, *, progress: Callable[[str], None] = print) -> float | None:
    """Seed ``members`` members (and five times as many orders) unless a finished seed of that size is there.
    Returns the seconds taken, or None when the database was reused."""
    import_models()
    engine = create_engine(url)
    try:
        if await seeded(engine, members):
            await ensure_indexes(engine)
            return None
        started = time.perf_counter()
        d = Dialect(engine.dialect.name)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.execute(sa.text("DROP TABLE IF EXISTS bench_seed"))
            await conn.run_sync(metadata.create_all)
        # load without secondary indexes (built once at the end, far faster than row by row)
        async with engine.begin() as conn:
            for name in SEEDED:
                for index in metadata.tables[name].indexes:
                    await conn.run_sync(lambda c, index=index: index.drop(c))
        async with engine.begin() as conn:
            await _load_accounts(conn, d)
        for table, rows, sql in _statements(d, members):
            for lo in range(1, rows + 1, CHUNK):
                hi = min(rows, lo + CHUNK - 1)
                t0 = time.perf_counter()
                async with engine.begin() as conn:
                    if d.pg:  # the seed is consistent by construction: skip per-row foreign key triggers
                        await conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
                    else:
                        await conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
                    await conn.execute(sa.text(sql(lo, hi)))
                progress(f"{table}: rows {lo}-{hi} in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        await ensure_indexes(engine)
        progress(f"indexes in {time.perf_counter() - t0:.1f}s")
        if d.pg:
            for table in ("members", "identities", "orders", "order_lines", "points_entries", "member_tags",
                          "consent_events"):  # fmt: skip
                await _autocommit(
                    engine,
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))",  # noqa: S608
                )
            # statistics for the planner, and visibility map and hint bits set now rather than mid-measure
            await _autocommit(engine, "VACUUM ANALYZE")
        else:
            await _autocommit(engine, "ANALYZE")
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE bench_seed (members BIGINT, version INTEGER)"))
            await conn.execute(
                sa.text("INSERT INTO bench_seed VALUES (:n, :v)"), {"n": members, "v": SEED_VERSION}
            )
        return time.perf_counter() - started
    finally:
        await engine.dispose()


async def _load_accounts(conn: AsyncConnection, d: Dialect) -> None:
    for account_id, (channel, name) in CHANNELS.items():
        await conn.execute(
            sa.text(
                "INSERT INTO channel_accounts (id, channel, name, settings, secret_names, status, status_detail,"  # noqa: S608
                f" created_at, updated_at) VALUES (:id, :channel, :name, '{{}}', '[]', 'active', '', {d.ago('0')},"
                f" {d.ago('0')})"
            ),
            {"id": account_id, "channel": channel, "name": name},
        )


if __name__ == "__main__":
    took = asyncio.run(seed(sys.argv[1], int(sys.argv[2])))
    print("reused" if took is None else f"seeded {sys.argv[2]} members in {took:.1f}s")
