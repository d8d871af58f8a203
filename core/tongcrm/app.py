"""The litestar app factory: core controllers, every plugin's routes, OpenAPI at /schema, problem details,
request ids and HTTP metrics, API-key auth, and (by default) the job runner in-process."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler
from sqlalchemy.orm import configure_mappers

import tongcrm
from tongcrm.api.deps import dependencies
from tongcrm.api.hot import hot_routes, merge_hot_routes
from tongcrm.api.inputs import (
    BoundedOpenAPIConfig,
    ItemBoundsStructSchemaPlugin,
    StrictRequest,
    collect_query_names,
    document_problems,
)
from tongcrm.api.middleware import with_request_ids
from tongcrm.api.problems import exception_handlers
from tongcrm.api.security import ROLES_OPT, authorize, check_route_access
from tongcrm.api.system import PluginController, WriteCheck, health, metrics
from tongcrm.audit.api import AuditController
from tongcrm.auth.api import ApiKeyController
from tongcrm.auth.service import KeyVerifier
from tongcrm.bulk.api import ExportController, ImportController, ImportRuns
from tongcrm.bulk.kept import mark_interrupted
from tongcrm.campaigns.api import CalendarController, CampaignController, JourneyController
from tongcrm.channels.api import ChannelAccountController
from tongcrm.config import Settings
from tongcrm.console.pages import console_handlers
from tongcrm.console.web import PREFIX as CONSOLE_PREFIX
from tongcrm.console.web import check_console_routes, pages_for_unrouted
from tongcrm.counter import CounterService
from tongcrm.dashboard.api import DashboardController
from tongcrm.db.engine import create_engine, create_inline_writer, session_factory
from tongcrm.db.point_reads import create_point_reader
from tongcrm.entitlements.api import EntitlementController, MemberEntitlementsController
from tongcrm.ingest.api import QuarantineController
from tongcrm.jobs.registry import load_job_modules
from tongcrm.jobs.runner import Runner
from tongcrm.lifecycle.api import LifecycleController
from tongcrm.logging import configure_logging, get_logger
from tongcrm.members.api import MemberController, MergeController, hot_lookup
from tongcrm.membership import MembershipService
from tongcrm.messaging.api import CONTROLLERS as MESSAGING_CONTROLLERS
from tongcrm.orders.api import OrderController
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.store import PluginStore
from tongcrm.plugin.types import HotRouteSpec
from tongcrm.points.api import MemberPointsController, PointsRulesController
from tongcrm.privacy.api import PrivacyController
from tongcrm.programme.api import ProgrammeSettingsController
from tongcrm.programme.service import SettingsCache
from tongcrm.referrals.api import ReferralController
from tongcrm.replay.service import ReplayGuard
from tongcrm.rfm.api import RfmController
from tongcrm.segments.api import SegmentController
from tongcrm.serving import STOPPING_HOOKS
from tongcrm.tagrules.api import TagHistoryController, TagRuleController
from tongcrm.tiers.api import MemberTierController, TierController
from tongcrm.warmup import warm_up

#: Core controllers; domain folders add theirs here.
CORE_HANDLERS: tuple[ControllerRouterHandler, ...] = (
    health,
    metrics,
    PluginController,
    MemberController,
    MergeController,
    AuditController,
    ApiKeyController,
    ChannelAccountController,
    QuarantineController,
    ImportController,
    ExportController,
    MemberPointsController,
    PointsRulesController,
    TierController,
    MemberTierController,
    EntitlementController,
    MemberEntitlementsController,
    *MESSAGING_CONTROLLERS,
    ProgrammeSettingsController,
    OrderController,
    SegmentController,
    LifecycleController,
    PrivacyController,
    CampaignController,
    CalendarController,
    JourneyController,
    RfmController,
    ReferralController,
    TagRuleController,
    TagHistoryController,
    DashboardController,
)


#: Core's routes answered before litestar in their plain case (see tongcrm.api.hot): the member lookup, the
#: hottest read. Plugins add theirs through the ``routes`` hook (``RouteSpec.hot``).
HOT_ROUTES: tuple[HotRouteSpec, ...] = (HotRouteSpec("GET", "/api/members/lookup", hot_lookup),)


async def _mark_interrupted_imports(sessions: Any) -> None:
    """Imports left running by a process that stopped show as interrupted, to be resumed (tongcrm.bulk.kept);
    a database that cannot be reached yet does not keep the server from starting (the next start retries)."""
    try:
        await mark_interrupted(sessions, datetime.now(UTC))
    except Exception as exc:
        get_logger(__name__).warning("could not look for interrupted imports", error=str(exc))


def create_app(
    settings: Settings | None = None,
    host: PluginHost | None = None,
    *,
    run_jobs: bool | None = None,
    configure_logs: bool = True,
    extra_handlers: Sequence[ControllerRouterHandler] = (),
) -> Litestar:
    settings = settings or Settings.from_env()
    if configure_logs:
        configure_logging(json=settings.log_json, level=settings.log_level)
    host = host or PluginHost()
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    read_sessions = session_factory(engine, readonly=True)
    point_reader = create_point_reader(settings.database_url, engine)
    # a till's lookup and checkout are short statements (some twenty for a checkout): on SQLite the counter
    # runs them inline (see db.inline_sqlite)
    counter_engine = create_inline_writer(settings.database_url)
    run_jobs = settings.run_jobs_in_process if run_jobs is None else run_jobs

    handlers: list[ControllerRouterHandler] = [*CORE_HANDLERS, *extra_handlers, *console_handlers()]
    # the console authenticates by its session cookie (console_guard, checked by check_console_routes below)
    public: list[str] = [CONSOLE_PREFIX]
    provided_routes = host.routes()
    for provided in provided_routes:
        handlers.extend(provided.value.handlers)
        public.extend(provided.value.public_paths)

    vault = settings.vault()
    counter = CounterService(
        session_factory(counter_engine) if counter_engine is not None else sessions,
        session_factory(counter_engine, readonly=True) if counter_engine is not None else read_sessions,
        host,
        settings,
        vault=vault,
        reader=point_reader,
    )

    import_runs = ImportRuns()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        await _mark_interrupted_imports(sessions)
        if run_jobs:
            runner = Runner(sessions, host, load_job_modules(), services={"settings": settings})
            task = asyncio.create_task(runner.run_forever(stop, poll_seconds=settings.job_poll_seconds))
        if app.state.warm_up:  # a serving process (settle_heap): its first requests do not pay for its start
            await warm_up(app.state)
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            stop.set()
            await import_runs.interrupt()  # a server that did not stop them first (tongcrm.serving does)
            if task is not None:
                await task
            await point_reader.close()
            await counter.close()
            if counter_engine is not None:
                await counter_engine.dispose()
            await engine.dispose()

    state: dict[str, Any] = {
        "settings": settings,
        "host": host,
        "engine": engine,
        "sessions": sessions,
        "read_sessions": read_sessions,
        "point_reader": point_reader,
        "write_check": WriteCheck(engine),
        "key_verifier": KeyVerifier(point_reader),
        "programme_settings": SettingsCache(read_sessions, settings),
        "membership": MembershipService(sessions, host, settings),
        "replay_guard": ReplayGuard(sessions),
        "vault": vault,
        "store": PluginStore(sessions, vault, read_sessions=read_sessions),
        "counter": counter,
        "import_runs": import_runs,
        #: awaited by a serving process when it begins to stop, before it waits for the requests in flight
        STOPPING_HOOKS: [import_runs.interrupt],
        #: set by settle_heap in a serving process: the lifespan rehearses the hot reads (tongcrm.warmup)
        "warm_up": False,
    }
    app = Litestar(
        route_handlers=handlers,
        dependencies=dependencies,
        exception_handlers={
            **exception_handlers,
            HTTPException: pages_for_unrouted(exception_handlers[HTTPException]),
        },
        before_request=authorize,
        request_class=StrictRequest,
        plugins=[ItemBoundsStructSchemaPlugin()],
        lifespan=[lifespan],
        state=State(state),
        openapi_config=BoundedOpenAPIConfig(
            title="tongcrm",
            version=tongcrm.__version__,
            description="Admin API of tongcrm, the plugin-based member CRM. Authenticate with an API key: "
            "`Authorization: Bearer <key>`.",
            path="/schema",
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(type="http", scheme="bearer", description="tongcrm API key")
                }
            ),
            security=[{"apiKey": []}],
        ),
        logging_config=None,
        debug=False,
    )
    check_route_access(app.routes, public, exact_public=("/", "/favicon.ico"))
    check_console_routes(app.routes)
    collect_query_names(app.routes)
    document_problems(app, ROLES_OPT)
    app.state.hot_answers = merge_hot_routes(
        hot_routes(app, HOT_ROUTES),
        (
            (p.plugin, hot_routes(app, p.value.hot, plugin=p.plugin, mounted=p.value.handlers))
            for p in provided_routes
            if p.value.hot
        ),
    )
    return with_request_ids(app, app.state.hot_answers)


def settle_heap(app: Litestar | None = None) -> None:
    """Build what the first requests would otherwise build, then take what the app built at start-up out of the
    cyclic garbage collector's view (call once, in the serving process, after :func:`create_app`).

    Given the ``app`` it will serve, its lifespan also rehearses the hot reads before the first request is
    served (:func:`tongcrm.warmup.warm_up`: the key check, the member and till lookups compiled and the pools'
    first connection opened; issue #22, branch warm13) and freezes again what that built.

    SQLAlchemy configures the ORM's mappers when a mapped class is first queried: a serving process's first
    requests paid it (issue #22, branch tillpg11: py-spy on a till benchmark's first seconds found ~0.35 s of
    CPU there at load 13, inside the eight tills' first receipts, which set the run's p99). Configured here,
    its structures are frozen with the rest.

    The app's long-lived objects (routes and their signature models, table metadata, plugin modules) are tens
    of thousands of containers that never become garbage; without this every older-generation collection
    walks them again, which cost an authenticated member lookup about a fifth of its time.
    """
    configure_mappers()
    if app is not None:
        app.state.warm_up = True
    gc.collect()
    gc.freeze()


def worker_app(worker: int, *, run_jobs: bool) -> Litestar:
    """The app of one ``tongcrm serve --workers N`` process (see :mod:`tongcrm.serving`).

    Settings and plugins are read again from the environment the worker inherited, as the parent read them.
    Jobs run in worker 0 only: any number of runners may share the database, but N of them polling it would
    only add contention for the one writer SQLite allows.
    """
    settings = Settings.from_env()
    configure_logging(json=settings.log_json, level=settings.log_level)
    app = create_app(settings, PluginHost(), run_jobs=run_jobs and worker == 0, configure_logs=False)
    settle_heap(app)
    return app
