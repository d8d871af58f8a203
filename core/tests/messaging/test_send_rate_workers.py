"""Three ``tongcrm jobs worker`` processes send one campaign through the fake Aliyun gateway: its messages
fall due in waves of two seconds' worth of the account's send rate, each wave with a dispatch job of its own,
so the dispatch runs hop from worker to worker, each with a fresh messenger: only the window in the database
carries the rate from one to the next. The gateway's meter must never see more than the rate in any one
second, every message must arrive exactly once, and more than one worker must have sent.

One dispatcher runs at a time (the ``messaging.dispatch`` lease keeps fatigue budgets exact), so workers take
turns rather than send at once; two processes drawing from one window at the same moment is
``test_send_rate.py::test_two_processes_sending_at_once_share_one_window``.

Needs PostgreSQL and RabbitMQ on 127.0.0.1 (skipped saying which is missing); bounded to about a minute.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
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
#: One dispatcher runs at a time (its lease) and a run goes on while messages are due, so waves are far enough
#: apart for each run to end (on a loaded machine a wave's run takes two seconds): each wave's job then goes to
#: whichever worker the broker hands it, and the runs hop between workers, each with a fresh messenger.
WAVE_SECONDS = 4.0
WORKERS = 3
#: seconds for the sending once every process is up (starting them takes long on a loaded 2-core machine)
DEADLINE = 60.0
STARTUP = 120.0


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
        first = datetime.now(UTC) + timedelta(seconds=2)
        async with tongcrm_db.sessions() as session, session.begin():
            promo = await service.get_template(session, "promo")
            for wave in range(WAVES):
                due = first + timedelta(seconds=wave * WAVE_SECONDS)
                targets = [service.Target(m) for m in members[wave * PER_WAVE : (wave + 1) * PER_WAVE]]
                await service.queue_messages(session, "campaign.workers", promo, targets, not_before=due)
                await enqueue(session, DISPATCH, {}, run_at=due, unique_key=f"rate-test:{wave}")

        async def all_sent() -> bool:
            async with tongcrm_db.sessions() as session:
                statuses = Counter((await session.execute(sa.select(Message.status))).scalars())
            return statuses["sent"] + statuses["delivered"] == WAVES * PER_WAVE

        try:
            await until(all_sent, "every message of the campaign to be sent", started + DEADLINE)
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
