"""A real ``tongcrm sync`` process killed with SIGKILL mid-run, then restarted: nothing lost, nothing doubled.

The fake TOP gateway runs in this test process on 127.0.0.1; the sync runs in a subprocess against the test
database, exactly as an operator would run it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.platforms import jd_platform, taobao_platform
from tongcrm.testing.servers import serve_in_thread

SECRET = "sigkill-test-secret-0123456789"
LEASE_SECONDS = 2


async def _orders(db: TestDatabase) -> int:
    async with db.sessions() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(Order))).scalar_one()


def _sync(db: TestDatabase) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "TONGCRM_DATABASE_URL": db.url,
        "TONGCRM_SECRET_KEY": SECRET,
        "TONGCRM_LOG_JSON": "1",
        "TONGCRM_SYNC_LEASE_SECONDS": str(LEASE_SECONDS),
        "TONGCRM_DISABLE_PLUGINS": "",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tongcrm", "sync", "--account", "shop"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("channel", ["taobao", "jd"])
async def test_sigkill_mid_sync_then_restart_loses_and_duplicates_nothing(
    tongcrm_db: TestDatabase, channel: str
) -> None:
    if channel == "taobao":  # every call a little slow, so the kill lands mid-run
        app, settings, expected = taobao_platform(trades=1_200, slow_seconds=0.03)
    else:
        app, settings, expected = jd_platform(orders=1_200, slow_seconds=0.1)
    total = len(expected()[0])
    with serve_in_thread(app) as url:
        path = settings.pop("_path")
        async with tongcrm_db.sessions() as session, session.begin():
            await accounts.create_account(
                session,
                PluginHost(autoload=True, disabled=set()),
                Vault(SECRET),
                channel,
                "shop",
                {**settings, "gateway_url": f"{url}{path}"},
            )
        first = _sync(tongcrm_db)
        deadline = time.monotonic() + 60
        # kill once some pages are committed (JD pages are whole time windows, so fewer and larger)
        while await _orders(tongcrm_db) < (200 if channel == "taobao" else 1):
            assert first.poll() is None, f"sync ended before it could be killed: {first.communicate()}"
            assert time.monotonic() < deadline, "sync made no progress"
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        assert first.returncode == -signal.SIGKILL
        partial = await _orders(tongcrm_db)
        assert 0 < partial < total

        await asyncio.sleep(LEASE_SECONDS + 0.5)  # the dead worker's lease lapses
        second = _sync(tongcrm_db)
        _out, err = await asyncio.to_thread(second.communicate, timeout=180)
        assert second.returncode == 0, err[-2000:]

    async with tongcrm_db.sessions() as session:
        stored = {
            r.external_id: r.platform_status
            for r in (await session.execute(sa.select(Order.external_id, Order.platform_status))).all()
        }
        lines = (await session.execute(sa.select(sa.func.count()).select_from(OrderLine))).scalar_one()
    statuses, line_count = expected()
    assert stored == statuses
    assert lines == line_count
