"""Broker mode end to end: one scheduler, two workers and one API process on PostgreSQL and RabbitMQ.

A Taobao and a JD fake shop (served in this test process) are synced by the workers while one worker is
SIGKILLed mid-job and RabbitMQ is restarted (``rabbitmqctl stop_app``/``start_app``). Afterwards the member base's
orders equal the fakes' truth, every outbox event has been fanned out and no delivery is pending, no job is
stuck, the API answers ``/metrics`` and ``tongcrm verify`` is clean.

It restarts the machine's RabbitMQ, so it runs only when asked: ``TONGCRM_SYSTEM_TEST=1`` (and on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from tongcrm.auth.service import create_key
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.jobs.models import EventDelivery, Job, OutboxEvent
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.broker import broker_reachable, broker_url_for_tests
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.platforms import jd_platform, taobao_platform
from tongcrm.testing.servers import serve_in_thread

SECRET = "cluster-test-secret-0123456789"
DEADLINE = 240.0  # seconds for the whole scenario once the processes run (a shared 2-core machine)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


async def _until(check: Callable[[], Awaitable[bool]], what: str, deadline: float) -> None:
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.fixture
def cluster_env(tongcrm_db: TestDatabase) -> dict[str, str]:
    if not tongcrm_db.url.startswith("postgresql"):
        pytest.skip("broker mode is for PostgreSQL: SQLite has one writer")
    if os.environ.get("TONGCRM_SYSTEM_TEST") != "1":
        pytest.skip("restarts RabbitMQ: run with TONGCRM_SYSTEM_TEST=1")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    return {
        **os.environ,
        "TONGCRM_DATABASE_URL": tongcrm_db.url,
        "TONGCRM_SECRET_KEY": SECRET,
        "TONGCRM_LOG_JSON": "1",
        "TONGCRM_DISABLE_PLUGINS": "",
        "TONGCRM_JOBS_BROKER_URL": broker_url_for_tests(),
        "TONGCRM_JOBS_QUEUE": f"tongcrm.system-test.{os.getpid()}",
        "TONGCRM_JOB_LOCK_SECONDS": "6",
        "TONGCRM_SYNC_LEASE_SECONDS": "4",
        "TONGCRM_JOBS_REPUBLISH_SECONDS": "5",
        "TONGCRM_IN_PROCESS_JOBS": "0",
    }


@pytest.mark.slow
async def test_two_shops_sync_through_a_worker_kill_and_a_broker_restart(
    tongcrm_db: TestDatabase, cluster_env: dict[str, str], tmp_path: Any
) -> None:
    if (reason := await broker_reachable()) is not None:
        pytest.skip(reason)
    taobao_app, taobao_settings, taobao_truth = taobao_platform(trades=250, slow_seconds=0.05)
    jd_app, jd_settings, jd_truth = jd_platform(orders=250, slow_seconds=0.15)
    port = _free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *args: str) -> None:
        log = (tmp_path / f"{name}.log").open("wb")
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "tongcrm", *args], env=cluster_env, stdout=log, stderr=log
        )

    with ExitStack() as stack:
        taobao_url = stack.enter_context(serve_in_thread(taobao_app))
        jd_url = stack.enter_context(serve_in_thread(jd_app))
        host = PluginHost(autoload=True, disabled=set())
        async with tongcrm_db.sessions() as session, session.begin():
            for channel, name, settings, url in (
                ("taobao", "tb-shop", taobao_settings, taobao_url),
                ("jd", "jd-shop", jd_settings, jd_url),
            ):
                path = settings.pop("_path")
                await accounts.create_account(
                    session, host, Vault(SECRET), channel, name, {**settings, "gateway_url": f"{url}{path}"}
                )
            admin_key = (await create_key(session, "admin")).key
        await _stamp_heads(tongcrm_db, host)  # the fixture built the schema from the models; serve checks it
        try:
            start("scheduler", "jobs", "scheduler")
            start("worker-a", "jobs", "worker", "--concurrency", "8")
            start("worker-b", "jobs", "worker", "--concurrency", "8")
            start("api", "serve", "--no-jobs", "--port", str(port))
            deadline = time.monotonic() + DEADLINE

            # 1. kill whichever worker is running a sync, mid-job
            pids = {processes[w].pid: w for w in ("worker-a", "worker-b")}
            killed: list[str] = []

            async def a_sync_is_running() -> bool:
                async with tongcrm_db.sessions() as session:
                    holders = (
                        await session.execute(
                            sa.select(Job.locked_by).where(
                                Job.name == "ingest.sync_account", Job.status == "running"
                            )
                        )
                    ).scalars()
                    for holder in holders:
                        pid = int((holder or "::").split(":")[1] or 0)
                        if pid in pids:
                            killed.append(pids[pid])
                            return True
                return False

            await _until(a_sync_is_running, "a worker to start a sync", deadline)
            await asyncio.sleep(0.5)  # some pages in
            processes[killed[0]].send_signal(signal.SIGKILL)
            await asyncio.to_thread(processes[killed[0]].wait, 10)

            # 2. restart RabbitMQ under the survivors
            await asyncio.to_thread(_rabbitmqctl, "stop_app")
            await asyncio.sleep(1)
            await asyncio.to_thread(_rabbitmqctl, "start_app")

            # 3. the member base catches up with both shops
            async def caught_up() -> bool:
                return await _orders_match(tongcrm_db, taobao_truth, jd_truth)

            await _until(caught_up, "the orders to equal both shops' truth", deadline)

            async def relayed() -> bool:
                async with tongcrm_db.sessions() as session:
                    undispatched = (
                        await session.execute(
                            sa.select(sa.func.count())
                            .select_from(OutboxEvent)
                            .where(OutboxEvent.dispatched_at.is_(None))
                        )
                    ).scalar_one()
                    pending = (
                        await session.execute(
                            sa.select(sa.func.count())
                            .select_from(EventDelivery)
                            .where(EventDelivery.status != "done")
                        )
                    ).scalar_one()
                    stuck = (
                        await session.execute(
                            sa.select(sa.func.count())
                            .select_from(Job)
                            .where(Job.name == "ingest.sync_account", Job.status != "done")
                        )
                    ).scalar_one()
                return undispatched == 0 and pending == 0 and stuck == 0

            try:
                await _until(relayed, "every event delivered and every sync job done", deadline)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {await _unfinished(tongcrm_db)}") from None
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {admin_key}"})
            assert metrics.status_code == 200 and "tongcrm_outbox_backlog 0.0" in metrics.text
            verify = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tongcrm", "verify"],
                env=cluster_env,
                capture_output=True,
                timeout=60,
            )
            assert verify.returncode == 0, verify.stderr[-2000:]
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.terminate()
            for process in processes.values():
                try:
                    await asyncio.to_thread(process.wait, 20)
                except subprocess.TimeoutExpired:
                    process.kill()
            queue = cluster_env["TONGCRM_JOBS_QUEUE"]
            for name in (queue, f"{queue}.dead"):  # durable queues outlive the test otherwise
                await asyncio.to_thread(
                    subprocess.run, ["rabbitmqctl", "delete_queue", name], capture_output=True, check=False
                )


async def _orders_match(db: TestDatabase, *truths: Callable[[], tuple[dict[str, str], int]]) -> bool:
    async with db.sessions() as session:
        stored = {
            r.external_id: r.platform_status
            for r in (await session.execute(sa.select(Order.external_id, Order.platform_status))).all()
        }
        lines = (await session.execute(sa.select(sa.func.count()).select_from(OrderLine))).scalar_one()
    expected: dict[str, str] = {}
    line_count = 0
    for truth in truths:
        statuses, count = truth()
        expected |= statuses
        line_count += count
    return stored == expected and lines == line_count


async def _stamp_heads(db: TestDatabase, host: PluginHost) -> None:
    from alembic import command
    from tongcrm.db import migrate

    cfg = migrate.alembic_config(db.url, host)

    def stamp(connection: sa.Connection) -> None:
        cfg.attributes["connection"] = connection
        command.stamp(cfg, "heads")

    async with db.engine.begin() as conn:
        await conn.run_sync(stamp)


async def _unfinished(db: TestDatabase) -> dict[str, Any]:
    async with db.sessions() as session:
        jobs = (
            await session.execute(
                sa.select(
                    Job.id, Job.name, Job.status, Job.attempts, Job.locked_by, Job.run_at, Job.last_error
                )
                .where(Job.status != "done", Job.name.not_in(["ingest.push_all"]))
                .order_by(Job.id)
            )
        ).all()
        deliveries = (
            await session.execute(
                sa.select(EventDelivery.plugin, EventDelivery.status, sa.func.count()).group_by(
                    EventDelivery.plugin, EventDelivery.status
                )
            )
        ).all()
        undispatched = (
            await session.execute(
                sa.select(sa.func.count()).select_from(OutboxEvent).where(OutboxEvent.dispatched_at.is_(None))
            )
        ).scalar_one()
    return {
        "jobs": [tuple(str(v)[:200] for v in row) for row in jobs][:20],
        "deliveries": [tuple(row) for row in deliveries],
        "undispatched": undispatched,
    }
