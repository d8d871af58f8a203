"""tongcrm behind PgBouncer in transaction mode (PostgreSQL only; skipped when ``pgbouncer`` is not installed).

A PgBouncer of our own is started on 127.0.0.1 with two server connections for many clients, so consecutive
transactions of one client land on different server connections and clients share them. With
``?pooler=transaction`` on the URL the units of work tongcrm's workers run — leases, job claims, advisory-lock
call windows, ``SET LOCAL`` settings, a whole ingest page — hold up under concurrency; without it asyncpg's
prepared statements break (which is why the parameter exists). See docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.db.point_reads import EngineReader, create_point_reader
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.jobs import leases
from tongcrm.jobs.models import Job
from tongcrm.jobs.queue import enqueue
from tongcrm.jobs.runner import JobContext, JobRegistry, Runner
from tongcrm.limits.gate import DatabaseCallGate
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.memory import make_order

CLIENTS = 8
ROUNDS = 15
VAULT = Vault("pgbouncer-secret-0123456789")
PROBE = sa.text("SELECT current_setting('tongcrm.probe', true)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def bouncer_url(tongcrm_db: TestDatabase, tmp_path: Path) -> Iterator[str]:
    """The test database's URL through a transaction-mode PgBouncer (two server connections)."""
    if tongcrm_db.backend != "postgresql":
        pytest.skip("PgBouncer pools PostgreSQL connections")
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    server = make_url(tongcrm_db.url)
    port = _free_port()
    user = server.username or "postgres"
    (tmp_path / "userlist.txt").write_text(f'"{user}" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.host or "127.0.0.1"} port={server.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path / "userlist.txt"}
pool_mode = transaction
default_pool_size = 2
max_client_conn = 100
"""
    )
    command = [binary, str(tmp_path / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        os.chown(tmp_path, pwd.getpwnam("postgres").pw_uid, -1)
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else b""
                assert time.monotonic() < deadline, "pgbouncer did not start listening"
                time.sleep(0.1)
        yield server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(10)


def _registry(ran: list[int]) -> JobRegistry:
    registry = JobRegistry()

    @registry.job("bounce")
    async def bounce(ctx: JobContext, payload: dict[str, Any]) -> None:
        async with ctx.sessions() as session, session.begin():
            await session.execute(sa.text("SET LOCAL tongcrm.probe = 'set'"))
            assert (await session.execute(PROBE)).scalar_one() == "set"
        ran.append(ctx.job_id)

    return registry


async def _workload(url: str) -> tuple[list[str], list[int]]:
    """What several workers do at once; returns the errors met and the jobs run."""
    engine = create_engine(url, pool_size=CLIENTS)
    sessions = session_factory(engine)
    errors: list[str] = []
    ran: list[int] = []
    host = PluginHost(autoload=False)
    runner = Runner(sessions, host, _registry(ran))
    gate = DatabaseCallGate(sessions)

    async def client(n: int) -> None:
        for i in range(ROUNDS):
            try:
                async with sessions() as session, session.begin():
                    now = datetime.now(UTC)
                    assert await leases.acquire(
                        session, f"bounce:{n}", f"client-{n}", timedelta(seconds=9), now=now
                    )
                    await enqueue(session, "bounce", {"i": i}, unique_key=f"bounce:{n}:{i}")
                # a transaction-scoped advisory lock and the server's clock, as the call windows take them
                grant = await gate.acquire(f"bounce:{n % 2}", rate=10_000)
                await grant.release()
                await runner.run_next_job()
                async with sessions() as session:  # SET LOCAL never leaks into the next transaction
                    assert (await session.execute(PROBE)).scalar_one() in (None, "")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")

    try:
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
        try:  # the jobs the clients left
            while await runner.run_next_job():
                pass
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    finally:
        await engine.dispose()
    return errors, ran


async def test_workers_units_of_work_hold_behind_a_transaction_pooler(
    tongcrm_db: TestDatabase, bouncer_url: str
) -> None:
    errors, ran = await _workload(f"{bouncer_url}?pooler=transaction")
    assert errors == []
    async with tongcrm_db.sessions() as session:
        statuses = (await session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status))).all()
    assert dict(statuses) == {"done": CLIENTS * ROUNDS} and len(ran) == len(set(ran)) == CLIENTS * ROUNDS


async def test_an_ingest_page_and_point_reads_behind_a_transaction_pooler(
    tongcrm_db: TestDatabase, bouncer_url: str, memory_host: PluginHost
) -> None:
    url = f"{bouncer_url}?pooler=transaction"
    engine = create_engine(url)
    sessions = session_factory(engine)
    ctx = IngestContext(
        host=memory_host, vault=VAULT, clock=lambda: datetime.now(UTC), tz=ZoneInfo("Asia/Shanghai")
    )
    try:
        async with sessions() as session, session.begin():
            account = await accounts.create_account(
                session, memory_host, VAULT, "memory", "shop", {"token": "t", "shop": "S"}
            )
        pages = [[make_order(f"o{p}-{i}", f"b{i % 5}") for i in range(20)] for p in range(6)]

        async def apply(orders: list[Any]) -> None:
            async with sessions() as session, session.begin():
                await apply_orders_page(session, ctx, account.id, "memory", orders, ())

        await asyncio.gather(*(apply(page) for page in pages))
        # the point reader cannot keep prepared statements behind the pooler: it reads through the engine
        assert isinstance(create_point_reader(url, engine), EngineReader)
    finally:
        await engine.dispose()
    async with tongcrm_db.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(Order))).scalar_one() == 120


async def test_without_the_pooler_setting_asyncpgs_prepared_statements_break(bouncer_url: str) -> None:
    errors, _ran = await _workload(bouncer_url)
    assert any("prepared statement" in error for error in errors), errors[:3]
