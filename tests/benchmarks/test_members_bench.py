"""Member base benchmarks.

- Lookup by mobile over HTTP on a seeded base (``TONGCRM_BENCH_MEMBERS``, default 1,000,000) at 8 concurrent
  clients, next to a bare litestar endpoint served the same way (the ceiling): requests/s and p99. Both are
  served as ``tongcrm serve --workers N`` serves (``TONGCRM_BENCH_WORKERS``, default 1), and measured in
  alternating turns (``TONGCRM_BENCH_ROUNDS``, default 3; ``TONGCRM_BENCH_REQUESTS`` each). Each also reports
  the serving processes' CPU time per request, which moves far less than requests/s with a shared machine's load.
- Resolution of batches of 100 claim sets (half known, half new): claim sets/s.

Run: ``python -m pytest tests/benchmarks/test_members_bench.py --benchmark-enable --benchmark-only -s``.
The database is SQLite unless ``TONGCRM_BENCH_POSTGRES_URL`` names an empty PostgreSQL database (one an earlier
run seeded with the same number of members is reused). With
``TONGCRM_BENCH_DATA_DIR`` the SQLite seed is kept in that folder (``members-<N>.sqlite3``) and reused by later
runs, which then skip the seeding (a few minutes at 200,000 members); the resolution benchmark adds members to it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from tongcrm.crypto import Vault
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve_many
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from http_load import KeepAlive, cpu_seconds, load, p99_ms, serve, stack  # noqa: E402
from member_seed import SECRET, mobile, seed  # noqa: E402

MEMBERS = int(os.environ.get("TONGCRM_BENCH_MEMBERS", "1000000"))
REQUESTS = int(os.environ.get("TONGCRM_BENCH_REQUESTS", "20000"))
MAX_SECONDS = float(os.environ.get("TONGCRM_BENCH_SECONDS", "30"))
CLIENTS = 8
#: Turns of ceiling then lookup; the figures are each one's median turn (p99 over all its requests).
ROUNDS = int(os.environ.get("TONGCRM_BENCH_ROUNDS", "3"))
#: Serving processes, for the endpoint and its ceiling alike (``tongcrm serve --workers``). One by default: on
#: a two-core machine the load generator needs the other core.
WORKERS = int(os.environ.get("TONGCRM_BENCH_WORKERS", "1"))


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("TONGCRM_BENCH_POSTGRES_URL")
    done: Path | None = None
    if url is None:
        kept = os.environ.get("TONGCRM_BENCH_DATA_DIR")
        folder = Path(kept) if kept else tmp_path_factory.mktemp("bench")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"members-{MEMBERS}.sqlite3"
        url = f"sqlite:///{path}"
        # written once the seed is whole: an interrupted one is redone; ".seeded2": seeds from before the masked
        # mobile's indexes were written (a narrower row than ingest writes) are redone too
        done = path.with_suffix(".seeded2")
        if kept and done.exists():
            print(f"\nreusing the {MEMBERS} members seeded in {path}")
            return url
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
    elif asyncio.run(_members_in(url)) == MEMBERS:
        print(f"\nreusing the {MEMBERS} members seeded in {url.rpartition('/')[2]}")
        return url
    took = asyncio.run(seed(url, MEMBERS))
    if done is not None:
        done.touch()
    print(f"\nseeded {MEMBERS} members in {took:.1f}s on {url.split(':')[0]} ({os.cpu_count()} cores)")
    return url


async def _members_in(url: str) -> int | None:
    """How many members an earlier run seeded in this PostgreSQL database (None: not seeded)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda c: sa.inspect(c).has_table("members")):
                return None
            # members with their masked mobile's index: a seed from before it was written is not reused (drop it)
            counted = "SELECT count(mobile_masked_index) FROM members"
            return int((await conn.execute(sa.text(counted))).scalar_one())
    finally:
        await engine.dispose()


async def drive(base: str, paths: list[str], headers: dict[str, str]) -> tuple[float, list[float]]:
    """``CLIENTS`` concurrent keep-alive connections share the list of paths; bounded by count and by time.
    Returns requests/s and the latencies."""
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
    assert errors == 0, f"{errors} failed requests"
    return len(latencies) / elapsed, latencies


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
    lookups = REQUESTS * ROUNDS
    step = max(1, MEMBERS // lookups)
    paths = [f"/api/members/lookup?mobile={mobile((i * step * 7919) % MEMBERS)}" for i in range(lookups)]
    auth = {"Authorization": f"Bearer {key}"}
    rates: dict[str, list[float]] = {"bare": [], "lookup": []}
    latencies: dict[str, list[float]] = {"bare": [], "lookup": []}
    #: CPU seconds the serving processes spent per turn: per request, it hardly moves with the machine's load
    cpu: dict[str, list[float]] = {"bare": [], "lookup": []}
    # Both served at once (the idle one costs nothing) and measured in turns: this machine's speed drifts by
    # more than the difference being measured, and turns expose both to the same drift.
    with (
        serve("member_serve:bare_app", env, workers=WORKERS) as bare,
        serve("member_serve:members_app", env, workers=WORKERS) as members,
    ):
        probe = httpx.get(members + paths[0], headers=auth)
        assert probe.status_code == 200 and "****" in probe.json()["mobile"], probe.text

        def run() -> None:
            for turn in range(ROUNDS):
                for name, base, work, headers in (
                    ("bare", bare, ["/ping"] * REQUESTS, {}),
                    # each turn looks up other members
                    ("lookup", members, paths[turn * REQUESTS : (turn + 1) * REQUESTS], auth),
                ):
                    spent = cpu_seconds(base.pid)
                    rate, samples = asyncio.run(drive(base, work, headers))
                    cpu[name].append((cpu_seconds(base.pid) - spent) / len(samples))
                    rates[name].append(rate)
                    latencies[name].extend(samples)

        benchmark.pedantic(run, rounds=1, iterations=1)
    results = {
        name: {
            "rps": statistics.median(rates[name]),
            "p99_ms": p99_ms(latencies[name]),
            "cpu_us": statistics.median(cpu[name]) * 1e6,
            "requests": len(latencies[name]),
        }
        for name in rates
    }
    ratio = results["lookup"]["rps"] / results["bare"]["rps"]
    cpu_ratio = results["bare"]["cpu_us"] / results["lookup"]["cpu_us"]
    benchmark.extra_info.update({f"{k}_{m}": round(v, 2) for k, r in results.items() for m, v in r.items()})
    benchmark.extra_info.update(
        {
            "ratio": round(ratio, 3),
            "cpu_ratio": round(cpu_ratio, 3),
            "rounds": ROUNDS,
            "members": MEMBERS,
            "clients": CLIENTS,
            "workers": WORKERS,
        }
    )
    benchmark.extra_info.update({"cores": os.cpu_count(), "stack": stack(), "load": load()})
    for name, r in results.items():
        turns = ", ".join(f"{x:.0f}" for x in rates[name])
        print(
            f"\n{name:>6}: {r['rps']:8.0f} req/s (median of {ROUNDS} turns: {turns})  p99 {r['p99_ms']:6.2f} ms"
            f"  server CPU {r['cpu_us']:6.1f} us/request"
            f"  ({int(r['requests'])} requests, {WORKERS} worker(s), {os.cpu_count()} cores)"
        )
    print(
        f"lookup / ceiling: {ratio:.2f} (server CPU per request, ceiling / lookup: {cpu_ratio:.2f}) on {stack()};"
        f" {load()}"
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
