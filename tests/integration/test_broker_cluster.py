"""Broker mode end to end: one scheduler, two workers and one API process on PostgreSQL and RabbitMQ.

A Taobao and a JD fake shop (served in this test process) are synced by the workers while one worker is
SIGKILLed mid-job, and a campaign is sent through the fake Aliyun gateway. Afterwards the member base's orders
equal the fakes' truth, every campaign message was sent and the gateway received each exactly once, every
outbox event has been fanned out and no delivery is pending, no job is stuck, the API answers ``/metrics``
and ``tongcrm verify`` is clean.

Two variants of the one scenario:

- the full system test also restarts the machine's RabbitMQ (``rabbitmqctl stop_app``/``start_app``) mid-way,
  with 250-order shops, so it runs only when asked: ``TONGCRM_SYSTEM_TEST=1``;
- the bounded one runs in the normal suite whenever RabbitMQ answers on 127.0.0.1 (it is skipped saying why
  otherwise): small shops, no broker restart (other work shares the machine's RabbitMQ), every process
  stopped at the latest 60 s after they are all up.

Both bounds (240 s for the full one) hold when the processes start as fast as on a moderately loaded machine;
a slower start-up, measured in the test, stretches them in proportion, to at most three times
(:func:`scenario_bound`).

Both need PostgreSQL (SQLite has one writer).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.auth.service import create_key
from tongcrm.channels import service as accounts
from tongcrm.consent.service import record_consent
from tongcrm.crypto import Vault
from tongcrm.jobs.models import EventDelivery, Job, OutboxEvent
from tongcrm.members.service import create_member
from tongcrm.messaging import service as messaging
from tongcrm.messaging.jobs import request_dispatch
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.broker import broker_reachable
from tongcrm.testing.cluster import Cluster, cluster, cluster_env, free_port, noon_zone, stamp_heads, until
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.platforms import jd_platform, taobao_platform
from tongcrm.testing.servers import serve_in_thread
from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate

SECRET = "cluster-test-secret-0123456789"
SMS_KEY, SMS_SECRET, SIGN, PROMO = "LTAI-cluster", "cluster-sms-secret", "通通会员", "SMS_700001"


@dataclass(frozen=True, slots=True)
class Scenario:
    trades: int
    jd_orders: int
    taobao_slow: float
    jd_slow: float
    messages: int
    restart_broker: bool
    #: seconds for the scenario once the processes run, on a machine where they started in
    #: :data:`CALM_STARTUP` seconds; see :func:`scenario_bound`
    deadline: float


FULL = Scenario(250, 250, 0.05, 0.15, messages=40, restart_broker=True, deadline=240.0)
BOUNDED = Scenario(20, 20, 0.05, 0.1, messages=6, restart_broker=False, deadline=60.0)
#: starting Python processes that import tongcrm takes long on a loaded machine; not part of the bound
STARTUP = 120.0
#: seconds the scheduler, two workers and the API take to all answer ``/health`` on the shared 2-core machine
#: at a moderate load (8.8 s at load 3.3, 6 December 2026, when the bounded scenario then took 18 s of its 60);
#: the scenario's bound is :attr:`Scenario.deadline` at this start-up or faster
CALM_STARTUP = 10.0
#: the most the bound grows on a slow machine: a scenario that hangs still fails in bounded time
MAX_SLOWDOWN = 3.0


def scenario_bound(plan: Scenario, startup: float) -> float:
    """The scenario's bound, scaled to how long its processes took to start. Starting them is CPU work
    (importing tongcrm, connecting) done on the same cores the scenario then runs on, so it measures how loaded
    the machine is right now: a start-up twice as slow as :data:`CALM_STARTUP` doubles the bound, instead of a
    fixed bound turning heavier load into a failure. Never below the plan's deadline, never above
    :data:`MAX_SLOWDOWN` times it."""
    return plan.deadline * min(MAX_SLOWDOWN, max(1.0, startup / CALM_STARTUP))


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


async def _needs_cluster(db: TestDatabase) -> None:
    if not db.url.startswith("postgresql"):
        pytest.skip("broker mode is for PostgreSQL: SQLite has one writer")
    if (reason := await broker_reachable()) is not None:
        pytest.skip(reason)


@pytest.mark.slow
async def test_two_shops_and_a_campaign_through_a_worker_kill_and_a_broker_restart(
    tongcrm_db: TestDatabase, tmp_path: Path
) -> None:
    if os.environ.get("TONGCRM_SYSTEM_TEST") != "1":
        pytest.skip("restarts RabbitMQ: run with TONGCRM_SYSTEM_TEST=1")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    await _needs_cluster(tongcrm_db)
    await _scenario(tongcrm_db, tmp_path, FULL)


async def test_bounded_cluster_syncs_two_shops_and_sends_a_campaign_through_a_worker_kill(
    tongcrm_db: TestDatabase, tmp_path: Path
) -> None:
    await _needs_cluster(tongcrm_db)
    await _scenario(tongcrm_db, tmp_path, BOUNDED)


async def _scenario(db: TestDatabase, logs: Path, plan: Scenario) -> None:
    taobao_app, taobao_settings, taobao_truth = taobao_platform(
        trades=plan.trades, slow_seconds=plan.taobao_slow
    )
    jd_app, jd_settings, jd_truth = jd_platform(orders=plan.jd_orders, slow_seconds=plan.jd_slow)
    sms = FakeAliyun(
        access_keys={SMS_KEY: SMS_SECRET},
        signatures={SIGN},
        templates=[FakeTemplate(PROMO, frozenset(), "promotion")],
    )
    port = free_port()
    env = cluster_env(db, SECRET, TONGCRM_TIMEZONE=noon_zone(datetime.now(UTC)))
    with (
        serve_in_thread(taobao_app) as taobao_url,
        serve_in_thread(jd_app) as jd_url,
        serve_in_thread(sms.app) as sms_url,
        cluster(env, logs) as running,
    ):
        host = PluginHost(autoload=True, disabled=set())
        vault = Vault(SECRET)
        async with db.sessions() as session, session.begin():
            for channel, name, settings, url in (
                ("taobao", "tb-shop", taobao_settings, taobao_url),
                ("jd", "jd-shop", jd_settings, jd_url),
            ):
                path = settings.pop("_path")
                await accounts.create_account(
                    session, host, vault, channel, name, {**settings, "gateway_url": f"{url}{path}"}
                )
            admin_key = (await create_key(session, "admin")).key
            campaign = await _campaign_audience(session, host, vault, sms_url, plan.messages)
        await stamp_heads(db, host)  # the fixture built the schema from the models; serve checks it
        try:
            started = time.monotonic()
            running.start("scheduler", "jobs", "scheduler")
            health = [running.worker("worker-a", concurrency=8), running.worker("worker-b", concurrency=8)]
            running.start("api", "serve", "--no-jobs", "--port", str(port))
            running.wait_healthy([*health, port], started + STARTUP)
            startup = time.monotonic() - started
            bound = scenario_bound(plan, startup)
            print(f"processes up in {startup:.1f} s: the scenario's bound is {bound:.0f} s")
            deadline = time.monotonic() + bound
            await _kill_a_syncing_worker(db, running, deadline)

            # a campaign goes out while the survivor works (and, in the full test, across the broker restart)
            async with db.sessions() as session, session.begin():
                promo = await messaging.get_template(session, "promo")
                targets = [messaging.Target(member) for member in campaign]
                assert (
                    await messaging.queue_messages(session, "campaign.cluster", promo, targets)
                    == plan.messages
                )
                await request_dispatch(session, datetime.now(UTC))
            if plan.restart_broker:
                await asyncio.to_thread(_rabbitmqctl, "stop_app")
                await asyncio.sleep(1)
                await asyncio.to_thread(_rabbitmqctl, "start_app")

            async def caught_up() -> bool:
                return await _orders_match(db, taobao_truth, jd_truth)

            await until(caught_up, "the orders to equal both shops' truth", deadline)

            async def campaign_sent() -> bool:
                async with db.sessions() as session:
                    statuses = Counter(
                        (
                            await session.execute(
                                sa.select(Message.status).where(Message.flow == "campaign.cluster")
                            )
                        ).scalars()
                    )
                return statuses["sent"] + statuses["delivered"] == plan.messages

            await until(campaign_sent, "every campaign message to be sent", deadline)
            assert sms.meter.total == plan.messages  # the gateway received each message exactly once

            try:
                await until(lambda: _relayed(db), "every event delivered and every sync job done", deadline)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {await _unfinished(db)}") from None
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {admin_key}"})
            assert metrics.status_code == 200 and "tongcrm_outbox_backlog 0.0" in metrics.text
            verify = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tongcrm", "verify"],
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert verify.returncode == 0, verify.stderr[-2000:]
            took = bound - (deadline - time.monotonic())
            print(f"scenario took {took:.0f} s of its {bound:.0f} s bound")
        finally:
            running.stop()
            await running.delete_queues()


async def _campaign_audience(
    session: Any, host: PluginHost, vault: Vault, sms_url: str, count: int
) -> list[int]:
    """An Aliyun account on the fake gateway, a marketing template, and ``count`` members who opted in."""
    await messaging.create_account(
        session,
        host,
        vault,
        "aliyun_sms",
        "sms",
        {
            "access_key_id": SMS_KEY,
            "access_key_secret": SMS_SECRET,
            "endpoint": f"{sms_url}/",
            "max_send_rate": "20",
        },
    )
    await messaging.create_template(
        session,
        name="promo",
        account="sms",
        purpose="marketing",
        signature=SIGN,
        template_code=PROMO,
        text="双十一会员专享，拒收请回复R",
    )
    members = []
    for n in range(count):
        member = await create_member(
            session, vault, {"name": f"会员{n}", "mobile": f"+86137{n:08d}"}, [], SYSTEM
        )
        await record_consent(session, member.id, "marketing", "opt_in", source="test")
        members.append(member.id)
    return members


async def _kill_a_syncing_worker(db: TestDatabase, running: Cluster, deadline: float) -> None:
    """SIGKILL whichever worker is running a sync, some pages in."""
    pids = {running.processes[w].pid: w for w in ("worker-a", "worker-b")}
    killed: list[str] = []

    async def a_sync_is_running() -> bool:
        async with db.sessions() as session:
            holders = (
                await session.execute(
                    sa.select(Job.locked_by).where(Job.name == "ingest.sync_account", Job.status == "running")
                )
            ).scalars()
            for holder in holders:
                pid = int((holder or "::").split(":")[1] or 0)
                if pid in pids:
                    killed.append(pids[pid])
                    return True
        return False

    await until(a_sync_is_running, "a worker to start a sync", deadline)
    await asyncio.sleep(0.5)  # some pages in
    running.processes[killed[0]].send_signal(signal.SIGKILL)
    await asyncio.to_thread(running.processes[killed[0]].wait, 10)


async def _relayed(db: TestDatabase) -> bool:
    async with db.sessions() as session:
        undispatched = (
            await session.execute(
                sa.select(sa.func.count()).select_from(OutboxEvent).where(OutboxEvent.dispatched_at.is_(None))
            )
        ).scalar_one()
        pending = (
            await session.execute(
                sa.select(sa.func.count()).select_from(EventDelivery).where(EventDelivery.status != "done")
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


def test_the_bound_grows_with_a_slow_start_up_within_its_ceiling() -> None:
    assert scenario_bound(FULL, CALM_STARTUP / 2) == FULL.deadline
    assert scenario_bound(FULL, CALM_STARTUP * 1.5) == FULL.deadline * 1.5
    assert scenario_bound(FULL, CALM_STARTUP * 100) == FULL.deadline * MAX_SLOWDOWN
