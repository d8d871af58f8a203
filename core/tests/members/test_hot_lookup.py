"""The member lookup answered before litestar (``tongcrm.api.hot``): the same answer as the route's, and every
case but the plain one — no cached key, another role, ``reveal``, other parameters, no member, bad input, a
revoked key — left to the route, which refuses or answers it as before."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from litestar import Litestar, get
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import CacheControlHeader, Cookie, ResponseHeader
from litestar.testing import TestClient
from tongcrm.api.hot import HotAnswer, HotTarget, hot_routes
from tongcrm.api.middleware import with_request_ids
from tongcrm.api.responses import EncodedJSON
from tongcrm.api.security import READ_ROLES, authorize, confirms_key_itself, limited_by, requires
from tongcrm.app import HOT_ROUTES, create_app
from tongcrm.db.point_reads import AsyncpgReader, SQLiteReader, create_point_reader
from tongcrm.errors import ConfigError, NotFound
from tongcrm.members import service
from tongcrm.plugin.types import HotRouteSpec
from tongcrm.testing.stores import add_store, store_plugin

from .conftest import make_host

LOOKUP = "/api/members/lookup"


class Spy:
    """Wraps the app's hot answer of the lookup and records, per request, whether it answered."""

    def __init__(self, app: Any) -> None:
        self.answered: list[bool] = []
        answers: dict[tuple[str, str], HotAnswer] = app.state.hot_answers
        original = answers[("GET", LOOKUP)]

        async def spy(scope: Any, receive: Any) -> Any:
            response = await original(scope, receive)
            self.answered.append(response is not None)
            return response

        answers[("GET", LOOKUP)] = spy

    def last(self) -> bool:
        return self.answered[-1]


async def _member_and_key(api: Any) -> tuple[dict[str, str], int]:
    """A member (mobile 13800138000), and the headers and id of a new analyst key."""
    made = await api.post("/api/members", json={"name": "王小明", "mobile": "13800138000"})
    assert made.status_code == 201, made.text
    created = (await api.post("/api/api-keys", json={"role": "analyst"})).json()
    return {"Authorization": f"Bearer {created['key']}"}, int(created["id"])


async def test_the_hot_lookup_answers_as_the_route_does(make_client: Any) -> None:
    async with make_client(host=make_host()) as api:
        spy = Spy(api.app)
        as_analyst, _ = await _member_and_key(api)
        # all are answered before litestar, the key's first request too (the hot path reads the key as the
        # route would, and caches it); the route's own answer is had with the hot answers set aside
        hot = [
            await api.get(LOOKUP, params=params, headers=as_analyst)
            for params in ({"mobile": "13800138000"}, {"identity": "mobile:+86 138 0013 8000"})
        ]
        assert spy.answered == [True, True]
        kept = dict(api.app.state.hot_answers)
        api.app.state.hot_answers.clear()
        by_route = await api.get(LOOKUP, params={"mobile": "13800138000"}, headers=as_analyst)
        api.app.state.hot_answers.update(kept)
        assert spy.answered == [True, True]
        assert by_route.status_code == 200
        assert by_route.json()["mobile"] == "138****8000" and by_route.json()["name"] == "王**"

        def same(response: Any) -> dict[str, str]:
            return {k: v for k, v in response.headers.items() if k != "x-request-id"}

        for response in hot:
            assert response.status_code == 200
            assert response.content == by_route.content
            assert same(response) == same(by_route)
            assert response.headers["x-request-id"] != by_route.headers["x-request-id"]
        # counted in the metrics by the route's path, as the route's own answers are
        metrics = (await api.get("/metrics")).text
        assert (
            'tongcrm_requests_total{app_name="tongcrm",method="GET",path="/api/members/lookup",status_code="200"}'
            in metrics
        )


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("mobile=13800138000&reveal=mobile", {}, 403),  # an analyst may not reveal: the route refuses
        ("mobile=13800138000&status=active", {}, 400),  # a parameter the route does not read
        ("mobile=13800138000&mobile=13800138000", {}, 400),  # given twice: the route refuses it
        ("mobile=13900139000&mobile=13800138000", {}, 400),  # (it once answered for the last value)
        ("identity=mobile:13800138000&identity=mobile:13800138000", {}, 400),
        ("mobile=13800138000&identity=mobile:13800138000", {}, 400),  # exactly one of them
        ("mobile=1380013%008000", {}, 400),  # a NUL character
        ("mobile=13900139000", {}, 404),  # no such member
        ("mobile=12", {}, 422),  # not a phone number
        ("identity=weibo.id:1", {}, 422),  # an unknown kind
        ("", {}, 400),
        ("mobile=13800138000", {"Host": "bad host"}, 400),  # a Host header litestar refuses
    ],
)
async def test_the_hot_lookup_leaves_all_but_the_plain_case_to_the_route(
    make_client: Any, query: str, headers: dict[str, str], status: int
) -> None:
    async with make_client(host=make_host()) as api:
        as_analyst, _ = await _member_and_key(api)
        assert (
            await api.get(f"{LOOKUP}?mobile=13800138000", headers=as_analyst)
        ).status_code == 200  # cached
        spy = Spy(api.app)
        response = await api.get(f"{LOOKUP}?{query}", headers={**as_analyst, **headers})
        assert response.status_code == status, response.text
        assert spy.answered in ([], [False]), "the route answered"
        if status != 200:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "王" not in response.text


@pytest.mark.parametrize(
    "authorization", [None, "Bearer tck_nope_nope", "Basic abc", "Bearer ", "bearer-without-space"]
)
async def test_the_hot_lookup_leaves_callers_without_a_cached_key_to_the_route(
    make_client: Any, authorization: str | None
) -> None:
    async with make_client(host=make_host()) as api:
        await _member_and_key(api)
        spy = Spy(api.app)
        headers = {"Authorization": authorization} if authorization is not None else {}
        api.client.headers.pop("Authorization")
        response = await api.get(f"{LOOKUP}?mobile=13800138000", headers=headers)
        assert response.status_code == 401, response.text
        assert spy.answered in ([], [False])


async def test_the_hot_lookup_refuses_roles_the_route_does_not_admit_and_revoked_keys(
    make_client: Any,
) -> None:
    with_stores = make_host()
    with_stores.register(store_plugin(), "test_store")  # a till's key is for a store tongcrm knows
    async with make_client(host=with_stores) as api, make_client(host=make_host(), role=None) as other:
        as_analyst, key_id = await _member_and_key(api)
        spy = Spy(api.app)
        # a till's key is cached once the route has refused it, and refused again before litestar sees it
        await add_store(api.db.sessions, "S1")
        till = (await api.post("/api/api-keys", json={"role": "pos", "store_code": "S1"})).json()
        as_till = {"Authorization": f"Bearer {till['key']}"}
        for _ in range(2):
            assert (await api.get(f"{LOOKUP}?mobile=13800138000", headers=as_till)).status_code == 403
        assert spy.answered in ([False], [False, False])
        # a key revoked through another app is refused from the next request on, the hot path included
        for _ in range(2):
            assert (await api.get(f"{LOOKUP}?mobile=13800138000", headers=as_analyst)).status_code == 200
        assert spy.last()
        revoked = await other.client.delete(
            f"/api/api-keys/{key_id}", headers={"Authorization": f"Bearer {api.key}"}
        )
        assert revoked.status_code == 200, revoked.text
        refused = await api.get(f"{LOOKUP}?mobile=13800138000", headers=as_analyst)
        assert refused.status_code == 401 and "王" not in refused.text
        assert not spy.last()


def test_a_hot_route_must_rely_on_nothing_litestar_would_run_around_it() -> None:
    def guard(*_: Any) -> None:
        return None

    @get("/plain", opt={**requires(*READ_ROLES), **confirms_key_itself()})
    async def plain() -> None:
        return None

    @get("/guarded", opt={**requires(*READ_ROLES), **confirms_key_itself()}, guards=[guard])
    async def guarded() -> None:
        return None

    @get("/unconfirmed", opt=requires(*READ_ROLES))
    async def unconfirmed() -> None:
        return None

    def check(_: Any) -> None:
        return None

    @get("/limited", opt={**requires(*READ_ROLES), **confirms_key_itself(), **limited_by(check)})
    async def limited() -> None:
        return None

    app = Litestar([plain, guarded, unconfirmed, limited], before_request=authorize)

    def build(target: HotTarget) -> HotAnswer:
        assert target.roles == frozenset(READ_ROLES)

        async def answer(scope: Any, receive: Any) -> None:
            return None

        return answer

    def hot(path: str) -> dict[tuple[str, str], HotAnswer]:
        return hot_routes(app, [HotRouteSpec("GET", path, build)])

    assert set(hot("/plain")) == {("GET", "/plain")}
    with pytest.raises(ConfigError, match="guards"):
        hot("/guarded")
    with pytest.raises(ConfigError, match="confirms_key_itself"):
        hot("/unconfirmed")
    with pytest.raises(ConfigError, match="no GET route"):
        hot("/missing")
    with pytest.raises(ConfigError, match="no POST route"):
        hot_routes(app, [HotRouteSpec("POST", "/plain", build)])
    # a limit on its callers is run by the answer (HotTarget.caller), not skipped
    assert set(hot("/limited")) == {("GET", "/limited")}


@pytest.mark.parametrize("name", ["mobile", "identity"])
async def test_a_lookup_parameter_given_twice_is_refused_by_the_route_and_the_hot_path(
    make_client: Any, name: str
) -> None:
    """``mobile=`` (or ``identity=``) twice is a 400 problem, whether the key is cached (the hot path leaves it to
    the route) or not (the route alone), rather than an answer for the last value."""
    async with make_client(host=make_host()) as api:
        as_analyst, _ = await _member_and_key(api)
        value = "13800138000" if name == "mobile" else "mobile:13800138000"
        twice = (
            f"{LOOKUP}?{name}=13900139000&{name}={value}"
            if name == "mobile"
            else f"{LOOKUP}?{name}={value}&{name}={value}"
        )
        spy = Spy(api.app)
        for _ in range(2):  # the first request checks the key through the route, the second has it cached
            response = await api.get(twice, headers=as_analyst)
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["detail"] == f"{name} given twice"
            assert "王" not in response.text
        assert spy.answered in ([], [False], [False, False])
        assert (await api.get(f"{LOOKUP}?{name}={value}", headers=as_analyst)).status_code == 200
        assert spy.last(), "a cached key's plain lookup is answered before litestar"


def _plain_route() -> Any:
    @get("/plain", opt={**requires(*READ_ROLES), **confirms_key_itself()})
    async def plain() -> None:
        return None

    return plain


def _no_answer(_target: HotTarget) -> HotAnswer:
    async def answer(scope: Any, receive: Any) -> None:
        return None

    return answer


async def _hook(message: Any, scope: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"before_send": [_hook]}, "app before_send hooks"),
        ({"cors_config": CORSConfig()}, "CORS"),
        ({"csrf_config": CSRFConfig(secret="s" * 32)}, "CSRF"),
        ({"compression_config": CompressionConfig(backend="gzip")}, "compression"),
        ({"allowed_hosts": ["api.example.com"]}, "allowed hosts"),
        ({"response_headers": [ResponseHeader(name="X-Frame-Options", value="DENY")]}, "response headers"),
        ({"response_cookies": [Cookie(key="seen", value="1")]}, "response headers or cookies"),
        ({"cache_control": CacheControlHeader(no_store=True)}, "response headers"),
    ],
)
def test_a_hot_route_must_rely_on_nothing_the_app_applies_around_every_route(
    config: dict[str, Any], problem: str
) -> None:
    """What the app's config applies to every route (hooks on its messages, middleware around the router or the
    routes, headers and cookies) would not apply, or not as litestar applies it, to a hot answer: the app does
    not start, and says why."""
    spec = [HotRouteSpec("GET", "/plain", _no_answer)]
    assert set(hot_routes(Litestar([_plain_route()], before_request=authorize), spec)) == {("GET", "/plain")}
    app = Litestar([_plain_route()], before_request=authorize, **config)
    with pytest.raises(
        ConfigError, match=f"hot route GET /plain cannot be answered outside litestar: .*{problem}"
    ):
        hot_routes(app, spec)


def test_a_before_send_hook_sees_a_hot_answer_without_its_route() -> None:
    """Why the app's ``before_send`` hooks are refused: they run on a hot answer's messages (the layer sits
    inside the send litestar wraps), but the scope they get names no route handler, as litestar's would."""
    seen: list[tuple[str, bool]] = []

    async def hook(message: Any, scope: Any) -> None:
        if message["type"] == "http.response.start":
            seen.append((scope["path"], "route_handler" in scope))

    async def answer(scope: Any, receive: Any) -> EncodedJSON:
        return EncodedJSON(b"{}")

    app = with_request_ids(Litestar([_plain_route()], before_send=[hook]), {("GET", "/plain"): answer})
    with TestClient(app) as client:
        assert client.get("/plain").content == b"{}"
    assert seen == [("/plain", False)]


def test_the_app_answers_its_hot_routes(tongcrm_settings: Any) -> None:
    """Today's app starts with its hot routes (nothing it applies around every route is refused)."""
    app = create_app(tongcrm_settings, make_host(), run_jobs=False, configure_logs=False)
    assert set(app.state.hot_answers) == {(r.method, r.path) for r in HOT_ROUTES} == {("GET", LOOKUP)}


async def test_a_mobile_typed_with_other_digits_is_the_same_member(make_client: Any) -> None:
    """A mobile sent with fullwidth digits (as some input methods type them) is the member of the same mobile
    in ASCII: one member, found by either form (the E.164 shortcut once stored it as it came, under another
    blind index)."""
    async with make_client(host=make_host()) as api:
        made = await api.post("/api/members", json={"name": "王小明", "mobile": "+86138\uff10\uff10138000"})
        assert made.status_code == 201, made.text
        for mobile in ("13800138000", "+8613800138000", "+86138\uff10\uff10138000"):
            found = await api.get(LOOKUP, params={"mobile": mobile})
            assert found.status_code == 200, (mobile, found.text)
            assert found.json()["id"] == made.json()["id"]
        again = await api.post("/api/members", json={"name": "王小明", "mobile": "13800138000"})
        assert again.status_code == 409, again.text


def test_the_lookup_encodes_its_summary_as_member_out_would() -> None:
    """The lookup encodes :class:`MemberSummary` itself rather than a :class:`MemberOut` copy of it: the two must
    keep the same fields, in the same order, of the same types, so that the JSON is the documented one."""
    from datetime import UTC, date, datetime
    from typing import get_type_hints

    from tongcrm.members.api import _JSON, member_out
    from tongcrm.members.schemas import MemberOut
    from tongcrm.members.service import MemberSummary

    assert MemberSummary.__struct_fields__ == MemberOut.__struct_fields__
    assert get_type_hints(MemberSummary) == get_type_hints(MemberOut)
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    summary = MemberSummary(
        id=7, status="active", merged_into_id=None, version=3, name="王**", gender="f", birthday=date(1990, 5, 6),
        province="浙江", city="杭州", mobile="138****8000", source_channel="jd", source_store="S1",
        source_campaign="c", referrer_id=2, lifecycle_stage="active", tags=["a", "b"], created_at=at, updated_at=at,
    )  # fmt: skip
    assert _JSON.encode(summary) == _JSON.encode(member_out(summary))


def test_a_summary_holds_each_field_of_its_member() -> None:
    """``summary`` builds its struct positionally: each field must come from the member's attribute of its name."""
    from datetime import UTC, date, datetime
    from types import SimpleNamespace
    from typing import cast

    from tongcrm.crypto import Vault
    from tongcrm.members.models import Member
    from tongcrm.members.phone import MOBILE_CONTEXT
    from tongcrm.members.service import MemberSummary, summary

    vault = Vault("a-test-secret-0123456789abcdef")
    member = SimpleNamespace(
        id=1, status="s-status", merged_into_id=3, version=4, name="n-name", gender="g-gender",
        birthday=date(1990, 1, 2), province="p-province", city="c-city",
        mobile_enc=vault.encrypt("+8613800138000", context=MOBILE_CONTEXT), source_channel="sc-channel",
        source_store="ss-store", source_campaign="sp-campaign", referrer_id=5, lifecycle_stage="l-stage",
        created_at=datetime(2026, 1, 1, tzinfo=UTC), updated_at=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip
    out = summary(cast(Member, member), ["b", "a", "b"], vault, reveal=True)
    for field in MemberSummary.__struct_fields__:
        expected = {"mobile": "+8613800138000", "tags": ["a", "b"]}.get(field, getattr(member, field, None))
        assert getattr(out, field) == expected, field
    masked = summary(cast(Member, member), [], vault)
    assert (masked.name, masked.mobile) == ("n*****", "138****8000")


async def test_lookups_served_together_each_answer_their_own_member(make_client: Any) -> None:
    """Lookups that reach the point reader in the same turn of the event loop share one statement (on SQLite
    as on PostgreSQL, issue #22): each still answers its own member, as it answers alone, and a mobile nobody
    holds is still the route's 404."""
    async with make_client(host=make_host()) as api:
        mobiles = [f"1380013800{i}" for i in range(4)]
        made = [
            (await api.post("/api/members", json={"name": f"会员{i}", "mobile": m}))
            for i, m in enumerate(mobiles)
        ]
        assert all(r.status_code == 201 for r in made), [r.text for r in made]
        alone = [await api.get(LOOKUP, params={"mobile": m}) for m in mobiles]
        asked = [*mobiles, "13900139000", mobiles[0]]
        together = await asyncio.gather(*(api.get(LOOKUP, params={"mobile": m}) for m in asked))
        assert [r.status_code for r in together] == [200, 200, 200, 200, 404, 200]
        assert [r.content for r in together[:4]] == [r.content for r in alone]
        assert together[5].content == alone[0].content
        assert [r.json()["id"] for r in together[:4]] == [r.json()["id"] for r in made]
        # lookups started in one turn through a point reader of this loop (the test client runs the app in a
        # loop of its own, one request at a time): each its own member
        state = api.app.state
        reader = create_point_reader(api.db.url, api.db.engine)
        try:
            summaries = await asyncio.gather(
                *(service.lookup_summary(reader, state.vault, state.host, mobile=m) for m in asked),
                return_exceptions=True,
            )
        finally:
            await reader.close()
        ids = [r.json()["id"] for r in made]
        assert [getattr(s, "id", s) for s in summaries[:4]] == ids and getattr(
            summaries[5], "id", None
        ) == ids[0]
        assert isinstance(summaries[4], NotFound)
        # the same summaries a lookup alone answers, field for field
        encoded = [msgspec.json.encode(s) for s in summaries if not isinstance(s, BaseException)]
        assert [msgspec.json.decode(e) for e in encoded] == [r.json() for r in (*alone, alone[0])]
        assert isinstance(reader, AsyncpgReader | SQLiteReader)
        assert reader.shared_statements < reader.shared_callers == len(asked)
