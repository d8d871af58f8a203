"""Health and plugin listing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine

import tongcrm
from tongcrm.api.problems import problem
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
#: How long each of the health check's two database checks may take before it counts as failed.
HEALTH_TIMEOUT_S = 2.0
#: How long the write pool's answer is reused: a probe every few seconds checks it each time, while a client
#: calling ``/health`` in a loop costs one check a second, not one a call.
WRITE_CHECK_TTL_S = 1.0


class WriteCheck:
    """Whether the write pool (the engine every change goes through) hands out a connection that answers, on a
    database that takes writes.

    The point reader has connections of its own (a ``sqlite3`` connection; asyncpg connections beside the
    pool), so its answering says nothing of the pool: a pool whose connections all hang in slow requests, or a
    PostgreSQL that fails over and leaves the URL on a read-only standby, would still read. One check at a time
    (callers that arrive during it share its answer), bounded by :data:`HEALTH_TIMEOUT_S`, its answer kept for
    :data:`WRITE_CHECK_TTL_S`. Nothing is written: a write would queue behind SQLite's one writer (a long
    import) and mark a healthy server down."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl: float = WRITE_CHECK_TTL_S,
        timeout: float = HEALTH_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._ttl, self._timeout, self._clock = ttl, timeout, clock
        # PostgreSQL: a standby (in recovery) reads but refuses every write; SQLite has no standby
        standby = "SELECT pg_is_in_recovery()" if engine.dialect.name == "postgresql" else "SELECT 0"
        self._statement = sa.text(standby)
        self._checked_at: float | None = None
        self._failure: str | None = None
        self._lock = asyncio.Lock()

    async def failure(self) -> str | None:
        """What is wrong with the write pool (``None``: nothing)."""
        async with self._lock:
            if self._checked_at is None or self._clock() - self._checked_at >= self._ttl:
                self._failure = await self._check()
                self._checked_at = self._clock()
            return self._failure

    async def _check(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout), self._engine.connect() as connection:
                standby = (await connection.execute(self._statement)).scalar()
        except Exception as exc:  # what failed is the answer; the class name tells it without secrets
            return f"write pool check failed: {type(exc).__name__}"
        return "the database is a read-only standby" if standby else None


@get("/health", summary="Liveness and database check (reads and the write pool)", tags=["system"])
async def health(request: Request[Any, Any, Any]) -> Response[Any]:
    # Reads through the app's point reader, as the hot reads go, rather than an ORM session on the read pool: on
    # SQLite that session cost ~550 us of CPU a check (a thread hand-off for each of its begin, statement,
    # rollback and close), on PostgreSQL a pool check-out and a transaction, for a SELECT 1. The write pool
    # is checked at most once a second (WriteCheck). (The app's state from the request: a ``state`` parameter
    # would be a copy of it made for every request.)
    state = request.app.state
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await state.point_reader.first(_ALIVE, {})
    except Exception as exc:
        failure: str | None = f"database check failed: {type(exc).__name__}"
    else:
        failure = await state.write_check.failure()
    if failure is not None:
        return problem(request, 503, "Service unavailable", failure)
    return Response(Health(status="ok", database="ok", version=tongcrm.__version__))


#: What Prometheus needs to read the exposition format. Litestar adds ``; charset=utf-8`` to every ``text/``
#: media type itself; naming it here too sent the parameter twice.
PROMETHEUS_TEXT = "text/plain; version=0.0.4"


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
