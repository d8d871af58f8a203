"""The contact policy follows the programme settings stored in the database: the dispatch job reads the
marketing window, fatigue budgets and time zone in force, and the SMS reply route the opt-out keywords."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from messaging_kit import SECRET_KEY, SIGN, Clock, World, beijing, fake_gateway, sms_host
from tongcrm.audit.service import SYSTEM
from tongcrm.config import Settings
from tongcrm.consent.service import consent_states
from tongcrm.jobs.runner import JobContext
from tongcrm.messaging import service
from tongcrm.messaging.jobs import dispatch_job
from tongcrm.programme import service as programme
from tongcrm.testing.database import TestDatabase

pytestmark = pytest.mark.asyncio
SETTINGS = Settings(database_url="unused", secret_key=SECRET_KEY)


async def _dispatch(w: World) -> None:
    ctx = JobContext(w.sessions, w.host, w.clock, job_id=1, attempt=1, services={"settings": SETTINGS})
    await dispatch_job(ctx, {})


async def _change(w: World, version: int, **changes: Any) -> None:
    async with w.sessions() as session, session.begin():
        await programme.change(session, SETTINGS, changes, expected_version=version, actor=SYSTEM)


async def _promo(w: World, campaign: str, members: list[int]) -> None:
    async with w.sessions() as session, session.begin():
        promo = await service.get_template(session, "promo")
        await service.queue_messages(
            session, campaign, promo, [service.Target(m) for m in members], now=w.clock()
        )


async def test_dispatch_follows_the_stored_window_budget_and_time_zone(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 21, 30))  # quiet under the default 08:00-20:00 Beijing window
    w = World(tongcrm_db.sessions, SETTINGS.vault(), sms_host(), clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url)
        first, second = await w.member(1), await w.member(2)
        await _promo(w, "campaign.a", [first])
        await _dispatch(w)
        assert [(m.status, m.reason) for m in await w.messages()] == [("queued", "quiet_hours")]

        # a later window: a promotion queued now goes at 21:30 Beijing time (the deferred one keeps its date)
        await _change(w, 0, marketing_window_end="22:00")
        await _promo(w, "campaign.b", [second])
        await _dispatch(w)
        assert [m.status for m in await w.messages(flow="campaign.b")] == ["sent"]

        # the window counted in another zone: 21:45 Beijing is 14:45 in London (BST), inside 08:00-20:00 there
        await _change(w, 1, timezone="Europe/London", marketing_window_end="20:00")
        clock.advance(minutes=15)
        await _promo(w, "campaign.c", [first])
        await _dispatch(w)
        assert [m.status for m in await w.messages(flow="campaign.c")] == ["sent"]

        # no marketing budget at all: a fatigue refusal
        await _change(w, 2, marketing_budget=0)
        await _promo(w, "campaign.d", [second])
        await _dispatch(w)
        assert [(m.status, m.reason) for m in await w.messages(flow="campaign.d")] == [("refused", "fatigue")]
        assert len(fake.accepted) == 2


async def test_reply_route_uses_the_stored_opt_out_keywords(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(api.db.sessions, SETTINGS.vault(), host, clock)
        with fake_gateway(clock) as (_fake, url):
            await w.setup(url)
            member = await w.member(1)
            token = (await api.get("/api/messenger-accounts")).json()[0]["callback_token"]

            def reply(text: str, seq: int) -> list[dict[str, Any]]:
                return [
                    {
                        "phone_number": "13900000001",
                        "send_time": "2024-05-01 10:01:00",
                        "content": text,
                        "sign_name": SIGN,
                        "dest_code": "",
                        "sequence_id": seq,
                    }
                ]

            async def opted_out() -> bool:
                async with w.sessions() as session, session.begin():
                    states = await consent_states(session, member)
                return any(s.source == "sms_reply" and s.status == "opt_out" for s in states)

            # before the change: STOP is no keyword (this also fills the app's settings cache)
            pushed = await api.post(
                f"/sms/aliyun/sms/up?token={token}", json=reply("STOP", 1), headers={"Authorization": ""}
            )
            assert pushed.status_code == 200
            assert not await opted_out()
            saved = await api.put(
                "/api/programme-settings", json={"opt_out_keywords": ["STOP"]}, headers={"If-Match": '"v0"'}
            )
            assert saved.status_code == 200, saved.text

            # the change applies at once (the cache is invalidated): TD, a default keyword, is now an ordinary reply
            pushed = await api.post(
                f"/sms/aliyun/sms/up?token={token}", json=reply("TD", 2), headers={"Authorization": ""}
            )
            assert pushed.status_code == 200
            assert not await opted_out()
            pushed = await api.post(
                f"/sms/aliyun/sms/up?token={token}", json=reply("stop", 3), headers={"Authorization": ""}
            )
            assert pushed.status_code == 200
            assert await opted_out()
