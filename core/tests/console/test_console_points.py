"""The points adjustment page over HTTP on each backend: an operator grants and deducts a member's points with
a reason from the 360 page, through the API's service and its once-per-key guard (a double submit of the form
adjusts once), a refusal shows the form again with what was typed, the expiry is the programme's day, and an
analyst sees the balance but no form and is refused a POST."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.auth.models import ApiKey
from tongcrm.config import Settings
from tongcrm.console import testing as seed
from tongcrm.plugin.host import PluginHost
from tongcrm.points.models import PointsEntry, PointsLot, PointsRequest

from .conftest import sign_in

SH = ZoneInfo("Asia/Shanghai")
_KEY = re.compile(r'name="idempotency_key" value="([^"]*)"')


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(autoload=True, disabled=set())


def _figure(html: str, name: str) -> int:
    found = re.search(rf'data-figure="{re.escape(name)}">(-?\d+)<', html)
    assert found is not None, name
    return int(found.group(1))


def _key_of(html: str) -> str:
    found = _KEY.search(html)
    assert found is not None, "the page carries no adjustment form"
    return found.group(1)


async def _form(api: Any, member: int, csrf: str, **fields: str) -> dict[str, str]:
    """The adjustment form as the page draws it (its idempotency key), filled with ``fields``."""
    page = await api.get(f"/console/members/{member}/points/adjust")
    assert page.status_code == 200, page.text
    return {"csrf_token": csrf, "idempotency_key": _key_of(page.text), **fields}


async def _adjustments(api: Any, member: int) -> list[PointsEntry]:
    async with api.db.sessions() as session:
        rows = await session.execute(
            sa.select(PointsEntry)
            .where(PointsEntry.member_id == member, PointsEntry.kind == "adjust")
            .order_by(PointsEntry.id)
        )
        return list(rows.scalars())


async def test_an_operator_grants_and_deducts_once_per_form(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await seed.seed_shoppers(api.db.sessions, host, tongcrm_settings.vault())
        csrf = await sign_in(api, "operator")
        m360 = (await api.get(f"/console/members/{s.shopper}")).text
        assert f'href="/console/members/{s.shopper}/points/adjust"' in m360 and "调整积分" in m360
        page = (await api.get(f"/console/members/{s.shopper}/points/adjust")).text
        assert _figure(page, "available") == 988 and "data-write" in page
        assert "李*" in page and "138****8000" in page and "李雷" not in page  # masked, as on every page

        grant = await _form(api, s.shopper, csrf, direction="grant", points="１,０００", reason="客诉补偿")
        first = await api.post(
            f"/console/members/{s.shopper}/points/adjust", data=grant, follow_redirects=False
        )
        assert first.status_code == 303, first.text
        location = first.headers["location"]
        assert location.startswith(f"/console/members/{s.shopper}?adjusted=")
        # the same form again (a double click, a reload of the POST): the same entry, nothing granted twice
        second = await api.post(
            f"/console/members/{s.shopper}/points/adjust", data=grant, follow_redirects=False
        )
        assert second.status_code == 303 and second.headers["location"] == location
        shown = (await api.get(location)).text
        entry_id = int(location.rsplit("=", 1)[1])
        assert _figure(shown, "available") == 1988
        assert f'data-adjusted="{entry_id}"' in shown and "data-adjusted-entry" in shown
        [entry] = await _adjustments(api, s.shopper)
        async with api.db.sessions() as session:
            keys = (await session.execute(sa.select(ApiKey.id))).scalars().all()
            requests = (await session.execute(sa.select(PointsRequest.kind))).scalars().all()
        # the API's ledger entry: its actor names the session's key as the API's does, the reason is kept
        assert entry.id == entry_id and entry.amount == 1000 and entry.reason == "客诉补偿"
        assert entry.actor in {f"apikey:{k}" for k in keys}
        assert requests == ["adjustment"]
        # the API explains it as any adjustment
        api.client.headers["Authorization"] = f"Bearer {await api.create_key('analyst')}"
        statement = (await api.get(f"/api/members/{s.shopper}/points")).json()
        assert statement["balance"]["available"] == 1988
        assert statement["entries"][0]["reason"] == "客诉补偿"
        api.client.headers.pop("Authorization")

        deduct = await _form(api, s.shopper, csrf, direction="deduct", points="300", reason="误发")
        # two submits at once: still one deduction
        answers = await asyncio.gather(
            *(
                api.post(f"/console/members/{s.shopper}/points/adjust", data=deduct, follow_redirects=False)
                for _ in range(2)
            )
        )
        assert [a.status_code for a in answers] == [303, 303]
        assert answers[0].headers["location"] == answers[1].headers["location"]
        assert [e.amount for e in await _adjustments(api, s.shopper)] == [1000, -300]
        assert _figure((await api.get(f"/console/members/{s.shopper}")).text, "available") == 1688


async def test_a_refusal_keeps_the_form_and_nothing_is_stored(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await seed.seed_shoppers(api.db.sessions, host, tongcrm_settings.vault())
        csrf = await sign_in(api, "admin")
        url = f"/console/members/{s.shopper}/points/adjust"
        form = await _form(api, s.shopper, csrf, direction="deduct", points="5000", reason="核销")
        over = await api.post(url, data=form)
        assert over.status_code == 409 and "data-problem" in over.text and "未调整" in over.text
        # the refusal in the page's language, from the error's code and values (not the API's English)
        assert (
            "该会员现有 988 可用积分，本次要扣减 5000 积分" in over.text
            and "points available" not in over.text
        )
        in_english = await api.post(url + "?lang=en", data=form)
        assert in_english.status_code == 409 and "988 points available; 5000 requested" in in_english.text
        await api.get(url + "?lang=zh")
        assert 'value="5000"' in over.text and 'value="核销"' in over.text
        assert 'value="deduct" required checked' in over.text
        assert _key_of(over.text) == form["idempotency_key"]  # nothing was stored: the same key may go again
        for fields, status, words in (
            ({"points": "abc"}, 422, "积分：“abc”不是整数"),
            ({"points": "1.5"}, 422, "积分：“1.5”不是整数"),
            ({"points": "0"}, 422, "请填写大于 0 的数"),
            ({"points": "-5"}, 422, "积分：“-5”不是整数"),
            ({"reason": "  "}, 422, "原因：请填写调整原因"),
            ({"reason": "x" * 501}, 422, "原因：最多 500 个字符，现在是 501 个"),
            ({"direction": ""}, 422, "方向：请选择增加或扣减"),
            ({"expires_on": "2099-01-01"}, 422, "只有增加积分才能设有效期"),
            ({"direction": "grant", "expires_on": "2020-01-01"}, 422, "必须是将来的日期"),
            ({"direction": "grant", "expires_on": "2027-13-01"}, 422, "“2027-13-01”不是日期"),
        ):
            answer = await api.post(url, data={**form, "points": "10", **fields})
            assert answer.status_code == status and words in answer.text, (fields, answer.text[-2000:])
        assert await _adjustments(api, s.shopper) == []
        # corrected, the same form (same key) goes through once
        fixed = await api.post(url, data={**form, "points": "88"}, follow_redirects=False)
        assert fixed.status_code == 303
        # and that key, sent again with other values, is refused with a fresh form (a new key)
        reused = await api.post(url, data={**form, "points": "99"})
        assert reused.status_code == 422 and "已经用其他内容提交过一次调整" in reused.text
        assert _key_of(reused.text) != form["idempotency_key"]
        # a form without the console's key does nothing
        keyless = await api.post(url, data={**form, "idempotency_key": ""})
        assert keyless.status_code == 400 and _key_of(keyless.text).startswith("console-")
        assert [e.amount for e in await _adjustments(api, s.shopper)] == [-88]


async def test_a_grant_expires_after_the_day_chosen_in_the_programme_zone(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await seed.seed_shoppers(api.db.sessions, host, tongcrm_settings.vault())
        csrf = await sign_in(api, "operator")
        day = datetime.now(UTC).astimezone(SH).date() + timedelta(days=30)
        form = await _form(
            api, s.shopper, csrf, direction="grant", points="200", reason="会员日", expires_on=day.isoformat()
        )
        done = await api.post(
            f"/console/members/{s.shopper}/points/adjust", data=form, follow_redirects=False
        )
        assert done.status_code == 303
        [entry] = await _adjustments(api, s.shopper)
        async with api.db.sessions() as session:
            lot = (await session.execute(sa.select(PointsLot).where(PointsLot.id == entry.id))).scalar_one()
        assert lot.expires_at == datetime.combine(day + timedelta(days=1), time.min, tzinfo=SH)


async def test_an_analyst_sees_the_balance_but_no_form_and_cannot_post(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await seed.seed_shoppers(api.db.sessions, host, tongcrm_settings.vault())
        operator = await sign_in(api, "operator")
        form = await _form(api, s.shopper, operator, direction="grant", points="500", reason="x")
        csrf = await sign_in(api, "analyst")
        m360 = (await api.get(f"/console/members/{s.shopper}")).text
        assert "/points/adjust" not in m360
        page = await api.get(f"/console/members/{s.shopper}/points/adjust")
        assert page.status_code == 200 and _figure(page.text, "available") == 988
        assert "data-write" not in page.text and "idempotency_key" not in page.text
        assert "只有运营和管理员可以调整积分" in page.text
        refused = await api.post(
            f"/console/members/{s.shopper}/points/adjust", data={**form, "csrf_token": csrf}
        )
        assert refused.status_code == 403
        assert await _adjustments(api, s.shopper) == []


async def test_no_csrf_token_no_adjustment_and_the_page_speaks_english(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await seed.seed_shoppers(api.db.sessions, host, tongcrm_settings.vault())
        csrf = await sign_in(api, "admin")
        form = await _form(api, s.shopper, csrf, direction="grant", points="500", reason="x")
        del form["csrf_token"]
        forged = await api.post(f"/console/members/{s.shopper}/points/adjust", data=form)
        assert forged.status_code == 403
        assert await _adjustments(api, s.shopper) == []
        en = (await api.get(f"/console/members/{s.shopper}/points/adjust?lang=en")).text
        assert "Grant or deduct points" in en and "Reason (required, kept in the ledger)" in en
        # a merged member's id shows the member it was merged into, whose form posts to the survivor
        tombstone = (await api.get(f"/console/members/{s.absorbed}/points/adjust")).text
        assert f"(#{s.absorbed} → #{s.shopper})" in tombstone
        assert f'action="/console/members/{s.shopper}/points/adjust"' in tombstone
        assert (await api.get("/console/members/999999/points/adjust")).status_code == 404
