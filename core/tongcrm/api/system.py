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
from tongcrm.auth.service import Role
from tongcrm.db.base import utcnow
from tongcrm.metrics import database_gauges, render
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


#: What Prometheus needs to read the exposition format.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@get(
    "/metrics",
    summary="Prometheus metrics: this process's HTTP and job metrics, and the cluster's queues, backlogs and lag",
    description="Scrape with an admin key (`authorization: {type: Bearer, credentials: tck_…}` in the scrape "
    "config). Workers expose their own job metrics on `tongcrm jobs worker --metrics-port`.",
    tags=["system"],
    opt=requires(Role.ADMIN),
    media_type=PROMETHEUS_TEXT,
)
async def metrics(state: State) -> Response[bytes]:
    async with state.read_sessions() as session:
        gauges = await database_gauges(session, now=utcnow())
    return Response(render(process=True, database=gauges), media_type=PROMETHEUS_TEXT)


class PluginController(Controller):
    path = "/api/plugins"
    tags = ["system"]
    opt = requires(*READ_ROLES)

    @get("/", summary="Installed plugins, their versions and the hooks they implement")
    async def list_plugins(self, host: NamedDependency[PluginHost]) -> list[PluginOut]:
        return [PluginOut(p.name, p.distribution, p.version, list(p.hooks)) for p in host.plugins()]
