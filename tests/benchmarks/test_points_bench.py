"""Points benchmarks: batched awards against the plain ``INSERT … ON CONFLICT`` ceiling, and single awards
through the API.

Run with ``python -m pytest tests/benchmarks/test_points_bench.py --benchmark-enable --benchmark-only -s``.
``TONGCRM_BENCH_MEMBERS`` (default 1,000,000) sets how many members awards pick from;
``TONGCRM_TEST_POSTGRES_URL`` adds PostgreSQL. Figures print with the machine's core count.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.db.base import metadata
from tongcrm.db.dialect import insert
from tongcrm.db.models import import_models
from tongcrm.points.ledger import Credit, post_credits
from tongcrm.points.models import PointsEntry
from tongcrm.testing.database import backends, open_database, scratch_url

MEMBERS = int(os.environ.get("TONGCRM_BENCH_MEMBERS", "1000000"))
BATCH = 1000
DUPLICATES = 0.10
ROUNDS = int(os.environ.get("TONGCRM_BENCH_ROUNDS", "20"))
NOW = datetime(2026, 3, 1, tzinfo=UTC)

#: The same columns as the ledger's entries (without foreign keys): the plain-insert ceiling writes here.
CEILING = sa.Table(
    "bench_entries_ceiling",
    sa.MetaData(),
    *[
        sa.Column(
            c.name,
            sa.BigInteger() if c.name == "member_id" else c.type,
            primary_key=c.primary_key,
            unique=bool(c.unique),
        )
        for c in PointsEntry.__table__.c
    ],
)


async def _fill_members(db: Any) -> None:
    """Member rows through Core with the model's column defaults (the member model is still growing)."""
    from tongcrm.members.models import Member

    table = Member.__table__
    for first in range(1, MEMBERS + 1, 50_000):
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.insert(table), [{"id": i} for i in range(first, min(first + 50_000, MEMBERS + 1))]
            )


def _batches(seed: int) -> list[list[Credit]]:
    rng = random.Random(seed)
    posted: list[str] = []
    out = []
    counter = 0
    for _ in range(ROUNDS):
        batch = []
        for _ in range(BATCH):
            if posted and rng.random() < DUPLICATES:
                key = rng.choice(posted)
            else:
                counter += 1
                key = f"bench:{seed}:{counter}"
                posted.append(key)
            batch.append(
                Credit(
                    member_id=rng.randint(1, MEMBERS),
                    key=key,
                    kind="earn",
                    amount=rng.randint(1, 500),
                    occurred_at=NOW,
                    available_at=NOW,
                    expires_at=None,
                    rule_code="base",
                    rule_version=1,
                    detail={"base_fen": 12_300, "points_per_yuan": "1", "multiplier_pct": 100},
                )
            )
        out.append(batch)
    return out


@pytest.fixture(scope="module", params=backends())
def bench_db(request: pytest.FixtureRequest) -> Any:
    loop = asyncio.new_event_loop()
    cm = scratch_url(request.param)
    url = loop.run_until_complete(cm.__aenter__())
    db_cm = open_database(request.param, url)
    db = loop.run_until_complete(db_cm.__aenter__())
    import_models()

    async def setup() -> None:
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(lambda c: CEILING.create(c))
        await _fill_members(db)

    loop.run_until_complete(setup())
    yield loop, db
    loop.run_until_complete(db_cm.__aexit__(None, None, None))
    loop.run_until_complete(cm.__aexit__(None, None, None))
    loop.close()


def _rows(batch: list[Credit]) -> list[dict[str, Any]]:
    from tongcrm.points.ledger import _entry_row

    return [_entry_row(c) for c in {c.key: c for c in batch}.values()]


def test_batched_awards_vs_insert_ceiling(bench_db: Any, benchmark: Any) -> None:
    loop, db = bench_db
    awards = _batches(1)
    ceiling = _batches(1)

    async def run_ceiling() -> float:
        start = time.perf_counter()
        for batch in ceiling:
            async with db.sessions() as s, s.begin():
                stmt = insert(s, CEILING).on_conflict_do_nothing(index_elements=["idempotency_key"])
                await s.execute(stmt, _rows(batch))
        return time.perf_counter() - start

    async def run_awards() -> float:
        start = time.perf_counter()
        for batch in awards:
            async with db.sessions() as s, s.begin():
                await post_credits(s, batch, now=NOW)
        return time.perf_counter() - start

    ceiling_s = loop.run_until_complete(run_ceiling())
    state = {"i": 0}

    def one_round() -> None:
        async def body() -> None:
            async with db.sessions() as s, s.begin():
                await post_credits(s, awards[state["i"] % len(awards)], now=NOW)

        loop.run_until_complete(body())
        state["i"] += 1

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    per_batch = benchmark.stats.stats.mean
    awards_per_s = BATCH / per_batch
    ceiling_per_s = BATCH * ROUNDS / ceiling_s
    benchmark.extra_info.update(
        backend=db.backend,
        members=MEMBERS,
        cores=os.cpu_count(),
        awards_per_s=round(awards_per_s),
        ceiling_rows_per_s=round(ceiling_per_s),
        ratio=round(awards_per_s / ceiling_per_s, 3),
    )
    print(
        f"\n[{db.backend}] cores={os.cpu_count()} members={MEMBERS}: batched awards {awards_per_s:,.0f}/s; "
        f"plain INSERT … ON CONFLICT ceiling {ceiling_per_s:,.0f} rows/s; ratio {awards_per_s / ceiling_per_s:.2f}"
    )

    async def check() -> None:
        from tongcrm.points.ledger import verify

        async with db.sessions() as s:
            assert await verify(s) == []

    loop.run_until_complete(check())
    del run_awards


def test_single_awards_through_the_api(bench_db: Any, benchmark: Any) -> None:
    from litestar.testing import TestClient
    from tongcrm.app import create_app
    from tongcrm.auth.service import create_key
    from tongcrm.config import Settings
    from tongcrm.plugin.host import PluginHost

    loop, db = bench_db

    async def key() -> str:
        async with db.sessions() as s, s.begin():
            return (await create_key(s, "admin")).key

    api_key = loop.run_until_complete(key())
    settings = Settings(
        database_url=db.url, secret_key="bench-secret-key-0123456789abcdef", log_level="WARNING"
    )
    app = create_app(settings, PluginHost(autoload=False), run_jobs=False, configure_logs=False)
    rng = random.Random(2)
    counter = {"i": 0}
    n = 50
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {api_key}"

        def burst() -> None:
            for _ in range(n):
                counter["i"] += 1
                r = client.post(
                    f"/api/members/{rng.randint(1, MEMBERS)}/points/adjustments",
                    json={"points": 10, "reason": "bench"},
                    headers={"Idempotency-Key": f"bench-api-{counter['i']}"},
                )
                assert r.status_code == 201, r.text

        benchmark.pedantic(burst, rounds=5, iterations=1)
    rps = n / benchmark.stats.stats.mean
    benchmark.extra_info.update(backend=db.backend, cores=os.cpu_count(), requests_per_s=round(rps))
    print(f"\n[{db.backend}] cores={os.cpu_count()}: single awards through the API {rps:,.0f} requests/s")
