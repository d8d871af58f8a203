"""POS checkout over HTTP: 8 tills at once, each doing lookup-by-mobile + checkout (earn), against tongcrm
served by uvicorn on 127.0.0.1, next to a bare litestar endpoint served the same way in the same run (the
HTTP ceiling of this machine).

Bounded by ``TONGCRM_BENCH_POS_RECEIPTS`` (default 400 receipts in all) and 120 s of wall time.
Run: ``python -m pytest tests/benchmarks/test_pos_checkout.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from litestar import Litestar, post
from litestar.params import JSONBody
from tongcrm.app import create_app
from tongcrm.audit.service import SYSTEM
from tongcrm.auth.service import create_key
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread

TILLS = 8
RECEIPTS = int(os.environ.get("TONGCRM_BENCH_POS_RECEIPTS", "400"))
DEADLINE_SECONDS = 120.0
TZ = ZoneInfo("Asia/Shanghai")


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def _drive(base_url: str, key: str, work: Any) -> tuple[int, float, list[float]]:
    """Run ``work(client, till_no, i)`` for every receipt across ``TILLS`` concurrent tills."""
    per_till = max(1, RECEIPTS // TILLS)
    latencies: list[float] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    done = 0

    async def till(no: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            for i in range(per_till):
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                await work(client, no, i)
                latencies.append(time.perf_counter() - started)
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(till(n) for n in range(TILLS)))
    return done, time.perf_counter() - started, latencies


def _ceiling_app() -> Litestar:
    @post("/pos/v1/receipts", status_code=201)
    async def receipt(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        return {"status": "applied", "sequence": data.get("sequence")}

    return Litestar([receipt])


@pytest.mark.slow
async def test_pos_checkout_throughput(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, benchmark: Any, report_figure: Any
) -> None:
    from tongcrm_offline_pos import stores
    from tongcrm_offline_pos.api import PosConfig
    from tongcrm_offline_pos.models import TABLES
    from tongcrm_offline_pos.plugin import OfflinePosPlugin

    host = PluginHost(autoload=False)
    host.register(OfflinePosPlugin(PosConfig(rate_per_second=10_000, burst=10_000)), "offline_pos")
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(session, host, tongcrm_settings.vault(), "offline_pos", "BENCH", {})
        key = (await create_key(session, "pos", store_code="BENCH")).key
    counter = CounterService(tongcrm_db.sessions, tongcrm_db.read_sessions, host, tongcrm_settings)
    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        for n in range(TILLS):
            await stores.add_till(uow, "BENCH", f"T{n:02d}")
    app = create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)
    now = datetime.now(UTC)
    day = now.astimezone(TZ).date().isoformat()
    members: dict[tuple[int, int], int] = {}

    async def checkout(client: httpx.AsyncClient, till: int, i: int) -> None:
        mobile = f"1390{till:02d}{i % 50:05d}"
        found = await client.post("/pos/v1/members/lookup", json={"till": f"T{till:02d}", "mobile": mobile})
        assert found.status_code in (200, 404), found.text
        member = found.json()["member_id"] if found.status_code == 200 else None
        body = {
            "store": "BENCH", "till": f"T{till:02d}", "business_day": day, "sequence": i + 1,
            "occurred_at": (now - timedelta(seconds=5)).isoformat(), "total_fen": 12_800,
            "lines": [{"line_no": 1, "title": "tea", "quantity": 1, "unit_price_fen": 12_800, "amount_fen": 12_800}],
            "payments": [{"method": "wechat", "amount_fen": 12_800}],
            "member": {"member_id": member} if member else {"mobile": mobile},
        }  # fmt: skip
        response = await client.post("/pos/v1/receipts", json=body)
        assert response.status_code == 201, response.text
        members[(till, i % 50)] = response.json()["member_id"]

    with serve_in_thread(app) as url:
        done, elapsed, latencies = await _drive(url, key, checkout)
    with serve_in_thread(_ceiling_app()) as url:

        async def bare(client: httpx.AsyncClient, till: int, i: int) -> None:
            for _ in range(2):  # the same two requests per receipt
                response = await client.post("/pos/v1/receipts", json={"sequence": i})
                assert response.status_code == 201

        c_done, c_elapsed, c_latencies = await _drive(url, key, bare)

    rate, ceiling = done / elapsed, c_done / c_elapsed
    report_figure(
        f"pos checkout {tongcrm_db.backend}, {TILLS} tills: {done} receipts (lookup + earn) in {elapsed:.1f} s = "
        f"{rate:,.0f} receipts/s, p99 {_p99(latencies):.0f} ms; bare litestar ceiling {ceiling:,.0f} receipts/s, "
        f"p99 {_p99(c_latencies):.0f} ms"
    )
    assert done == TILLS * max(1, RECEIPTS // TILLS) and len(set(members.values())) == len(members)
    benchmark.extra_info.update({"receipts": done, "receipts_per_s": rate, "ceiling_per_s": ceiling})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
