"""Bulk import and export at scale (#22), measured from outside: the real ``tongcrm`` command in a subprocess.

- ``tongcrm import members`` of N members (PostgreSQL) next to a plain ``COPY`` of the same rows (read back out
  of the members table the import filled) into an empty copy of the members table, in the same run.
- ``tongcrm import orders`` of N historical orders from N/3 buyers (both databases): orders/s. On PostgreSQL the
  buyers are the members the members benchmark imported (members first, as docs/bulk.md says); on SQLite the
  import creates them.
- ``tongcrm export ledger`` of N ledger rows (both databases): rows/s and the exporting process's peak RSS
  (``VmHWM``, read by the child itself at exit), next to a bare ``COPY … TO`` / ``SELECT`` of the same table.

Size with ``TONGCRM_BENCH_BULK_ROWS`` (default 1,000,000); every command is bounded by
``TONGCRM_BENCH_BULK_SECONDS`` (default 3,600). PostgreSQL runs when ``TONGCRM_BENCH_POSTGRES_URL`` or
``TONGCRM_TEST_POSTGRES_URL`` names a server: each run creates its own ``bench_bulk_*`` database and drops it.
Data files are written to /tmp and deleted afterwards.

Run: ``python -m pytest tests/benchmarks/test_bulk_bench.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import csv
import os
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from tongcrm.db.engine import create_engine

ROWS = int(os.environ.get("TONGCRM_BENCH_BULK_ROWS", "1000000"))
BUYERS = max(1, ROWS // 3)
LIMIT_S = float(os.environ.get("TONGCRM_BENCH_BULK_SECONDS", "3600"))
SECRET = "bench-bulk-secret-0123456789abcdef"
SOURCE = "bench"
PG_SERVER = os.environ.get("TONGCRM_BENCH_POSTGRES_URL") or os.environ.get("TONGCRM_TEST_POSTGRES_URL")
#: Runs the ``tongcrm`` command in this process and, at exit, writes its peak RSS (VmHWM, kB) to a file.
RSS_WRAPPER = """
import sys
from tongcrm.cli import main

peak_file = sys.argv[1]
sys.argv = ["tongcrm", *sys.argv[2:]]
try:
    main()
finally:
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
"""


def _uptime() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _mobile(i: int) -> str:
    """Distinct valid mainland mobiles for i < 3·10^8."""
    return f"{('138', '139', '150')[i % 3]}{i // 3:08d}"


class Bench:
    """One throw-away database and the way to run ``tongcrm`` against it."""

    def __init__(self, backend: str, url: str, workdir: Path) -> None:
        self.backend, self.url, self.workdir = backend, url, workdir
        #: the last command's CPU seconds (user, system): what the load does not inflate, unlike its wall time
        self.cpu = (0.0, 0.0)
        #: PostgreSQL: the CPU seconds the server processes of the last command's connections used (0.0 on SQLite,
        #: whose database runs in the command's own process)
        self.server_cpu = 0.0

    def tongcrm(self, *args: str) -> tuple[float, int]:
        """Run ``tongcrm ARGS``: (seconds, peak RSS in kB)."""
        peak = self.workdir / f"peak-{secrets.token_hex(4)}"
        env = {
            **os.environ,
            "TONGCRM_DATABASE_URL": self.url,
            "TONGCRM_SECRET_KEY": SECRET,
            "TONGCRM_IN_PROCESS_JOBS": "0",
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        watch = _ServerCpu(self.url) if self.backend == "postgresql" else None
        started = time.perf_counter()
        try:
            done = self._run(args, peak, env)
        finally:
            if watch is not None:
                self.server_cpu = watch.stop()
        took = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)
        assert done.returncode == 0, done.stderr[-3000:]
        kb = int(peak.read_text())
        peak.unlink()
        return took, kb

    def _run(
        self, args: tuple[str, ...], peak: Path, env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", RSS_WRAPPER, str(peak), *args],
            env=env,
            cwd=self.workdir,
            timeout=LIMIT_S,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def scalar(self, sql: str) -> Any:
        async def body() -> Any:
            engine = create_engine(self.url)
            try:
                async with engine.connect() as conn:
                    return (await conn.execute(sa.text(sql))).scalar()
            finally:
                await engine.dispose()

        return asyncio.run(body())


def _schedstat_s(pid: int) -> float:
    """CPU seconds the (local) server process ``pid`` has used; 0.0 once it is gone or where it cannot be read."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class _ServerCpu:
    """The CPU the PostgreSQL server processes of one database use while a command runs: their pids polled from
    ``pg_stat_activity`` every 0.2 s in a thread, each one's last reading kept (a backend's CPU is gone from
    ``/proc`` once its connection closes, so the last poll before is what counts). The server runs on this
    machine's cores: an import that moves work from the client into set-based statements moves it here."""

    def __init__(self, url: str) -> None:
        self.url, self.seen = url, dict[int, float]()
        self.done = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._poll(),), daemon=True)
        self.thread.start()

    async def _poll(self) -> None:
        engine = create_engine(self.url)
        try:
            async with engine.connect() as conn:
                query = sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                while True:
                    pids = (await conn.execute(query)).scalars().all()
                    await conn.rollback()
                    for pid in pids:
                        cpu = _schedstat_s(int(pid))
                        if cpu:
                            self.seen[int(pid)] = cpu
                    if self.done.wait(0.2):
                        return
        finally:
            await engine.dispose()

    def stop(self) -> float:
        self.done.set()
        self.thread.join(30)
        return sum(self.seen.values())


async def _admin(sql: str) -> None:
    assert PG_SERVER
    admin = create_engine(PG_SERVER).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await admin.dispose()


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    backend: str = request.param
    with tempfile.TemporaryDirectory(prefix="bench_bulk_", dir="/tmp") as tmp:
        workdir = Path(tmp)
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'bench.sqlite3'}"
            name = None
        else:
            if not PG_SERVER:
                pytest.skip("no PostgreSQL server (TONGCRM_BENCH_POSTGRES_URL / TONGCRM_TEST_POSTGRES_URL)")
            name = f"bench_bulk_{os.getpid()}_{secrets.token_hex(3)}"
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
            url = make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
        try:
            b = Bench(backend, url, workdir)
            b.tongcrm("db", "upgrade")
            yield b
        finally:
            if name is not None:
                asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _write_members(path: Path, n: int) -> None:
    cities = ["杭州", "上海", "北京", "深圳", "成都", ""]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["member_id", "mobile", "name", "city"])
        for i in range(n):
            w.writerow([f"M{i}", _mobile(i), f"会员{i}", cities[i % len(cities)]])


def _write_orders(path: Path, n: int, buyers: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "member_id", "placed_at", "total_fen", "paid_fen", "status", "sku", "title"])
        for i in range(n):
            day = 1 + i % 28
            w.writerow(
                [
                    f"O{i}",
                    f"M{(i * 7919) % buyers}",
                    f"2024-{1 + i % 12:02d}-{day:02d}T{i % 24:02d}:{i % 60:02d}:00+08:00",
                    1000 + i % 50000,
                    1000 + i % 50000,
                    "completed",
                    f"SKU{i % 500}",
                    f"商品{i % 500}",
                ]
            )


#: The server's CPU seconds of the last ceilings (``members``: the members-table COPY, ``all``: every row's):
#: set beside their wall times, to set the import's CPU (client and server) against, which the load moves less.
_CEILING_CPU: dict[str, float] = {}


async def _copy_members_ceiling(url: str, workdir: Path) -> tuple[float, int]:
    """Dump the members the import wrote (untimed), then time a plain ``COPY`` of them into an empty copy of
    the members table (same columns, constraints and indexes): (seconds, rows)."""
    dump = workdir / "members.copy"
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.copy_from_query("SELECT * FROM members ORDER BY id", output=str(dump))
            await driver.execute("CREATE TABLE bench_copy_members (LIKE members INCLUDING ALL)")
            backend = await driver.fetchval("SELECT pg_backend_pid()")
            cpu = _schedstat_s(backend)
            started = time.perf_counter()
            status = await driver.copy_to_table("bench_copy_members", source=str(dump))
            took = time.perf_counter() - started
            _CEILING_CPU["members"] = _schedstat_s(backend) - cpu
            await driver.execute("DROP TABLE bench_copy_members")
    finally:
        await engine.dispose()
        dump.unlink(missing_ok=True)
    return took, int(status.split()[-1])


async def _copy_all_ceiling(url: str, workdir: Path, tables: dict[str, str]) -> tuple[float, int]:
    """A fairer floor than the members table alone: dump the rows the import wrote to each of ``tables``
    ({table: the WHERE that picks them}, untimed), then time plain ``COPY``s of all of them into empty copies
    (same columns, constraints and indexes; no foreign keys): (seconds, rows)."""
    engine = create_engine(url)
    took, rows, server_cpu = 0.0, 0, 0.0
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            for table, where in tables.items():
                dump = workdir / f"{table}.copy"
                query = f"SELECT * FROM {table} WHERE {where}"  # noqa: S608 - constants
                await driver.copy_from_query(query, output=str(dump))
                await driver.execute(f"CREATE TABLE bench_copy_{table} (LIKE {table} INCLUDING ALL)")
                backend = await driver.fetchval("SELECT pg_backend_pid()")
                cpu = _schedstat_s(backend)
                started = time.perf_counter()
                status = await driver.copy_to_table(f"bench_copy_{table}", source=str(dump))
                took += time.perf_counter() - started
                server_cpu += _schedstat_s(backend) - cpu
                rows += int(status.split()[-1])
                await driver.execute(f"DROP TABLE bench_copy_{table}")
                dump.unlink()
    finally:
        await engine.dispose()
    _CEILING_CPU["all"] = server_cpu
    return took, rows


#: What ``import members`` writes besides the members: their identities, row keys and member_created events.
_MEMBER_TABLES = {
    "members": "true",
    "identities": "true",
    "bulk_import_keys": "kind = 'members'",
    "outbox_events": "name = 'member_created'",
}
#: What ``import orders`` writes: the orders, their lines and the row keys.
_ORDER_TABLES = {"orders": "true", "order_lines": "true", "bulk_import_keys": "kind = 'orders'"}


#: Whether an import of each kind says it finished.
_FINISHED = {
    "members": "SELECT status FROM bulk_imports WHERE kind = 'members'",
    "orders": "SELECT status FROM bulk_imports WHERE kind = 'orders'",
}


def _cpu(bench: Bench) -> str:
    """The last command's CPU time (on SQLite the whole import's: the database runs in its process)."""
    user, system = bench.cpu
    server = f", server CPU {bench.server_cpu:.2f}s" if bench.backend == "postgresql" else ""
    return f"process CPU {user:.2f}s user + {system:.2f}s sys{server}"


def _import_once(bench: Bench, benchmark: Any, kind: str, data: Path) -> tuple[float, int]:
    """One timed ``tongcrm import KIND FILE`` (the file is deleted after it): seconds and peak RSS in kB, once the
    import says it finished."""
    result: dict[str, Any] = {}

    def run() -> None:
        result["import"] = bench.tongcrm("import", kind, str(data), "--source", SOURCE)

    benchmark.pedantic(run, rounds=1, iterations=1)
    data.unlink()
    assert bench.scalar(_FINISHED[kind]) == "finished"
    took, peak_kb = result["import"]
    return took, peak_kb


def test_import_members_vs_copy(bench: Bench, benchmark: Any, report_figure: Any) -> None:
    if bench.backend != "postgresql":
        pytest.skip("the members import is measured on PostgreSQL (its COPY is the reference)")
    data = bench.workdir / "members.csv"
    _write_members(data, ROWS)
    load_before = _uptime()
    took, peak_kb = _import_once(bench, benchmark, "members", data)
    assert bench.scalar("SELECT count(*) FROM members") == ROWS
    copy_s, copied = asyncio.run(_copy_members_ceiling(bench.url, bench.workdir))
    assert copied == ROWS
    all_s, all_rows = asyncio.run(_copy_all_ceiling(bench.url, bench.workdir, _MEMBER_TABLES))
    report_figure(
        f"import members {ROWS:,} on postgresql: {took:.1f}s = {ROWS / took:,.0f} rows/s (peak RSS "
        f"{peak_kb / 1024:.0f} MB, {_cpu(bench)}) · same-run COPY of the same rows into an empty members copy {copy_s:.1f}s = "
        f"{copied / copy_s:,.0f} rows/s · ratio {took / copy_s:.1f}x (aim <= 2x) · same-run COPY of all "
        f"{all_rows:,} rows the import wrote (members, identities, keys, events) {all_s:.1f}s, ratio "
        f"{took / all_s:.1f}x · the COPYs' server CPU {_CEILING_CPU['members']:.2f}s (members) and "
        f"{_CEILING_CPU['all']:.2f}s (all), the import's CPU (process and server) "
        f"{(sum(bench.cpu) + bench.server_cpu) / _CEILING_CPU['members']:.1f}x the first · {load_before} before, "
        f"{_uptime()} after"
    )


def test_import_orders(bench: Bench, benchmark: Any, report_figure: Any) -> None:
    data = bench.workdir / "orders.csv"
    _write_orders(data, ROWS, BUYERS)
    members_before = bench.scalar("SELECT count(*) FROM members")
    load_before = _uptime()
    took, peak_kb = _import_once(bench, benchmark, "orders", data)
    assert bench.scalar("SELECT count(*) FROM orders") == ROWS
    reference = ""
    if bench.backend == "postgresql":
        all_s, all_rows = asyncio.run(_copy_all_ceiling(bench.url, bench.workdir, _ORDER_TABLES))
        reference = (
            f" · same-run COPY of the {all_rows:,} rows it wrote (orders, lines, keys) into empty copies "
            f"{all_s:.1f}s = {ROWS / all_s:,.0f} orders/s, ratio {took / all_s:.1f}x"
        )
    report_figure(
        f"import orders {ROWS:,} from {BUYERS:,} buyers on {bench.backend} ({members_before:,} members there "
        f"before): {took:.1f}s = {ROWS / took:,.0f} orders/s (aim >= 10,000) · peak RSS {peak_kb / 1024:.0f} MB, "
        f"{_cpu(bench)}"
        f"{reference} · {load_before} before, {_uptime()} after"
    )


_LEDGER_SEED_PG = """
INSERT INTO points_entries (member_id, kind, amount, shortfall, idempotency_key, actor, reason,
                            occurred_at, available_from, created_at)
SELECT (SELECT min(id) FROM members) + g % {members}, 'earn', 1 + g % 500, 0, 'bench:' || g, 'bench',
       'benchmark entry ' || g, now() - g * interval '1 second', now(), now()
FROM generate_series(1, {rows}) AS g
"""


def _seed_ledger(bench: Bench, rows: int) -> None:
    """``rows`` ledger entries for the members already there (untimed set-up, straight SQL). Their ids come
    from the table's own default, so a later test's writes on the same database (the sync's) do not collide."""
    members = min(int(bench.scalar("SELECT count(*) FROM members")), rows)
    if bench.backend == "postgresql":
        asyncio.run(_run_sql(bench.url, _LEDGER_SEED_PG.format(members=members, rows=rows)))
        return
    path = make_url(bench.url).database
    assert path
    with sqlite3.connect(path) as conn:
        conn.execute(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
            "INSERT INTO points_entries (member_id, kind, amount, shortfall, idempotency_key, actor, reason,"
            " occurred_at, available_from, created_at) "
            "SELECT (SELECT min(id) FROM members) + n % ?, 'earn', 1 + n % 500, 0, 'bench:' || n, 'bench',"
            " 'benchmark entry ' || n, '2025-01-01 00:00:00.000000', '2025-01-01 00:00:00.000000',"
            " '2025-01-01 00:00:00.000000' FROM g",
            (rows, members),
        )


async def _run_sql(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


async def _read_ceiling(url: str, workdir: Path) -> float:
    """The database side alone: ``COPY (SELECT the exported columns) TO`` a file (PostgreSQL), or a plain
    cursor over them written as CSV (SQLite). Seconds."""
    columns = (
        "id, member_id, kind, amount, shortfall, idempotency_key, account_id, order_id, line_id, rule_code, "
        "rule_version, reason, actor, ref_entry_id, occurred_at, available_from, expires_at, created_at"
    )
    out = workdir / "ledger.copy"
    started = time.perf_counter()
    if url.startswith("postgresql"):
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection
                await driver.copy_from_query(
                    f"SELECT {columns} FROM points_entries ORDER BY id",  # noqa: S608 - a constant column list
                    output=str(out),
                    format="csv",
                )
        finally:
            await engine.dispose()
    else:
        path = make_url(url).database
        assert path
        with sqlite3.connect(path) as conn, out.open("w", newline="") as f:
            csv.writer(f).writerows(conn.execute(f"SELECT {columns} FROM points_entries ORDER BY id"))  # noqa: S608
    took = time.perf_counter() - started
    out.unlink()
    return took


def test_export_ledger(bench: Bench, benchmark: Any, report_figure: Any) -> None:
    if bench.scalar("SELECT count(*) FROM members") == 0:
        _write_members(bench.workdir / "m.csv", 1000)
        bench.tongcrm("import", "members", str(bench.workdir / "m.csv"), "--source", "seed")
        (bench.workdir / "m.csv").unlink()
    existing = int(bench.scalar("SELECT count(*) FROM points_entries"))
    assert existing == 0
    _seed_ledger(bench, ROWS)
    output = bench.workdir / "ledger.csv"
    result: dict[str, Any] = {}

    def run() -> None:
        result["export"] = bench.tongcrm("export", "ledger", "--output", str(output))

    load_before = _uptime()
    benchmark.pedantic(run, rounds=1, iterations=1)
    took, peak_kb = result["export"]
    with output.open(encoding="utf-8") as f:
        exported = sum(1 for _ in f) - 1
    output.unlink()
    assert exported == ROWS
    ceiling = asyncio.run(_read_ceiling(bench.url, bench.workdir))
    report_figure(
        f"export ledger {ROWS:,} rows on {bench.backend}: {took:.1f}s = {ROWS / took:,.0f} rows/s, peak RSS "
        f"{peak_kb / 1024:.0f} MB (aim <= 200 MB) · same-run bare read of the same columns to CSV "
        f"{ceiling:.1f}s = {ROWS / ceiling:,.0f} rows/s · {load_before} before, {_uptime()} after"
    )


SYNC_TRADES = int(os.environ.get("TONGCRM_BENCH_SYNC_TRADES", str(ROWS)))


async def _taobao_account(url: str, gateway: str) -> None:
    from tongcrm.channels import service as accounts
    from tongcrm.crypto import Vault
    from tongcrm.db.engine import session_factory
    from tongcrm.plugin.host import PluginHost

    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await accounts.create_account(
                session,
                PluginHost(autoload=True, disabled=set()),
                Vault(SECRET),
                "taobao",
                "bench",
                {
                    "app_key": "12345678",
                    "app_secret": "bench-secret",
                    "session": "bench-session",
                    "gateway_url": gateway,
                },
            )
    finally:
        await engine.dispose()


def test_sync_peak_rss(bench: Bench, benchmark: Any, report_figure: Any) -> None:
    """Peak RSS of ``tongcrm sync`` over SYNC_TRADES orders from the fake TOP gateway (its own process), next
    to the peak RSS of ``tongcrm plugins`` (the programme loaded, doing nothing) in the same run."""
    if bench.backend != "postgresql":
        pytest.skip("the sync's memory is measured on PostgreSQL")
    import httpx
    from tongcrm.testing.servers import free_port

    here = Path(__file__).resolve().parent
    # The shop's trades end ten minutes ago, past the sync's safety lag (180 s): the command's clock is the wall
    # clock, so a shop anchored in the past would have it walk every empty window from there to today.
    anchor = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    port = free_port()
    shop = subprocess.Popen(
        [
            sys.executable,
            str(here / "fake_top_process.py"),
            str(port),
            str(SYNC_TRADES),
            str(SYNC_TRADES * 3 // 10),
            str(int(anchor.timestamp())),
        ]
    )
    gateway = f"http://127.0.0.1:{port}/router/rest"
    try:
        deadline = time.monotonic() + LIMIT_S
        while True:
            try:
                httpx.get(gateway, timeout=1)
                break
            except httpx.TransportError:
                assert shop.poll() is None and time.monotonic() < deadline, "fake TOP gateway did not start"
                time.sleep(0.5)
        asyncio.run(_taobao_account(bench.url, gateway))
        orders_before = int(bench.scalar("SELECT count(*) FROM orders WHERE channel = 'taobao'"))
        since = (anchor - timedelta(days=11)).isoformat()
        result: dict[str, Any] = {}

        def run() -> None:
            result["sync"] = bench.tongcrm("sync", "--account", "bench", "--since", since)

        load_before = _uptime()
        benchmark.pedantic(run, rounds=1, iterations=1)
        took, peak_kb = result["sync"]
        sync_cpu = _cpu(bench)
        synced = int(bench.scalar("SELECT count(*) FROM orders WHERE channel = 'taobao'")) - orders_before
        assert synced == SYNC_TRADES
        _idle_s, idle_kb = bench.tongcrm("plugins")
    finally:
        shop.terminate()
        shop.wait(30)
    report_figure(
        f"tongcrm sync of {synced:,} taobao orders on postgresql: peak RSS {peak_kb / 1024:.0f} MB (aim <= 300 MB), "
        f"{took:.1f}s = {synced / took:,.0f} orders/s, {sync_cpu} · same-run peak RSS of `tongcrm plugins` (loaded, idle) "
        f"{idle_kb / 1024:.0f} MB · {load_before} before, {_uptime()} after"
    )
