"""Tmall 会员通 SPIs served by the plugin: signed calls, idempotent binding and registering, one member."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.channels import service as accounts
from tongcrm.identity.models import Identity
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm_taobao.fake_tmall import FakeTmall

SECRET = "tmall-app-secret"
MOBILE = "13800138000"


@pytest.fixture
async def api(make_client: Any, tongcrm_db: TestDatabase, tongcrm_settings: Any) -> Any:
    host = PluginHost(autoload=True, disabled=set())
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(
            session,
            host,
            tongcrm_settings.vault(),
            "taobao",
            "flagship",
            {"app_key": "23456789", "app_secret": SECRET, "session": "seller-session", "sign_method": "md5"},
        )
    async with make_client(host=host, role=None) as client:
        yield client


def tmall(api: Any, **kw: Any) -> FakeTmall:
    return FakeTmall(
        api.client, account="flagship", app_key="23456789", app_secret=kw.pop("secret", SECRET), **kw
    )


async def _members(db: TestDatabase) -> list[int]:
    async with db.sessions() as session:
        return list((await session.execute(sa.select(Member.id).where(Member.status == "active"))).scalars())


async def test_unknown_buyer_registers_once_however_often_tmall_retries(
    api: Any, tongcrm_db: TestDatabase
) -> None:
    spi = tmall(api)
    assert (await spi.call("tmall.mei.crm.member.bind.query", {"mobile": MOBILE, "ouid": "OU1"}))[
        "query_code"
    ] == "E01"
    for _ in range(5):  # flight mode backfills the same enrolment again and again
        answer = await spi.call(
            "tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU1", "omid": "OM1", "nick": "t**1"}
        )
        assert answer["query_code"] == "SUC"
        assert answer["member"]["mobile"] == "138****8000"
    assert len(await _members(tongcrm_db)) == 1
    async with tongcrm_db.sessions() as session:
        kinds = sorted((await session.execute(sa.select(Identity.kind))).scalars())
    assert kinds == ["mobile", "taobao.omid", "taobao.ouid"]
    assert (await spi.call("tmall.mei.crm.member.bind.query", {"mobile": MOBILE, "ouid": "OU1"}))[
        "query_code"
    ] == "SUC"


async def test_existing_member_is_found_by_mobile_then_bound(api: Any, tongcrm_db: TestDatabase) -> None:
    admin_key = await api.create_key("admin")
    created = await api.post(
        "/api/members",
        json={"mobile": "+86 138-0013-8000", "name": "王小明"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert created.status_code == 201, created.text
    spi = tmall(api)
    assert (await spi.call("tmall.mei.crm.member.bind.query", {"mobile": MOBILE, "ouid": "OU9"}))[
        "query_code"
    ] == "E02"
    assert (await spi.call("tmall.mei.crm.bind", {"mobile": MOBILE, "ouid": "OU9"}))["query_code"] == "SUC"
    assert (await spi.call("tmall.mei.crm.member.bind.query", {"mobile": MOBILE, "ouid": "OU9"}))[
        "query_code"
    ] == "SUC"
    assert len(await _members(tongcrm_db)) == 1


async def test_bind_without_a_member_does_not_create_one(api: Any, tongcrm_db: TestDatabase) -> None:
    answer = await tmall(api).call("tmall.mei.crm.bind", {"mobile": MOBILE, "ouid": "OU2"})
    assert answer["query_code"] == "E01"
    assert await _members(tongcrm_db) == []


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ({"secret": "wrong-secret"}, "invalid signature"),
        ({"at": datetime.now(UTC) - timedelta(minutes=30)}, "timestamp"),
    ],
)
async def test_unsigned_or_stale_calls_are_refused(
    api: Any, tongcrm_db: TestDatabase, tamper: dict[str, Any], message: str
) -> None:
    options = dict(tamper)  # the parametrize dict is shared by the SQLite and PostgreSQL runs
    at = options.pop("at", None)
    spi = tmall(api, **options)
    answer = await spi.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU3"}, at=at)
    assert answer["query_code"] == "E04"
    assert message in answer["msg"]
    assert await _members(tongcrm_db) == []


async def test_invalid_mobile_is_an_error_answer(api: Any) -> None:
    answer = await tmall(api).call("tmall.mei.crm.member.register", {"mobile": "12345", "ouid": "OU4"})
    assert answer["query_code"] == "E04"
