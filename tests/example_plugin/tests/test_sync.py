"""The example plugin as an operator uses it: ``tongcrm channel add example_mall …`` and ``tongcrm sync`` in a
subprocess (the plugin found through its entry point), against the fake mall on 127.0.0.1, on the test
database of each backend. Every order of the fake arrives once, with its lines and a member per buyer."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread
from tongcrm_example_mall.fake_server import FakeShop, create_app

SECRET_KEY = "example-plugin-test-key-0123456789"


def tongcrm(db: TestDatabase, *args: str) -> str:
    env = {
        **os.environ,
        "TONGCRM_DATABASE_URL": db.url,
        "TONGCRM_SECRET_KEY": SECRET_KEY,
        "TONGCRM_DISABLE_PLUGINS": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tongcrm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"tongcrm {' '.join(args[:2])} failed: {done.stdout}\n{done.stderr}"
    return done.stdout


async def test_sync_against_the_fake_mall(tongcrm_db: TestDatabase) -> None:
    shop = FakeShop.generate("mall-key", "mall-secret", count=90, buyers=30)
    assert "example_mall" in tongcrm(tongcrm_db, "plugins")
    with serve_in_thread(create_app(shop)) as url:
        tongcrm(
            tongcrm_db, "channel", "add", "example_mall", "--name", "mall",
            "--api-key", "mall-key", "--api-secret", "mall-secret", "--gateway-url", url, "--page-size", "20",
        )  # fmt: skip
        tongcrm(tongcrm_db, "sync", "--account", "mall")
        tongcrm(tongcrm_db, "sync", "--account", "mall")  # caught up: a second run changes nothing
    async with tongcrm_db.sessions() as session:
        orders = (await session.execute(sa.select(Order.external_id))).scalars().all()
        lines = (await session.execute(sa.select(sa.func.count()).select_from(OrderLine))).scalar_one()
        members = (await session.execute(sa.select(sa.func.count()).select_from(Member))).scalar_one()
    assert sorted(orders) == sorted(o["id"] for o in shop.orders)
    assert lines == sum(len(o["lines"]) for o in shop.orders)
    assert members == len({o["buyer_id"] for o in shop.orders})
