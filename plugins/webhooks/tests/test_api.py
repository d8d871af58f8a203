"""The admin routes under /api/webhooks: who may do what, what a malformed request gets, and the dead-letter
replay over HTTP. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.runner import Runner
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm_webhooks import service

from .conftest import Clock, Receiver, drain

BASE = "/api/webhooks"


async def test_endpoints_crud_and_roles(make_client: Callable[..., Any], host: PluginHost) -> None:
    async with make_client(host=host, role="admin") as admin:
        created = await admin.post(
            f"{BASE}/endpoints",
            json={"url": "https://crm.example.com/hooks", "event_types": ["member.created"]},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["secret"].startswith("whsec_") and body["endpoint"]["secrets_in_force"] == 1
        endpoint_id = body["endpoint"]["id"]
        listed = (await admin.get(f"{BASE}/endpoints")).json()
        assert [e["id"] for e in listed] == [endpoint_id] and "secret" not in listed[0]
        changed = await admin.patch(f"{BASE}/endpoints/{endpoint_id}", json={"event_types": ["tier.changed"]})
        assert changed.status_code == 200 and changed.json()["event_types"] == ["tier.changed"]
        rotated = await admin.post(
            f"{BASE}/endpoints/{endpoint_id}/rotate-secret", json={"grace_seconds": 60}
        )
        assert rotated.status_code == 200 and rotated.json()["secret"] != body["secret"]
        assert (await admin.get(f"{BASE}/endpoints/{endpoint_id}")).json()["secrets_in_force"] == 2
        assert sorted((await admin.get(f"{BASE}/event-types")).json()) == sorted(service.KNOWN_TYPES)

    async with make_client(host=host, role="operator") as operator:
        refused = await operator.post(
            f"{BASE}/endpoints", json={"url": "https://evil.example.com/", "event_types": ["member.created"]}
        )
        assert refused.status_code == 403
        assert (await operator.delete(f"{BASE}/endpoints/{endpoint_id}")).status_code == 403
    async with make_client(host=host, role="analyst") as analyst:
        assert (await analyst.get(f"{BASE}/endpoints/{endpoint_id}")).status_code == 200
        assert (await analyst.post(f"{BASE}/deliveries/1/replay")).status_code == 403
    async with make_client(host=host, role=None) as anonymous:
        assert (await anonymous.get(f"{BASE}/endpoints")).status_code == 401
    async with make_client(host=host, role="admin") as admin:
        assert (await admin.delete(f"{BASE}/endpoints/{endpoint_id}")).status_code == 204
        assert (await admin.get(f"{BASE}/endpoints/{endpoint_id}")).status_code == 404


async def test_malformed_requests_say_what_is_wrong(
    make_client: Callable[..., Any], host: PluginHost
) -> None:
    async with make_client(host=host, role="admin") as admin:
        unknown = await admin.post(
            f"{BASE}/endpoints", json={"url": "https://a.example.com/", "event_types": ["x.y"]}
        )
        assert unknown.status_code == 422 and "x.y" in unknown.json()["detail"]
        bad_url = await admin.post(
            f"{BASE}/endpoints", json={"url": "ftp://a.example.com/x", "event_types": ["member.created"]}
        )
        assert bad_url.status_code == 422 and "url" in bad_url.json()["detail"]
        missing = await admin.post(f"{BASE}/endpoints", json={"url": "https://a.example.com/"})
        assert missing.status_code == 400
        extra = await admin.post(
            f"{BASE}/endpoints",
            json={"url": "https://a.example.com/", "event_types": ["member.created"], "x": 1},
        )
        assert extra.status_code == 400
        # an event type longer than the 64 characters kept: a 400 naming the item and the bound, as the OpenAPI
        # document's items maxLength says (create and patch alike), not a 422 listing the known types
        long_type = "member." + "x" * 58
        made = await admin.post(
            f"{BASE}/endpoints", json={"url": "https://a.example.com/", "event_types": ["member.created"]}
        )
        assert made.status_code == 201, made.text
        for sent in (
            admin.post(
                f"{BASE}/endpoints", json={"url": "https://a.example.com/", "event_types": [long_type]}
            ),
            admin.patch(
                f"{BASE}/endpoints/{made.json()['endpoint']['id']}",
                json={"event_types": ["member.created", long_type]},
            ),
        ):
            refused = await sent
            assert refused.status_code == 400, refused.text
            assert "Expected `str` of length <= 64" in refused.json()["detail"]
            assert refused.json()["detail"].startswith("event_types[")
        assert (await admin.get(f"{BASE}/deliveries/{2**63}")).status_code == 400
        assert (await admin.get(f"{BASE}/deliveries", params={"status": "lost"})).status_code == 400
        assert (await admin.get(f"{BASE}/deliveries/5")).status_code == 404
        assert (await admin.post(f"{BASE}/deliveries/5/replay")).status_code == 404
        long_grace = await admin.post(f"{BASE}/endpoints/1/rotate-secret", json={"grace_seconds": 10**7})
        assert long_grace.status_code == 400


@pytest.mark.slow(seconds=15)
async def test_dead_letters_replayed_over_http(
    make_client: Callable[..., Any],
    host: PluginHost,
    tongcrm_db: TestDatabase,
    runner: Runner,
    receiver: Receiver,
    receiver_url: str,
    clock: Clock,
) -> None:
    async with make_client(host=host, role="admin") as admin:
        created = await admin.post(
            f"{BASE}/endpoints", json={"url": receiver_url, "event_types": ["points.changed"]}
        )
        endpoint_id = created.json()["endpoint"]["id"]
    receiver.fail_always = True
    async with tongcrm_db.sessions() as session, session.begin():
        emit(session, "points_changed", {"member_id": 1, "delta": 5, "available": 5, "pending": 0})
    await drain(runner)
    for attempts in range(1, service.MAX_ATTEMPTS):
        clock.advance(seconds=service.RETRY_DELAYS[attempts - 1].total_seconds() * 1.1 + 1)
        await drain(runner)
    receiver.fail_always = False
    async with make_client(host=host, role="operator") as operator:
        [dead] = (await operator.get(f"{BASE}/dead-letters", params={"endpoint_id": endpoint_id})).json()
        assert dead["status"] == "dead" and dead["attempts"] == service.MAX_ATTEMPTS
        assert dead["last_status_code"] == 500
        replay = await operator.post(f"{BASE}/deliveries/{dead['id']}/replay")
        assert replay.status_code == 200 and replay.json()["replayed"] is True
        again = await operator.post(f"{BASE}/deliveries/{dead['id']}/replay")
        assert again.status_code == 200 and again.json()["replayed"] is False
    clock.now = max(clock.now, datetime.now(UTC)) + timedelta(seconds=1)  # the app replayed on the wall clock
    await drain(runner)
    async with make_client(host=host, role="analyst") as analyst:
        detail = (await analyst.get(f"{BASE}/deliveries/{dead['id']}")).json()
        assert detail["delivery"]["status"] == "delivered" and detail["delivery"]["replays"] == 1
        assert [a["status_code"] for a in detail["attempts"]][-1] == 200
        assert (await analyst.get(f"{BASE}/dead-letters")).json() == []
    async with make_client(host=host, role="operator") as operator:
        done = await operator.post(f"{BASE}/deliveries/{dead['id']}/replay")
        assert done.status_code == 409
