"""The app shell: health, OpenAPI, authentication and roles, problem details, request ids, plugin routes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import tongcrm
from litestar import get, post
from litestar.params import JSONBody
from tongcrm.api.problems import MAX_INSTANCE, instance_of
from tongcrm.api.security import requires
from tongcrm.api.system import WriteCheck
from tongcrm.auth.service import Role
from tongcrm.errors import ConfigError, Conflict
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import RouteSpec


class Order(msgspec.Struct):
    amount_fen: int
    note: str


@post("/api/test/orders", opt=requires(Role.ADMIN))
async def create_order(data: JSONBody[Order]) -> dict[str, Any]:
    if data.note == "dup":
        raise Conflict("order already exists", extra={"order_id": 42})
    return {"amount_fen": data.amount_fen}


@get("/api/test/boom", opt=requires(Role.ADMIN))
async def boom() -> None:
    raise RuntimeError("secret internal detail")


EXTRA = (create_order, boom)


async def test_health_and_schema_need_no_key(make_client: Any) -> None:
    async with make_client(role=None) as api:
        health = await api.get("/health")
        assert health.status_code == 200, health.text  # a 503 says which check failed, and how
        assert health.json()["database"] == "ok"
        schema = await api.get("/schema/openapi.json")
        assert schema.status_code == 200
        assert "/health" in schema.json()["paths"]
        assert "/api/plugins" in schema.json()["paths"]


async def _health_with(api: Any, part: str, stand_in: Any) -> Any:
    """``/health`` with the app's ``part`` (its point reader, its write check) replaced: a 503 problem."""
    real = getattr(api.app.state, part)
    setattr(api.app.state, part, stand_in)
    try:
        down = await api.get("/health")
    finally:
        setattr(api.app.state, part, real)
    assert down.status_code == 503
    assert down.headers["content-type"].startswith("application/problem+json")
    return down


async def test_health_answers_503_when_the_database_check_fails(make_client: Any) -> None:
    async with make_client(role=None) as api:
        reader = api.app.state.point_reader

        class Down:
            async def first(self, *_: Any) -> None:
                raise ConnectionRefusedError("database down")

        down = await _health_with(api, "point_reader", Down())
        assert api.app.state.point_reader is reader
        assert down.json()["detail"] == "database check failed: ConnectionRefusedError"
        assert down.json()["instance"] == "/health"
        assert down.json()["request_id"] == down.headers["x-request-id"]
        assert (await api.get("/health")).json()["database"] == "ok"


class _Connection:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def __aenter__(self) -> _Connection:
        return self

    async def __aexit__(self, *_: Any) -> None:
        return None

    async def execute(self, _statement: Any) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer == "hang":
            await asyncio.sleep(3600)
        return SimpleNamespace(scalar=lambda: self.answer)


class _Engine:
    """A write pool whose connections answer ``answer`` (a value, an exception, or ``"hang"``), counting checks."""

    def __init__(self, answer: Any, dialect: str = "postgresql") -> None:
        self.answer, self.checks = answer, 0
        self.dialect = SimpleNamespace(name=dialect)

    def connect(self) -> _Connection:
        self.checks += 1
        return _Connection(self.answer)


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (ConnectionRefusedError("pool"), "write pool check failed: ConnectionRefusedError"),
        ("hang", "write pool check failed: TimeoutError"),
        (True, "the database is a read-only standby"),
    ],
)
async def test_health_answers_503_when_the_write_pool_fails_though_reads_work(
    make_client: Any, answer: Any, detail: str
) -> None:
    async with make_client(role=None) as api:
        down = await _health_with(api, "write_check", WriteCheck(_Engine(answer), timeout=0.05))  # type: ignore[arg-type]
        assert down.json()["detail"] == detail
        assert (await api.get("/health")).json() == {
            "status": "ok",
            "database": "ok",
            "version": tongcrm.__version__,
        }


async def test_the_write_check_of_health_is_reused_for_its_ttl_and_shared_by_concurrent_callers() -> None:
    now = [0.0]
    engine = _Engine(False)
    check = WriteCheck(engine, ttl=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await asyncio.gather(*(check.failure() for _ in range(5))) == [None] * 5
    assert engine.checks == 1  # five callers at once: one check
    now[0] = 0.99
    assert await check.failure() is None and engine.checks == 1
    engine.answer = ConnectionResetError()
    now[0] = 1.0
    assert await check.failure() == "write pool check failed: ConnectionResetError"
    assert engine.checks == 2
    engine.answer = False
    now[0] = 2.0  # a recovered pool is seen at the next check
    assert await check.failure() is None and engine.checks == 3


async def test_the_write_check_passes_on_a_working_database(tongcrm_db: Any) -> None:
    """The real statement, on the test database of each backend (PostgreSQL: not a standby)."""
    from tongcrm.db.engine import create_engine

    engine = create_engine(tongcrm_db.url)
    try:
        assert await WriteCheck(engine).failure() is None
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "missing API key"),
        ("Bearer tck_0000_nope", "unknown or revoked API key"),
        ("Basic abc", "malformed Authorization header"),
    ],
)
async def test_requests_without_a_valid_key_get_401_problem(
    make_client: Any, header: str | None, detail: str
) -> None:
    async with make_client(role=None) as api:
        headers = {"Authorization": header} if header else {}
        response = await api.get("/api/plugins", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 401 and detail in body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("role", "status"), [("admin", 200), ("operator", 200), ("analyst", 200), ("pos", 403)]
)
async def test_roles_are_enforced(make_client: Any, role: str, status: int) -> None:
    async with make_client(role=role, store_code="S1" if role == "pos" else None) as api:
        response = await api.get("/api/plugins")
    assert response.status_code == status
    if status == 403:
        assert "role 'pos' may not do this" in response.json()["detail"]


async def test_plugins_endpoint_lists_plugins_and_hooks(make_client: Any) -> None:
    async with make_client(host=PluginHost(autoload=True, disabled=set())) as api:
        body = (await api.get("/api/plugins")).json()
    assert {p["name"] for p in body} == {"taobao", "jd", "offline_pos", "sms_gateway", "demo", "webhooks"}


async def test_validation_error_is_a_400_problem_that_names_the_field(make_client: Any) -> None:
    async with make_client(extra_handlers=EXTRA) as api:
        response = await api.post("/api/test/orders", json={"amount_fen": "12.5", "note": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["title"] == "Invalid request"
    assert "amount_fen" in body["detail"]


async def test_a_body_of_another_media_type_is_a_415_problem_naming_the_expected_one(
    make_client: Any,
) -> None:
    """A form or text body on a JSON route was read as JSON and refused as "not valid JSON" (400), while the
    API documents 415 for a wrong media type."""
    body = b'{"amount_fen": 125, "note": "x"}'
    async with make_client(extra_handlers=EXTRA) as api:
        answers = {
            kind: await api.post("/api/test/orders", content=body, headers={"Content-Type": kind})
            for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")
        }
        fine = [
            await api.post("/api/test/orders", content=body, headers={"Content-Type": kind})
            for kind in (
                "application/json; charset=utf-8",
                "Application/JSON",
                "application/merge-patch+json",
            )
        ]
        bare = await api.post("/api/test/orders", content=body)  # no Content-Type: read as JSON
    for kind, answer in answers.items():
        assert answer.status_code == 415, (kind, answer.text)
        problem = answer.json()
        assert problem["title"] == "Unsupported media type" and problem["expected"] == "application/json"
        assert (
            "Content-Type: application/json" in problem["detail"] and kind.split(";")[0] in problem["detail"]
        )
    assert [a.status_code for a in fine] == [201, 201, 201] and fine[0].json() == {"amount_fen": 125}
    assert "content-type" not in bare.request.headers and bare.status_code == 201


async def test_domain_error_maps_to_its_status_with_extras(make_client: Any) -> None:
    async with make_client(extra_handlers=EXTRA) as api:
        response = await api.post("/api/test/orders", json={"amount_fen": 100, "note": "dup"})
    assert response.status_code == 409
    assert response.json()["detail"] == "order already exists"
    assert response.json()["order_id"] == 42


async def test_unexpected_error_is_a_500_problem_without_internals(make_client: Any) -> None:
    async with make_client(extra_handlers=EXTRA) as api:
        response = await api.get("/api/test/boom", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-123"
    text = response.text
    assert "secret internal detail" not in text and "Traceback" not in text
    assert response.json()["request_id"] == "req-123"


async def test_unknown_route_is_a_404_problem(make_client: Any) -> None:
    async with make_client() as api:
        response = await api.get("/api/does-not-exist")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    # routing happens inside the request-id layer: a path no route matches is traced like any other
    assert response.json()["request_id"] == response.headers["x-request-id"]
    # it says that no route has the path, and names it (the bare "Not Found" said neither)
    assert response.json()["detail"].startswith("no such route: GET /api/does-not-exist;")
    async with make_client() as api:
        typed = await api.get("/api/members/abc")  # a route has the path, but its id is not a number
        head = await api.head("/api/nowhere")
    assert typed.status_code == 404 and typed.json()["detail"].startswith(
        "no route matches GET /api/members/abc: a path segment is not of the type its route takes"
    )
    assert head.status_code == 404


async def test_a_problem_names_the_path_as_a_bounded_uri_reference_without_the_query(
    make_client: Any,
) -> None:
    async with make_client() as api:
        spaced = await api.get("/api/does not/会员%25", params={"mobile": "13800138000"})
        long = await api.get("/api/" + "长" * 5_000)
    assert spaced.json()["instance"] == "/api/does%20not/%E4%BC%9A%E5%91%98%25"  # RFC 3986, no query
    instance = long.json()["instance"]
    assert long.status_code == 404 and len(instance) <= MAX_INSTANCE
    assert instance.startswith("/api/%E9%95%BF") and instance.endswith(
        "%E9%95%BF"
    )  # cut at a whole character
    assert len(long.content) < 1_000
    assert instance_of("/" + "a" * 1_000) == "/" + "a" * (MAX_INSTANCE - 1)


async def test_request_ids_are_unique_and_an_unsafe_incoming_one_is_replaced(make_client: Any) -> None:
    async with make_client() as api:
        ids = [(await api.get("/health")).headers["x-request-id"] for _ in range(3)]
        unsafe = await api.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert (
        unsafe.headers["x-request-id"] != "bad id\twith spaces" and len(unsafe.headers["x-request-id"]) == 32
    )


async def test_plugin_routes_are_mounted_and_may_declare_public_paths(make_client: Any) -> None:
    @get("/callbacks/demo/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "public"}

    @get("/api/demo/secret", opt=requires(Role.ADMIN, Role.OPERATOR))
    async def secret() -> dict[str, str]:
        return {"pong": "private"}

    host = PluginHost(autoload=False)
    host.register(
        SimpleNamespace(
            routes=hookimpl(lambda: [RouteSpec(handlers=(ping, secret), public_paths=("/callbacks/demo",))])
        ),
        "demo",
    )
    async with make_client(host=host, role=None) as api:
        assert (await api.get("/callbacks/demo/ping")).json() == {"pong": "public"}
        assert (await api.get("/api/demo/secret")).status_code == 401


def test_a_route_without_a_role_guard_stops_the_app_from_starting() -> None:
    @get("/api/demo/open")
    async def forgotten() -> dict[str, str]:
        return {"oops": "open to anyone"}

    @get("/callbacks/demo/signed")
    async def signed() -> dict[str, str]:
        return {"checks": "its own signature"}

    async def own_hook(request: Any) -> None:
        return None

    @get("/api/demo/hooked", opt=requires(Role.ADMIN), before_request=own_hook)
    async def hooked() -> dict[str, str]:
        return {"would": "skip the key check"}

    host = PluginHost(autoload=False)
    host.register(
        SimpleNamespace(
            routes=hookimpl(
                lambda: [RouteSpec(handlers=(forgotten, signed, hooked), public_paths=("/callbacks/demo",))]
            )
        ),
        "demo",
    )
    from tongcrm.app import create_app
    from tongcrm.config import Settings

    settings = Settings(database_url="sqlite:///:memory:", secret_key="k" * 32)
    with pytest.raises(ConfigError, match=r"GET /api/demo/open \(forgotten\) names no roles") as raised:
        create_app(settings, host, run_jobs=False, configure_logs=False)
    assert "GET /api/demo/hooked (hooked) replaces the app's before_request hook" in str(raised.value)
    assert "signed" not in str(raised.value)  # public paths authenticate their callers themselves


async def test_options_is_answered_without_a_key_and_reveals_nothing_else(make_client: Any) -> None:
    async with make_client(role=None) as api:
        response = await api.options("/api/members/lookup")
        assert response.status_code == 204 and "GET" in response.headers["allow"]
        assert (await api.get("/api/members/lookup", params={"mobile": "13800138000"})).status_code == 401


async def test_the_favicon_is_served_without_a_key(make_client: Any) -> None:
    """A browser asks for /favicon.ico on its first visit: it gets an icon, not a 404 problem."""
    import struct

    async with make_client(role=None) as api:
        icon = await api.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/x-icon")
    assert "max-age" in icon.headers["cache-control"]
    reserved, kind, count = struct.unpack("<HHH", icon.content[:6])
    assert (reserved, kind, count) == (0, 1, 1)
    width, height, _, _, _, bits, length, offset = struct.unpack("<BBBBHHII", icon.content[6:22])
    assert (width, height, bits, offset) == (32, 32, 32, 22) and offset + length == len(icon.content)
    assert icon.content[offset : offset + 8] == b"\x89PNG\r\n\x1a\n"
