"""No event lost across a SIGKILL: a real ``tongcrm jobs worker`` delivering webhooks is killed mid-run, then a
runner on the same database finishes (after the dead worker's claims expired). Every event reaches the
receiver — at least once, under the same ``webhook-id`` — and every delivery ends delivered.

The chain this exercises is all committed rows: outbox event → the plugin's event delivery → its
``webhooks.record`` job → message and deliveries → claimed, sent, settled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from tongcrm.config import Settings
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.runner import JobRegistry, Runner
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.store import PluginStore
from tongcrm.testing.database import TestDatabase
from tongcrm_webhooks import service
from tongcrm_webhooks.models import DELIVERIES

from .conftest import Receiver, drain

EVENTS = 60


def _worker(db: TestDatabase, settings: Settings, log: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "TONGCRM_DATABASE_URL": db.url,
        "TONGCRM_SECRET_KEY": settings.secret_key,
        "TONGCRM_LOG_JSON": "1",
        "TONGCRM_DISABLE_PLUGINS": "",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tongcrm", "jobs", "worker", "--poll", "0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # a file, not a pipe: a full pipe would stall the worker
        text=True,
    )


@pytest.mark.slow(seconds=30)
async def test_sigkill_mid_delivery_loses_no_event(
    tongcrm_db: TestDatabase,
    tongcrm_settings: Settings,
    host: PluginHost,
    receiver: Receiver,
    receiver_url: str,
    tmp_path: Path,
) -> None:
    store = PluginStore(tongcrm_db.sessions, tongcrm_settings.vault())
    await service.create_endpoint(store, url=receiver_url, event_types=["points.changed"])
    async with tongcrm_db.sessions() as session, session.begin():
        events = [
            emit(session, "points_changed", {"member_id": i, "delta": 10, "available": 10 * i, "pending": 0})
            for i in range(1, EVENTS + 1)
        ]
        await session.flush()
        expected = {service.message_id(e.id) for e in events}
    receiver.delay = 0.1  # a slow receiver: the kill lands while requests are in flight

    log = tmp_path / "worker.log"
    worker = _worker(tongcrm_db, tongcrm_settings, log)
    try:
        deadline = time.monotonic() + 120
        while len(receiver.requests) < 10:
            assert worker.poll() is None, f"the worker exited early: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the worker delivered nothing in time"
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    seen_at_kill = len(receiver.requests)
    assert seen_at_kill < EVENTS, "the worker finished before it was killed: nothing was tested"

    # a runner after the dead worker's claims and job locks expired
    later = datetime.now(UTC) + timedelta(hours=1)
    runner = Runner(
        tongcrm_db.sessions, host, JobRegistry(), clock=lambda: later, services={"settings": tongcrm_settings}
    )
    receiver.delay = 0.0
    await drain(runner, rounds=200)

    received = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(received) == expected, f"lost: {sorted(expected - set(received))[:5]}"
    async with tongcrm_db.sessions() as session:
        statuses = Counter((await session.execute(sa.select(DELIVERIES.c.status))).scalars())
    assert statuses == {"delivered": EVENTS}
    repeated = sum(n - 1 for n in received.values())
    print(f"sigkill: killed after {seen_at_kill} requests; {EVENTS} events delivered, {repeated} sent again")
