"""The member lookup answered before litestar (``tongcrm.api.hot``): the same answer as the route's, and every
case but the plain one — no cached key, another role, ``reveal``, other parameters, no member, bad input, a
revoked key — left to the route, which refuses or answers it as before."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, get
from tongcrm.api.hot import HotAnswer, hot_routes
from tongcrm.api.security import READ_ROLES, authorize, confirms_key_itself, limited_by, requires
from tongcrm.errors import ConfigError

from .conftest import make_host

LOOKUP = "/api/members/lookup"


class Spy:
    """Wraps the app's hot answer of the lookup and records, per request, whether it answered."""

    def __init__(self, app: Any) -> None:
        self.answered: list[bool] = []
        answers: dict[str, HotAnswer] = app.state.hot_answers
        original = answers[LOOKUP]

        async def spy(scope: Any) -> Any:
            response = await original(scope)
            self.answered.append(response is not None)
            return response

        answers[LOOKUP] = spy

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
        # the first checks the key through the route (and caches it); the next are answered before litestar
        by_route = await api.get(LOOKUP, params={"mobile": "13800138000"}, headers=as_analyst)
        hot = [
            await api.get(LOOKUP, params=params, headers=as_analyst)
            for params in ({"mobile": "13800138000"}, {"identity": "mobile:+86 138 0013 8000"})
        ]
        assert spy.answered == [False, True, True]
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
        ("mobile=13800138000&mobile=13800138000", {}, 200),  # the route decides what a repeat means
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
    async with make_client(host=make_host()) as api, make_client(host=make_host(), role=None) as other:
        as_analyst, key_id = await _member_and_key(api)
        spy = Spy(api.app)
        # a till's key is cached once the route has refused it, and refused again before litestar sees it
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

    @get("/limited", opt={**requires(*READ_ROLES), **confirms_key_itself(), **limited_by(lambda _: None)})
    async def limited() -> None:
        return None

    app = Litestar([plain, guarded, unconfirmed, limited], before_request=authorize)

    def build(_app: Litestar, roles: frozenset[Any]) -> HotAnswer:
        assert roles == frozenset(READ_ROLES)

        async def answer(scope: Any) -> None:
            return None

        return answer

    assert set(hot_routes(app, {"/plain": build})) == {"/plain"}
    with pytest.raises(ConfigError, match="guards"):
        hot_routes(app, {"/guarded": build})
    with pytest.raises(ConfigError, match="confirms_key_itself"):
        hot_routes(app, {"/unconfirmed": build})
    with pytest.raises(ConfigError, match="a limit on its callers"):  # the answer would skip the limit
        hot_routes(app, {"/limited": build})
    with pytest.raises(ConfigError, match="no GET route"):
        hot_routes(app, {"/missing": build})


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
