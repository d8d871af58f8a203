"""An endpoint that fails for days is disabled and tells why; dead letters are replayed in bulk; finished
messages past their retention are swept. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from tongcrm.jobs.runner import Runner
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.store import PluginStore
from tongcrm.testing.database import TestDatabase
from tongcrm_webhooks import service
from tongcrm_webhooks.models import ATTEMPTS, DELIVERIES, MESSAGES

from .conftest import Clock, Receiver, drain
from .test_delivery import _emit as emit_events
from .test_delivery import _pass_retry_delay as pass_retry_delay


async def _emit(db: TestDatabase, order_id: int) -> None:
    await emit_events(db, ("order_changed", {"order_id": order_id, "status": "paid"}))


async def _until_dead(runner: Runner, clock: Clock) -> None:
    """Let every retry come due (the schedule spans about nine hours)."""
    for attempts in range(1, service.MAX_ATTEMPTS):
        await pass_retry_delay(runner, clock, attempts)


async def test_an_endpoint_failing_for_five_days_is_disabled_and_its_deliveries_wait(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    created = await service.create_endpoint(store, url=receiver_url, event_types=["order.changed"])
    endpoint_id = created.endpoint.id
    receiver.fail_always = True
    started = clock()
    await _emit(tongcrm_db, 1)
    await drain(runner)
    failing = await service.get_endpoint(store, endpoint_id)
    assert failing.enabled and failing.failing_since == started and failing.disabled_reason is None

    for day in range(1, 5):  # a new event each day, each failing: still enabled within five days
        clock.advance(days=1)
        await _emit(tongcrm_db, 100 + day)
        await drain(runner)
    assert (await service.get_endpoint(store, endpoint_id)).enabled

    clock.advance(days=1, hours=1)
    await _emit(tongcrm_db, 200)
    await drain(runner)
    disabled = await service.get_endpoint(store, endpoint_id)
    assert not disabled.enabled and disabled.disabled_reason == "every attempt failed for 5 days"
    sent = len(receiver.requests)
    pending = await service.list_deliveries(
        store, endpoint_id=endpoint_id, status="pending", after=None, limit=50
    )
    assert pending, "the deliveries that were still being retried wait"
    clock.advance(hours=12)
    await drain(runner)
    assert len(receiver.requests) == sent, "a disabled endpoint gets nothing, retries included"

    # the receiver is fixed and an admin enables the endpoint again: the streak ends and what waited is sent
    receiver.fail_always = False
    enabled = await service.update_endpoint(store, endpoint_id, {"enabled": True})
    assert enabled.enabled and enabled.failing_since is None and enabled.disabled_reason is None
    await drain(runner)
    after = await service.list_deliveries(
        store, endpoint_id=endpoint_id, status="pending", after=None, limit=50
    )
    assert after == []
    assert {r.headers["webhook-id"] for r in receiver.requests[sent:]} == {d.message_id for d in pending}


async def test_a_success_ends_the_failure_streak(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    created = await service.create_endpoint(store, url=receiver_url, event_types=["order.changed"])
    receiver.fail_next = 1
    await _emit(tongcrm_db, 1)
    await drain(runner)
    assert (await service.get_endpoint(store, created.endpoint.id)).failing_since is not None
    clock.advance(seconds=10)
    await drain(runner)
    assert (await service.get_endpoint(store, created.endpoint.id)).failing_since is None


async def test_dead_letters_are_replayed_in_bulk_once(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
    make_client: Callable[..., Any],
    host: PluginHost,
) -> None:
    created = await service.create_endpoint(store, url=receiver_url, event_types=["order.changed"])
    endpoint_id = created.endpoint.id
    receiver.fail_always = True
    await _emit(tongcrm_db, 1)
    await drain(runner)
    await _until_dead(runner, clock)
    clock.advance(hours=1)
    second_from = clock()
    await _emit(tongcrm_db, 2)
    await drain(runner)
    await _until_dead(runner, clock)
    dead = await service.list_deliveries(store, endpoint_id=endpoint_id, status="dead", after=None, limit=10)
    assert len(dead) == 2
    receiver.fail_always = False

    assert await service.replay_dead(store, endpoint_id, since=second_from) == 1  # only the later one
    async with make_client(host=host, role="operator") as operator:
        url = f"/api/webhooks/endpoints/{endpoint_id}/replay-dead"
        naive = await operator.post(url, json={"since": "2026-12-01T00:00:00"})
        assert naive.status_code == 400 and "since" in naive.text
        assert (await operator.post("/api/webhooks/endpoints/999/replay-dead", json={})).status_code == 404
        everything = await operator.post(url, json={})
        assert everything.status_code == 200 and everything.json() == {"replayed": 1}
        assert (await operator.post(url, json={})).json() == {"replayed": 0}  # nothing is dead now
    async with make_client(host=host, role="analyst") as analyst:
        assert (await analyst.post(url, json={})).status_code == 403
    clock.now = max(clock.now, datetime.now(UTC)) + timedelta(minutes=1)  # the app replayed on the wall clock
    await drain(runner)
    delivered = await service.list_deliveries(
        store, endpoint_id=endpoint_id, status="delivered", after=None, limit=10
    )
    assert sorted(d.replays for d in delivered) == [1, 1]


async def test_finished_messages_past_their_retention_are_swept(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    await service.create_endpoint(store, url=receiver_url, event_types=["order.changed"])
    await _emit(tongcrm_db, 1)  # delivered at once
    await drain(runner)
    receiver.fail_always = True
    await _emit(tongcrm_db, 2)  # dead after nine hours
    await drain(runner)
    await _until_dead(runner, clock)
    clock.advance(days=20)
    await _emit(tongcrm_db, 3)  # fails: the endpoint is disabled (failing since day 0), so it stays pending
    await drain(runner)
    clock.advance(days=11)
    await _emit(tongcrm_db, 4)  # recent
    await drain(runner)  # the hourly webhooks.prune job runs in here

    async with tongcrm_db.sessions() as session:
        bodies = (await session.execute(sa.select(MESSAGES.c.body))).scalars().all()
        orphans = await session.execute(
            sa.select(sa.func.count())
            .select_from(ATTEMPTS)
            .where(~ATTEMPTS.c.delivery_id.in_(sa.select(DELIVERIES.c.id)))
        )
        assert orphans.scalar_one() == 0
    # the message still pending (however old) and the recent one stay; the delivered and the dead one went
    assert sorted(json.loads(b)["data"]["order_id"] for b in bodies) == [3, 4]
    assert await service.prune(store) == 0  # nothing more to sweep
    [pending] = await service.list_deliveries(store, endpoint_id=None, status=None, after=None, limit=10)
    assert pending.status == "pending"
