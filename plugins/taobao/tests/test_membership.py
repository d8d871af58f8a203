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
from tongcrm.replay.models import SeenCallback
from tongcrm.testing.database import TestDatabase
from tongcrm_taobao.fake_tmall import FakeTmall
from tongcrm_taobao.signing import sign
from tongcrm_taobao.timefmt import parse_top_time

SECRET = "tmall-app-secret"
HMAC_SECRET = "tmall-hmac-secret"
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
        await accounts.create_account(
            session,
            host,
            tongcrm_settings.vault(),
            "taobao",
            "hmac-shop",
            {"app_key": "23456789", "app_secret": HMAC_SECRET, "session": "seller-session-2"},
        )  # sign_method left at its default, hmac-sha256
    async with make_client(host=host, role=None) as client:
        client.make_client = make_client
        client.host = host
        yield client


def make_second_client(api: Any) -> Any:
    """Another app on the same database: what a second ``serve --workers`` process is."""
    return api.make_client(host=api.host, role=None)


def tmall(api: Any, **kw: Any) -> FakeTmall:
    return FakeTmall(
        api.client,
        account=kw.pop("account", "flagship"),
        app_key=kw.pop("app_key", "23456789"),
        app_secret=kw.pop("secret", SECRET),
        **kw,
    )


async def _kinds(db: TestDatabase) -> list[str]:
    async with db.sessions() as session:
        return sorted((await session.execute(sa.select(Identity.kind))).scalars())


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


def _refusal(answer: dict[str, Any]) -> tuple[int, str]:
    """TOP's error_response (protocols.md §1.3), never a query_code: the call was not the platform's."""
    assert "query_code" not in answer, answer
    error = answer["error_response"]
    assert isinstance(error["code"], int) and error["msg"] and error["sub_msg"] and error["request_id"]
    return error["code"], error["sub_code"]


@pytest.mark.parametrize(
    ("tamper", "refusal"),
    [
        ({"secret": "wrong-secret"}, (25, "isv.invalid-signature")),
        ({"skew": -timedelta(minutes=30)}, (31, "isv.invalid-timestamp")),
        ({"skew": timedelta(minutes=11)}, (31, "isv.invalid-timestamp")),
        ({"app_key": "99999999"}, (29, "isv.appkey-not-exists")),
        ({"account": "no-such-shop"}, (29, "isv.appkey-not-exists")),
        (
            {"account": "flag%00ship"},
            (29, "isv.appkey-not-exists"),
        ),  # a NUL in the path: was a 500 on PostgreSQL
    ],
)
async def test_unsigned_or_stale_calls_are_refused_in_top_s_error_format(
    api: Any, tongcrm_db: TestDatabase, tamper: dict[str, Any], refusal: tuple[int, str]
) -> None:
    options = dict(tamper)  # the parametrize dict is shared by the SQLite and PostgreSQL runs
    skew = options.pop("skew", None)
    at = datetime.now(UTC) + skew if skew is not None else None  # now, not when the tests were collected
    spi = tmall(api, **options)
    answer = await spi.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU3"}, at=at)
    assert _refusal(answer) == refusal
    assert await _members(tongcrm_db) == []


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"sign_method": "bogus"}, (25, "isv.invalid-sign-method")),
        ({"sign_method": ""}, (25, "isv.invalid-sign-method")),  # absent: TOP's md5, not the account's
        ({"sign": ""}, (24, "isv.missing-signature")),
        ({"timestamp": ""}, (30, "isv.missing-parameter:timestamp")),
        ({"timestamp": "2026/12/01 08:00"}, (31, "isv.invalid-timestamp")),
    ],
)
async def test_malformed_calls_get_the_platform_s_refusal_not_a_500(
    api: Any, tongcrm_db: TestDatabase, change: dict[str, str], refusal: tuple[int, str]
) -> None:
    """Nothing here needs a credential: an unknown sign_method used to raise out of the route as a 500."""
    spi = tmall(api, app_key="23456789", sign_method="hmac-sha256")
    params = spi.signed("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU5"})
    params.update(change)
    if change.get("timestamp") is not None and "sign" not in change:  # signed correctly, timestamp and all
        params.pop("sign")
        params = {k: v for k, v in params.items() if v}
        params["sign"] = sign(params, HMAC_SECRET, "hmac-sha256")
    answer = await tmall(api, account="hmac-shop").send("tmall.mei.crm.member.register", params)
    assert _refusal(answer) == refusal
    assert await _members(tongcrm_db) == []


async def test_a_signed_call_with_a_nul_is_a_bad_argument(api: Any, tongcrm_db: TestDatabase) -> None:
    answer = await tmall(api).call(
        "tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "O1", "nick": "a\x00"}
    )
    assert _refusal(answer) == (41, "isv.invalid-parameter")
    assert await _members(tongcrm_db) == []


async def test_only_the_account_s_sign_method_is_accepted(api: Any, tongcrm_db: TestDatabase) -> None:
    """The caller does not choose the digest: an md5 signature, even with the right secret, is refused for an
    account configured for hmac-sha256 (and the other way round)."""
    for method in ("md5", "hmac"):
        weak = FakeTmall(
            api.client, account="hmac-shop", app_key="23456789", app_secret=HMAC_SECRET, sign_method=method
        )
        answer = await weak.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU6"})
        assert _refusal(answer) == (25, "isv.invalid-sign-method")
    strong = tmall(api, sign_method="hmac-sha256")  # right secret, wrong method for the md5 account
    answer = await strong.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU6"})
    assert _refusal(answer) == (25, "isv.invalid-sign-method")
    assert await _members(tongcrm_db) == []
    good = FakeTmall(
        api.client, account="hmac-shop", app_key="23456789", app_secret=HMAC_SECRET, sign_method="hmac-sha256"
    )
    answer = await good.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU6"})
    assert answer["query_code"] == "SUC"
    assert len(await _members(tongcrm_db)) == 1


async def test_a_replayed_call_is_not_applied_again(api: Any, tongcrm_db: TestDatabase) -> None:
    spi = tmall(api)
    captured = spi.signed("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU7", "nick": "t**7"})
    first = await spi.send("tmall.mei.crm.member.register", captured)
    assert first["query_code"] == "SUC"
    async with tongcrm_db.sessions() as session:
        (claim,) = (await session.execute(sa.select(SeenCallback))).scalars()
    assert claim.scope == "taobao:flagship"
    # kept past the end of the window in which the captured call's timestamp is still accepted
    assert claim.expires_at > parse_top_time(captured["timestamp"]) + timedelta(minutes=10)
    # an identical re-send while the binding holds gets the same answer, idempotently
    assert await spi.send("tmall.mei.crm.member.register", captured) == first

    # the binding is undone (an operator unbound the buyer): a replay within the window must not redo it
    async with tongcrm_db.sessions() as session, session.begin():
        await session.execute(sa.delete(Identity).where(Identity.kind == "taobao.ouid"))
    replayed = await spi.send("tmall.mei.crm.member.register", captured)
    assert replayed["query_code"] == "E02"  # the member exists and is not bound: as bind-query says now
    assert await _kinds(tongcrm_db) == ["mobile"]

    # the replay guard lives in the database: another tongcrm process refuses the replay too
    async with make_second_client(api) as other:
        again = await FakeTmall(other.client, account="flagship", app_key="23456789", app_secret=SECRET).send(
            "tmall.mei.crm.member.register", captured
        )
    assert again["query_code"] == "E02"
    assert await _kinds(tongcrm_db) == ["mobile"]

    # Tmall's own retry is a new call with a new timestamp and signature: it is applied
    fresh = await spi.call(
        "tmall.mei.crm.member.register",
        {"mobile": MOBILE, "ouid": "OU7", "nick": "t**7"},
        at=datetime.now(UTC) + timedelta(seconds=1),
    )
    assert fresh["query_code"] == "SUC"
    assert await _kinds(tongcrm_db) == ["mobile", "taobao.ouid"]
    assert len(await _members(tongcrm_db)) == 1


async def test_a_replayed_bind_is_not_applied_again(api: Any, tongcrm_db: TestDatabase) -> None:
    spi = tmall(api)
    assert (await spi.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU8"}))[
        "query_code"
    ] == "SUC"
    captured = spi.signed("tmall.mei.crm.bind", {"mobile": MOBILE, "omid": "OM8"})
    assert (await spi.send("tmall.mei.crm.bind", captured))["query_code"] == "SUC"
    async with tongcrm_db.sessions() as session, session.begin():
        await session.execute(sa.delete(Identity).where(Identity.kind == "taobao.omid"))
    assert (await spi.send("tmall.mei.crm.bind", captured))["query_code"] == "E02"
    assert await _kinds(tongcrm_db) == ["mobile", "taobao.ouid"]


async def test_bind_query_reads_and_may_be_asked_again(api: Any) -> None:
    spi = tmall(api)
    captured = spi.signed("tmall.mei.crm.member.bind.query", {"mobile": MOBILE, "ouid": "OU9"})
    for _ in range(2):
        assert (await spi.send("tmall.mei.crm.member.bind.query", captured))["query_code"] == "E01"


async def test_invalid_mobile_is_an_error_answer(api: Any) -> None:
    answer = await tmall(api).call("tmall.mei.crm.member.register", {"mobile": "12345", "ouid": "OU4"})
    assert answer["query_code"] == "E04"


async def test_a_bind_is_recorded_as_membership_state_for_segments(
    api: Any, tongcrm_db: TestDatabase, tongcrm_settings: Any
) -> None:
    from tongcrm.membership import MembershipService
    from tongcrm.plugin.types import IdentityClaim
    from tongcrm.segments import service as segments

    spi = tmall(api)
    answer = await spi.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU1", "omid": "OM1"})
    assert answer["query_code"] == "SUC"
    other = await api.post(
        "/api/members",
        json={"name": "not bound"},
        headers={"Authorization": f"Bearer {await api.create_key('admin')}"},
    )
    assert other.status_code == 201

    async def bound_at() -> dict[str, datetime | None]:
        async with tongcrm_db.sessions() as session:
            rows = await session.execute(sa.select(Identity.kind, Identity.bound_at))
            return {kind: at for kind, at in rows}

    async def matching(value: bool) -> int:
        async with tongcrm_db.sessions() as session:
            context = await segments.load_context(session, api.host, datetime.now(UTC))
            definition = {
                "version": 1,
                "condition": {
                    "field": "identity.membership_bound",
                    "op": "is",
                    "value": value,
                    "channel": "taobao",
                },
            }
            return await segments.count(session, segments.prepare(context, definition))

    first = await bound_at()
    assert first["mobile"] is None  # the mobile found the member; it is no platform binding
    assert first["taobao.ouid"] is not None and first["taobao.omid"] == first["taobao.ouid"]
    assert (await matching(True), await matching(False)) == (1, 1)
    # Tmall retrying the enrolment does not move the binding's time
    assert (await spi.call("tmall.mei.crm.member.register", {"mobile": MOBILE, "ouid": "OU1"}))[
        "query_code"
    ] == "SUC"
    assert (await bound_at())["taobao.ouid"] == first["taobao.ouid"]

    service = MembershipService(tongcrm_db.sessions, api.host, tongcrm_settings)
    member_id = await service.unbind(
        claims=[IdentityClaim("taobao.ouid", "OU1"), IdentityClaim("taobao.omid", "OM1")], actor="t"
    )
    assert member_id == (await _members(tongcrm_db))[0]
    assert all(at is None for at in (await bound_at()).values())
    assert (await matching(True), await matching(False)) == (0, 2)
    assert await service.unbind(claims=[IdentityClaim("taobao.ouid", "nobody")], actor="t") is None
