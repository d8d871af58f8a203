"""POS checkout over HTTP: 8 tills at once, each doing lookup-by-mobile + checkout (earn), against tongcrm
served in its own process on 127.0.0.1 as ``tongcrm serve`` serves it, next to a bare litestar endpoint served
the same way in the same run (the HTTP ceiling of this machine). The tills are light keep-alive clients in the
test process.

Bounded by ``TONGCRM_BENCH_POS_RECEIPTS`` (default 400 receipts in all) and 120 s of wall time. Besides receipts/s
it reports the serving processes' CPU time per receipt for both apps: on a loaded shared machine rates move with
the load, CPU per receipt much less (the database server's own CPU is not in it).
Run: ``python -m pytest tests/benchmarks/test_pos_checkout.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tongcrm.audit.service import SYSTEM
from tongcrm.auth.service import create_key
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import KeepAlive, cpu_seconds, load, p99_ms, serve, stack

TILLS = 8
RECEIPTS = int(os.environ.get("TONGCRM_BENCH_POS_RECEIPTS", "400"))
DEADLINE_SECONDS = 120.0
TZ = ZoneInfo("Asia/Shanghai")


async def _drive(
    base_url: str, key: str, work: Any, firsts: list[float] | None = None
) -> tuple[int, float, list[float], list[float]]:
    """Run ``work(connection, till_no, i)`` for every receipt across ``TILLS`` concurrent tills. Answers the
    receipts done, the seconds, every receipt's latency, and the latencies of each till's receipts after its
    first: the first ones arrive together at a process that has served nothing yet (its statements not yet
    compiled, its connections not yet open), and at 800 receipts those ``TILLS`` alone are the top 1 %, so the
    p99 of all is the cold start's and the p99 of the rest the steady state's. ``firsts``: given, it gets each
    till's first receipt's latency."""
    per_till = max(1, RECEIPTS // TILLS)
    latencies: list[float] = []
    warm: list[float] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    done = 0

    async def till(no: int) -> None:
        nonlocal done
        connection = await KeepAlive.open(base_url, {"Authorization": f"Bearer {key}"})
        try:
            for i in range(per_till):
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                await work(connection, no, i)
                latencies.append(time.perf_counter() - started)
                if i:
                    warm.append(latencies[-1])
                elif firsts is not None:
                    firsts.append(latencies[-1])
                done += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(till(n) for n in range(TILLS)))
    return done, time.perf_counter() - started, latencies, warm


@pytest.mark.slow
async def test_pos_checkout_throughput(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, benchmark: Any, report_figure: Any
) -> None:
    from tongcrm_offline_pos import stores
    from tongcrm_offline_pos.models import TABLES
    from tongcrm_offline_pos.plugin import OfflinePosPlugin

    host = PluginHost(autoload=False)
    host.register(OfflinePosPlugin(), "offline_pos")
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(session, host, tongcrm_settings.vault(), "offline_pos", "BENCH", {})
        key = (await create_key(session, "pos", store_code="BENCH")).key
    counter = CounterService(tongcrm_db.sessions, tongcrm_db.read_sessions, host, tongcrm_settings)
    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        for n in range(TILLS):
            await stores.add_till(uow, "BENCH", f"T{n:02d}")
    env = {
        "TONGCRM_DATABASE_URL": tongcrm_db.url,
        "TONGCRM_SECRET_KEY": tongcrm_settings.secret_key,
        "TONGCRM_IN_PROCESS_JOBS": "0",
    }
    now = datetime.now(UTC)
    day = now.astimezone(TZ).date().isoformat()
    members: dict[tuple[int, int], int] = {}

    async def checkout(connection: KeepAlive, till: int, i: int) -> None:
        mobile = f"1390{till:02d}{i % 50:05d}"
        lookup = json.dumps({"till": f"T{till:02d}", "mobile": mobile}).encode()
        status, found = await connection.request("POST", "/pos/v1/members/lookup", lookup)
        assert status in (200, 404), found
        member = json.loads(found)["member_id"] if status == 200 else None
        body = {
            "store": "BENCH", "till": f"T{till:02d}", "business_day": day, "sequence": i + 1,
            "occurred_at": (now - timedelta(seconds=5)).isoformat(), "total_fen": 12_800,
            "lines": [{"line_no": 1, "title": "tea", "quantity": 1, "unit_price_fen": 12_800, "amount_fen": 12_800}],
            "payments": [{"method": "wechat", "amount_fen": 12_800}],
            "member": {"member_id": member} if member else {"mobile": mobile},
        }  # fmt: skip
        status, answer = await connection.request("POST", "/pos/v1/receipts", json.dumps(body).encode())
        assert status == 201, answer
        members[(till, i % 50)] = json.loads(answer)["member_id"]

    with serve("pos_serve:pos_app", env) as url:
        cpu = cpu_seconds(url.pid)
        firsts: list[float] = []
        done, elapsed, latencies, warm = await _drive(url, key, checkout, firsts)
        cpu = cpu_seconds(url.pid) - cpu
    with serve("pos_serve:ceiling_app", env) as url:

        async def bare(connection: KeepAlive, till: int, i: int) -> None:
            for _ in range(2):  # two requests per receipt, as a checkout makes
                status, _ = await connection.request("POST", "/pos/v1/receipts", b'{"sequence": %d}' % i)
                assert status == 201

        c_cpu = cpu_seconds(url.pid)
        c_done, c_elapsed, c_latencies, _ = await _drive(url, key, bare)
        c_cpu = cpu_seconds(url.pid) - c_cpu

    rate, ceiling = done / elapsed, c_done / c_elapsed
    report_figure(
        f"pos checkout {tongcrm_db.backend}, {TILLS} tills: {done} receipts (lookup + earn) in {elapsed:.1f} s = "
        f"{rate:,.0f} receipts/s, p99 {p99_ms(latencies):.0f} ms (after each till's first {p99_ms(warm):.0f} ms, "
        f"mean {1000 * sum(warm) / max(len(warm), 1):.1f} ms; each till's first: max {1000 * max(firsts):.0f} ms, "
        f"mean {1000 * sum(firsts) / len(firsts):.0f} ms); bare litestar ceiling {ceiling:,.0f} receipts/s, "
        f"p99 {p99_ms(c_latencies):.0f} ms; ratio {rate / ceiling:.2f}; server CPU per receipt "
        f"{1000 * cpu / done:.2f} ms, bare {1000 * c_cpu / c_done:.2f} ms (ratio {c_cpu / c_done / (cpu / done):.2f}); "
        f"{stack()}; {load()}"
    )
    assert done == TILLS * max(1, RECEIPTS // TILLS) and len(set(members.values())) == len(members)
    benchmark.extra_info.update(
        {
            "receipts": done,
            "receipts_per_s": rate,
            "ceiling_per_s": ceiling,
            "p99_ms": p99_ms(latencies),
            "p99_after_first_ms": p99_ms(warm),
            "first_receipt_ms": sorted(1000 * f for f in firsts),
            "server_cpu_ms_per_receipt": 1000 * cpu / done,
            "ceiling_cpu_ms_per_receipt": 1000 * c_cpu / c_done,
            "stack": stack(),
            "load": load(),
        }
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
