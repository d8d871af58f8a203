"""Events to endpoints through the core's outbox and job runner: signed, retried with backoff, dead-lettered,
replayed, signed twice during a secret rotation. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import itertools
import json

import sqlalchemy as sa
from tongcrm.config import Settings
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.runner import Runner
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.store import PluginStore
from tongcrm.testing.database import TestDatabase
from tongcrm_webhooks import service
from tongcrm_webhooks.models import DELIVERIES, MESSAGES

from .conftest import Clock, Receiver, drain
from .test_signing import verify


async def _emit(db: TestDatabase, *events: tuple[str, dict[str, object]]) -> None:
    async with db.sessions() as session, session.begin():
        for name, payload in events:
            emit(session, name, payload)


async def _pass_retry_delay(runner: Runner, clock: Clock, attempts: int) -> None:
    delay = service.RETRY_DELAYS[attempts - 1]
    clock.advance(seconds=delay.total_seconds() * 1.1 + 1)
    await drain(runner)


async def test_a_subscribed_event_arrives_signed_once(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    created = await service.create_endpoint(store, url=receiver_url, event_types=["points.changed"])
    endpoint, secret = created.endpoint, created.secret
    await _emit(
        tongcrm_db,
        ("points_changed", {"member_id": 7, "delta": 120, "available": 320, "pending": 0}),
        ("member_created", {"member_id": 8, "source": "admin"}),  # not subscribed
    )
    await drain(runner)
    [got] = receiver.requests
    verify(secret, got.headers, got.body, now=clock().timestamp())
    body = json.loads(got.body)
    assert body["type"] == "points.changed"
    assert body["data"] == {"member_id": 7, "delta": 120, "available": 320, "pending": 0}
    assert got.headers["webhook-id"] == body["id"] and body["id"].startswith("msg_")
    [delivery] = await service.list_deliveries(
        store, endpoint_id=endpoint.id, status=None, after=None, limit=10
    )
    assert (delivery.status, delivery.attempts, delivery.event_type) == ("delivered", 1, "points.changed")
    # the event is delivered to the plugin again (at least once): nothing is sent twice
    async with tongcrm_db.sessions() as session, session.begin():
        await session.execute(sa.text("UPDATE event_deliveries SET status = 'pending'"))
    await drain(runner)
    assert len(receiver.requests) == 1


async def test_a_receiver_failing_five_times_gets_the_event_later(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    created = await service.create_endpoint(store, url=receiver_url, event_types=["tier.changed"])
    _, secret = created.endpoint, created.secret
    receiver.fail_next = 5
    await _emit(
        tongcrm_db, ("tier_changed", {"member_id": 3, "from": "silver", "to": "gold", "reason": "upgrade"})
    )
    await drain(runner)
    for attempts in range(1, 6):
        assert len(receiver.requests) == attempts
        await _pass_retry_delay(runner, clock, attempts)
    assert len(receiver.requests) == 6
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1, "every attempt carries the same webhook-id"
    assert len({r.body for r in receiver.requests}) == 1, "every attempt sends the same body"
    last = receiver.requests[-1]
    verify(secret, last.headers, last.body, now=clock().timestamp())
    [delivery] = await service.list_deliveries(store, endpoint_id=None, status=None, after=None, limit=10)
    detail, log = await service.get_delivery(store, delivery.id)
    assert detail.status == "delivered" and detail.attempts == 6
    assert [a.status_code for a in log] == [500] * 5 + [200]
    gaps = [(b.attempted_at - a.attempted_at).total_seconds() for a, b in itertools.pairwise(log)]
    assert gaps == sorted(gaps), "the wait between attempts grows"


async def test_out_of_attempts_is_a_dead_letter_and_replay_delivers_it(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    await service.create_endpoint(store, url=receiver_url, event_types=["order.changed"])
    receiver.fail_always = True
    await _emit(tongcrm_db, ("order_changed", {"order_id": 11, "status": "paid"}))
    await drain(runner)
    for attempts in range(1, service.MAX_ATTEMPTS):
        await _pass_retry_delay(runner, clock, attempts)
    assert len(receiver.requests) == service.MAX_ATTEMPTS
    [dead] = await service.list_deliveries(store, endpoint_id=None, status="dead", after=None, limit=10)
    clock.advance(days=1)
    await drain(runner)
    assert len(receiver.requests) == service.MAX_ATTEMPTS, "a dead letter is not retried by itself"

    receiver.fail_always = False
    replayed, changed = await service.replay(store, dead.id)
    assert changed and replayed.status == "pending" and replayed.replays == 1
    again, changed_again = await service.replay(store, dead.id)  # a repeated request changes nothing
    assert not changed_again and again.replays == 1
    await drain(runner)
    detail, log = await service.get_delivery(store, dead.id)
    assert detail.status == "delivered"
    assert len(log) == service.MAX_ATTEMPTS + 1, "the log keeps the attempts before the replay"
    assert receiver.requests[-1].headers["webhook-id"] == receiver.requests[0].headers["webhook-id"]


async def test_rotation_signs_with_both_secrets_until_the_grace_ends(
    tongcrm_db: TestDatabase,
    store: PluginStore,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    from datetime import timedelta

    created = await service.create_endpoint(store, url=receiver_url, event_types=["member.created"])

    endpoint, old = created.endpoint, created.secret
    new, until = await service.rotate_secret(store, endpoint.id, timedelta(hours=1))
    assert until == clock() + timedelta(hours=1)
    assert (await service.get_endpoint(store, endpoint.id)).secrets_in_force == 2
    await _emit(tongcrm_db, ("member_created", {"member_id": 1, "source": "admin"}))
    await drain(runner)
    during = receiver.requests[-1]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    verify(old, during.headers, during.body, now=clock().timestamp())
    verify(new, during.headers, during.body, now=clock().timestamp())

    clock.advance(hours=1, seconds=1)
    await _emit(tongcrm_db, ("member_created", {"member_id": 2, "source": "admin"}))
    await drain(runner)
    after = receiver.requests[-1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    verify(new, after.headers, after.body, now=clock().timestamp())
    assert (await service.get_endpoint(store, endpoint.id)).secrets_in_force == 1


async def test_secrets_are_sealed_at_rest_and_disabled_endpoints_get_nothing(
    tongcrm_db: TestDatabase, store: PluginStore, runner: Runner, receiver: Receiver, receiver_url: str
) -> None:
    created = await service.create_endpoint(store, url=receiver_url, event_types=["message.status"])
    endpoint, secret = created.endpoint, created.secret
    async with tongcrm_db.sessions() as session:
        stored = (await session.execute(sa.text("SELECT secret_sealed FROM webhooks_secrets"))).scalar_one()
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    await service.update_endpoint(store, endpoint.id, {"enabled": False})
    await _emit(
        tongcrm_db, ("message_status", {"message_id": 5, "member_id": 1, "status": "sent", "code": "OK"})
    )
    await drain(runner)
    assert receiver.requests == []
    async with tongcrm_db.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(MESSAGES))).scalar_one() == 1
        assert (await session.execute(sa.select(sa.func.count()).select_from(DELIVERIES))).scalar_one() == 0


async def test_a_key_rotation_reseals_the_secrets_and_signing_goes_on(
    tongcrm_db: TestDatabase,
    tongcrm_settings: Settings,
    host: PluginHost,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    """The plugin declares its sealed column, so `tongcrm keys rotate` moves the secrets to the new key and the
    old key can leave: deliveries are still signed with the endpoint's secret under the new key alone."""
    from tongcrm import rotation
    from tongcrm.crypto import Vault
    from tongcrm.jobs.runner import JobRegistry

    old_key, new_key = tongcrm_settings.secret_key, "the-next-secret-key-0123456789abcdef"
    old_store = PluginStore(tongcrm_db.sessions, Vault(old_key), clock=clock)
    created = await service.create_endpoint(old_store, url=receiver_url, event_types=["points.changed"])
    both = Vault(new_key, [old_key])
    async with tongcrm_db.sessions() as session:
        usage = await rotation.key_usage(session, both, host)
    assert usage.by_store["webhook secrets"] == {Vault(old_key).kid: 1}
    report = await rotation.rotate(tongcrm_db.sessions, both, batch=1, host=host)
    assert report.moved["webhook secrets"] == 1 and not report.unreadable
    async with tongcrm_db.sessions() as session:
        usage = await rotation.key_usage(session, both, host)
    assert usage.by_store["webhook secrets"] == {both.kid: 1} and usage.left_on_old_keys() == 0

    only_new = dataclasses.replace(
        tongcrm_settings, secret_key=new_key, old_secret_keys=()
    )  # the old key is gone
    runner = Runner(tongcrm_db.sessions, host, JobRegistry(), clock=clock, services={"settings": only_new})
    await _emit(tongcrm_db, ("points_changed", {"member_id": 7, "delta": 1, "available": 1, "pending": 0}))
    await drain(runner)
    [got] = receiver.requests
    verify(created.secret, got.headers, got.body, now=clock().timestamp())
