"""Health and plugin listing."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

import tongcrm
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.plugin.host import PluginHost


class Health(msgspec.Struct):
    status: str
    database: str
    version: str


class PluginOut(msgspec.Struct):
    name: str
    distribution: str
    version: str
    hooks: list[str]


@get("/health", summary="Liveness and database check", tags=["system"])
async def health(state: State) -> Response[Any]:
    try:
        async with state.read_sessions() as session:
            await session.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return Response(
            {
                "type": "about:blank",
                "title": "Service unavailable",
                "status": 503,
                "detail": f"database check failed: {type(exc).__name__}",
            },
            status_code=503,
            media_type="application/problem+json",
        )
    return Response(Health(status="ok", database="ok", version=tongcrm.__version__))


class PluginController(Controller):
    path = "/api/plugins"
    tags = ["system"]
    opt = requires(*READ_ROLES)

    @get("/", summary="Installed plugins, their versions and the hooks they implement")
    async def list_plugins(self, host: NamedDependency[PluginHost]) -> list[PluginOut]:
        return [PluginOut(p.name, p.distribution, p.version, list(p.hooks)) for p in host.plugins()]
