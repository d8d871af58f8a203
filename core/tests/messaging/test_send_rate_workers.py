"""Three ``tongcrm jobs worker`` processes send one campaign through the fake Aliyun gateway: its messages
fall due in waves of two seconds' worth of the account's send rate, each wave with a dispatch job of its own,
so the dispatch runs hop from worker to worker, each with a fresh messenger: only the window in the database
carries the rate from one to the next. The gateway's meter must never see more than the rate in any one
second, every message must arrive exactly once, and more than one worker must have sent.

One dispatcher runs at a time (the ``messaging.dispatch`` lease keeps fatigue budgets exact), so workers take
turns rather than send at once; two processes drawing from one window at the same moment is
``test_send_rate.py::test_two_processes_sending_at_once_share_one_window``.

A wave falls due once the run that sent the one before has ended (its ``messages dispatched`` line), at once,
so that the next run, in whichever worker, starts inside the last one's window. Waves used to fall due on a
fixed clock, four seconds apart: on a loaded machine a run sent more slowly than waves fell due, and as a run
goes on while messages are due, the first run sent the whole campaign and no run hopped (``{'worker-2': 1}``).

Needs PostgreSQL and RabbitMQ on 127.0.0.1 (skipped saying which is missing); bounded to about two minutes.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from messaging_kit import SECRET_KEY, Clock, World, fake_gateway, sms_host
from tongcrm.config import Settings
from tongcrm.jobs.queue import enqueue
from tongcrm.messaging import service
from tongcrm.messaging.jobs import DISPATCH
from tongcrm.messaging.models import Message
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.broker import broker_reachable
from tongcrm.testing.cluster import cluster, cluster_env, noon_zone, stamp_heads, until
from tongcrm.testing.database import TestDatabase

RATE = 3
WAVES = 6
PER_WAVE = 2 * RATE  # two seconds' worth: half of a wave goes at once, half a second later
WORKERS = 3
#: seconds for the sending once every process is up (starting them takes long on a loaded 2-core machine)
DEADLINE = 120.0
STARTUP = 120.0


@pytest.mark.slow(seconds=25)
async def test_three_workers_sending_one_campaign_hold_the_gateways_rate(
    tongcrm_db: TestDatabase, tmp_path: Path
) -> None:
    if tongcrm_db.backend != "postgresql":
        pytest.skip("worker processes share one database: PostgreSQL (SQLite is one machine's file)")
    if (reason := await broker_reachable()) is not None:
        pytest.skip(reason)
    wall = Clock(datetime.now(UTC))
    world = World(
        tongcrm_db.sessions,
        Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(),
        sms_host(),
        wall,
    )
    env = cluster_env(tongcrm_db, SECRET_KEY, TONGCRM_TIMEZONE=noon_zone(datetime.now(UTC)))
    with fake_gateway(wall) as (fake, url), cluster(env, tmp_path) as running:
        await world.setup(url, max_send_rate=str(RATE))
        members = [await world.member(i) for i in range(WAVES * PER_WAVE)]
        await stamp_heads(tongcrm_db, PluginHost(autoload=True, disabled=set()))
        started = time.monotonic()
        ports = [running.worker(f"worker-{n}") for n in range(WORKERS)]
        running.start("scheduler", "jobs", "scheduler")
        running.wait_healthy(ports, started + STARTUP)
        started = time.monotonic()
        async with tongcrm_db.sessions() as session:
            promo = await service.get_template(session, "promo")

        async def sent() -> int:
            async with tongcrm_db.sessions() as session:
                statuses = Counter((await session.execute(sa.select(Message.status))).scalars())
            return statuses["sent"] + statuses["delivered"]

        def runs_that_sent() -> int:
            return sum(
                1
                for name in (f"worker-{n}" for n in range(WORKERS))
                for line in running.log_lines(name)
                if line.get("event") == "messages dispatched" and line.get("sent")
            )

        try:
            for wave in range(WAVES):
                due = datetime.now(UTC)
                targets = [service.Target(m) for m in members[wave * PER_WAVE : (wave + 1) * PER_WAVE]]
                async with tongcrm_db.sessions() as session, session.begin():
                    await service.queue_messages(session, "campaign.workers", promo, targets, not_before=due)
                    await enqueue(session, DISPATCH, {}, run_at=due, unique_key=f"rate-test:{wave}")

                async def wave_sent(wave: int = wave) -> bool:
                    return await sent() == (wave + 1) * PER_WAVE and runs_that_sent() > wave

                await until(wave_sent, f"wave {wave} to be sent by a run that has ended", started + DEADLINE)
        finally:
            running.stop()
            await running.delete_queues()
        senders = Counter(
            name
            for name in (f"worker-{n}" for n in range(WORKERS))
            for line in running.log_lines(name)
            if line.get("event") == "messages dispatched" and line.get("sent")
        )
    assert fake.meter.total == WAVES * PER_WAVE  # each message arrived once
    assert fake.meter.max_in_window(1.0) <= RATE, fake.meter.max_in_window(1.0)
    assert len(senders) >= 2, f"dispatch runs that sent, by worker: {dict(senders)}"
