"""Health and plugin listing."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

import tongcrm
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.auth.service import Role
from tongcrm.db.base import utcnow
from tongcrm.db.point_reads import PointQuery
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


#: The health check's statement: one point read (see :mod:`tongcrm.db.point_reads`).
_ALIVE = PointQuery(sa.select(sa.literal(1).label("alive")))


@get("/health", summary="Liveness and database check", tags=["system"])
async def health(request: Request[Any, Any, Any]) -> Response[Any]:
    # Through the app's point reader, as the hot reads go, rather than an ORM session on the read pool: on
    # SQLite that session cost ~550 us of CPU a check (a thread hand-off for each of its begin, statement,
    # rollback and close), on PostgreSQL a pool check-out and a transaction, for a SELECT 1. (The app's state
    # from the request: a ``state`` parameter would be a copy of it made for every request.)
    try:
        await request.app.state.point_reader.first(_ALIVE, {})
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
