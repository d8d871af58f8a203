"""Campaign hold-out groups: deterministic assignment, eligible members held out and never sent, counts in
the campaign's status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from messaging_kit import SECRET_KEY, Clock, World, beijing, fake_gateway, sms_host
from tongcrm.config import Settings
from tongcrm.messaging.holdout import basis_points, in_holdout
from tongcrm.testing.database import TestDatabase


def test_assignment_is_deterministic_seeded_and_close_to_the_percentage() -> None:
    points = basis_points(12.5)
    assert points == 1250
    members = range(1, 8001)
    first = {m for m in members if in_holdout("campaign.618", m, points)}
    assert first == {m for m in members if in_holdout("campaign.618", m, points)}
    assert 0.11 < len(first) / 8000 < 0.14
    other_seed = {m for m in members if in_holdout("campaign.618", m, points, seed="2")}
    other_campaign = {m for m in members if in_holdout("campaign.double11", m, points)}
    assert first != other_seed and first != other_campaign
    assert not any(in_holdout("campaign.618", m, 0) for m in members)
    for bad in (-1.0, 50.01, 10.005):
        with pytest.raises(ValueError, match="percentage"):
            basis_points(bad)


@pytest.mark.asyncio
async def test_held_out_members_are_logged_refused_and_counted(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        with fake_gateway(clock) as (fake, url):
            await w.setup(url)
            consenting = [await w.member(i) for i in range(40)]
            silent = [await w.member(100 + i, marketing=False) for i in range(8)]
            audience = consenting + silent
            body = {
                "campaign": "618",
                "template": "promo",
                "member_ids": audience,
                "holdout_percent": 25,
                "holdout_seed": "2024",
                "not_before": clock().isoformat(),
            }
            response = await api.post("/api/messages/campaign-sends", json=body)
            assert response.status_code == 202, response.text
            control = {m for m in audience if in_holdout("campaign.618", m, 2500, "2024")}
            assert 0 < len(control & set(consenting)) < 40  # both groups have eligible members
            assert response.json() == {
                "flow": "campaign.618",
                "requested": len(audience),
                "queued": len(audience),
                "held_out": len(control),
            }
            again = await api.post("/api/messages/campaign-sends", json=body)
            assert again.json()["queued"] == 0  # each member once per campaign, in the same group
            await w.dispatcher().run()

        messages = {m.member_id: m for m in await w.messages(flow="campaign.618")}
        assert {m for m, msg in messages.items() if msg.held_out} == control
        for member, message in messages.items():
            if member in silent:  # the policy decides first: not eligible, whichever group
                assert (message.status, message.reason) == ("refused", "no_consent")
            elif member in control:
                assert (message.status, message.reason) == ("refused", "hold-out")
            else:
                assert message.status == "sent"
        sent_numbers = {a.phone for a in fake.accepted}
        assert len(sent_numbers) == len(set(consenting) - control)

        status = await api.get("/api/messages/campaigns/618")
        assert status.status_code == 200, status.text
        assert status.json() == {
            "flow": "campaign.618",
            "statuses": {
                "queued": 0,
                "sending": 0,
                "sent": len(set(consenting) - control),
                "in_doubt": 0,
                "delivered": 0,
                "failed": 0,
                "refused": len(audience) - len(set(consenting) - control),
            },
            "assigned_holdout": len(control),
            "held_out": len(control & set(consenting)),
            "treatment_reached": len(set(consenting) - control),
        }
        listed = (await api.get("/api/messages?flow=618&status=refused&limit=500")).json()
        assert {m["member_id"] for m in listed if m["held_out"]} == control
        bad = await api.post(
            "/api/messages/campaign-sends", json={**body, "campaign": "x", "holdout_percent": 60}
        )
        assert bad.status_code == 422
