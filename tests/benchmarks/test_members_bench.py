"""Member base benchmarks.

- Lookup by mobile over HTTP on a seeded base (``TONGCRM_BENCH_MEMBERS``, default 1,000,000) at 8 concurrent
  clients, next to a bare litestar endpoint served the same way (the ceiling): requests/s and p99. Both are
  served as ``tongcrm serve --workers N`` serves (``TONGCRM_BENCH_WORKERS``, default 1).
- Resolution of batches of 100 claim sets (half known, half new): claim sets/s.

Run: ``python -m pytest tests/benchmarks/test_members_bench.py --benchmark-enable --benchmark-only -s``.
The database is SQLite unless ``TONGCRM_BENCH_POSTGRES_URL`` names an empty PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tongcrm.crypto import Vault
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve_many
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from http_load import KeepAlive, p99_ms, serve  # noqa: E402
from member_seed import SECRET, mobile, seed  # noqa: E402

MEMBERS = int(os.environ.get("TONGCRM_BENCH_MEMBERS", "1000000"))
REQUESTS = int(os.environ.get("TONGCRM_BENCH_REQUESTS", "8000"))
MAX_SECONDS = float(os.environ.get("TONGCRM_BENCH_SECONDS", "30"))
CLIENTS = 8
#: Serving processes, for the endpoint and its ceiling alike (``tongcrm serve --workers``). One by default: on
#: a two-core machine the load generator needs the other core.
WORKERS = int(os.environ.get("TONGCRM_BENCH_WORKERS", "1"))


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = (
        os.environ.get("TONGCRM_BENCH_POSTGRES_URL")
        or f"sqlite:///{tmp_path_factory.mktemp('bench') / 'members.sqlite3'}"
    )
    took = asyncio.run(seed(url, MEMBERS))
    print(f"\nseeded {MEMBERS} members in {took:.1f}s on {url.split(':')[0]} ({os.cpu_count()} cores)")
    return url


async def drive(base: str, paths: list[str], headers: dict[str, str]) -> dict[str, float]:
    """``CLIENTS`` concurrent keep-alive connections share the list of paths; bounded by count and by time."""
    latencies: list[float] = []
    cursor = iter(paths)
    deadline = time.monotonic() + MAX_SECONDS
    errors = 0

    async def client() -> None:
        nonlocal errors
        connection = await KeepAlive.open(base, headers)
        try:
            for path in cursor:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                status, _body = await connection.request("GET", path)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    assert errors == 0, f"{errors} failed requests"
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": p99_ms(latencies),
    }


async def _admin_key(url: str) -> str:
    from tongcrm.auth.service import create_key

    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session, session.begin():
            return (await create_key(session, "admin", label="bench")).key
    finally:
        await engine.dispose()


def test_lookup_by_mobile_over_http(benchmark: Any, bench_db: str) -> None:
    key = asyncio.run(_admin_key(bench_db))
    env = {"TONGCRM_DATABASE_URL": bench_db, "TONGCRM_SECRET_KEY": SECRET, "TONGCRM_IN_PROCESS_JOBS": "0"}
    step = max(1, MEMBERS // REQUESTS)
    paths = [f"/api/members/lookup?mobile={mobile((i * step * 7919) % MEMBERS)}" for i in range(REQUESTS)]
    results: dict[str, dict[str, float]] = {}
    with serve("member_serve:bare_app", env, workers=WORKERS) as base:
        results["bare"] = asyncio.run(drive(base, ["/ping"] * REQUESTS, {}))
    with serve("member_serve:members_app", env, workers=WORKERS) as base:
        probe = httpx.get(base + paths[0], headers={"Authorization": f"Bearer {key}"})
        assert probe.status_code == 200 and "****" in probe.json()["mobile"], probe.text

        def run() -> None:
            results["lookup"] = asyncio.run(drive(base, paths, {"Authorization": f"Bearer {key}"}))

        benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({f"{k}_{m}": round(v, 2) for k, r in results.items() for m, v in r.items()})
    benchmark.extra_info.update(
        {"members": MEMBERS, "clients": CLIENTS, "workers": WORKERS, "cores": os.cpu_count()}
    )
    for name, r in results.items():
        print(
            f"\n{name:>6}: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  ({int(r['requests'])} requests,"
            f" {WORKERS} worker(s), {os.cpu_count()} cores)"
        )


def test_resolve_batches_of_100(benchmark: Any, bench_db: str) -> None:
    vault = Vault(SECRET)
    ctx = ResolutionContext(host=PluginHost(autoload=False), vault=vault, clock=lambda: datetime.now(UTC))
    counter = iter(range(10**9))
    batches = 20

    def make_batch() -> list[ClaimSet]:
        out = []
        for _ in range(100):
            i = next(counter)
            known = mobile((i * 104729) % MEMBERS)  # an existing member
            new = f"199{(10_000_000 + i) % 100_000_000:08d}"  # a new member
            out.append(ClaimSet((IdentityClaim("mobile", known if i % 2 else new),), source_channel="bench"))
        return out

    async def run_batches() -> float:
        engine = create_engine(bench_db)
        sessions = session_factory(engine)
        try:
            started = time.perf_counter()
            for _ in range(batches):
                async with sessions() as session, session.begin():
                    outcomes = await resolve_many(session, ctx, make_batch())
                assert all(o.member_id for o in outcomes)
            return time.perf_counter() - started
        finally:
            await engine.dispose()

    elapsed: list[float] = []
    benchmark.pedantic(lambda: elapsed.append(asyncio.run(run_batches())), rounds=3, iterations=1)
    rate = batches * 100 / min(elapsed)
    benchmark.extra_info.update({"claim_sets_per_second": round(rate), "batch_size": 100, "members": MEMBERS})
    print(f"\nresolve: {rate:.0f} claim sets/s in batches of 100 (best of 3 x {batches} batches)")
