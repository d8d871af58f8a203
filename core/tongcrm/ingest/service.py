"""Syncing a channel account: lease, pull pages, apply each page with its cursor in one transaction.

Two workers never sync the same account at once: the sync holds a lease on the account's cursor and renews
it inside every page's transaction, so a worker that lost its lease (it stalled past the lease time and another
took over) cannot commit. A worker that dies simply stops renewing; its lease lapses and the next sync resumes
from the last committed cursor, replaying at most one page, which changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tongcrm.channels import service as accounts
from tongcrm.channels.models import ChannelAccount, SyncState
from tongcrm.db import direct
from tongcrm.db.dialect import dialect_name
from tongcrm.db.engine import create_inline_writer, is_inline_writer, session_factory
from tongcrm.db.sqlite_thread import CACHE_KIB
from tongcrm.errors import Conflict, TongcrmError
from tongcrm.heap import batch_collector
from tongcrm.identity.service import LostRace
from tongcrm.ingest.apply import IngestContext, PageResult, apply_orders_page
from tongcrm.ingest.fetcher import FetchRecipe, Prefetch, recipe
from tongcrm.jobs import leases, outbox
from tongcrm.limits.gate import DatabaseCallGate
from tongcrm.logging import get_logger
from tongcrm.plugin.errors import ChannelAuthError, ChannelError, ChannelRequestError, ChannelUnavailable
from tongcrm.plugin.types import ChannelAdapter, ChannelContext, OrderPage
from tongcrm.privacy.redact import redact

log = get_logger(__name__)

MAX_PAGES_PER_RUN = 100_000


class LeaseLost(TongcrmError):
    status_code = 409
    title = "Sync lease lost"


@dataclass(slots=True)
class SyncReport:
    account: str
    pages: int = 0
    applied: int = 0
    unchanged: int = 0
    quarantined: int = 0
    members_created: int = 0
    caught_up: bool = False
    error: str | None = None
    needs_reauth: bool = False


PageCallback = Callable[[SyncReport, OrderPage], None]


def lease_key(account_id: int) -> str:
    return f"sync:{account_id}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def sync_account(
    sessions: async_sessionmaker[AsyncSession],
    ctx: IngestContext,
    name: str,
    *,
    since: datetime | None = None,
    max_pages: int | None = None,
    on_page: PageCallback | None = None,
    holder: str | None = None,
) -> SyncReport:
    """Sync one account until it is caught up (or ``max_pages``). Platform failures end the run with
    ``report.error`` set; the periodic job tries again later."""
    holder = holder or worker_name()
    report = SyncReport(account=name)
    async with sessions() as session, session.begin():
        account = await accounts.get_account(session, name)
        if account.status != "active":
            report.error = (
                f"account {name!r} is {account.status}: {account.status_detail or 're-authorise it'}"
            )
            report.needs_reauth = account.status == "needs_reauth"
            return report
        if not await leases.acquire(session, lease_key(account.id), holder, ctx.lease_ttl, now=ctx.clock()):
            current = await leases.holder_of(session, lease_key(account.id), now=ctx.clock())
            raise Conflict(f"account {name!r} is being synced by {current}")
        state = await session.get(SyncState, account.id)
        cursor = None if since is not None or state is None else state.cursor
        account_id, channel = account.id, account.channel
        spec = ctx.host.channel(channel)
        channel_ctx = accounts.channel_context(
            account, ctx.vault, clock=ctx.clock, since=since, call_gate=DatabaseCallGate(sessions)
        )
    adapter: ChannelAdapter = spec.factory(channel_ctx)
    fetch = fetch_recipe(ctx, spec.factory, channel_ctx)
    sink = PageSink(
        lease=lease_key(account_id),
        advance=lambda session, page, result: _advance(session, account_id, page, result, ctx.clock()),
        record_error=lambda session, error, code: _record_error(
            session, account_id, error, code, ctx.clock()
        ),
    )
    try:
        async with page_sessions(sessions) as pages:
            await pull_redoing_conflicts(
                pages,
                ctx,
                adapter,
                Source(account_id, channel, name, holder),
                cursor,
                sink,
                report,
                limit=max_pages or MAX_PAGES_PER_RUN,
                on_page=on_page,
                fetch=fetch,
            )
        if report.error is None:
            async with sessions() as session, session.begin():
                await session.execute(
                    sa.update(SyncState)
                    .where(SyncState.account_id == account_id)
                    .values(last_success_at=ctx.clock(), last_error=None, last_error_code=None)
                )
    finally:
        await adapter.aclose()
        async with sessions() as session, session.begin():
            await leases.release(session, lease_key(account_id), holder)
    return report


@asynccontextmanager
async def page_sessions(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The sessions a sync applies its pages with: on a SQLite database file, those of an inline writer of
    its own (:func:`tongcrm.db.engine.create_inline_writer`, disposed at the end), else ``sessions``.

    Why (issue #22): through the ordinary engine every statement of a page is a hand-off to aiosqlite's thread
    and back (a queue put, a wake-up of that thread, ``call_soon_threadsafe`` and a socket write to wake the
    loop): at 100,000 orders 21 % of SQLite's thread was spent waking the loop. The inline writer runs the page's
    statements with ``sqlite3`` on the loop's thread, giving other tasks (the next page's fetch) a turn once a
    millisecond, and waits for another writer's lock in asyncio. The unit of work is unchanged: one
    transaction a page, ``BEGIN IMMEDIATE`` first, the lease renewed and the cursor advanced in it. Its
    connections keep the ordinary engine's page cache (:data:`tongcrm.db.sqlite_thread.CACHE_KIB`)."""
    bind = sessions.kw.get("bind")
    engine = None
    if isinstance(bind, AsyncEngine) and bind.dialect.name == "sqlite" and not is_inline_writer(bind):
        engine = create_inline_writer(bind.url.render_as_string(hide_password=False), cache_kib=CACHE_KIB)
    if engine is None:
        yield sessions
        return
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


def fetch_recipe(
    ctx: IngestContext, factory: Callable[[ChannelContext], ChannelAdapter], channel_ctx: ChannelContext
) -> FetchRecipe | None:
    """How a child process can fetch this account's pages, when ``ctx.fetch_process`` asks for one and the
    channel can run there; otherwise ``None`` (fetched in this process), with a debug log saying why."""
    if not ctx.fetch_process:
        return None
    found, why = recipe(factory, channel_ctx)
    if found is None:
        log.debug("fetching in the sync's own process", account=channel_ctx.account_name, reason=why)
    return found


#: PostgreSQL's deadlock_detected and serialization_failure: a concurrent page won, this one can be redone.
RETRYABLE = frozenset({"40P01", "40001"})
CONFLICT_RETRIES = 8


def conflicted(exc: BaseException) -> bool:
    """Whether ``exc`` ended a page that lost to a concurrent one (a race to create the same member, or a
    deadlock or serialisation failure on PostgreSQL): redone, not reported."""
    if isinstance(exc, LostRace):
        return True
    orig = getattr(exc, "orig", None)
    return (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) in RETRYABLE


async def pull_redoing_conflicts(
    sessions: async_sessionmaker[AsyncSession],
    ctx: IngestContext,
    adapter: ChannelAdapter,
    source: Source,
    cursor: str | None,
    sink: PageSink,
    report: SyncReport,
    *,
    limit: int,
    on_page: PageCallback | None = None,
    fetch: FetchRecipe | None = None,
) -> None:
    """:func:`pull`, redoing a page that lost to a concurrent one (see :func:`conflicted`).

    Pages applied at the same time share buyers whenever two accounts sell to the same people (two shops of
    one brand) or windows of one account run at once: they race to create the same members, and on
    PostgreSQL two of them can deadlock on identities both touch. The loser's page rolled back whole with its
    cursor, so it is redone from the cursor last committed, after a jittered pause (not in step with the
    winner again); after :data:`CONFLICT_RETRIES` attempts the error is raised."""
    committed = cursor

    def committed_page(so_far: SyncReport, page: OrderPage) -> None:
        nonlocal committed
        committed = page.next_cursor  # called once the page's transaction committed
        if on_page is not None:
            on_page(so_far, page)

    # A page's orders, lines and parameters are garbage once it commits; with the collector's defaults the
    # collections of the oldest generation walked the start-up heap again (a tenth of a PostgreSQL sync's CPU).
    with batch_collector():
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                await pull(
                    sessions,
                    ctx,
                    adapter,
                    source,
                    committed,
                    sink,
                    report,
                    limit=limit,
                    on_page=committed_page,
                    fetch=fetch,
                )
                return
            except (sa.exc.DBAPIError, LostRace) as exc:
                if not conflicted(exc) or attempt == CONFLICT_RETRIES:
                    raise
                log.info("page lost to a concurrent one; redoing it", account=source.name, attempt=attempt)
                await asyncio.sleep(random.uniform(0.05, 0.25) * attempt)


@dataclass(frozen=True, slots=True)
class Source:
    """The account a pull reads, and who pulls it (the holder of its lease)."""

    account_id: int
    channel: str
    name: str
    holder: str


@dataclass(frozen=True, slots=True)
class PageSink:
    """Where a pull keeps its progress: the account's sync state, or one backfill window. ``advance`` runs in
    each page's transaction (the page's effects and its cursor commit together); ``lease`` is renewed there."""

    lease: str
    advance: Callable[[AsyncSession, OrderPage, PageResult], Awaitable[None]]
    #: ``(session, error, code)``: the English ``error`` and its ``sync.*`` code (:func:`sync_error_code`).
    record_error: Callable[[AsyncSession, str, str], Awaitable[None]]


async def pull(
    sessions: async_sessionmaker[AsyncSession],
    ctx: IngestContext,
    adapter: ChannelAdapter,
    source: Source,
    cursor: str | None,
    sink: PageSink,
    report: SyncReport,
    *,
    limit: int,
    on_page: PageCallback | None = None,
    fetch: FetchRecipe | None = None,
) -> None:
    """Fetch and apply pages after ``cursor`` until caught up, ``limit`` pages, or a platform error (then
    ``report.error`` is set). The caller holds ``sink.lease``; a page whose transaction cannot renew it is not
    committed (:class:`LeaseLost`). With ``fetch``, pages after the first are fetched by a child process
    (:class:`tongcrm.ingest.fetcher.Prefetch`)."""
    bound = log.bind(account=source.name, channel=source.channel)
    # The next page is fetched while this one is applied: the platform round trip overlaps the database
    # work, and with a recipe a child process fetches and normalises on the other core
    # (:mod:`tongcrm.ingest.fetcher`). A prefetched page is only ever applied after its predecessor committed.
    prefetch = Prefetch(adapter, fetch, account=source.name, channel=source.channel)
    try:
        prefetch.ask(cursor, pages=limit - report.pages)
        while prefetch.waiting and report.pages < limit:
            try:
                page = await prefetch.take()
            except ChannelAuthError as exc:
                report.error, report.needs_reauth = f"authorisation failed: {exc.message}", True
                async with sessions() as session, session.begin():
                    await accounts.mark_status(session, source.account_id, "needs_reauth", exc.message)
                    await sink.record_error(session, report.error, sync_error_code(exc))
                bound.error("sync stopped: account needs re-authorisation", error=exc.message, code=exc.code)
                break
            except ChannelError as exc:
                report.error = f"{type(exc).__name__}: {exc.message}"
                async with sessions() as session, session.begin():
                    await sink.record_error(session, report.error, sync_error_code(exc))
                bound.warning("sync stopped by a platform error", error=exc.message, code=exc.code)
                break
            if page.has_more and page.next_cursor == cursor:
                report.error = (
                    "the channel adapter returned the same cursor with more pages: refusing to loop"
                )
                async with sessions() as session, session.begin():
                    await sink.record_error(session, report.error, CURSOR_LOOP)
                break
            if page.has_more and report.pages + 1 < limit:
                prefetch.ask(page.next_cursor, pages=limit - report.pages - 1)
            async with sessions() as session, session.begin():
                # the lease is renewed in the page's transaction, by its first statement
                renewal = leases.Renewal(sink.lease, source.holder, ctx.lease_ttl, ctx.clock())
                try:
                    result = await apply_orders_page(
                        session,
                        ctx,
                        source.account_id,
                        source.channel,
                        page.orders,
                        page.quarantined,
                        lease=renewal,
                        defer_events=True,
                    )
                except leases.NotHeld:
                    raise LeaseLost(
                        f"lost the lease {sink.lease!r} of {source.name!r}; another worker took over"
                    ) from None
                # the page's order_changed events: written by the sink's advance when it takes them (a sync,
                # with its cursor in one statement on PostgreSQL), else here, in the page's transaction
                await sink.advance(session, page, result)
                if result.events:
                    assert result.events_at is not None
                    await outbox.emit_many(session, result.events, now=result.events_at)
                    result.events = []
            cursor = page.next_cursor
            _add(report, result)
            if on_page is not None:
                on_page(report, page)
            bound.info(
                "page applied",
                page=report.pages,
                applied=result.applied,
                unchanged=result.unchanged,
                quarantined=result.quarantined,
            )
            if not page.has_more:
                report.caught_up = True
                break
    finally:
        await prefetch.close()


def _add(report: SyncReport, result: PageResult) -> None:
    report.pages += 1
    report.applied += result.applied
    report.unchanged += result.unchanged
    report.quarantined += result.quarantined
    report.members_created += result.members_created


async def _advance(
    session: AsyncSession, account_id: int, page: OrderPage, result: PageResult, now: datetime
) -> None:
    """The account's cursor, watermark and counts after ``page``; the page's deferred events (``result.events``)
    are written with them, and taken off: on PostgreSQL in the same statement (one round trip a page less), on
    SQLite in the same hand-off to the driver's thread."""
    params: dict[str, Any] = {
        "account_id": account_id,
        "cursor": page.next_cursor,
        "applied": result.applied,
        "now": now,
        "watermark": page.watermark,
    }
    dialect = dialect_name(session)
    events = bool(result.events) and dialect == "postgresql"
    if events:
        assert result.events_at is not None
        params.update(outbox.events_params("postgresql", result.events, now=result.events_at))
    advance = _advance_statement(page.watermark is not None, events)
    if dialect == "sqlite" and result.events:
        # the events and the cursor in one hand-off to SQLite's thread (tongcrm.db.direct.batch)
        assert result.events_at is not None
        step = outbox.emit_step(dialect, result.events, now=result.events_at)
        await direct.batch(session, [(advance, params), *([step] if step is not None else [])])
        result.events = []
        return
    await direct.rows(session, advance, params)
    if events:
        result.events = []


@functools.cache
def _advance_statement(watermark: bool, events: bool = False) -> Any:
    """A page's progress on the account's sync state, built once: the cursor, the counts and, when the page
    carries one, the watermark — never backwards, whatever the adapter says; with ``events`` (PostgreSQL) the
    page's deferred events inserted by a CTE of the same statement (:func:`tongcrm.jobs.outbox.events_cte`)."""
    table = cast(sa.Table, SyncState.__table__)
    values: dict[str, Any] = {
        "cursor": sa.bindparam("cursor", type_=table.c.cursor.type),
        "pages": table.c.pages + 1,
        "orders": table.c.orders + sa.bindparam("applied", type_=table.c.orders.type),
        "last_page_at": sa.bindparam("now", type_=table.c.last_page_at.type),
    }
    if watermark:
        mark = sa.bindparam("watermark", type_=table.c.watermark.type)
        values["watermark"] = sa.case(
            (table.c.watermark.is_(None), mark),
            (table.c.watermark < mark, mark),
            else_=table.c.watermark,
        )
    stmt = sa.update(table).where(table.c.account_id == sa.bindparam("account_id")).values(**values)
    return stmt.add_cte(outbox.events_cte()) if events else stmt


#: A stopped sync's error as a code, by the plugin contract's error class (the most specific first), so the
#: console can say it in its language whatever the channel; the English sentence stays for the API and logs.
SYNC_ERROR_CODES: tuple[tuple[type[ChannelError], str], ...] = (
    (ChannelAuthError, "sync.auth_failed"),
    (ChannelUnavailable, "sync.unavailable"),
    (ChannelRequestError, "sync.request_refused"),
    (ChannelError, "sync.platform_error"),
)
#: The adapter answered the same cursor with more pages: the core stopped rather than loop.
CURSOR_LOOP = "sync.cursor_loop"


def sync_error_code(exc: ChannelError) -> str:
    """The ``sync.*`` code of an adapter's error (:data:`SYNC_ERROR_CODES`)."""
    return next(code for kind, code in SYNC_ERROR_CODES if isinstance(exc, kind))


async def _record_error(session: AsyncSession, account_id: int, error: str, code: str, now: datetime) -> None:
    await session.execute(
        sa.update(SyncState)
        .where(SyncState.account_id == account_id)
        .values(last_error=redact(error), last_error_code=code, last_error_at=now)
    )


async def active_accounts(session: AsyncSession) -> list[str]:
    return list(
        (
            await session.execute(
                sa.select(ChannelAccount.name)
                .where(ChannelAccount.status == "active")
                .order_by(ChannelAccount.name)
            )
        ).scalars()
    )
