"""End-to-end ingest: a fake platform (TOP for Taobao, JOS for JD) in its own process on 127.0.0.1 → the
plugin's real client → ingest engine → database.

Reports orders/s per channel and backend next to, in the same run: fetch + normalise alone (the platform side);
on PostgreSQL the lean reference pipeline (:mod:`lean_reference`: the same pages fetched again and applied with
fixed-text array statements on asyncpg, seven statements a page) and ``COPY`` of the same normalised order rows as
the physical ceiling. Size with ``TONGCRM_BENCH_TRADES`` (default 100,000 orders from 30 % as many buyers).
Run: ``python -m pytest tests/benchmarks/test_ingest_throughput.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
import structlog
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import sync_account
from tongcrm.logging import configure_logging
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelContext, NormalisedOrder
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lean_reference
from http_load import load

TRADES = int(os.environ.get("TONGCRM_BENCH_TRADES", "100000"))
BUYERS = max(1, TRADES * 3 // 10)
#: ``TONGCRM_SYNC_FETCH_PROCESS=1``: fetch in a child process, as the setting of that name (tongcrm.ingest.fetcher)
FETCH_PROCESS = os.environ.get("TONGCRM_SYNC_FETCH_PROCESS", "0").lower() in {"1", "true", "yes"}
VAULT = Vault("bench-secret-0123456789abcdef")


async def _copy_ceiling(db: TestDatabase, orders: list[NormalisedOrder]) -> float:
    """``COPY`` the same order rows into a scratch copy of the orders table: what the disk can take."""
    rows = [
        (o.external_id, o.status.value, o.total_fen, o.paid_fen, o.created_at, o.modified_at) for o in orders
    ]
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.execute(
            "CREATE TEMP TABLE bench_copy (external_id text, status text, total_fen bigint, paid_fen bigint,"
            " placed_at timestamptz, modified_at timestamptz)"
        )
        started = time.perf_counter()
        await driver.copy_records_to_table("bench_copy", records=rows)
        elapsed = time.perf_counter() - started
        await driver.execute("DROP TABLE bench_copy")
    return len(rows) / elapsed


async def _wal_position(db: TestDatabase, *, checkpoint: bool = False) -> int:
    """PostgreSQL: the server's WAL position in bytes; with ``checkpoint``, after a ``CHECKPOINT``.

    The channels' runs share one database (a session fixture, emptied between tests), so a run that followed
    another started with that run's WAL (20,000 orders wrote 112-172 MB; max_wal_size 1 GB triggers a
    checkpoint at ~540 MB) and met its WAL-triggered checkpoint, with the full-page writes after it, early: a
    run on a database of its own starts after the checkpoint its predecessor's ``DROP DATABASE`` forced. The
    checkpoint puts every run on that footing (skipped where the role may not checkpoint). The position is the
    server's: on a shared server the WAL figure counts other databases' writes too."""
    async with db.engine.connect() as conn:
        if checkpoint:
            try:
                async with conn.begin_nested():
                    await conn.execute(sa.text("CHECKPOINT"))
            except sa.exc.DBAPIError:
                pass
        lsn = (await conn.execute(sa.text("SELECT pg_current_wal_lsn() - '0/0'"))).scalar_one()
        await conn.rollback()
    return int(lsn)


def _backend_cpu(pid: int) -> float:
    """Seconds of CPU the server process ``pid`` has used (Linux ``/proc/<pid>/schedstat``, nanoseconds); 0.0
    where it cannot be read (another machine, another OS)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


async def _backends_cpu(db: TestDatabase) -> dict[int, float]:
    """PostgreSQL: the CPU each server process connected to the test's database has used so far, by pid.

    The server runs on this machine's cores too: a page's statements cost the server CPU that the sync's own
    process time does not show (issue #22: on a first sync, reads planned without statistics cost the server more
    than the client's whole apply)."""
    async with db.engine.connect() as conn:
        pids = (
            await conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
        ).scalars()
        found = {int(pid): _backend_cpu(int(pid)) for pid in pids}
        await conn.rollback()
    return found


async def _lean_reference(
    db: TestDatabase, host: PluginHost, channel: str, settings: dict[str, str], clock: Any
) -> tuple[float, float]:
    """The lean reference pipeline over the same platform, end to end (fetch included): orders/s, and the
    server CPU (seconds) its connection used."""
    adapter = host.channel(channel).factory(ChannelContext("bench", settings, clock=clock))

    async def fetch_page(cursor: Any) -> tuple[list[NormalisedOrder], Any, bool]:
        page = await adapter.fetch_orders(cursor)
        return list(page.orders), page.next_cursor, page.has_more

    dsn = sa.engine.make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        written, elapsed, server_cpu = await lean_reference.run(dsn, 1, fetch_page, server_cpu=_backend_cpu)
    finally:
        await adapter.aclose()
    assert written == TRADES
    return written / elapsed, server_cpu


CHANNELS: dict[str, dict[str, Any]] = {
    "taobao": {
        "script": "fake_top_process.py",
        "path": "/router/rest",
        "settings": {"app_key": "12345678", "app_secret": "bench-secret", "session": "bench-session"},
    },
    "jd": {
        "script": "fake_jd_process.py",
        "path": "/routerjson",
        "settings": {"app_key": "bench-app", "app_secret": "bench-secret", "access_token": "bench-token"},
    },
}


def _business_now(script: str) -> Any:
    """The fake shop's "now", from its server script (one definition for both processes)."""
    spec = importlib.util.spec_from_file_location(
        script.removesuffix(".py"), Path(__file__).with_name(script)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BUSINESS_NOW


@pytest.fixture(scope="module", params=sorted(CHANNELS))
def fake_platform(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(channel, gateway URL): the channel's fake platform in a subprocess on 127.0.0.1, stopped at the end."""
    channel: str = request.param
    conf = CHANNELS[channel]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name(conf["script"])), str(port), str(TRADES), str(BUYERS)]
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}{conf['path']}", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"fake {channel} platform did not start") from None
            time.sleep(0.2)
    try:
        yield channel, f"http://127.0.0.1:{port}{conf['path']}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def logs_as_the_cli() -> Iterator[None]:
    """Logging as ``tongcrm sync`` configures it by default (JSON at INFO): unconfigured, structlog prints
    every debug line of the clients inside the measured sync. Put back afterwards."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(json=True, level="INFO")  # Settings.log_level's default
    yield
    structlog.configure(**saved_config)
    root.handlers, root.level = saved_handlers, saved_level


@pytest.mark.slow
@pytest.mark.usefixtures("logs_as_the_cli")
async def test_end_to_end_ingest_throughput(
    tongcrm_db: TestDatabase, benchmark: Any, report_figure: Any, fake_platform: tuple[str, str]
) -> None:
    channel, url = fake_platform
    business_now = _business_now(CHANNELS[channel]["script"])
    # a picklable clock (a partial of a builtin): a fetching child process gets it too
    clock = functools.partial(datetime.fromtimestamp, business_now.timestamp(), UTC)
    host = PluginHost(autoload=True, disabled=set())
    settings = {**CHANNELS[channel]["settings"], "gateway_url": url, "initial_sync_days": "11"}
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(session, host, VAULT, channel, "bench", settings)
    ctx = IngestContext(
        host=host, vault=VAULT, clock=clock, tz=ZoneInfo("Asia/Shanghai"), fetch_process=FETCH_PROCESS
    )

    postgres = tongcrm_db.backend == "postgresql"
    wal_before = await _wal_position(tongcrm_db, checkpoint=True) if postgres else 0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = await _backends_cpu(tongcrm_db) if postgres else {}
    started, cpu_started = time.perf_counter(), time.process_time()
    report = await sync_account(tongcrm_db.sessions, ctx, "bench")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # the fetching child's CPU (it was joined: the fake platform, still running, is not counted)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = max(0.0, after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
    if postgres:  # the pool keeps the sync's connections open, so their processes are still there to read
        server_after = await _backends_cpu(tongcrm_db)
        server_cpu = sum(used - server_before.get(pid, 0.0) for pid, used in server_after.items())
    wal = (await _wal_position(tongcrm_db) - wal_before) / 2**20 if postgres else 0.0
    assert report.error is None and report.caught_up

    # the platform side alone: the same pages fetched and normalised without a database
    adapter = host.channel(channel).factory(ChannelContext("bench", settings, clock=clock))
    fetched: list[NormalisedOrder] = []
    cursor = None
    f_started = time.perf_counter()
    while True:
        page = await adapter.fetch_orders(cursor)
        fetched.extend(page.orders)
        cursor = page.next_cursor
        if not page.has_more:
            break
    fetch_elapsed = time.perf_counter() - f_started
    await adapter.aclose()

    async with tongcrm_db.sessions() as session:
        stored = (await session.execute(sa.select(sa.func.count()).select_from(Order))).scalar_one()
    assert stored == TRADES
    rate = stored / elapsed
    line = (
        f"ingest {channel} on {tongcrm_db.backend}: {stored} orders ({BUYERS} buyers) in {elapsed:.1f} s = {rate:,.0f} orders/s "
        f"end to end (process CPU {cpu:.2f} s + fetching child {child_cpu:.2f} s = {cpu + child_cpu:.2f} s, "
        f"fetch process {'on' if FETCH_PROCESS else 'off'}); "
        f"fetch+normalise alone {len(fetched) / fetch_elapsed:,.0f} orders/s"
    )
    if postgres:
        line += f"; server CPU {server_cpu:.2f} s; WAL {wal:,.0f} MB"
        ref_cpu_started = time.process_time()
        ref_rate, ref_server_cpu = await _lean_reference(tongcrm_db, host, channel, settings, clock)
        ref_cpu = time.process_time() - ref_cpu_started
        line += (
            f"; lean reference pipeline {ref_rate:,.0f} orders/s (CPU {ref_cpu:.2f} s, server CPU"
            f" {ref_server_cpu:.2f} s, ratio {rate / ref_rate:.2f})"
        )
        benchmark.extra_info["reference_orders_per_s"] = ref_rate
        line += f"; PostgreSQL COPY ceiling {await _copy_ceiling(tongcrm_db, fetched):,.0f} rows/s"
    report_figure(f"{line}; {load()}")
    benchmark.extra_info.update(
        {"channel": channel, "orders": stored, "orders_per_s": rate, "backend": tongcrm_db.backend}
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
