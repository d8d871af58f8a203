"""Benchmark (skipped by default: run with ``--benchmark-enable --benchmark-only``): a tier review over many
members, set-based. ``TONGCRM_BENCH_TIER_MEMBERS`` sets the member count (default 1,000,000; use e.g. 20000 for a
smoke run); the database is PostgreSQL when ``TONGCRM_TEST_POSTGRES_URL`` is set, else SQLite.

Every member holds a tier and is due for review today; each has two orders at different ages, so the review
keeps some, drops some and upgrades a few. The figure reported is members reviewed per second.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pytest_benchmark.fixture import BenchmarkFixture
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.audit.service import SYSTEM
from tongcrm.db.base import JSONType, UTCDateTime, metadata
from tongcrm.db.models import import_models
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.testing.database import TestDatabase, backends, open_database, scratch_url
from tongcrm.tiers import service as tiers
from tongcrm.tiers import testing as kit
from tongcrm.tiers.models import MemberTier, TierHistory

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)


def _seq(n: int) -> sa.CTE:
    seq = sa.select(sa.literal(1).label("i")).cte("seq", recursive=True)
    return seq.union_all(sa.select(seq.c.i + 1).where(seq.c.i < n))


async def _seed(db: TestDatabase, n: int) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    ctx = tiers.TierContext(NOW, SH)
    async with db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, ctx, kit.LADDER, reason="bench", actor=SYSTEM)
        account = await kit.account(s)
    now = sa.literal(NOW, UTCDateTime())
    async with db.sessions() as s, s.begin():
        seq = _seq(n)
        await s.execute(
            sa.insert(Member).from_select(
                ["id", "status", "version", "created_at", "updated_at", "profile_meta", "lifecycle_stage"],
                sa.select(
                    seq.c.i,
                    sa.literal("active"),
                    sa.literal(1),
                    now,
                    now,
                    sa.literal({}, JSONType),
                    sa.literal("repeat"),
                ),
            )
        )
    ages = [NOW - timedelta(days=d) for d in (20, 200, 400, 700)]
    for copy_no in (0, 1):
        async with db.sessions() as s, s.begin():
            seq = _seq(n)
            at = sa.case(
                *[((seq.c.i + copy_no) % 4 == k, sa.literal(ages[k], UTCDateTime())) for k in range(3)],
                else_=sa.literal(ages[3], UTCDateTime()),
            )
            amount = sa.literal(30_000) + (seq.c.i % 11) * 25_000
            await s.execute(
                sa.insert(Order).from_select(
                    [
                        "account_id",
                        "external_id",
                        "member_id",
                        "origin_member_id",
                        "channel",
                        "status",
                        "platform_status",
                        "total_fen",
                        "paid_fen",
                        "refunded_fen",
                        "post_fee_fen",
                        "discount_fen",
                        "placed_at",
                        "paid_at",
                        "modified_at",
                        "ingested_at",
                        "updated_at",
                    ],
                    sa.select(
                        sa.literal(account),
                        sa.cast(seq.c.i * 2 + copy_no, sa.String),
                        seq.c.i,
                        seq.c.i,
                        sa.literal("test"),
                        sa.literal("completed"),
                        sa.literal(""),
                        amount,
                        amount,
                        sa.case((seq.c.i % 13 == 0, amount), else_=0),
                        sa.literal(0),
                        sa.literal(0),
                        at,
                        at,
                        at,
                        now,
                        now,
                    ),
                )
            )
    async with db.sessions() as s, s.begin():
        seq = _seq(n)
        code = sa.case((seq.c.i % 3 == 0, "gold"), (seq.c.i % 3 == 1, "silver"), else_="member")
        await s.execute(
            sa.insert(MemberTier).from_select(
                ["member_id", "tier_code", "since", "anchor_on", "review_on", "ladder_version", "updated_at"],
                sa.select(
                    seq.c.i,
                    code,
                    sa.literal(NOW - timedelta(days=365), UTCDateTime()),
                    sa.literal(date(2025, 6, 1), sa.Date),
                    sa.literal(date(2026, 6, 1), sa.Date),
                    sa.literal(1),
                    now,
                ),
            )
        )
    if db.backend == "postgresql":
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("ANALYZE"))


async def _count(session: AsyncSession, stmt: sa.Select[tuple[int]]) -> int:
    return int((await session.execute(stmt)).scalar_one())


@pytest.mark.slow
def test_tier_review_members_per_second(benchmark: BenchmarkFixture) -> None:
    n = int(os.environ.get("TONGCRM_BENCH_TIER_MEMBERS", "1000000"))
    backend = backends()[-1]
    import_models()
    loop = asyncio.new_event_loop()
    stack = []
    try:
        url_cm = scratch_url(backend)
        url = loop.run_until_complete(url_cm.__aenter__())
        stack.append(url_cm)
        db_cm = open_database(backend, url)
        db = loop.run_until_complete(db_cm.__aenter__())
        stack.append(db_cm)
        started = time.perf_counter()
        loop.run_until_complete(_seed(db, n))
        seeded = time.perf_counter() - started

        changed = benchmark.pedantic(
            lambda: loop.run_until_complete(tiers.review(db.sessions, tiers.TierContext(NOW, SH))),
            rounds=1,
            iterations=1,
        )
        elapsed = benchmark.stats.stats.max

        async def check() -> tuple[int, int]:
            async with db.sessions() as s:
                left = await _count(
                    s,
                    sa.select(sa.func.count())
                    .select_from(MemberTier)
                    .where(MemberTier.review_on <= date(2026, 6, 1)),
                )
                history = await _count(
                    s,
                    sa.select(sa.func.count()).select_from(TierHistory).where(TierHistory.reason == "review"),
                )
            return left, history

        left, history = loop.run_until_complete(check())
        assert left == 0 and history == changed and changed > 0
        benchmark.extra_info.update(
            {
                "backend": backend,
                "members": n,
                "changed": changed,
                "members_per_s": round(n / elapsed),
                "cores": os.cpu_count(),
                "seed_s": round(seeded, 1),
            }
        )
        print(
            f"\ntier review [{backend}]: {n} members in {elapsed:.2f}s = {n / elapsed:,.0f} members/s ({changed} changed; {os.cpu_count()} cores; seeding {seeded:.1f}s)"
        )
    finally:
        for cm in reversed(stack):
            loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()
