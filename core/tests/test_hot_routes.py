"""Hot routes beyond the member lookup (``tongcrm.api.hot``): a ``POST`` answer reads the body itself and, when
it leaves the request to litestar, the route reads the same body again; a route's limit is counted once
whichever path serves the request; and a plugin's hot route is held to core's rules at start-up, the refusal
naming the plugin."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar, Request, Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.testing import TestClient
from tongcrm.api.hot import HotAnswer, HotTarget, Replay, read_body
from tongcrm.api.middleware import with_request_ids
from tongcrm.api.security import confirms_key_itself, requires, take_limit
from tongcrm.app import create_app
from tongcrm.auth.service import Principal, Role
from tongcrm.config import Settings
from tongcrm.errors import ConfigError, TooManyRequests
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import HotRouteSpec, RouteSpec


@post("/echo", status_code=200, request_max_body_size=64)
async def echo(request: Request[Any, Any, Any]) -> bytes:
    return await request.body()


def _reading(limit: float, seen: list[bytes | None]) -> HotAnswer:
    """A hot answer that reads the whole body (as a POST answer does), records it and leaves the request."""

    async def answer(scope: Any, receive: Any) -> None:
        seen.append(await read_body(scope, receive, limit))
        return None

    return answer


def test_a_post_answer_that_falls_through_leaves_litestar_the_body_it_read() -> None:
    seen: list[bytes | None] = []
    app = with_request_ids(Litestar([echo]), {("POST", "/echo"): _reading(64, seen)})
    with TestClient(app) as client:
        answered = client.post("/echo", content=b'{"a": 1}')
        assert (answered.status_code, answered.content) == (200, b'{"a": 1}')
        # over the route's limit: the answer stops reading, litestar reads the same bytes and refuses them
        too_big = client.post("/echo", content=b"x" * 65)
        assert too_big.status_code == 413
    assert seen == [b'{"a": 1}', None]


async def test_a_body_in_several_messages_is_replayed_in_order_then_the_rest() -> None:
    """At the ASGI level: the answer consumed the first messages; litestar gets them again, then what the server
    still had to give."""
    messages = [
        {"type": "http.request", "body": b'{"par', "more_body": True},
        {"type": "http.request", "body": b'ts": ', "more_body": True},
        {"type": "http.request", "body": b'"three"}', "more_body": False},
    ]
    pending = list(messages)

    async def receive() -> Any:
        return pending.pop(0)

    replay = Replay(receive)
    assert await replay.receive() == messages[0]  # what a hot answer read before deciding to fall through
    assert [await replay.replay() for _ in range(3)] == messages

    seen: list[bytes | None] = []
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    pending[:] = list(messages)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "scheme": "http",
        "http_version": "1.1",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
        "app_root_path": "",
        "state": {},
        "asgi": {"version": "3.0"},
    }
    app = with_request_ids(Litestar([echo]), {("POST", "/echo"): _reading(64, seen)})
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert seen == [b'{"parts": "three"}']
    assert sent[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b'{"parts": "three"}'


def test_a_limit_is_counted_once_for_a_request_whichever_path_takes_it_first() -> None:
    counted: list[int] = []

    def check(principal: Principal) -> None:
        counted.append(principal.key_id)
        if len(counted) > 1:
            raise TooManyRequests("over", extra={"retry_after": 1})

    till = Principal(key_id=7, role=Role.POS, store_code="S1", label="till")
    first: dict[str, Any] = {}
    take_limit(first, check, till)  # the hot answer counts it
    take_limit(first, check, till)  # the route, after the answer fell through: not counted again
    assert counted == [7]
    second: dict[str, Any] = {}
    with pytest.raises(TooManyRequests):
        take_limit(second, check, till)
    with pytest.raises(TooManyRequests):  # the route repeats the refusal, without counting
        take_limit(second, check, till)
    assert counted == [7, 7]


class _Body(msgspec.Struct):
    n: int


def _build(target: HotTarget) -> HotAnswer:
    async def answer(scope: Any, receive: Any) -> None:
        return None

    return answer


def _plugin(name: str, handlers: tuple[Any, ...], hot: tuple[HotRouteSpec, ...]) -> PluginHost:
    class Plugin:
        @hookimpl
        def routes(self) -> list[RouteSpec]:
            return [RouteSpec(handlers=handlers, hot=hot)]

    host = PluginHost(autoload=False)
    host.register(Plugin(), name)
    return host


def _guard(*_: Any) -> None:
    return None


def _counter_dependency() -> int:
    return 1


@post("/things", opt={**requires(Role.ADMIN), **confirms_key_itself()}, status_code=200)
async def plain_thing(data: JSONBody[_Body]) -> _Body:
    return data


@post("/guarded", opt={**requires(Role.ADMIN), **confirms_key_itself()}, guards=[_guard], status_code=200)
async def guarded_thing(data: JSONBody[_Body]) -> _Body:
    return data


@post("/unconfirmed", opt=requires(Role.ADMIN), status_code=200)
async def unconfirmed_thing(data: JSONBody[_Body]) -> _Body:
    return data


@post("/injected", opt={**requires(Role.ADMIN), **confirms_key_itself()}, status_code=200)
async def injected_thing(data: JSONBody[_Body], counter: NamedDependency[int]) -> _Body:
    return data


@pytest.mark.parametrize(
    ("handler", "path", "problem"),
    [
        (guarded_thing, "/hotbad/guarded", "guards"),
        (unconfirmed_thing, "/hotbad/unconfirmed", r"no confirms_key_itself\(\)"),
        (injected_thing, "/hotbad/injected", "dependencies"),
    ],
)
def test_a_plugin_hot_route_that_breaks_a_rule_is_refused_at_start_naming_the_plugin(
    tongcrm_settings: Settings, handler: Any, path: str, problem: str
) -> None:
    from litestar.di import Provide

    router = Router(
        "/hotbad",
        route_handlers=[handler],
        dependencies={"counter": Provide(_counter_dependency, sync_to_thread=False)},
    )
    host = _plugin("hotbad", (router,), (HotRouteSpec("POST", path, _build),))
    with pytest.raises(
        ConfigError,
        match=rf"plugin 'hotbad': hot route POST {path} cannot be answered outside litestar: .*{problem}",
    ):
        create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)


def test_a_plugin_answers_only_its_own_routes(tongcrm_settings: Settings) -> None:
    """A plugin cannot put a hot answer in front of core's routes (or another plugin's): the member lookup
    answered by a plugin would bypass everything core's own answer checks."""
    router = Router("/hotbad", route_handlers=[plain_thing])
    host = _plugin("hotbad", (router,), (HotRouteSpec("GET", "/api/members/lookup", _build),))
    with pytest.raises(
        ConfigError, match=r"plugin 'hotbad': hot route GET /api/members/lookup: .*not one the plugin"
    ):
        create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)
    missing = _plugin("hotbad", (router,), (HotRouteSpec("POST", "/hotbad/nowhere", _build),))
    with pytest.raises(
        ConfigError, match="plugin 'hotbad': hot route POST /hotbad/nowhere: the app has no POST"
    ):
        create_app(tongcrm_settings, missing, run_jobs=False, configure_logs=False)


def test_a_plugin_hot_route_that_keeps_the_rules_is_answered(tongcrm_settings: Settings) -> None:
    router = Router("/hotgood", route_handlers=[plain_thing])
    host = _plugin("hotgood", (router,), (HotRouteSpec("POST", "/hotgood/things", _build),))
    app = create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)
    assert ("POST", "/hotgood/things") in app.state.hot_answers
    assert ("GET", "/api/members/lookup") in app.state.hot_answers


def test_a_hot_route_spec_names_a_method_it_can_answer() -> None:
    with pytest.raises(ValueError, match="method 'PUT'"):
        HotRouteSpec("PUT", "/x", _build)
    with pytest.raises(ValueError, match="must start with '/'"):
        HotRouteSpec("POST", "x", _build)
