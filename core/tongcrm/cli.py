"""The ``tongcrm`` command. Errors print one clear line and exit non-zero; ``--traceback`` shows the rest."""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from tongcrm.config import Settings
from tongcrm.db.base import utcnow
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import ConfigError, TongcrmError
from tongcrm.logging import configure_logging, get_logger
from tongcrm.plugin.host import PluginHost

if TYPE_CHECKING:
    from tongcrm.jobs.runner import Runner

T = TypeVar("T")
log = get_logger(__name__)
console = Console()


class Context:
    """Built once per invocation: settings and plugins, shared by every sub-command."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The settings of an existing installation: a command run where there is none (another directory,
        ``TONGCRM_DATABASE_URL`` naming a missing file) is refused, and leaves no database or secret behind."""
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    def creating_settings(self) -> Settings:
        """The settings of a command that may start an installation (``serve``, ``db upgrade``): a missing
        ``.tongcrm-secret`` is made beside the SQLite file, and SQLite makes the file."""
        if self._settings is None:
            self._settings = Settings.from_env(create=True)
        return self._settings


pass_ctx = click.make_pass_decorator(Context)


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _with_engine(settings: Settings, body: Callable[[Any], Awaitable[T]]) -> T:
    engine = create_engine(settings.database_url)
    try:
        return await body(engine)
    finally:
        await engine.dispose()


# -------------------------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tongcrm")
def cli() -> None:
    """tongcrm: one member base for Taobao/Tmall, JD and your own stores."""


@cli.group()
def db() -> None:
    """Database migrations (a deploy step: run ``db upgrade`` before starting a new version)."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Apply every installed distribution's migrations (all heads)."""

    from tongcrm.db import migrate
    from tongcrm.members import masked

    settings = ctx.creating_settings()

    async def body(engine: Any) -> tuple[set[str], int]:
        await migrate.upgrade(engine, ctx.host)
        unindexed = 0
        try:
            vault = settings.vault()
        except ConfigError:  # an upgrade run without the secret key: the hint needs it, the upgrade does not
            vault = None
        if vault is not None:
            async with session_factory(engine, readonly=True)() as session, session.begin():
                unindexed = await masked.count_unindexed(session, vault)
        return (await migrate.status(engine, ctx.host))[1], unindexed

    current, unindexed = run(_with_engine(settings, body))
    click.echo(f"database is at {', '.join(sorted(current)) or 'base'}")
    if unindexed:
        click.echo(
            f"{unindexed} member mobile(s) have no masked-mobile index yet (search by 138****8000 misses them): "
            "run `tongcrm member index-masked`"
        )


@db.command("downgrade")
@click.argument("target", default="base")
@click.confirmation_option(prompt="This drops tables and their data. Continue?")
@pass_ctx
def db_downgrade(ctx: Context, target: str) -> None:
    """Undo migrations down to TARGET (default: everything)."""
    from tongcrm.db import migrate

    run(_with_engine(ctx.settings, lambda engine: migrate.downgrade(engine, ctx.host, target)))
    click.echo(f"downgraded to {target}")


@db.command("check")
@click.option(
    "--scratch-url", help="An empty database to build the schema in (default: a temporary SQLite file)."
)
@pass_ctx
def db_check(ctx: Context, scratch_url: str | None) -> None:
    """Fail when the models and the migrations differ."""
    from tongcrm.db import migrate

    diffs = run(migrate.check(ctx.host, scratch_url))
    if diffs:
        for line in migrate.describe_diffs(diffs):
            click.echo(f"  {line}", err=True)
        fail(f"models and migrations differ in {len(diffs)} place(s): write a migration")
    click.echo("models and migrations agree")


@db.command("status")
@pass_ctx
def db_status(ctx: Context) -> None:
    """Show the revisions the database is at and the installed heads."""
    from tongcrm.db import migrate

    heads, current = run(_with_engine(ctx.settings, lambda engine: migrate.status(engine, ctx.host)))
    click.echo(f"heads:   {', '.join(sorted(heads))}")
    click.echo(f"current: {', '.join(sorted(current)) or 'base (empty database)'}")
    if heads != current:
        click.echo("the database is behind: run `tongcrm db upgrade`")


# -------------------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--no-jobs", is_flag=True, help="Do not run jobs in this process (run `tongcrm jobs worker`).")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Serving processes sharing the port (about one per core); jobs run in the first one only.",
)
@pass_ctx
def serve(ctx: Context, bind_host: str, port: int, no_jobs: bool, workers: int) -> None:
    """Serve the admin API (and, by default, run jobs in-process)."""
    from tongcrm.app import create_app, settle_heap
    from tongcrm.serving import AppSpec, bind, run_app, run_workers

    settings = ctx.creating_settings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    admin_key = run(_prepare_database(settings, ctx.host))
    if admin_key:
        click.echo(
            "New database: migrated, and created an admin API key (shown once, keep it safe):", err=True
        )
        click.echo(f"  {admin_key}", err=True)
    if workers > 1:
        spec = AppSpec("tongcrm.app:worker_app", {"run_jobs": not no_jobs})

        def bound() -> None:  # only once the port is held: a taken port used to follow "serving on"
            click.echo(f"serving on http://{bind_host}:{port} from {workers} process(es)", err=True)

        with _listening(bind_host, port):
            code = run_workers(spec, bind_host, port, workers, on_bound=bound)
        if code:
            fail("a worker did not start (see the log above)")
        sys.exit(code)
    with _listening(bind_host, port):
        sock = bind(bind_host, port)
    click.echo(f"serving on http://{bind_host}:{port} from 1 process", err=True)
    app = create_app(settings, ctx.host, run_jobs=not no_jobs, configure_logs=False)
    settle_heap(app)
    if not run_app(app, sock):
        fail("the app did not start (see the log above)")


#: Why a socket could not listen that the operator can fix with --host or --port.
_LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


@contextmanager
def _listening(bind_host: str, port: int) -> Iterator[None]:
    """Turn "OSError: [Errno 98] Address already in use", which named neither the address nor a way out, into
    one line that does."""
    try:
        yield
    except socket.gaierror as exc:
        fail(f"cannot listen on {bind_host}:{port}: {exc.strerror} (check --host)")
    except OSError as exc:
        if exc.errno not in _LISTEN_ERRNOS:
            raise
        fail(
            f"cannot listen on {bind_host}:{port}: {exc.strerror} (another server on that port? choose "
            "another with --port; --host must be an address of this machine)"
        )


@contextmanager
def _alembic_quiet(quiet: bool) -> Iterator[None]:
    """Alembic's loggers at WARNING for the block when ``quiet`` (their level restored after it)."""
    alembic_log = logging.getLogger("alembic")
    before = alembic_log.level
    if quiet:
        alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_log.setLevel(before)


async def _prepare_database(settings: Settings, host: PluginHost) -> str | None:
    """Migrate a new database and mint its first admin key; refuse to serve a database that is behind.

    Alembic says each revision and its plugins at INFO (some fifty lines, as JSON when stderr is no terminal: a
    service's log); here they are left out, as the serve command says "migrated" once. Its warnings still show.
    """
    with _alembic_quiet(not sys.stderr.isatty()):
        return await _prepare(settings, host)


async def _prepare(settings: Settings, host: PluginHost) -> str | None:
    from tongcrm.audit.service import SYSTEM
    from tongcrm.auth import audited
    from tongcrm.db import migrate

    engine = create_engine(settings.database_url)
    try:
        if await migrate.is_new_database(engine):
            await migrate.upgrade(engine, host)
            async with session_factory(engine)() as session, session.begin():
                created, _ = await audited.create(
                    session, SYSTEM, "admin", host=host, label="first admin key"
                )
            return created.key
        heads, current = await migrate.status(engine, host)
        if heads != current:
            raise TongcrmError("the database is behind the installed version: run `tongcrm db upgrade` first")
        return None
    finally:
        await engine.dispose()


# -------------------------------------------------------------------------------------------------------------


@cli.group()
def apikey() -> None:
    """API keys: create (shown once), list, revoke."""


@apikey.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "operator", "analyst", "pos"]))
@click.option(
    "--store",
    "store_code",
    help="The store a pos key is limited to: the name of a store channel's account (add the store first).",
)
@click.option("--label", default="", help="A note to recognise the key by.")
@pass_ctx
def apikey_create(ctx: Context, role: str, store_code: str | None, label: str) -> None:
    """Create a key and print it once; only its hash is stored (audited as ``api_key.create`` by ``cli``)."""
    from tongcrm.auth import audited
    from tongcrm.cli_run import CLI_ACTOR

    async def body(engine: Any) -> Any:
        async with session_factory(engine)() as session, session.begin():
            created, _ = await audited.create(
                session, CLI_ACTOR, role, host=ctx.host, store_code=store_code, label=label
            )
            return created

    created = run(_with_engine(ctx.settings, body))
    click.echo(f"created {created.role.value} key #{created.id} (shown once, store it now):", err=True)
    click.echo(created.key)


@apikey.command("list")
@pass_ctx
def apikey_list(ctx: Context) -> None:
    """List keys (never their secrets)."""
    from tongcrm.auth import service as keys

    async def body(engine: Any) -> Any:
        async with session_factory(engine)() as session:
            return await keys.list_keys(session)

    table = Table("id", "prefix", "role", "store", "label", "created", "revoked")
    for k in run(_with_engine(ctx.settings, body)):
        table.add_row(
            str(k.id),
            k.prefix,
            k.role,
            k.store_code or "",
            k.label,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )
    console.print(table)


@apikey.command("revoke")
@click.argument("key_id")
@pass_ctx
def apikey_revoke(ctx: Context, key_id: str) -> None:
    """Revoke a key by id or prefix (audited as ``api_key.revoke`` by ``cli`` when it changed anything)."""
    from tongcrm.auth import audited
    from tongcrm.cli_run import CLI_ACTOR

    async def body(engine: Any) -> Any:
        async with session_factory(engine)() as session, session.begin():
            return await audited.revoke_named(session, CLI_ACTOR, key_id)

    info = run(_with_engine(ctx.settings, body))
    click.echo(f"revoked key #{info.id} ({info.prefix}, {info.role})")


# -------------------------------------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """The secret key: what is stored under which key id, and moving it all to the current key."""


@keys.command("status")
@pass_ctx
def keys_status(ctx: Context) -> None:
    """Count stored values per key id; an old key may leave TONGCRM_OLD_SECRET_KEYS once nothing is under it."""
    from tongcrm import rotation

    vault = ctx.settings.vault()

    async def body(engine: Any) -> Any:
        async with session_factory(engine, readonly=True)() as session, session.begin():
            return await rotation.key_usage(session, vault, ctx.host)

    usage = run(_with_engine(ctx.settings, body))
    table = Table("stored values", f"current key {usage.current}", "under old keys")
    for name, counts in usage.by_store.items():
        old = ", ".join(f"{kid}: {n}" for kid, n in sorted(counts.items()) if kid != usage.current)
        table.add_row(name, str(counts.get(usage.current, 0)), old or "-")
    console.print(table)
    if usage.stranded_opt_outs:
        click.echo(
            f"{usage.stranded_opt_outs} SMS opt-out(s) of numbers no member has stay under an old key (their number "
            "is stored nowhere to re-index from): keep that key listed or they stop being honoured."
        )
    if usage.unindexed_masked_mobiles:
        click.echo(
            f"{usage.unindexed_masked_mobiles} member mobile(s) have no masked-mobile index under the current key "
            "yet: `tongcrm keys rotate` (or `tongcrm member index-masked`) writes them"
        )
    left = usage.left_on_old_keys()
    click.echo(
        "nothing is left under old keys: they can leave TONGCRM_OLD_SECRET_KEYS (SMS gateways then need the new "
        "callback URLs)"
        if not left
        else f"{left} value(s) under old keys: run `tongcrm keys rotate`"
    )


@keys.command("rotate")
@click.option(
    "--batch", default=500, show_default=True, type=click.IntRange(1, 10_000), help="Rows a transaction."
)
@pass_ctx
def keys_rotate(ctx: Context, batch: int) -> None:
    """Re-encrypt and re-index everything stored under old keys with the current key (safe to stop and rerun)."""
    from tongcrm import rotation

    vault = ctx.settings.vault()

    async def body(engine: Any) -> Any:
        return await rotation.rotate(
            session_factory(engine),
            vault,
            batch=batch,
            progress=lambda name, n: click.echo(f"  {name}: {n}"),
            host=ctx.host,
        )

    report = run(_with_engine(ctx.settings, body))
    moved = ", ".join(f"{n} {name}" for name, n in report.moved.items()) or "nothing"
    click.echo(f"moved to key {vault.kid}: {moved}")
    for name, n in report.unreadable.items():
        click.echo(
            f"{n} {name} could not be read by any configured key (was their key dropped too early?)", err=True
        )
    if report.conflicts:
        click.echo(
            f"{len(report.conflicts)} mobile identit(y/ies) left alone: another identity already has their number "
            f"(ids {', '.join(map(str, report.conflicts[:20]))}): merge those members, then run this again",
            err=True,
        )
    if report.unreadable or report.conflicts:
        sys.exit(1)


# -------------------------------------------------------------------------------------------------------------


@cli.command("plugins")
@pass_ctx
def plugins_cmd(ctx: Context) -> None:
    """List installed plugins: name, distribution, version and the hooks they implement."""
    table = Table("name", "distribution", "version", "hooks")
    for info in ctx.host.plugins():
        table.add_row(info.name, info.distribution, info.version, ", ".join(info.hooks) or "-")
    Console(width=200).print(table)


@cli.group("plugin")
def plugin_group() -> None:
    """Write plugins: a package to start a channel, messenger or entitlement plugin from."""


@plugin_group.command("new")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(["channel", "messenger", "entitlement"]),
    required=True,
    help="What it connects.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write the package folder (tongcrm-NAME).",
)
def plugin_new(name: str, kind: str, directory: Path) -> None:
    """Write a working plugin package: pyproject with the entry point, adapter, fake platform, contract test."""
    from tongcrm.scaffold import write_plugin

    try:
        target = write_plugin(name, kind, directory)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {target}")
    click.echo(f"next: cd {target} && pip install -e '.[test]' && python -m pytest")


class PollSeconds(click.FloatRange):
    """A pause between polls, 0.01 s to an hour. Zero or less made the loop's wait time out at once, so an idle
    worker polled the database without pause on a whole core; ``nan`` passes a plain range (no comparison with it
    is true), so a pause that is not a finite number is refused by name."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(0.01, 3600.0)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:  # nan
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


@cli.group()
def jobs() -> None:
    """Background jobs and event delivery."""


@jobs.command("worker")
@click.option(
    "--poll",
    default=0.5,
    show_default=True,
    type=PollSeconds(),
    help="Seconds between polls when idle (in-process mode).",
)
@click.option(
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Jobs one broker-mode worker runs at once (start more processes for more cores).",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /health and /metrics (this process's) on 127.0.0.1:PORT; --health-host to bind elsewhere.",
)
@click.option("--health-host", default="127.0.0.1", show_default=True)
@pass_ctx
def jobs_worker(
    ctx: Context, poll: float, concurrency: int, health_port: int | None, health_host: str
) -> None:
    """Run jobs and deliver events until interrupted (SIGINT/SIGTERM stop it cleanly).

    With TONGCRM_JOBS_BROKER_URL set this is a taskiq worker taking work from RabbitMQ (start any number, on
    any machine; `tongcrm jobs scheduler` feeds them); otherwise it polls the database itself.
    """
    from tongcrm.jobs.broker import BrokerSpec, run_worker

    settings = ctx.settings
    configure_logging(json=settings.log_json, level=settings.log_level)

    async def main(engine: Any) -> None:
        stop = _stop_on_signals()
        runner = _job_runner(ctx, settings, engine)
        async with _health(runner, "worker", health_host, health_port):
            if settings.jobs_broker_url:
                spec = BrokerSpec(settings.jobs_broker_url, queue=settings.jobs_queue)
                await run_worker(spec, runner, stop, concurrency=concurrency)
            else:
                await runner.run_forever(stop, poll_seconds=poll)

    run(_with_engine(settings, main))


@jobs.command("scheduler")
@click.option(
    "--poll", default=0.5, show_default=True, type=PollSeconds(), help="Seconds between passes when idle."
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /health and /metrics (this process's) on 127.0.0.1:PORT; --health-host to bind elsewhere.",
)
@click.option("--health-host", default="127.0.0.1", show_default=True)
@pass_ctx
def jobs_scheduler(ctx: Context, poll: float, health_port: int | None, health_host: str) -> None:
    """Broker mode: schedule periodic jobs, relay the outbox and publish due work to the workers.

    Run one or two (a standby takes over when the active one's database lease lapses); never more than one
    is active, so a periodic slot runs once cluster-wide.
    """
    from datetime import timedelta

    from tongcrm.jobs.broker import BrokerSpec, run_scheduler

    settings = ctx.settings
    if not settings.jobs_broker_url:
        fail(
            "the scheduler feeds broker-mode workers: set TONGCRM_JOBS_BROKER_URL=amqp://… (without it, "
            "`tongcrm serve` or `tongcrm jobs worker` schedule periodic jobs themselves)"
        )
    broker_url = settings.jobs_broker_url
    configure_logging(json=settings.log_json, level=settings.log_level)

    async def main(engine: Any) -> None:
        runner = _job_runner(ctx, settings, engine)
        async with _health(runner, "scheduler", health_host, health_port):
            await run_scheduler(
                BrokerSpec(broker_url, queue=settings.jobs_queue),
                runner,
                _stop_on_signals(),
                poll_seconds=poll,
                republish_after=timedelta(seconds=settings.jobs_republish_seconds),
            )

    run(_with_engine(settings, main))


@asynccontextmanager
async def _health(runner: Runner, role: str, bind_host: str, port: int | None) -> AsyncIterator[None]:
    from tongcrm.jobs.health import HealthServer

    if port is None:
        yield
        return
    server = HealthServer(runner, role=role, bind_host=bind_host, port=port)
    await server.start()
    try:
        yield
    finally:
        await server.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _job_runner(ctx: Context, settings: Settings, engine: Any) -> Runner:
    from datetime import timedelta

    from tongcrm.jobs.registry import load_job_modules
    from tongcrm.jobs.runner import Runner

    return Runner(
        session_factory(engine),
        ctx.host,
        load_job_modules(),
        services={"settings": settings},
        lock_ttl=timedelta(seconds=settings.job_lock_seconds),
    )


# -------------------------------------------------------------------------------------------------------------


@cli.command("verify")
@pass_ctx
def verify_cmd(ctx: Context) -> None:
    """Recompute every points balance from its entries and lots, and the member activity summary segments read
    from the orders, tiers and consent statements; exit non-zero on any drift."""
    from tongcrm.points.ledger import verify
    from tongcrm.segments import activity

    async def body(engine: Any) -> Any:
        async with session_factory(engine, readonly=True)() as session:
            return await verify(session)

    async def summary(engine: Any) -> list[int]:
        # brought up to date first (as before any count), then compared with a full recomputation: a change the
        # incremental refresh missed shows as a difference. Both in one transaction and, on PostgreSQL, one
        # snapshot, so writes that land meanwhile on a running cluster are not taken for drift; and never while
        # another refresh (the periodic job) holds the lock: the summary would be compared half-refreshed
        for _ in range(120):
            async with session_factory(engine)() as session, session.begin():
                if engine.dialect.name == "postgresql":
                    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                if await activity.refresh(session):
                    return await activity.differences(session)
            await asyncio.sleep(0.5)
        fail("another refresh of the member activity summary held its lock for a minute: run verify again")

    drifts = run(_with_engine(ctx.settings, body))
    for drift in drifts:
        where = f"member {drift.member_id}" if drift.member_id is not None else "ledger"
        click.echo(f"  {where}: {drift.problem}", err=True)
    differing = run(_with_engine(ctx.settings, summary))
    if differing:
        shown = ", ".join(str(m) for m in differing)
        click.echo(
            f"  member activity summary differs from the orders, tiers and consent for members {shown}",
            err=True,
        )
    if drifts or differing:
        fail(
            f"points ledger: {len(drifts)} problem(s) found; member activity summary: {len(differing)} member(s)"
            " differ (repair: tongcrm segments rebuild-activity)"
        )
    click.echo("points ledger: balances, entries and lots agree")
    click.echo("member activity summary: equals a recomputation from orders, tiers and consent")


@cli.group("settings")
def settings_group() -> None:
    """Programme settings: marketing window (quiet hours), fatigue budgets, opt-out keywords, time zone."""


def _print_settings(current: Any) -> None:
    table = Table("setting", f"value (version {current.version})")
    for name, value in current.document().items():
        table.add_row(name, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
    if current.version == 0:
        click.echo("defaults: nothing saved yet")
    else:
        click.echo(f"saved {current.changed_at:%Y-%m-%d %H:%M} UTC by {current.changed_by}")


@settings_group.command("show")
@click.option("--history", is_flag=True, help="Every saved version, newest first.")
@pass_ctx
def settings_show(ctx: Context, history: bool) -> None:
    """Show the programme settings in force (or their history)."""
    from tongcrm.programme import service

    async def body(engine: Any) -> Any:
        async with session_factory(engine, readonly=True)() as session, session.begin():
            if history:
                return await service.history(session, limit=1000)
            return [await service.current(session, ctx.settings)]

    for version in run(_with_engine(ctx.settings, body)):
        _print_settings(version)


@settings_group.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
@click.option("--if-version", type=int, help="Refuse unless the settings are still at this version.")
@pass_ctx
def settings_set(ctx: Context, assignments: tuple[str, ...], if_version: int | None) -> None:
    """Change settings, e.g. ``marketing_window_start=09:00 daily_budget=5 opt_out_keywords=T,TD,退订``.

    Saved as a new version (the old one stays in the history) and audited."""
    from tongcrm.cli_run import CLI_ACTOR
    from tongcrm.programme import service

    changes: dict[str, Any] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"{item!r}: write NAME=VALUE (settable: {', '.join(service.FIELDS)})")
        changes[name.strip()] = value

    async def body(engine: Any) -> Any:
        async with session_factory(engine)() as session, session.begin():
            expected = if_version
            if expected is None:
                expected = (await service.current(session, ctx.settings)).version
            return await service.change(
                session, ctx.settings, changes, expected_version=expected, actor=CLI_ACTOR
            )

    _print_settings(run(_with_engine(ctx.settings, body)))


@cli.group()
def audit() -> None:
    """The audit log: check its hash chain."""


@audit.command("verify")
@pass_ctx
def audit_verify(ctx: Context) -> None:
    """Walk the audit log's hash chain; name every edited, inserted or removed record and exit non-zero."""
    from tongcrm.audit.chain import verify

    async def body(engine: Any) -> Any:
        async with session_factory(engine, readonly=True)() as session, session.begin():
            return await verify(session)

    report = run(_with_engine(ctx.settings, body))
    for finding in report.findings:
        click.echo(f"  {finding.kind}: {finding.detail}", err=True)
    if not report.ok:
        fail(f"audit log: {len(report.findings)} break(s) in the hash chain of {report.records} record(s)")
    click.echo(
        f"audit log: {report.records} record(s) chained, intact; head seq {report.head_seq} hash {report.head_hash}"
    )


@cli.group()
def points() -> None:
    """Points: earning-rule backtests."""


@points.command("backtest")
@click.option("--rules", "rules_file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--since", required=True, help="First payment date to replay (YYYY-MM-DD, programme time zone)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def points_backtest(ctx: Context, rules_file: str, since: str, as_json: bool) -> None:
    """Replay stored orders under a draft rule set and compare with what was actually awarded."""
    import json
    from datetime import datetime
    from pathlib import Path

    import msgspec

    from tongcrm.points import service

    settings = ctx.settings
    try:
        start = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=settings.tz)
    except ValueError:
        fail(f"--since {since!r} is not a date like 2026-01-31")
    try:
        document = json.loads(Path(rules_file).read_text())
    except json.JSONDecodeError as exc:
        fail(f"{rules_file} is not JSON: {exc}")
    rules = service.draft_rules(document)
    points_ctx = service.PointsContext(clock=utcnow, tz=settings.tz)

    async def body(engine: Any) -> Any:
        async with session_factory(engine, readonly=True)() as session:
            return await service.backtest(session, points_ctx, rules, start)

    report = run(_with_engine(settings, body))
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
        return
    click.echo(
        f"{report.orders} orders, {report.lines} lines paid since {since}: draft {report.draft_total} points, "
        f"actual {report.actual_total}, difference {report.difference:+d}"
    )
    for title, groups in (("channel", report.by_channel), ("tier", report.by_tier)):
        table = Table(title, "orders", "draft", "actual", "difference")
        for name, g in groups.items():
            table.add_row(name, str(g.orders), str(g.draft), str(g.actual), f"{g.difference:+d}")
        console.print(table)


@cli.group()
def tiers() -> None:
    """Tiers: standing entitlement grants."""


@tiers.command("grant-standing")
@click.option("--batch", default=50_000, show_default=True, help="Members per transaction.")
@pass_ctx
def tiers_grant_standing(ctx: Context, batch: int) -> None:
    """Give every member the standing benefits of their tier as grants, and close grants of tiers they left.

    Safe to run again: a second run changes nothing."""
    from datetime import UTC, datetime

    from tongcrm.tiers import service

    tier_ctx = service.TierContext.of(ctx.settings, now=datetime.now(UTC), actor="cli")

    async def body(engine: Any) -> Any:
        return await service.grant_standing(session_factory(engine), tier_ctx, batch=batch)

    moved = run(_with_engine(ctx.settings, body))
    click.echo(f"standing grants: {moved.opened} opened, {moved.closed} closed")


@cli.group()
def member() -> None:
    """A member's rights under PIPL (a copy of their data, its erasure: both audited), and the masked-mobile
    index."""


@member.command("export")
@click.argument("member_id", type=int)
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False, writable=True), help="Write here, not stdout."
)
@pass_ctx
def member_export(ctx: Context, member_id: int, out_file: str | None) -> None:
    """Print (or write to --out) everything kept about MEMBER_ID as JSON."""
    import json

    # logs go to stderr, so that stdout is the document alone
    configure_logging(json=ctx.settings.log_json, level=ctx.settings.log_level)
    from tongcrm.cli_run import CLI_ACTOR
    from tongcrm.privacy import service as privacy

    vault = ctx.settings.vault()

    async def body(engine: Any) -> dict[str, Any]:
        async with session_factory(engine)() as session, session.begin():
            return await privacy.export_member(session, vault, member_id, CLI_ACTOR)

    text = json.dumps(run(_with_engine(ctx.settings, body)), ensure_ascii=False, indent=2)
    if out_file:
        with open(out_file, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        click.echo(f"member {member_id} exported to {out_file}")
    else:
        click.echo(text)


@member.command("erase")
@click.argument("member_id", type=int)
@click.option("--reason", required=True, help="The request this answers (kept in the audit log).")
@click.confirmation_option(prompt="This erases the member's personal data for good. Continue?")
@pass_ctx
def member_erase(ctx: Context, member_id: int, reason: str) -> None:
    """Erase MEMBER_ID's personal data; orders and points stay, anonymous."""
    from tongcrm.cli_run import CLI_ACTOR
    from tongcrm.privacy import service as privacy

    if not reason.strip():
        fail("--reason must say which request this erasure answers")

    async def body(engine: Any) -> Any:
        async with session_factory(engine)() as session, session.begin():
            return await privacy.erase_member(session, member_id, CLI_ACTOR, reason=reason.strip())

    report = run(_with_engine(ctx.settings, body))
    if report.already_erased:
        click.echo(f"member {report.member_id} was already erased: nothing changed")
        return
    counts = ", ".join(f"{n} {name}" for name, n in report.counts().items() if n)
    click.echo(f"member {report.member_id} erased ({counts})")


@member.command("index-masked")
@click.option(
    "--batch", default=500, show_default=True, type=click.IntRange(1, 10_000), help="Members a transaction."
)
@pass_ctx
def member_index_masked(ctx: Context, batch: int) -> None:
    """Write the masked-mobile index (search by 138****8000) of members that lack it: run once after the
    upgrade to revision 0024. Safe to stop and run again; a second run finds nothing to do."""
    from tongcrm.members import masked

    vault = ctx.settings.vault()

    async def body(engine: Any) -> Any:
        return await masked.index_masked_mobiles(
            session_factory(engine), vault, batch=batch, progress=lambda n: click.echo(f"  indexed {n}")
        )

    report = run(_with_engine(ctx.settings, body))
    click.echo(
        f"masked mobiles indexed: {report.indexed}, mobile identities indexed: {report.identities}, "
        f"stale indexes cleared: {report.cleared}"
    )
    if report.unreadable:
        fail(f"{report.unreadable} member mobile(s) could not be read by any configured key")


def _bulk_commands() -> None:
    from tongcrm.bulk.cli import export_command, import_command

    cli.add_command(import_command)
    cli.add_command(export_command)


_bulk_commands()
CORE_COMMANDS = frozenset(cli.commands)


#: Core command groups that need no plugin host, by name: imported when invoked (or listed by ``--help``), not on
#: every start. ``tongcrm campaigns`` alone imported ~0.24 s of modules that ``tongcrm import`` never uses (#22).
_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "segments": ("tongcrm.segments.cli", "segments_group"),
    "campaigns": ("tongcrm.campaigns.cli", "campaigns_group"),
    "calendar": ("tongcrm.campaigns.cli", "calendar_command"),
    "rfm": ("tongcrm.rfm.cli", "rfm_group"),
    "tags": ("tongcrm.tagrules.cli", "tags_group"),
    "messages": ("tongcrm.messaging.cli", "messages_group"),
}


class _LazyGroup(click.Group):
    """A group whose :data:`_LAZY_COMMANDS` are imported the first time they are asked for: a command-line run
    pays for the module of the command it runs, not for every command's (start-up is CPU before the first row of
    an import, #22). A command added eagerly under the same name wins, as the later ``add_command`` did."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _LAZY_COMMANDS:
            module, name = _LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), name)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)


def build_cli(host: PluginHost) -> click.Group:
    """The core group plus every plugin's commands, built fresh so plugins registered in one call do not leak."""
    group = _LazyGroup(
        name="tongcrm",
        commands=dict(cli.commands),
        params=list(cli.params),
        help=cli.help,
        context_settings=cli.context_settings,
    )
    from tongcrm.ingest.cli import backfills_command, channel_group, sync_command

    group.add_command(channel_group(host))
    group.add_command(sync_command(host))
    group.add_command(backfills_command(host))
    for command in host.cli_commands(reserved=CORE_COMMANDS | {"channel", "sync", *_LAZY_COMMANDS}):
        group.add_command(command)
    return group


#: How SQLite and PostgreSQL say that a table is not there.
_MISSING_TABLE = re.compile(r'no such table: (\w+)|relation "(\w+)" does not exist')


def _no_schema(exc: Exception) -> str | None:
    """What to say when a command met a database without tongcrm's tables: one run in another directory (the
    default database is ``./tongcrm.sqlite3``), or with ``TONGCRM_DATABASE_URL`` unset or naming another
    database, or before the first migration. SQLite's bare "no such table: api_keys" said none of that."""
    found = _MISSING_TABLE.search(str(exc))
    if found is None:
        return None
    return (
        f"the database {_configured_url()} has no tongcrm tables (no {found.group(1) or found.group(2)}): run "
        "`tongcrm db upgrade` to create them, or point TONGCRM_DATABASE_URL at the tongcrm database "
        "(the default is ./tongcrm.sqlite3 in the current directory)"
    )


def _configured_url() -> str:
    """The configured database URL as an error message may show it (no password)."""
    try:
        return make_url(Settings.from_env().database_url).render_as_string(hide_password=True)
    except (TongcrmError, ValueError, SQLAlchemyError):
        return "TONGCRM_DATABASE_URL"


def _unreachable(exc: Exception) -> str | None:
    """What to say when the database could not be opened at all: the server is down or the host or port is wrong
    (``ConnectionRefusedError: [Errno 111] Connect call failed``, ``gaierror: Name or service not known``), or it
    refused the connection (no such database, role or password; a SQLite path that is a directory). The bare
    driver error named neither the database nor what to check."""
    if isinstance(exc, ConnectionError | socket.gaierror):
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"cannot reach the database {_configured_url()} ({reason}): is the server running there, and are "
            "the host and port in TONGCRM_DATABASE_URL right?"
        )
    if isinstance(exc, DBAPIError) and exc.statement is None:  # failed while connecting, before any statement
        reason = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
        return f"cannot open the database {_configured_url()}: {reason} (check TONGCRM_DATABASE_URL)"
    return None


def main(argv: list[str] | None = None) -> None:
    traceback = "--traceback" in (argv if argv is not None else sys.argv)
    args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--traceback"]
    try:
        host = PluginHost()
        group = build_cli(host)
        group.main(args=args, prog_name="tongcrm", obj=Context(host), standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted")
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except TongcrmError as exc:
        if traceback:
            raise
        fail(exc.message)
    except (OSError, SQLAlchemyError) as exc:
        if traceback:
            raise
        fail(
            _no_schema(exc)
            or _unreachable(exc)
            or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
