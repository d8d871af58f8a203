"""Audience benchmarks on a generated base (:mod:`audience_seed`): ``TONGCRM_BENCH_MEMBERS`` members (default
1,000,000) with five times as many orders, on SQLite and on PostgreSQL.

- Count of a four-condition segment (gold tier, at least 2 orders on taobao in 90 days, never bought in a store,
  opted in to marketing) next to a plain ``SELECT count(*) FROM members`` (the ceiling), measured in alternating
  turns in the same run (``TONGCRM_BENCH_ROUNDS``, default 5): median ms of each and their ratio. Aims: at most
  3x the count and 100 ms on PostgreSQL. The segment is counted with the member activity summary (built first
  when it is not current; the turn includes the "is it current" probes) and, as a reference, on the source
  tables; both must find the same members.
- The summary's refresh after 10,000 new orders, and a count right after it.
- A full RFM recompute (aim: 60 s), then 10,000 new orders and the incremental recompute they cause (aim: 2 s).

The seed is kept and reused by later runs (it takes minutes): PostgreSQL in the database
``TONGCRM_BENCH_AUDIENCE_POSTGRES_URL`` (default: ``bench_aud`` on the server of ``TONGCRM_TEST_POSTGRES_URL``,
created when missing; no server named: the PostgreSQL case is skipped), SQLite in a file under
``TONGCRM_BENCH_DATA_DIR`` (default ``$TMPDIR/tongcrm-bench``). Two engineers seeding at once: give each their own
database and folder through these two variables.

Run: ``python -m pytest tests/benchmarks/test_audiences_bench.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.orders.models import Order
from tongcrm.rfm import service as rfm
from tongcrm.segments import activity, service
from tongcrm.segments.compiler import Context

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from audience_seed import (  # noqa: E402
    NOW,
    ORDERS_PER_MEMBER,
    Dialect,
    bench_postgres_url,
    create_database,
    seed,
)

MEMBERS = int(os.environ.get("TONGCRM_BENCH_MEMBERS", "1000000"))
ROUNDS = int(os.environ.get("TONGCRM_BENCH_ROUNDS", "5"))
NEW_ORDERS = 10_000
TZ = ZoneInfo("Asia/Shanghai")
CONTEXT = Context(
    now=NOW,
    channels=frozenset({"taobao", "jd", "offline_pos"}),
    identity_kinds={"taobao": ("taobao.ouid",), "jd": ("jd.open_id",), "offline_pos": ("pos.card",)},
    tiers=("member", "silver", "gold", "platinum"),
)
#: The same, with the member activity summary current (what load_context says after a refresh).
SUMMARIZED = replace(CONTEXT, activity=True)
SEGMENT = {
    "version": 1,
    "condition": {
        "all": [
            {"field": "tier.code", "op": "eq", "value": "gold"},
            {"field": "orders.count", "op": "gte", "value": 2, "window_days": 90, "channel": "taobao"},
            {"not": {"field": "orders.count", "op": "gte", "value": 1, "store": "*"}},
            {"field": "consent.opted_in", "op": "is", "value": True, "purpose": "marketing"},
        ]
    },
}


def _postgres_url() -> str | None:
    return bench_postgres_url("TONGCRM_BENCH_AUDIENCE_POSTGRES_URL", "bench_aud")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def bench_db(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        url = _postgres_url()
        if url is None:
            pytest.skip("no PostgreSQL server named (TONGCRM_TEST_POSTGRES_URL)")
        asyncio.run(create_database(url))
    else:
        folder = Path(os.environ.get("TONGCRM_BENCH_DATA_DIR", Path(tempfile.gettempdir()) / "tongcrm-bench"))
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / f'audiences-{MEMBERS}.sqlite3'}"
    took = asyncio.run(seed(url, MEMBERS, progress=lambda line: print(f"  seed {line}")))
    how = "reused" if took is None else f"seeded in {took:.0f}s"
    print(f"\n{MEMBERS} members, {MEMBERS * ORDERS_PER_MEMBER} orders on {request.param}: {how}")
    built = asyncio.run(_summarise(url))
    if built is not None:
        print(f"  member activity summary built in {built:.1f}s ({_load()})")
    return url


async def _summarise(url: str) -> float | None:
    """Build the member activity summary unless it is current (seconds taken, None when it was). A kept seed
    whose summary predates the per-channel table (created empty since) is rebuilt too."""
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            per_channel = sa.select(sa.exists().select_from(activity.per_channel))
            if await activity.is_current(session) and (await session.execute(per_channel)).scalar_one():
                return None
        started = time.perf_counter()
        async with session_factory(engine)() as session, session.begin():
            await activity.rebuild(session)
        async with engine.connect() as conn:  # statistics, and the visibility map index-only scans need
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("member_activity", "member_channel_activity"):
                await conn.execute(
                    sa.text(("VACUUM " if engine.dialect.name == "postgresql" else "") + f"ANALYZE {table}")
                )
        return time.perf_counter() - started
    finally:
        await engine.dispose()


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


def test_segment_count_vs_count_star(benchmark: Any, bench_db: str, report_figure: Any) -> None:
    async def measure() -> tuple[dict[str, list[float]], int, int]:
        engine = create_engine(bench_db)
        times: dict[str, list[float]] = {"count(*)": [], "segment": [], "orders": []}
        try:
            async with session_factory(engine)() as session:
                everyone = sa.select(sa.func.count()).select_from(sa.table("members"))
                from_orders = service.prepare(CONTEXT, SEGMENT)

                async def plain() -> int:
                    return int((await session.execute(everyone)).scalar_one())

                async def segment() -> int:
                    # what load_context adds (is the summary current?), then the count it allows
                    current = await activity.is_current(session)
                    assert current, "the member activity summary is behind"
                    return await service.count(session, service.prepare(SUMMARIZED, SEGMENT))

                async def orders() -> int:
                    return await service.count(session, from_orders)

                total, matched = await plain(), await segment()  # warm: both read from the cache alike
                assert await orders() == matched
                for _ in range(ROUNDS):
                    for name, run in (("count(*)", plain), ("segment", segment), ("orders", orders)):
                        started = time.perf_counter()
                        await run()
                        times[name].append((time.perf_counter() - started) * 1000)
                    await session.rollback()  # no snapshot held across turns
        finally:
            await engine.dispose()
        return times, total, matched

    results: list[tuple[dict[str, list[float]], int, int]] = []
    benchmark.pedantic(lambda: results.append(asyncio.run(measure())), rounds=1, iterations=1)
    times, total, matched = results[0]
    plain_ms, segment_ms = statistics.median(times["count(*)"]), statistics.median(times["segment"])
    orders_ms = statistics.median(times["orders"])
    ratio = segment_ms / plain_ms
    dialect = bench_db.split(":")[0]
    benchmark.extra_info.update(
        {"count_star_ms": round(plain_ms, 1), "segment_ms": round(segment_ms, 1), "ratio": round(ratio, 2),
         "orders_ms": round(orders_ms, 1), "members": total, "matched": matched, "rounds": ROUNDS,
         "cores": os.cpu_count()}
    )  # fmt: skip
    report_figure(
        f"{dialect}: 4-condition segment count {segment_ms:.1f} ms ({matched} of {total}) vs count(*) "
        f"{plain_ms:.1f} ms = {ratio:.2f}x; without the summary (orders) {orders_ms:.1f} ms = "
        f"{orders_ms / plain_ms:.1f}x (median of {ROUNDS} alternating turns; {_load()})"
    )
    assert total == MEMBERS and 0 < matched < total


async def _add_orders(engine: AsyncEngine, count: int) -> int:
    """``count`` new paid taobao orders stamped now (what a sync writes), each for the buyer of an existing
    order picked evenly over the seed, so buyers come in the seed's proportions (busy ones more often); returns
    the id the new orders start after."""
    d = Dialect(engine.dialect.name)
    async with engine.begin() as conn:
        base = int((await conn.execute(sa.text("SELECT max(id) FROM orders"))).scalar_one())
        prefix, source = d.series(1, count)
        now = "now()" if d.pg else "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
        placed = d.ago("(i % 86400)")
        seeded = MEMBERS * ORDERS_PER_MEMBER
        await conn.execute(
            sa.text(
                f"{prefix}INSERT INTO orders (id, account_id, external_id, member_id, origin_member_id, channel, "  # noqa: S608
                "status, platform_status, total_fen, paid_fen, refunded_fen, post_fee_fen, discount_fen, placed_at,"
                " paid_at, modified_at, ingested_at, updated_at) "
                f"SELECT {base} + i, 1, 'new' || ({base} + i), o.member_id, o.member_id, 'taobao', 'paid', '', "
                f"5000 + i, 5000 + i, 0, 0, 0, {placed}, {placed}, {placed}, {now}, {now} "
                f"FROM {source} JOIN orders o ON o.id = 1 + (i * 499) % {seeded}"
            )
        )  # fmt: skip
    return base


async def _remove_orders(engine: AsyncEngine, after: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM orders WHERE id > :after"), {"after": after})


def test_activity_refresh_after_new_orders(benchmark: Any, bench_db: str, report_figure: Any) -> None:
    """10,000 new orders put the summary behind; the refresh that brings it back (what an API count does first,
    or the minutely job) is timed, and the segment count after it. The orders are then removed again and their
    buyers' rows recomputed, so the kept seed and its summary stay as generated."""

    async def measure() -> tuple[float, int, float]:
        engine = create_engine(bench_db)
        sessions = session_factory(engine)
        try:
            base = await _add_orders(engine, NEW_ORDERS)
            try:
                async with sessions() as session:
                    assert not await activity.is_current(session)
                started = time.perf_counter()
                async with sessions() as session, session.begin():
                    await activity.refresh(session)
                refresh_s = time.perf_counter() - started
                async with sessions() as session:
                    assert await activity.is_current(session)
                    started = time.perf_counter()
                    matched = await service.count(session, service.prepare(SUMMARIZED, SEGMENT))
                    count_ms = (time.perf_counter() - started) * 1000
                    assert matched == await service.count(session, service.prepare(CONTEXT, SEGMENT))
                buyers = sa.select(sa.distinct(Order.member_id)).where(Order.id > base)
                async with sessions() as session:
                    touched = [int(m) for m in (await session.execute(buyers)).scalars()]
            finally:
                await _remove_orders(engine, base)
            async with sessions() as session, session.begin():  # a deletion leaves no stamp: recompute them
                await activity.recompute(session, touched)
        finally:
            await engine.dispose()
        return refresh_s, matched, count_ms

    results: list[tuple[float, int, float]] = []
    benchmark.pedantic(lambda: results.append(asyncio.run(measure())), rounds=1, iterations=1)
    refresh_s, matched, count_ms = results[0]
    benchmark.extra_info.update({"refresh_s": round(refresh_s, 3), "count_ms": round(count_ms, 1)})
    report_figure(
        f"{bench_db.split(':')[0]}: activity summary refresh after {NEW_ORDERS} new orders {refresh_s:.2f} s, then "
        f"the segment count {count_ms:.1f} ms ({matched} members; {_load()})"
    )


def test_rfm_full_then_incremental(benchmark: Any, bench_db: str, report_figure: Any) -> None:
    dialect = bench_db.split(":")[0]

    async def measure() -> tuple[float, float, rfm.RunResult, rfm.RunResult]:
        engine = create_engine(bench_db)
        sessions = session_factory(engine)
        try:
            started = time.perf_counter()
            full = await rfm.recompute_full(sessions, NOW, TZ)
            full_s = time.perf_counter() - started
            base = await _add_orders(engine, NEW_ORDERS)
            try:
                started = time.perf_counter()
                incremental = await rfm.recompute_incremental(sessions, NOW, TZ)
                incremental_s = time.perf_counter() - started
            finally:
                await _remove_orders(engine, base)  # the kept seed stays as generated
        finally:
            await engine.dispose()
        return full_s, incremental_s, full, incremental

    results: list[tuple[float, float, rfm.RunResult, rfm.RunResult]] = []
    benchmark.pedantic(lambda: results.append(asyncio.run(measure())), rounds=1, iterations=1)
    full_s, incremental_s, full, incremental = results[0]
    benchmark.extra_info.update(
        {"full_s": round(full_s, 2), "incremental_s": round(incremental_s, 3), "scored": full.scored,
         "incremental_members": incremental.members, "cores": os.cpu_count()}
    )  # fmt: skip
    report_figure(
        f"{dialect}: full RFM recompute {full_s:.1f} s ({full.scored} members scored); incremental after "
        f"{NEW_ORDERS} new orders {incremental_s:.2f} s ({incremental.members} members re-scored; {_load()})"
    )
    assert incremental.kind == "incremental" and 0 < incremental.members <= NEW_ORDERS
    assert full.scored > MEMBERS // 2
