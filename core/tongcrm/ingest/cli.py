"""``tongcrm channel …`` and ``tongcrm sync``. ``channel add`` has one sub-command per installed channel, with
an option per setting the channel declares, so ``tongcrm channel add taobao --help`` documents itself."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tongcrm.audit.service import Actor
from tongcrm.channels import service as accounts
from tongcrm.cli_run import CLI_ACTOR
from tongcrm.config import Settings
from tongcrm.db.base import utcnow
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import BadRequest
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.backfill import (
    PRESENT_MARGIN,
    BackfillView,
    WindowReport,
    backfill_views,
    create_backfill,
    work_backfill,
)
from tongcrm.ingest.service import SyncReport, active_accounts, sync_account, worker_name
from tongcrm.logging import configure_logging
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelSpec, OrderPage


def _settings() -> Settings:
    return Settings.from_env()


class PointInTime(click.ParamType[datetime]):
    """A moment on the command line: ``2026-11-01 00:00`` (the form the README shows), with seconds or not,
    a bare date, or ISO 8601 with ``T`` and an optional zone (``Z``, ``+08:00``).

    click's own ``DateTime`` knows three fixed formats and refuses the minutes-only form operators type. The
    value stays naive when no zone is given: the command puts it in the programme's time zone
    (``TONGCRM_TIMEZONE``), which only the command knows.
    """

    name = "datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is not a date and time; use e.g. '2026-11-01 00:00', '2026-11-01', "
                "'2026-11-01T00:00:00+08:00' or '2026-10-31T16:00Z'",
                param,
                ctx,
            )


def in_zone(moment: datetime, tz: tzinfo) -> datetime:
    """``moment`` as aware UTC; a naive one is read as wall time in ``tz`` (the programme's time zone)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(UTC)


def _add_command(spec: ChannelSpec, host: PluginHost) -> click.Command:
    def callback(name: str, **options: Any) -> None:
        given = {key: value for key, value in options.items() if value is not None}
        settings = _settings()

        async def body() -> accounts.AccountView:
            engine = create_engine(settings.database_url)
            try:
                async with session_factory(engine)() as session, session.begin():
                    await accounts.create_account(session, host, settings.vault(), spec.name, name, given)
                    return await accounts.account_view(session, name)
            finally:
                await engine.dispose()

        view = asyncio.run(body())
        secrets = f" (secrets stored encrypted: {', '.join(view.secrets_set)})" if view.secrets_set else ""
        click.echo(f"added {spec.name} account {view.name!r}{secrets}")

    params: list[click.Parameter] = [
        click.Option(["--name"], required=True, help="A name for this shop or store.")
    ]
    for field in spec.settings:
        help_text = (
            field.help
            + (" [secret]" if field.secret else "")
            + (f" [default: {field.default}]" if field.default else "")
        )
        params.append(
            click.Option(
                [f"--{field.name.replace('_', '-')}", field.name],
                help=help_text,
                type=click.Choice(list(field.choices)) if field.choices else str,
            )
        )
    return click.Command(
        spec.name,
        callback=callback,
        params=params,
        help=f"Connect an account of the {spec.display_name} channel ({spec.name}).",
    )


def channel_group(host: PluginHost) -> click.Group:
    group = click.Group("channel", help="Channel accounts: the shops and stores tongcrm syncs.")
    add = click.Group("add", help="Connect a shop or store of an installed channel.")
    for spec in host.channels().values():
        add.add_command(_add_command(spec, host))
    group.add_command(add)

    @group.command("list")
    def list_cmd() -> None:
        """Accounts with their status (e.g. needs_reauth) and sync progress."""
        settings = _settings()

        async def body() -> list[accounts.AccountView]:
            engine = create_engine(settings.database_url)
            try:
                async with session_factory(engine)() as session:
                    return await accounts.list_accounts(session)
            finally:
                await engine.dispose()

        table = Table("name", "channel", "status", "orders", "last success", "synced up to", "last error")
        for v in asyncio.run(body()):
            status = v.status if not v.status_detail else f"{v.status}: {v.status_detail}"
            table.add_row(
                v.name,
                v.channel,
                status,
                str(v.orders),
                v.last_success_at.strftime("%Y-%m-%d %H:%M:%S") if v.last_success_at else "never",
                v.watermark.strftime("%Y-%m-%d %H:%M:%S") if v.watermark else "",
                (v.last_error or "")[:80],
            )
        Console(width=200).print(table)

    @group.command("reauth")
    @click.argument("name")
    @click.option(
        "--set", "pairs", multiple=True, metavar="KEY=VALUE", help="New setting, e.g. --set session=…"
    )
    def reauth_cmd(name: str, pairs: tuple[str, ...]) -> None:
        """Replace settings (a fresh session token, a new secret) and resume syncing."""
        values: dict[str, str | None] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise BadRequest(f"--set takes KEY=VALUE, got {pair!r}")
            values[key.strip().replace("-", "_")] = value
        settings = _settings()

        async def body() -> None:
            engine = create_engine(settings.database_url)
            try:
                async with session_factory(engine)() as session, session.begin():
                    await accounts.update_secrets(
                        session, host, settings.vault(), name, values, actor=Actor("cli", "admin")
                    )
            finally:
                await engine.dispose()

        asyncio.run(body())
        click.echo(f"account {name!r} re-authorised and active")

    return group


def sync_command(host: PluginHost) -> click.Command:
    @click.command("sync")
    @click.option("--account", "names", multiple=True, help="Account(s) to sync (default: every active one).")
    @click.option(
        "--since",
        type=PointInTime(),
        help="Start from this time, e.g. '2026-11-01 00:00' or ISO 8601; without a zone it is in the "
        "programme's time zone (TONGCRM_TIMEZONE, default Asia/Shanghai).",
    )
    @click.option("--max-pages", type=int, help="Stop after this many pages (the next run resumes).")
    @click.option(
        "--window-hours",
        type=click.FloatRange(min=0, min_open=True),
        help="Backfill: cut --since … now into windows of this many hours that workers sync in parallel "
        "(the job workers, and this command with --parallel). Needs --since and one --account.",
    )
    @click.option(
        "--parallel",
        type=click.IntRange(min=0),
        default=4,
        show_default=True,
        help="Backfill: windows this command syncs at once (0: leave every window to the job workers).",
    )
    def sync(
        names: tuple[str, ...],
        since: datetime | None,
        max_pages: int | None,
        window_hours: float | None,
        parallel: int,
    ) -> None:
        """Pull orders from the platforms into the member base, page by page."""
        settings = _settings()
        configure_logging(json=settings.log_json, level=settings.log_level)
        start = in_zone(since, settings.tz) if since is not None else None
        if window_hours is not None:
            if start is None or len(names) != 1 or max_pages is not None:
                raise click.UsageError(
                    "--window-hours needs --since and exactly one --account (no --max-pages)"
                )
            window = timedelta(hours=window_hours)
            sys.exit(asyncio.run(_run_backfill(host, settings, names[0], start, window, parallel)))
        reports = asyncio.run(_run_sync(host, settings, names, start, max_pages))
        if not reports:  # a sync of nothing said nothing: an operator took it for a sync that found no orders
            click.echo(
                "no active channel account to sync: add one with `tongcrm channel add CHANNEL` "
                "(`tongcrm channel list` shows them and their status)",
                err=True,
            )
        failed = False
        for r in reports:
            line = (
                f"{r.account}: {r.pages} pages, {r.applied} orders applied, {r.unchanged} unchanged, "
                f"{r.members_created} new members, {r.quarantined} quarantined"
            )
            if r.quarantined:
                line += " (see GET /api/ingest/quarantine)"
            click.echo(line)
            if r.error:
                failed = True
                click.echo(f"{r.account}: error: {r.error}", err=True)
        if failed:
            sys.exit(1)

    return sync


def backfills_command(host: PluginHost) -> click.Command:
    @click.command("backfills")
    @click.option("--id", "backfill_id", type=int, help="Only this backfill.")
    @click.option(
        "--resume",
        "resume_id",
        type=int,
        help="Work the unfinished windows of this backfill here (after its jobs gave up, e.g. on an account "
        "that needed re-authorising).",
    )
    @click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True)
    def backfills(backfill_id: int | None, resume_id: int | None, parallel: int) -> None:
        """Progress of windowed backfills (tongcrm sync --window-hours): windows done, applied through."""
        settings = _settings()
        if resume_id is not None:
            configure_logging(json=settings.log_json, level=settings.log_level)
            sys.exit(asyncio.run(_work(host, settings, resume_id, parallel)))

        async def body() -> list[BackfillView]:
            engine = create_engine(settings.database_url)
            try:
                async with session_factory(engine)() as session:
                    return await backfill_views(session, backfill_id)
            finally:
                await engine.dispose()

        table = Table("id", "account", "period", "status", "windows done", "through", "orders", "retries")
        views = asyncio.run(body())
        for v in views:
            table.add_row(
                str(v.id),
                v.account,
                f"{_local(v.since, settings.tz)} .. {_local(v.until, settings.tz)}",
                v.status,
                f"{v.windows['done']}/{v.total_windows} ({v.windows['running']} running)",
                _local(v.through, settings.tz),
                str(v.orders),
                str(v.retries),
            )
        Console(width=200).print(table)
        for v in views:
            for error in v.errors:
                click.echo(f"backfill {v.id}: {error[:200]}", err=True)

    return backfills


def _local(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _ingest_context(host: PluginHost, settings: Settings) -> IngestContext:
    return IngestContext(
        host=host,
        vault=settings.vault(),
        clock=utcnow,  # a module's function: a fetching child process gets it too
        tz=settings.tz,
        actor="cli",
        lease_ttl=timedelta(seconds=settings.sync_lease_seconds),
        fetch_process=settings.sync_fetch_process,
    )


async def _run_backfill(
    host: PluginHost, settings: Settings, name: str, since: datetime, window: timedelta, parallel: int
) -> int:
    """Create the backfill (its window jobs go to whichever job workers run) and work windows here too."""
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    try:
        until = datetime.now(UTC) - PRESENT_MARGIN
        async with sessions() as session, session.begin():
            backfill_id = await create_backfill(
                session, host, name, since=since, until=until, window=window, actor=CLI_ACTOR
            )
            view = (await backfill_views(session, backfill_id))[0]
    finally:
        await engine.dispose()
    click.echo(f"backfill {backfill_id} of {name}: {view.total_windows} windows queued for the job workers")
    if parallel == 0:
        click.echo(f"follow it with: tongcrm backfills --id {backfill_id}")
        return 0
    return await _work(host, settings, backfill_id, parallel)


async def _work(host: PluginHost, settings: Settings, backfill_id: int, parallel: int) -> int:
    """Work a backfill's unfinished windows in this process, beside the job workers; 1 when a window failed."""
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            view = (await backfill_views(session, backfill_id))[0]
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} windows"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
        ) as progress:
            task = progress.add_task(
                f"backfill {view.account}", total=view.total_windows, completed=view.windows["done"]
            )

            def on_window(report: WindowReport) -> None:
                if report.caught_up and not report.finished_before:
                    progress.advance(task)

            failed = await work_backfill(
                sessions,
                _ingest_context(host, settings),
                backfill_id,
                holder=worker_name(),
                parallel=parallel,
                on_window=on_window,
            )
        async with sessions() as session:
            view = (await backfill_views(session, backfill_id))[0]
    finally:
        await engine.dispose()
    click.echo(
        f"backfill {backfill_id} of {view.account}: {view.windows['done']}/{view.total_windows} windows done, "
        f"{view.pages} pages, {view.orders} orders applied, {view.quarantined} quarantined, "
        f"through {_local(view.through, settings.tz)}"
    )
    for report in failed:
        click.echo(f"window {report.window_id}: error: {report.error} (its job retries it)", err=True)
    return 1 if failed else 0


async def _run_sync(
    host: PluginHost,
    settings: Settings,
    names: tuple[str, ...],
    since: datetime | None,
    max_pages: int | None,
) -> list[SyncReport]:
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    ctx = _ingest_context(host, settings)
    reports: list[SyncReport] = []
    try:
        if not names:
            async with sessions() as session:
                names = tuple(await active_accounts(session))
        show = sys.stderr.isatty()
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[orders]} orders, {task.fields[quarantined]} quarantined"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show,
        ) as progress:
            for name in names:
                task = progress.add_task(f"sync {name}", total=None, orders=0, quarantined=0)

                def on_page(report: SyncReport, page: OrderPage, task: Any = task) -> None:
                    progress.update(task, advance=1, orders=report.applied, quarantined=report.quarantined)

                reports.append(
                    await sync_account(sessions, ctx, name, since=since, max_pages=max_pages, on_page=on_page)
                )
                progress.update(task, total=reports[-1].pages, completed=reports[-1].pages)
    finally:
        await engine.dispose()
    return reports
