"""The configured send rate holds across dispatcher runs and across processes (the window is in the database),
measured by the fake gateway's meter of arrivals in any one second."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from messaging_kit import PROMO, SECRET_KEY, SIGN, Clock, World, beijing, fake_gateway, sms_host
from tongcrm.config import Settings
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.messaging import service
from tongcrm.messaging.models import SendGrant
from tongcrm.messaging.ratewindow import DatabaseRateGate
from tongcrm.plugin.types import OutboundMessage, SendOutcome
from tongcrm.testing.database import TestDatabase
from tongcrm_sms_gateway import plugin as sms_plugin

pytestmark = pytest.mark.asyncio

RATE = 4


def world(db: TestDatabase, clock: Clock) -> World:
    return World(db.sessions, Settings(database_url=db.url, secret_key=SECRET_KEY).vault(), sms_host(), clock)


async def test_back_to_back_dispatcher_runs_never_exceed_the_rate(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url, max_send_rate=str(RATE))
        members = [await w.member(i) for i in range(3 * RATE)]
        async with w.sessions() as session, session.begin():
            promo = await service.get_template(session, "promo")
            await service.queue_messages(
                session, "campaign.rate", promo, [service.Target(m) for m in members], now=clock()
            )
        started = time.monotonic()
        for _ in range(3):  # three runs, each a fresh dispatcher and messenger, one batch of RATE each
            stats = await w.dispatcher(batch=RATE).run(max_batches=1)
            assert stats.sent == RATE
        elapsed = time.monotonic() - started
    assert fake.meter.total == 3 * RATE
    assert fake.meter.max_in_window(1.0) <= RATE
    assert elapsed >= 2.0  # the second and third runs waited for the window the first ones filled


async def test_two_processes_sending_at_once_share_one_window(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url, max_send_rate=str(RATE))
        async with w.sessions() as session:
            (account,) = await service.list_accounts(session)
        # a second "process": its own engine and connections on the same database
        other_engine = create_engine(tongcrm_db.url)
        try:
            messengers = [
                sms_plugin.ALIYUN_SMS.factory(
                    service.messenger_context(
                        account, w.vault, clock, rate_gate=DatabaseRateGate(sessions, account.id)
                    )
                )
                for sessions in (w.sessions, session_factory(other_engine))
            ]

            def batch(offset: int) -> list[OutboundMessage]:
                return [
                    OutboundMessage(f"{offset + i}", f"+86139{offset + i:08d}", SIGN, PROMO, {})
                    for i in range(RATE + 2)
                ]

            results = await asyncio.gather(messengers[0].send(batch(0)), messengers[1].send(batch(100)))
            for messenger in messengers:
                await messenger.aclose()
        finally:
            await other_engine.dispose()
    assert all(r.outcome is SendOutcome.SENT for rs in results for r in rs)
    assert fake.meter.total == 2 * (RATE + 2)
    assert fake.meter.max_in_window(1.0) <= RATE
    async with w.sessions() as session:
        grants = (await session.execute(sa.select(SendGrant.permits))).scalars().all()
    assert sum(grants) == 2 * (RATE + 2)  # every request drew from the one shared window


async def test_gate_refuses_impossible_requests_and_forgets_old_grants(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (_, url):
        await w.setup(url)
    async with w.sessions() as session:
        (account,) = await service.list_accounts(session)
    gate = DatabaseRateGate(w.sessions, account.id)
    with pytest.raises(ValueError, match="permits"):
        await gate.acquire(5, rate=4, window=1.0)
    with pytest.raises(ValueError, match="rate"):
        await gate.acquire(1, rate=0, window=1.0)
    async with w.sessions() as session, session.begin():
        session.add(SendGrant(account_id=account.id, granted_at=clock(), permits=4))  # long ago
    await gate.acquire(4, rate=4, window=1.0)  # the old grant is outside the window: no wait
    async with w.sessions() as session:
        rows = (await session.execute(sa.select(SendGrant.granted_at))).scalars().all()
    assert len(rows) == 1 and rows[0] > clock()  # and it was deleted once out of retention


async def test_a_grant_in_flight_holds_its_permits_until_released(tongcrm_db: TestDatabase) -> None:
    """Permits count from the moment their request finished, not from the grant: a slow request must not
    arrive together with the next window's messages."""
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (_, url):
        await w.setup(url)
    async with w.sessions() as session:
        (account,) = await service.list_accounts(session)
    gate = DatabaseRateGate(w.sessions, account.id)
    first = await gate.acquire(4, rate=4, window=0.2)
    second = asyncio.create_task(gate.acquire(1, rate=4, window=0.2))
    await asyncio.sleep(0.5)  # two and a half windows later, the first request is still in flight
    assert not second.done()
    # read before releasing: the release is dated when its transaction runs, at or after this moment, however
    # long a loaded machine takes to commit it and hand control back (read after, it flaked under load)
    releasing = asyncio.get_running_loop().time()
    await first.release()
    granted = await asyncio.wait_for(second, timeout=5)
    waited = asyncio.get_running_loop().time() - releasing
    assert waited >= 0.15  # a window after the release, not before
    await granted.release()
    await first.release()  # releasing twice changes nothing
