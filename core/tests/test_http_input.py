"""What the admin API accepts (issue #18): every input a fuzzer or a hand-made request turned into a 500 is a
4xx problem naming what is wrong, on every database backend; and the OpenAPI document lists every status an
operation answers. The rules live in :mod:`tongcrm.api.inputs`; these tests walk the real routes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import post
from litestar.params import JSONBody
from tongcrm.api.inputs import (
    MAX_ID,
    MAX_JSON_DEPTH,
    SETTING_NAME_MAX,
    SETTING_VALUE_MAX,
    SETTINGS_MAX,
    nul_checked_per_item,
)
from tongcrm.api.security import ROLES_OPT, requires
from tongcrm.auth.service import Role
from tongcrm.errors import Conflict
from tongcrm.plugin.host import PluginHost
from tongcrm.points import ledger
from tongcrm.points.ledger import MAX_BALANCE, MAX_ENTRY_POINTS, Credit
from tongcrm.points.models import PointsBalance

TOO_BIG = str(2**63)  # one past the largest BIGINT


def _problem(response: Any, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    for word in words:
        assert word in body["detail"], body
    return body


async def _member(api: Any, **fields: Any) -> int:
    r = await api.post("/api/members", json={"name": "张三", **fields})
    assert r.status_code == 201, r.text
    member_id: int = r.json()["id"]
    return member_id


async def test_nul_characters_are_refused_naming_the_field(make_client: Any) -> None:
    async with make_client() as api:
        body = _problem(await api.post("/api/members", json={"name": "a\x00b"}), 400, "name", "NUL")
        assert body["errors"][0]["key"] == "name"
        m = await _member(api)
        _problem(await api.post(f"/api/members/{m}/tags", json={"tags": ["ok", "b\x00d"]}), 400, "tags[1]")
        _problem(await api.post("/api/members", json={"name": "x", "nick\x00": 1}), 400, "NUL")
        _problem(await api.get("/api/members", params={"tag": "a\x00"}), 400, "tag", "NUL")
        _problem(await api.get("/api/channel-accounts/a%00b"), 400, "name", "NUL")
        # nothing reached the database: the member list holds only the one good member
        assert [i["id"] for i in (await api.get("/api/members")).json()["items"]] == [m]


async def test_a_request_without_its_body_says_a_json_body_is_required(make_client: Any) -> None:
    """litestar names the missing body by its parameter ("data: 'data'"); the problem says what is wrong."""
    async with make_client() as api:
        response = await api.post("/api/members", content=b"", headers={"content-type": "application/json"})
        body = _problem(response, 400, "a JSON body is required")
        assert body["errors"] == [{"message": "a JSON body is required", "key": "data", "source": "body"}]


async def test_a_method_a_path_does_not_take_says_which_it_does(make_client: Any) -> None:
    async with make_client() as api:
        member = await _member(api)
        answer = await api.delete(f"/api/members/{member}")
        _problem(answer, 405, "DELETE is not allowed here", "GET", "PATCH")
        allowed = {m.strip() for m in answer.headers["allow"].split(",")}  # RFC 9110: a 405 says what is
        assert {"GET", "PATCH"} <= allowed and "DELETE" not in allowed


async def test_an_unknown_message_status_filter_is_a_400_listing_the_statuses(make_client: Any) -> None:
    async with make_client() as api:
        answer = await api.get("/api/messages", params={"status": "z" * 3000})
        body = _problem(answer, 400, "unknown status 'zzz", "in_doubt", "refused")
        assert "z" * 100 not in body["detail"]  # the value is shown cut, not echoed whole
        assert (await api.get("/api/messages", params={"status": "in_doubt"})).json() == []


async def test_a_batch_route_may_check_nul_per_item(make_client: Any) -> None:
    # a batch that answers item by item declares so, and sees the NUL to refuse that item alone
    seen: list[Any] = []

    @post("/test/batch", opt={**requires(Role.ADMIN), **nul_checked_per_item()}, status_code=200)
    async def batch(data: JSONBody[list[dict[str, str]]]) -> dict[str, int]:
        seen.extend(data)
        return {"refused": sum("\x00" in v for item in data for v in item.values())}

    async with make_client(extra_handlers=[batch]) as api:
        r = await api.post("/test/batch", json=[{"name": "ok"}, {"name": "b\x00d"}])
        assert r.status_code == 200 and r.json() == {"refused": 1}, r.text
        assert seen == [{"name": "ok"}, {"name": "b\x00d"}]
        _problem(await api.post("/test/batch", json=[[[{"x": "y"}]]]), 400, "Expected `object`")


@pytest.mark.parametrize(
    ("method", "url", "json", "field"),
    [
        ("GET", f"/api/members/{TOO_BIG}", None, "member_id"),
        ("GET", f"/api/members/{TOO_BIG}/consents", None, "member_id"),
        ("GET", f"/api/messages/{TOO_BIG}", None, "message_id"),
        ("POST", f"/api/merges/{TOO_BIG}/undo", None, "merge_id"),
        ("GET", f"/api/members?after={TOO_BIG}", None, "after"),
        ("GET", f"/api/members?referrer_id={TOO_BIG}", None, "referrer_id"),
        ("GET", f"/api/messages?offset={TOO_BIG}", None, "offset"),
        ("GET", f"/api/messages?member_id={TOO_BIG}", None, "member_id"),
        ("GET", f"/api/ingest/quarantine?offset={TOO_BIG}", None, "offset"),
        ("GET", f"/api/audit?before={TOO_BIG}", None, "before"),
        ("GET", f"/api/audit?actor_key_id={TOO_BIG}", None, "actor_key_id"),
        ("GET", f"/api/merges?member_id={TOO_BIG}", None, "member_id"),
        ("GET", f"/api/members/1/points?offset={TOO_BIG}", None, "offset"),
        ("POST", "/api/points/rules/17179869185/activate", None, "version"),
        ("POST", "/api/merges", {"survivor_id": 2**63, "absorbed_id": 1, "reason": "dup"}, "survivor_id"),
        ("POST", "/api/members", {"name": "x", "referrer_id": 2**63}, "referrer_id"),
        ("POST", "/api/members", {"name": "x", "referrer_id": 2**64 + 1}, "referrer_id"),
        ("PATCH", "/api/members/1", {"version": 2**31, "name": "x"}, "version"),
        ("PUT", "/api/care-flows/birthday", {"template": "t", "delay_seconds": 2**31}, "delay_seconds"),
        (
            "POST",
            "/api/messages/campaign-sends",
            {"campaign": "c", "template": "t", "member_ids": [1, 2**63]},
            "member_ids[1]",
        ),
        (
            "POST",
            "/api/points/rules/preview",
            {"order": {"channel": "x", "lines": []}, "version": 2**31},
            "version",
        ),
    ],
)
async def test_integers_beyond_their_columns_are_a_400(
    make_client: Any, method: str, url: str, json: Any, field: str
) -> None:
    async with make_client() as api:
        body = _problem(await api.request(method, url, json=json), 400, field)
        assert body["errors"][0]["key"].split(".")[-1] == field


@pytest.mark.parametrize(
    ("method", "url", "json"),
    [
        ("GET", f"/api/members/{2**63 - 1}", None),
        ("POST", "/api/members", {"name": "x", "referrer_id": 2**63}),
    ],
)
async def test_the_id_bound_is_stated_as_a_bound_not_a_rounding(
    make_client: Any, method: str, url: str, json: Any
) -> None:
    # the bare 9223372036854774784 reads as a double's rounding of 2^63 - 1: the message says what it is
    async with make_client() as api:
        response = await api.request(method, url, json=json)
    assert response.status_code == 400
    for text in (response.json()["detail"], response.json()["errors"][0]["message"]):
        assert f"{MAX_ID} (2^63 - 1024: the largest 64-bit integer a JSON number read as a double" in text


@pytest.mark.parametrize("ref", [TOO_BIG, "99999999999999999999", "0", "%C2%B2"])
async def test_a_segment_named_by_a_number_no_id_can_be_is_a_404(make_client: Any, ref: str) -> None:
    """``/api/segments/{segment}`` takes an id or a name: digits past the 64-bit ids (and ``²``, which
    ``str.isdigit`` accepts and ``int`` cannot read) reached the database as an id and came back as 500s."""
    async with make_client() as api:
        for method, path, json in [
            ("GET", "", None),
            ("GET", "/members", None),
            ("PUT", "", {"definition": {"field": "points.available", "op": ">=", "value": 0}}),
        ]:
            _problem(await api.request(method, f"/api/segments/{ref}{path}", json=json), 404, "segment")


async def test_dates_outside_1900_to_2999_are_a_400(make_client: Any) -> None:
    # a +14:00 time on 0001-01-01 has no UTC value: binding it to a query was a 500 on both databases
    async with make_client() as api:
        m = await _member(api)
        early = "0001-01-01T00:00:00+14:00"
        _problem(await api.get("/api/members", params={"created_from": early}), 400, "created_from", "range")
        late = "9999-12-31T23:59:59-14:00"
        _problem(await api.get("/api/members", params={"created_to": late}), 400, "created_to", "range")
        ok = await api.get("/api/members", params={"created_to": "2999-12-31T00:00:00+08:00"})
        assert [i["id"] for i in ok.json()["items"]] == [m]
        consent = {"purpose": "marketing", "status": "opt_in", "source": "form", "at": early}
        _problem(await api.post(f"/api/members/{m}/consents", json=consent), 400, "at", "range")
        _problem(
            await api.post("/api/members", json={"name": "x", "birthday": "1899-12-31"}), 400, "birthday"
        )
        assert (
            await api.post("/api/members", json={"name": "x", "birthday": "1900-01-01"})
        ).status_code == 201


async def test_an_if_match_version_past_the_column_is_a_400(make_client: Any) -> None:
    async with make_client() as api:
        m = await _member(api)
        r = await api.patch(f"/api/members/{m}", json={"name": "李四"}, headers={"If-Match": f'"v{2**31}"'})
        _problem(r, 400, "If-Match")
        r = await api.patch(f"/api/members/{m}", json={"name": "李四"}, headers={"If-Match": '"v1"'})
        assert r.status_code == 200, r.text


async def test_points_entries_and_balances_are_bounded(make_client: Any, tongcrm_db: Any) -> None:
    async with make_client() as api:
        m = await _member(api)
        url = f"/api/members/{m}/points/adjustments"

        def adjust(points: int, key: str) -> Any:
            return api.post(url, json={"points": points, "reason": "fix"}, headers={"Idempotency-Key": key})

        _problem(await adjust(2**63 - 1, "a-1"), 400, "points")
        _problem(await adjust(MAX_ENTRY_POINTS + 1, "a-2"), 400, "points")
        _problem(await adjust(-MAX_ENTRY_POINTS - 1, "a-3"), 400, "points")
        assert (await adjust(MAX_ENTRY_POINTS, "a-4")).status_code == 201
        # a balance just under the bound (as years of earning would leave it): a credit past it is a 409 and
        # changes nothing; one that lands exactly on it is taken
        async with tongcrm_db.sessions() as s, s.begin():
            await s.execute(
                sa.update(PointsBalance)
                .where(PointsBalance.member_id == m)
                .values(available=MAX_BALANCE - 10)
            )
        body = _problem(await adjust(11, "a-5"), 409, str(MAX_BALANCE))
        assert body["max_balance"] == MAX_BALANCE
        assert (await adjust(10, "a-6")).status_code == 201
        statement = (await api.get(f"/api/members/{m}/points")).json()
        assert statement["balance"]["available"] == MAX_BALANCE
        assert (await adjust(-5, "a-7")).status_code == 201
        # credits posted in bulk (earning from orders) hit the same bound
        now = datetime.now(UTC)
        credit = Credit(m, "earn:bound", "earn", 6, now, now, None)
        async with tongcrm_db.sessions() as s:
            with pytest.raises(Conflict, match="most a balance may hold"):
                async with s.begin():
                    await ledger.post_credits(s, [credit], now=now)
        statement = (await api.get(f"/api/members/{m}/points")).json()
        assert statement["balance"]["available"] == MAX_BALANCE - 5


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ({"expiry": {"kind": "end_of_year", "months": 99_999_999_999}}, "months"),
        ({"expiry": {"kind": "days_after", "days": 10**12}}, "days"),
        ({"points_per_yuan": "1e30"}, "points_per_yuan"),
        ({"return_window_days": 2**40, "release": "return_window"}, "return_window_days"),
    ],
)
async def test_rule_documents_are_bounded(make_client: Any, rule: dict[str, Any], words: str) -> None:
    # an expiry a hundred million years out was stored and activated; every adjustment after it was a 500
    async with make_client() as api:
        spend = {"type": "spend", "code": "base", "priority": 1, "points_per_yuan": "1", **rule}
        r = await api.post("/api/points/rules", json={"document": {"rules": [spend]}, "activate": True})
        _problem(r, 422, words)
        m = await _member(api)
        r = await api.post(
            f"/api/members/{m}/points/adjustments",
            json={"points": 5, "reason": "gift"},
            headers={"Idempotency-Key": "after-rules"},
        )
        assert r.status_code == 201, r.text


async def test_adjustment_expiry_needs_a_zone_and_a_future(make_client: Any) -> None:
    async with make_client() as api:
        m = await _member(api)
        url = f"/api/members/{m}/points/adjustments"
        naive = {"points": 5, "reason": "gift", "expires_at": "2030-01-01T00:00:00"}
        _problem(await api.post(url, json=naive, headers={"Idempotency-Key": "e-1"}), 422, "time zone")
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        expired = {"points": 5, "reason": "gift", "expires_at": past}
        _problem(await api.post(url, json=expired, headers={"Idempotency-Key": "e-2"}), 422, "future")
        future = {"points": 5, "reason": "gift", "expires_at": "2030-01-01T00:00:00+08:00"}
        assert (await api.post(url, json=future, headers={"Idempotency-Key": "e-3"})).status_code == 201
        balance = (await api.get(f"/api/members/{m}/points")).json()["balance"]
        assert balance["available"] == 5


@pytest.mark.parametrize(
    ("method", "url", "json"),
    [
        ("POST", "/api/channel-accounts", {"channel": "memory", "name": "shop", "settings": "x"}),
        ("POST", "/api/channel-accounts", {"channel": "memory", "name": "shop", "settings": [1]}),
        ("POST", "/api/messenger-accounts", {"messenger": "sms", "name": "sms", "settings": "x"}),
        ("PUT", "/api/channel-accounts/shop/credentials", {"settings": 5}),
    ],
)
async def test_settings_that_is_not_an_object_is_a_400(
    make_client: Any, method: str, url: str, json: dict[str, Any]
) -> None:
    # the body field shares its name with the app's ``settings`` dependency, which litestar took for a
    # failing dependency (a 500)
    async with make_client() as api:
        body = _problem(await api.request(method, url, json=json), 400, "settings")
        assert body["errors"][0]["key"] == "settings"


_LONG_VALUE = {"token": "x" * (SETTING_VALUE_MAX + 1)}
_LONG_NAME = {"n" * (SETTING_NAME_MAX + 1): "x"}
_MANY = {f"k{i}": "x" for i in range(SETTINGS_MAX + 1)}


@pytest.mark.parametrize(
    ("method", "url", "fields", "settings", "says"),
    [
        (
            "POST",
            "/api/channel-accounts",
            {"channel": "memory", "name": "shop"},
            _LONG_VALUE,
            "length <= 4096",
        ),
        ("POST", "/api/channel-accounts", {"channel": "memory", "name": "shop"}, _LONG_NAME, "length <= 64"),
        ("POST", "/api/channel-accounts", {"channel": "memory", "name": "shop"}, _MANY, "length <= 64"),
        (
            "POST",
            "/api/messenger-accounts",
            {"messenger": "sms", "name": "sms"},
            _LONG_VALUE,
            "length <= 4096",
        ),
        ("POST", "/api/messenger-accounts", {"messenger": "sms", "name": "sms"}, _MANY, "length <= 64"),
        ("PUT", "/api/channel-accounts/shop/credentials", {}, _LONG_VALUE, "length <= 4096"),
    ],
)
async def test_settings_past_their_bounds_are_a_400_before_a_plugin_reads_them(
    make_client: Any, method: str, url: str, fields: dict[str, Any], settings: dict[str, str], says: str
) -> None:
    """A setting's value, its name and the count of names are bounded (stated in the OpenAPI document): a
    request past one is a 400 naming ``settings``, not a megabyte kept in JSON or sealed as a secret."""
    async with make_client() as api:
        body = _problem(await api.request(method, url, json={**fields, "settings": settings}), 400, says)
        assert body["errors"][0]["key"].startswith("settings"), body
        assert (await api.get("/api/channel-accounts")).json() == []


async def test_deep_json_is_a_400(make_client: Any) -> None:
    async with make_client() as api:
        deep = "[" * 10_000 + "]" * 10_000
        headers = {"content-type": "application/json"}
        _problem(await api.post("/api/members", content=deep, headers=headers), 400, "nested too deeply")
        just_past = {"name": "x", "tags": []}
        nested: Any = "leaf"
        for _ in range(MAX_JSON_DEPTH):
            nested = [nested]
        just_past["tags"] = nested
        _problem(await api.post("/api/members", json=just_past), 400, "nested too deeply")
        _problem(await api.post("/api/members", content=b'{"name": ', headers=headers), 400, "not valid JSON")


@pytest.mark.parametrize("points", ['"100"', "1e2", "100.0", "true"])
async def test_request_bodies_are_decoded_strictly(make_client: Any, points: str) -> None:
    async with make_client() as api:
        m = await _member(api)
        r = await api.post(
            f"/api/members/{m}/points/adjustments",
            content=f'{{"points": {points}, "reason": "fix"}}',
            headers={"Idempotency-Key": "s-1", "content-type": "application/json"},
        )
        body = _problem(r, 400, "points", "Expected `int`")
        assert body["errors"][0]["key"] == "points"
        assert (await api.get(f"/api/members/{m}/points")).json()["balance"]["available"] == 0


async def test_members_filter_by_referrer_and_source_campaign(make_client: Any) -> None:
    async with make_client() as api:
        referrer = await _member(api)
        referred = await _member(api, referrer_id=referrer, source_campaign="双11")
        other = await _member(api, source_campaign="618")

        async def ids(**params: Any) -> list[int]:
            r = await api.get("/api/members", params=params)
            assert r.status_code == 200, r.text
            return [i["id"] for i in r.json()["items"]]

        assert await ids() == [referrer, referred, other]
        assert await ids(referrer_id=referrer) == [referred]
        assert await ids(referrer_id=other) == []
        assert await ids(source_campaign="618") == [other]
        assert await ids(source_campaign="双11", referrer_id=referrer) == [referred]


def _routes(app: Any) -> list[tuple[str, str, Any]]:
    return [
        (method, route.path, handler)
        for route in app.routes
        for method, (handler, _) in getattr(route, "route_handler_map", {}).items()
        if method not in {"OPTIONS", "HEAD"}
    ]


def _fill(path: str) -> str:
    values = {"int": "1", "date": "2026-11-11"}
    return re.sub(r"\{(\w+):(\w+)\}", lambda m: values.get(m.group(2), "x"), path)


async def test_unknown_query_parameters_are_a_400_on_every_protected_route(make_client: Any) -> None:
    async with make_client(host=PluginHost(autoload=True, disabled=set())) as api:
        keys = {"admin": api.key, "pos": await api.create_key("pos", store_code="S1")}
        checked = 0
        for method, path, handler in _routes(api.app):
            roles = handler.opt.get(ROLES_OPT)
            if not roles:
                continue  # public routes answer platforms whose signed parameters they check themselves
            key = keys["admin"] if Role.ADMIN in roles else keys["pos"]
            r = await api.request(
                method,
                _fill(path) + "?zz_not_a_parameter=1",
                headers={"Authorization": f"Bearer {key}"},
                json={} if method in {"POST", "PUT", "PATCH"} else None,
            )
            assert r.status_code == 400, (method, path, r.text)
            assert "zz_not_a_parameter" in r.json()["detail"], (method, path, r.text)
            checked += 1
        assert checked > 40
        # declared parameters are still accepted, with the unknown one named next to them
        assert (await api.get("/api/members", params={"tag": "vip", "limit": 5})).status_code == 200
        body = _problem(await api.get("/api/members", params={"tags": "vip"}), 400, "tags")
        assert "tag" in body["detail"].split("accepts:")[1]
        # any number of unknown names of any size: the first five, each by its first 40 characters
        many = await api.get("/api/members", params={f"{i:03d}" + "z" * 2_000: "1" for i in range(20)})
        body = _problem(many, 400, "000" + "z" * 37)
        assert len(many.content) < 4_000
        assert [e["key"] for e in body["errors"]] == [f"{i:03d}" + "z" * 37 for i in range(5)]


async def test_openapi_documents_problems_and_bounds_every_integer(make_client: Any) -> None:
    async with make_client(host=PluginHost(autoload=True, disabled=set()), role=None) as api:
        doc = (await api.get("/schema/openapi.json")).json()
    operations = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            operations += 1
            where = f"{method.upper()} {path}"
            responses = op["responses"]
            if not path.startswith(("/health", "/schema")):
                for status in ("400", "401", "403"):
                    assert status in responses, (where, status)
            if "{" in path:
                assert "404" in responses, where
            if method == "delete":  # 404 for what it names; 409/422 only where the route names them
                assert "404" in responses, where
            elif method != "get":
                assert {"409", "422"} <= set(responses), where
            for status, response in responses.items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (where, status)
                    ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                    assert ref.endswith("/Problem"), (where, status)
            for parameter in op.get("parameters", []):
                schema = parameter["schema"]
                # an optional one's bound sits in its integer branch (api.inputs.bounds_inside_one_of)
                for kind in [schema, *schema.get("oneOf", [])]:
                    if kind.get("type") == "integer":
                        assert kind.get("maximum", MAX_ID + 1) <= MAX_ID, (where, parameter["name"])
    assert operations > 50
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["required"])
    patch = doc["paths"]["/api/members/{member_id}"]["patch"]["responses"]
    assert {"412", "428"} <= set(patch)
    assert "429" in doc["paths"]["/pos/v1/receipts"]["post"]["responses"]


@pytest.mark.parametrize(
    ("url", "json", "key", "accepted"),
    [
        ("/api/members/1/points/adjustments", {"points": 1, "reason": "r", "idempotency_key": "k"}, None,
         "expires_at, points, reason"),
        ("/api/points/rules/preview", {"order": {"channel": "x", "lines": [], "zzz": 1}}, "order", "channel"),
    ],
)  # fmt: skip
async def test_an_unknown_body_field_is_refused_naming_the_fields_accepted(
    make_client: Any, url: str, json: Any, key: str | None, accepted: str
) -> None:
    # as an unknown query parameter's refusal lists what the route accepts
    async with make_client() as api:
        response = await api.post(url, json=json)
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error.get("key") == key
    assert error["message"].startswith("Object contains unknown field")
    assert "(this object accepts: " in error["message"] and accepted in error["message"]
