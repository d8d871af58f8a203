"""Who may call what: till keys never reach the admin API, and previews follow one rule (they are reads)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar import Litestar, get
from tongcrm.api.security import authorize, check_route_access, is_public, requires
from tongcrm.auth.service import Role
from tongcrm.errors import ConfigError
from tongcrm.plugin.host import PluginHost
from tongcrm.tiers import testing as kit

#: A sample value per path-parameter type, so that every route can be called.
_SAMPLES = {
    "int": "1",
    "str": "x",
    "date": "2026-01-01",
    "path": "x",
    "uuid": "00000000-0000-0000-0000-000000000001",
}
_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


def _concrete(path: str) -> str:
    return _PARAM.sub(lambda m: _SAMPLES.get(m.group(2) or "str", "1"), path)


def _till_api(path: str) -> bool:
    return path == "/pos/v1" or path.startswith("/pos/v1/")


async def test_a_till_key_is_refused_on_every_route_outside_the_till_api(make_client: Any) -> None:
    """Walks every route of the app as built with every installed plugin, so a route added later that lets a
    till key in (core or plugin) fails here, not in a store."""
    host = PluginHost(autoload=True, disabled=set())
    # The console (/console, and / which redirects there) authenticates by its session cookie, never by a
    # bearer key, so a till key is refused there before any role is read: the console's own tests check that
    # till keys cannot sign in and that every console route is guarded (check_console_routes). The favicon is
    # open to anyone, as the app's own route check knows (exact_public).
    public = [
        "/health",
        "/schema",
        "/console",
        *(p for spec in host.routes() for p in spec.value.public_paths),
    ]
    async with make_client(host=host, role="pos", store_code="S1") as api:
        schema = (await api.get("/schema/openapi.json")).json()["paths"]
        called: list[str] = []
        let_in: list[str] = []
        for route in api.app.routes:
            if is_public(route.path, public) or _till_api(route.path) or route.path in {"/", "/favicon.ico"}:
                continue
            for handler in getattr(route, "route_handlers", ()):
                for method in sorted(set(handler.http_methods) - {"OPTIONS", "HEAD"}):
                    path = _concrete(route.path)
                    body = {} if method in {"POST", "PUT", "PATCH"} else None
                    response = await api.request(method, path, json=body)
                    called.append(f"{method} {route.path}")
                    if response.status_code != 403 or "role 'pos' may not do this" not in response.text:
                        let_in.append(f"{method} {route.path} -> {response.status_code}")
    assert let_in == []
    # the walk reached the routes a till key used to get through, and the rest of the admin API
    for reached in (
        "GET /api/members/lookup",
        "GET /api/members/{member_id:int}/points",
        "POST /api/members/{member_id:int}/points/redemptions",
        "GET /api/members/{member_id:int}/tier",
        "GET /api/members/{member_id:int}/entitlements",
        "POST /api/entitlements/grants/{grant_id:int}/usages",
        "POST /api/members/{member_id:int}/entitlements/{kind:str}/usages",
    ):
        assert reached in called, reached
    # and every operation the OpenAPI document lists outside the public and till paths
    documented = {
        f"{method.upper()} {path}"
        for path, operations in schema.items()
        if not is_public(path, public) and not _till_api(path)
        for method in operations
    }
    assert documented and documented <= {re.sub(r":\w+\}", "}", c) for c in called}


async def test_a_till_key_may_not_issue_member_codes(make_client: Any) -> None:
    """The one /pos/v1 route for the member app's backend, not for tills."""
    async with make_client(
        host=PluginHost(autoload=True, disabled=set()), role="pos", store_code="S1"
    ) as api:
        response = await api.post("/pos/v1/member-codes", json={"member_id": 1})
    assert response.status_code == 403


def test_a_route_admits_tills_alone_or_not_at_all() -> None:
    assert requires(Role.POS)
    with pytest.raises(ValueError, match="till keys"):
        requires(Role.ADMIN, Role.POS)


@pytest.mark.parametrize("path", ["/api/till-things", "/api", "/jd/till-things", "/posh/things", "/pos"])
def test_the_app_refuses_a_till_route_outside_the_till_namespace(path: str) -> None:
    async def till_things() -> None:
        return None

    app = Litestar(route_handlers=[get(path, opt=requires(Role.POS))(till_things)], before_request=authorize)
    with pytest.raises(ConfigError, match=rf"GET {path} .* admits till keys \(pos\) outside /pos/"):
        check_route_access(app.routes)


def test_a_till_route_under_pos_is_accepted() -> None:
    async def till_things() -> None:
        return None

    app = Litestar(
        route_handlers=[get("/pos/v9/things", opt=requires(Role.POS))(till_things)], before_request=authorize
    )
    check_route_access(app.routes)


PREVIEW_ORDER = {
    "channel": "offline_pos",
    "store_code": "SH001",
    "lines": [{"external_id": "1", "amount_fen": 100}],
}
DRAFT_RULES = {"rules": [{"type": "spend", "code": "base", "priority": 1, "points_per_yuan": "1"}]}


@pytest.mark.parametrize(
    ("role", "status"), [("analyst", 200), ("operator", 200), ("admin", 200), ("pos", 403)]
)
async def test_previews_are_reads_for_points_rules_and_tiers_alike(
    make_client: Any, role: str, status: int
) -> None:
    async with make_client(role=role, store_code="S1" if role == "pos" else None) as api:
        points = await api.post(
            "/api/points/rules/preview", json={"order": PREVIEW_ORDER, "rules": DRAFT_RULES}
        )
        tiers = await api.post("/api/tiers/preview", json={"ladder": kit.LADDER})
    assert (points.status_code, tiers.status_code) == (status, status), (points.text, tiers.text)
    if status == 200:
        assert points.json()["total"] == 1 and points.json()["draft"] is True
        assert {"up", "down", "moves", "tiers"} <= set(tiers.json())
