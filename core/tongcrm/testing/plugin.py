"""Pytest fixtures shared by tongcrm's tests and third-party plugin tests.

``tongcrm_db``: a migrated database, once per backend (SQLite always; PostgreSQL when
``TONGCRM_TEST_POSTGRES_URL`` is set), emptied after each test. Every test that asks for it runs on each backend.
``plugin_host``: a hermetic plugin host (no entry points) that tests register plugins on.
``make_runner``: job runners of each kind (the in-process runner; broker mode over RabbitMQ with taskiq), so
one job-runner suite checks both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tongcrm.config import Settings
from tongcrm.db.base import metadata
from tongcrm.db.models import import_models
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase, backends, open_database, scratch_url


@pytest.fixture(scope="session", params=backends())
def tongcrm_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture(scope="session")
def tongcrm_durable_commits() -> bool:
    """Whether the test database's commits wait for the disk (PostgreSQL's ``synchronous_commit``): not for
    tests (see :func:`tongcrm.testing.database.scratch_url`); ``tests/benchmarks`` overrides it to ``True``."""
    return False


@pytest.fixture(scope="session")
async def _tongcrm_session_db(
    tongcrm_backend: str, tongcrm_durable_commits: bool
) -> AsyncIterator[TestDatabase]:
    """The schema comes from the models (every core model and every installed plugin's); that migrations
    build the same schema is checked separately, by ``tongcrm db check`` and its test."""
    async with (
        scratch_url(tongcrm_backend, durable=tongcrm_durable_commits) as url,
        open_database(tongcrm_backend, url) as database,
    ):
        PluginHost(autoload=True)  # plugins import their models when they load
        import_models()
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield database


@pytest.fixture
async def tongcrm_db(_tongcrm_session_db: TestDatabase) -> AsyncIterator[TestDatabase]:
    yield _tongcrm_session_db
    await _tongcrm_session_db.truncate()


@pytest.fixture(params=["inprocess", "broker"])
async def make_runner(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await make_runner(sessions, registry, host=..., clock=..., **runner_kw)``: a runner of this test's kind.

    The broker kind needs RabbitMQ (``TONGCRM_TEST_BROKER_URL``, default the local one) and is skipped with the
    reason when it cannot be reached.
    """
    from tongcrm.jobs.runner import Runner
    from tongcrm.testing.broker import BrokerRunner, broker_reachable

    kind: str = request.param
    if kind == "broker" and (reason := await broker_reachable()) is not None:
        pytest.skip(reason)
    started: list[BrokerRunner] = []

    async def factory(sessions: Any, registry: Any, *, host: PluginHost | None = None, **kw: Any) -> Any:
        runner = Runner(sessions, host or PluginHost(autoload=False), registry, **kw)
        if kind == "inprocess":
            return runner
        broker_runner = await BrokerRunner(runner).start()
        started.append(broker_runner)
        return broker_runner

    try:
        yield factory
    finally:
        for broker_runner in started:
            await broker_runner.close()


@pytest.fixture
def plugin_host() -> PluginHost:
    return PluginHost(autoload=False)


def pytest_report_header(config: pytest.Config) -> str:
    return f"tongcrm database backends: {', '.join(backends())}"


@pytest.fixture
def tongcrm_settings(tongcrm_db: TestDatabase, tmp_path: Path) -> Settings:
    return Settings(
        database_url=tongcrm_db.url,
        secret_key="test-secret-key-0123456789abcdef",  # noqa: S106 - a test key
        log_json=True,
        data_dir=tmp_path / "tongcrm-data",  # a test's own: kept uploads are named by import id
    )


@pytest.fixture
def make_client(
    tongcrm_settings: Settings, tongcrm_db: TestDatabase
) -> Callable[..., AbstractAsyncContextManager[ApiClient]]:
    """``async with make_client(host=..., role="admin") as client:`` — an app on the test database and a client
    that sends an API key of that role (``role=None``: no key)."""

    @asynccontextmanager
    async def factory(
        host: PluginHost | None = None,
        *,
        role: str | None = "admin",
        store_code: str | None = None,
        run_jobs: bool = False,
        extra_handlers: Sequence[Any] = (),
    ) -> AsyncIterator[ApiClient]:
        from litestar.testing import AsyncTestClient

        from tongcrm.app import create_app

        app = create_app(
            tongcrm_settings,
            host or PluginHost(autoload=False),
            run_jobs=run_jobs,
            configure_logs=False,
            extra_handlers=extra_handlers,
        )
        async with AsyncTestClient(app) as client:
            api = ApiClient(client, app, tongcrm_db)
            if role is not None:
                api.key = await api.create_key(role, store_code=store_code)
                client.headers["Authorization"] = f"Bearer {api.key}"
            yield api

    return factory


class ApiClient:
    """A litestar test client plus the app and the test database.

    The test client runs the app on its own event loop, so database work from the test side goes through
    ``db`` (the test loop's engine), never through the app's engine.
    """

    def __init__(self, client: Any, app: Any, db: TestDatabase) -> None:
        self.client = client
        self.app = app
        self.db = db
        self.key: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def create_key(self, role: str, *, store_code: str | None = None) -> str:
        from tongcrm.auth.service import create_key

        async with self.db.sessions() as session, session.begin():
            created = await create_key(session, role, store_code=store_code)
        return created.key


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line per backend that CI reads to prove the PostgreSQL half really ran."""
    passed = terminalreporter.stats.get("passed", [])
    for backend in backends():
        count = sum(
            1 for report in passed if f"[{backend}" in report.nodeid or f"-{backend}" in report.nodeid
        )
        terminalreporter.write_line(f"tongcrm: {count} tests passed on {backend}")
