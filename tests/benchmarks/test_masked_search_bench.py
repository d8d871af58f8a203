"""Search by masked mobile (``138****8000``): the backfill's rate, and a masked search beside the search by a
whole number (the reference: one indexed identity lookup), measured in alternating turns in the same run.

- Seeds ``TONGCRM_BENCH_MASKED_MEMBERS`` members (default 100,000), each with its mobile identity, without the
  masked indexes, as a base upgraded to revisions 0024 and 0033 is, and times ``index_masked_mobiles`` over it
  (rows/s: profiles and identities).
- Then ``TONGCRM_BENCH_MASKED_SEARCHES`` searches (default 300) of each kind, in ``ROUNDS`` alternating turns,
  through :func:`tongcrm.members.service.list_members` (what the API and the console call): median and p95 ms.

Run: ``python -m pytest tests/benchmarks/test_masked_search_bench.py --benchmark-enable --benchmark-only -s``.
The database is SQLite unless ``TONGCRM_BENCH_POSTGRES_URL`` names an empty PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tongcrm.audit.service import SYSTEM
from tongcrm.crypto import Vault
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.members import masked
from tongcrm.members import service as members
from tongcrm.members.phone import mask_mobile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from http_load import load  # noqa: E402
from member_seed import SECRET, mobile, seed  # noqa: E402

MEMBERS = int(os.environ.get("TONGCRM_BENCH_MASKED_MEMBERS", "100000"))
SEARCHES = int(os.environ.get("TONGCRM_BENCH_MASKED_SEARCHES", "300"))
ROUNDS = 3


@pytest.fixture(scope="module")
def masked_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = (
        os.environ.get("TONGCRM_BENCH_POSTGRES_URL")
        or f"sqlite:///{tmp_path_factory.mktemp('masked') / 'members.sqlite3'}"
    )
    took = asyncio.run(seed(url, MEMBERS, masked=False))
    print(f"\nseeded {MEMBERS} members (no masked index) in {took:.1f}s on {url.split(':')[0]}")
    return url


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def test_backfill_then_masked_search_beside_whole_number_search(
    benchmark: Any, masked_db: str, report_figure: Any
) -> None:
    vault = Vault(SECRET)
    before = load()

    async def backfill() -> tuple[float, int, int]:
        engine = create_engine(masked_db)
        try:
            started = time.perf_counter()
            report = await masked.index_masked_mobiles(session_factory(engine), vault, batch=500)
            return time.perf_counter() - started, report.indexed, report.identities
        finally:
            await engine.dispose()

    took, indexed, identities = asyncio.run(backfill())
    assert indexed == identities == MEMBERS  # each member's profile mobile and its mobile identity
    backfill_rate = (indexed + identities) / took
    after_backfill = load()

    async def searches() -> dict[str, list[float]]:
        engine = create_engine(masked_db)
        sessions = session_factory(engine, readonly=True)
        timings: dict[str, list[float]] = {"masked": [], "whole": []}
        try:
            for turn in range(ROUNDS * 2):
                kind = "whole" if turn % 2 == 0 else "masked"
                for n in range(SEARCHES // ROUNDS):
                    number = mobile((n * 7919 + turn * 104729) % MEMBERS)
                    term = mask_mobile("+86" + number) if kind == "masked" else number
                    started = time.perf_counter()
                    async with sessions() as session, session.begin():
                        found, _ = await members.list_members(
                            session, vault, members.MemberQuery(mobile=term, limit=50), SYSTEM
                        )
                    timings[kind].append(time.perf_counter() - started)
                    assert found, term  # the member it was made from is always among them
        finally:
            await engine.dispose()
        return timings

    results: list[dict[str, list[float]]] = []
    benchmark.pedantic(lambda: results.append(asyncio.run(searches())), rounds=1, iterations=1)
    timings = results[0]
    figures = {kind: (statistics.median(ts) * 1000, _p95(ts) * 1000, len(ts)) for kind, ts in timings.items()}
    end = load()
    backend = masked_db.split(":")[0]
    lines = [
        f"masked backfill: {backfill_rate:.0f} rows/s ({indexed} members and {identities} mobile identities in "
        f"{took:.1f} s, batches of 500) on "
        f"{backend}; {before} -> {after_backfill}",
        *(
            f"search by {kind} mobile: median {med:.2f} ms, p95 {p95:.2f} ms ({n} searches, {MEMBERS} members, "
            f"alternating turns) on {backend}"
            for kind, (med, p95, n) in figures.items()
        ),
        f"load during the searches: {end}",
    ]
    for line in lines:
        print(line)
        report_figure(line)
    benchmark.extra_info.update(
        {
            "backfill_rows_per_second": round(backfill_rate),
            **{f"{k}_median_ms": round(v[0], 3) for k, v in figures.items()},
            **{f"{k}_p95_ms": round(v[1], 3) for k, v in figures.items()},
            "members": MEMBERS,
            "load": end,
        }
    )
