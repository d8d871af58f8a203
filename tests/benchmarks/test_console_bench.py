"""Console benchmark: the member 360 page of a member with 1,000 orders (Tmall and store, through the real
ingest path, so with 1,000 points entries and lots too), rendered by the app in-process (litestar's test client,
no network): wall time per page, median and p95, next to ``/health`` served the same way (the ceiling), and
the process's CPU time per page. The issue's bound is 200 ms of server time. On SQLite the database works
inside this process, so the CPU time is the page's whole server cost however busy the machine is (a shared
two-core machine's wall times swing with its load, printed with the figures). On PostgreSQL the server's own
work is not in it, so there the wall-time median is the figure to read. The figures are reported next to the
bound and the ceiling, not asserted: a benchmark measures, it does not pass or fail on a loaded machine.

Run: ``python -m pytest tests/benchmarks/test_console_bench.py --benchmark-enable --benchmark-only -s``.
The database is SQLite unless ``TONGCRM_BENCH_POSTGRES_URL`` names an empty PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from tongcrm.app import create_app
from tongcrm.auth.service import create_key
from tongcrm.config import Settings
from tongcrm.console import testing as seed
from tongcrm.db.base import metadata
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.db.models import import_models
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim

ORDERS = int(os.environ.get("TONGCRM_BENCH_ORDERS", "1000"))
PAGES = int(os.environ.get("TONGCRM_BENCH_PAGES", "100"))
BOUND_MS = 200.0
SECRET = "bench-secret-key-0123456789abcdef"


async def _seed(url: str, host: PluginHost) -> tuple[int, str, float]:
    import_models()
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        sessions = session_factory(engine)
        vault = Settings(database_url=url, secret_key=SECRET).vault()
        started = time.perf_counter()
        seeded = await seed.seed_shoppers(sessions, host, vault)
        claims = {
            "taobao": (IdentityClaim("taobao.open_uid", "AAlilei"),),
            "offline_pos": (IdentityClaim("pos.card", "CARD0001"),),
        }
        accounts = {"taobao": seeded.tmall_account, "offline_pos": seeded.store_account}
        batch: dict[str, list[Any]] = {"taobao": [], "offline_pos": []}
        for i in range(ORDERS - 3):  # the seed's three orders count
            channel = "taobao" if i % 3 else "offline_pos"
            batch[channel].append(
                seed.order(
                    f"B{i:06d}",
                    1_000 + (i % 50) * 100,
                    claims[channel],
                    at=seed.T0 - timedelta(hours=i),
                    store_code=seed.STORE if channel == "offline_pos" else None,
                )
            )
        for channel, orders in batch.items():
            for start in range(0, len(orders), 200):
                await seed.ingest(
                    sessions, host, vault, accounts[channel], channel, orders[start : start + 200]
                )
        async with sessions() as s, s.begin():
            key = (await create_key(s, "operator", label="bench")).key
        return seeded.shopper, key, time.perf_counter() - started
    finally:
        await engine.dispose()


def _timed(client: TestClient[Any], path: str, count: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU milliseconds of ``count`` GETs."""
    wall, cpu = [], []
    for _ in range(count):
        started, used = time.perf_counter(), time.process_time()
        response = client.get(path)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - used) * 1000)
        assert response.status_code == 200, response.text[:500]
    return wall, cpu


def test_member_360_page_with_1000_orders(benchmark: Any, report_figure: Any, tmp_path: Path) -> None:
    url = os.environ.get("TONGCRM_BENCH_POSTGRES_URL") or f"sqlite:///{tmp_path / 'console.sqlite3'}"
    host = PluginHost(autoload=True, disabled=set())
    member_id, key, took = asyncio.run(_seed(url, host))
    print(
        f"\nseeded a member with {ORDERS} orders in {took:.1f}s on {url.split(':')[0]} ({os.cpu_count()} cores)"
    )
    settings = Settings(database_url=url, secret_key=SECRET, log_level="WARNING")
    app = create_app(settings, host, run_jobs=False, configure_logs=False)
    with TestClient(app) as client:
        form = client.get("/console/sign-in")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed = client.post("/console/sign-in", data={"key": key, "csrf_token": token.group(1)})
        assert signed.status_code == 200
        page = f"/console/members/{member_id}"
        first = client.get(page)
        assert first.status_code == 200 and first.text.count("data-order-channel=") == 20
        assert f">{ORDERS}<" not in first.text  # paged, not 1,000 rows
        times: dict[str, list[float]] = {"page": [], "ceiling": []}
        cpu: dict[str, list[float]] = {"page": [], "ceiling": []}

        def run() -> None:
            # in turns, so that both see the machine's drift alike
            for _ in range(5):
                for name, path in (("ceiling", "/health"), ("page", page)):
                    wall, used = _timed(client, path, PAGES // 5)
                    times[name].extend(wall)
                    cpu[name].extend(used)

        benchmark.pedantic(run, rounds=1, iterations=1)
    figures = {name: (statistics.median(s), statistics.quantiles(s, n=20)[18]) for name, s in times.items()}
    benchmark.extra_info.update(
        {
            f"{n}_{k}_ms": round(v, 2)
            for n, (med, p95) in figures.items()
            for k, v in (("median", med), ("p95", p95))
        }
    )
    cpu_ms = {name: statistics.median(s) for name, s in cpu.items()}
    load = os.getloadavg()[0]
    benchmark.extra_info.update(
        {
            "orders": ORDERS,
            "pages": PAGES,
            "cores": os.cpu_count(),
            "load": load,
            "page_cpu_ms": cpu_ms["page"],
        }
    )
    backend = url.split(":")[0]
    line = (
        f"member 360 page, {ORDERS} orders ({backend}): wall median {figures['page'][0]:.1f} ms, "
        f"p95 {figures['page'][1]:.1f} ms, CPU median {cpu_ms['page']:.1f} ms; ceiling /health wall median "
        f"{figures['ceiling'][0]:.1f} ms, p95 {figures['ceiling'][1]:.1f} ms, CPU median {cpu_ms['ceiling']:.1f} ms "
        f"({PAGES} each, in-process, load average {load:.1f}); bound {BOUND_MS:.0f} ms"
    )
    report_figure(line)
    print(line)


@pytest.fixture(autouse=True)
def _quiet_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGCRM_LOG_LEVEL", "WARNING")
