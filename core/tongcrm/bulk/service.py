"""Bulk import: members, historical orders and opening points balances from a previous CRM.

An import works in pages (1,000 records by default). Each page is one transaction that

1. claims the natural key of every readable row in ``bulk_import_keys`` (``INSERT … ON CONFLICT DO NOTHING``;
   on PostgreSQL a ``COPY`` first, which a key held already stops): a row whose key is already there was
   imported before — from this file or another — and is skipped;
2. applies the claimed rows through the same code as channel ingest: :func:`tongcrm.identity.service.resolve_many`
   for members (so a member who already exists through a channel identity or a mobile is merged, not
   duplicated), :func:`tongcrm.ingest.apply.apply_orders_page` for orders (under the source's ``import`` channel
   account, earning no points and sending no care message), and :func:`tongcrm.points.ledger.post_credits` for
   opening balances (entry kind ``opening``), then re-evaluates the tiers of the members it touched;
3. gives back the key of every row that failed and records it in ``bulk_import_errors`` with its line and reason;
4. moves the file's checkpoint (``bulk_imports.line_reached``) to the page's last line.

So a crash loses at most the page in flight and a new run resumes after the checkpoint, and running a finished
file again imports nothing. A lease per import keeps two processes from importing the same file at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import os
import socket
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tongcrm.bulk import staged
from tongcrm.bulk.imported import ImportedLine, ImportedOrder, evidence
from tongcrm.bulk.mapping import (
    Record,
    check_header,
    check_kind,
    count_records,
    digest,
    imported_column,
    parse_int,
    parse_time,
    read_records,
    shown,
)
from tongcrm.bulk.models import BulkImport, BulkImportError, BulkImportKey
from tongcrm.channels.models import ChannelAccount, QuarantinedRecord, SyncState
from tongcrm.crypto import Vault
from tongcrm.db import direct, stats
from tongcrm.db.dialect import dialect_name, insert, insert_rows, json_rows_param, one_of
from tongcrm.db.lengths import check_fits
from tongcrm.errors import BadRequest, Conflict, NotFound, TongcrmError
from tongcrm.identity.models import Identity
from tongcrm.identity.service import ClaimSet, ResolutionContext, ResolveOutcome, resolve_many
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.jobs import leases
from tongcrm.logging import get_logger
from tongcrm.members.masked import mask_name
from tongcrm.members.models import Member
from tongcrm.members.phone import InvalidMobile, mask_mobile, normalise_mobile
from tongcrm.orders.models import Order
from tongcrm.orders.models import OrderLine as OrderLineRow
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import (
    ORDER_TEXT_LIMITS,
    BuyerProfile,
    IdentityClaim,
    OrderLine,
    OrderStatus,
    refuse_longer_than_stored,
)
from tongcrm.points.ledger import AVAILABLE, Credit, post_credits
from tongcrm.points.models import EntryKind, PointsBalance, PointsEntry, PointsLot
from tongcrm.tiers.service import TierContext
from tongcrm.tiers.service import reevaluate as reevaluate_tiers

log = get_logger(__name__)

IMPORT_CHANNEL = "import"
IMPORTED_MEMBER_KIND = "import.member_id"
PAGE_SIZE = 1000
#: The page size on SQLite when none is given. A SQLite page writes every index leaf it touched to the log at
#: its commit, and an order lands at random places of the orders' two activity indexes, its key's and its
#: buyer's: at 1,000 rows a page nearly every row dirtied leaves of its own, at 10,000 rows the page's rows share
#: them. The orders' insert alone, 300,000 orders into the real schema: 44 → 31 µs of CPU a row with SQLite's
#: 2 MB cache, 33 → 20 µs with the command's larger one (:data:`tongcrm.bulk.cli.IMPORT_SQLITE_CACHE_KIB`; #22).
#: A page holds the write lock that much longer (~1 s of CPU), which another writer waits out on its busy
#: timeout, and two pages held take ~60 MB more than at 1,000.
SQLITE_PAGE_SIZE = 10_000


#: Records per page of an orders import on PostgreSQL when the caller gives none. Most of a page's server work
#: is per row (the ``COPY``s, the keys' claim, the identities' touch), but each statement also pays per page, and a
#: buyer seen twice in a page is touched once: at 100,000 orders, pages of 5,000 took the server's CPU from 9.3 to
#: 8.1 s and the process's from 9.1 to 8.0 s in one profiled pair at load ~14 (importpg14, #22; docs/bulk.md has
#: the benchmark pairs), for ~25 MB more held (two pages) and at most 5,000 orders redone after a crash.
POSTGRESQL_ORDERS_PAGE_SIZE = 5_000


def default_page_size(dialect: str, kind: str | None = None) -> int:
    """Records per page (one transaction each) when the caller gives none: :data:`SQLITE_PAGE_SIZE` on SQLite,
    :data:`POSTGRESQL_ORDERS_PAGE_SIZE` for orders and :data:`PAGE_SIZE` for other kinds on PostgreSQL."""
    if dialect == "sqlite":
        return SQLITE_PAGE_SIZE
    return POSTGRESQL_ORDERS_PAGE_SIZE if kind == "orders" else PAGE_SIZE


_KEYS = cast(sa.Table, BulkImportKey.__table__)
_ERRORS = cast(sa.Table, BulkImportError.__table__)
_SOURCE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
#: The tables an import of each kind grows, analysed on the database's schedule (:mod:`tongcrm.db.stats`).
GROWN_TABLES: dict[str, tuple[str, ...]] = {
    "members": (Member.__tablename__, Identity.__tablename__),
    # its buyers' identities and members too when some of its orders went through resolution (RESOLVED_TABLES)
    "orders": (Order.__tablename__, OrderLineRow.__tablename__),
    "points": (
        PointsEntry.__tablename__,
        PointsLot.__tablename__,
        PointsBalance.__tablename__,
        Identity.__tablename__,
        Member.__tablename__,
    ),
}
#: What resolving buyers may grow: analysed with an orders import's tables once some of its orders needed it.
RESOLVED_TABLES = (Identity.__tablename__, Member.__tablename__)
#: Of the tables an import grows, those analysed on the schedule *during* it, where they differ from
#: :data:`GROWN_TABLES` (every grown table is analysed at its end). The schedule's analyses are there for the
#: import's own reads (and a sync's running beside it): a members page whose rows are all new (the set-based
#: writer of :mod:`tongcrm.bulk.staged`) reads ``identities`` by ``(kind, value)`` and never ``members``, whose
#: ``ANALYZE`` (a 30,000-row sample of a wide row) was a third of the server's CPU of a 30,000-member import
#: (0.34 s a run against 0.13 s for ``identities``; bulk12, #22). A page that went through identity resolution
#: adds :data:`RESOLVED_TABLES`, as for orders.
SCHEDULED_TABLES: dict[str, tuple[str, ...]] = {"members": (Identity.__tablename__,), "orders": ()}
#: An orders import's pages written set-based (:func:`tongcrm.bulk.staged.write_orders`) read no ``orders`` or
#: ``order_lines`` (they ``COPY`` into them; the foreign keys probe primary keys), so the schedule leaves those two
#: wide tables to the import's end (their analyses were 0.5 of the server's 9.3 s of CPU for a 100,000-order
#: import, importpg14, #22), and adds :data:`RESOLVED_TABLES` once the staged writer created buyers (its lookup reads
#: them). A page of which some orders went through ingest adds these as well: ingest reads the stored orders.
INGESTED_TABLES = (Order.__tablename__, OrderLineRow.__tablename__, *RESOLVED_TABLES)
#: The columns of a table the schedule's analyses *during* an import cover (PostgreSQL; every column at its end):
#: what the import's reads and resolution's filter and join on. ``ANALYZE identities`` computed statistics of
#: the evidence, the encrypted value and the masked index as well, none of which an import's plan reads (#22).
SCHEDULED_COLUMNS: dict[str, tuple[str, ...]] = {Identity.__tablename__: ("kind", "value", "member_id")}


class ImportFailed(TongcrmError):
    status_code = 500
    title = "Import failed"


@dataclass(frozen=True, slots=True)
class ImportContext:
    host: PluginHost
    vault: Vault
    clock: Callable[[], datetime]
    tz: ZoneInfo
    actor: str = "import"
    lease_ttl: timedelta = timedelta(minutes=5)


@dataclass(slots=True)
class Progress:
    """Where an import stands after a page, with its rate over this run and the time left at that rate."""

    import_id: int
    lines_total: int
    line_reached: int
    imported: int
    skipped: int
    failed: int
    records_done: int
    elapsed_s: float
    done: bool = False

    @property
    def rate(self) -> float:
        """Records per second in this run."""
        return self.records_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def eta_s(self, records_left: int) -> float | None:
        return records_left / self.rate if self.rate > 0 else None


ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class _Outcome:
    """What applying a page's claimed rows gave: failures by key, and the members touched."""

    failures: dict[str, str] = field(default_factory=dict)
    members: set[int] = field(default_factory=set)
    #: Whether some rows went through identity resolution (which may create members and identities).
    resolved: bool = False
    #: The tables this page grew that the next pages read, analysed on the schedule from now on (orders:
    #: :data:`INGESTED_TABLES` once some went through ingest); :data:`RESOLVED_TABLES` when ``resolved``.
    reads: tuple[str, ...] = ()
    #: Members whose tiers were re-evaluated already, after all of the page's rows were written (by
    #: ``apply_orders_page``, which does that for the orders it applies).
    tiers_done: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Row:
    """A readable record with its key, and what the kind's writer prepared of it off the event loop (see
    :func:`_prepare_page`). Not frozen, one a row (#22): nothing changes one after it is made."""

    record: Record
    key: str
    work: Any = None


@dataclass(frozen=True, slots=True)
class _Page:
    """A page read and prepared in the reading thread: its records, the readable rows with their keys, and the
    rows refused before any database work (unreadable, no key)."""

    records: list[Record]
    rows: list[_Row]
    errors: list[tuple[Record, str | None, str]]


def _validate_source(source: str) -> str:
    """Sources name the import channel account (``import-<source>``) and prefix every row key."""
    if not source or len(source) > 40 or not set(source) <= _SOURCE_CHARS:
        raise BadRequest(
            f"import source {shown(source)} must be 1-40 lowercase letters, digits, '-' or '_' (it names the previous CRM)"
        )
    return source


# -------------------------------------------------------------------------------------------------------------
# the import row


async def open_import(
    sessions: async_sessionmaker[AsyncSession],
    ctx: ImportContext,
    kind: str,
    path: Path,
    fmt: str,
    *,
    source: str = "legacy",
    file_name: str | None = None,
    created_by: str = "system",
    mapping: dict[str, str] | None = None,
) -> BulkImport:
    """The checkpoint row of this file (by kind and content digest), created on its first import."""
    check_kind(kind)
    _validate_source(source)
    shown_name = file_name or path.name
    # the name the status shows is refused whole rather than cut (a cut name may name another file)
    check_fits(shown_name, "file_name", BulkImport.file_name, refuse=BadRequest)
    # reading the whole file twice (digest, record count) is blocking work: keep it off the event loop, which
    # in the API also serves other requests
    await asyncio.to_thread(check_header, path, fmt, kind, mapping)
    file_digest = await asyncio.to_thread(digest, path)
    total = await asyncio.to_thread(count_records, path, fmt)
    now = ctx.clock()
    async with sessions() as session, session.begin():
        table = cast(sa.Table, BulkImport.__table__)
        await session.execute(
            insert(session, table)
            .values(
                kind=kind,
                source=source,
                file_name=shown_name,
                digest=file_digest,
                format=fmt,
                status="queued",
                line_reached=0,
                lines_total=total,
                imported=0,
                skipped=0,
                failed=0,
                created_by=created_by,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["kind", "digest"])
        )
        row = (
            await session.execute(
                sa.select(BulkImport).where(BulkImport.kind == kind, BulkImport.digest == file_digest)
            )
        ).scalar_one()
        if row.source != source:
            raise Conflict(
                f"this file was imported before from source {row.source!r} (import {row.id}); "
                f"a file keeps its source so that its rows keep their keys"
            )
        if kind == "orders" and row.account_id is None:
            row.account_id = await import_account(session, source)
            await session.flush()
        session.expunge(row)
    return row


async def import_account(session: AsyncSession, source: str) -> int:
    """The channel account imported orders of ``source`` belong to: channel ``import``, never synced
    (status ``disabled``, so no sync job picks it up), created on first use."""
    name = f"import-{source}"
    found = (await session.execute(sa.select(ChannelAccount.id).where(ChannelAccount.name == name))).scalar()
    if found is not None:
        return int(found)
    account = ChannelAccount(
        channel=IMPORT_CHANNEL,
        name=name,
        settings={"source": source},
        secret_names=[],
        status="disabled",
        status_detail=f"historical orders imported from {source} (tongcrm import orders); not synced",
    )
    session.add(account)
    await session.flush()
    session.add(SyncState(account_id=account.id, pages=0, orders=0))
    await session.flush()
    return account.id


async def get_import(session: AsyncSession, import_id: int) -> BulkImport:
    row = await session.get(BulkImport, import_id)
    if row is None:
        raise NotFound(f"no import with id {import_id}")
    return row


async def list_imports(
    session: AsyncSession, *, kind: str | None = None, before: int | None = None, limit: int = 50
) -> list[BulkImport]:
    """Imports newest first (by id), those with an id below ``before`` when given: a keyset page."""
    stmt = sa.select(BulkImport).order_by(BulkImport.id.desc()).limit(limit)
    if kind is not None:
        stmt = stmt.where(BulkImport.kind == kind)
    if before is not None:
        stmt = stmt.where(BulkImport.id < before)
    return list((await session.execute(stmt)).scalars())


async def import_errors(
    session: AsyncSession, import_id: int, *, limit: int = 100, after_line: int = 0
) -> list[BulkImportError]:
    """An import's bad rows by line, those after ``after_line`` (a keyset page: the console pages through them)."""
    stmt = sa.select(BulkImportError).where(BulkImportError.import_id == import_id)
    if after_line:
        stmt = stmt.where(BulkImportError.line > after_line)
    rows = await session.execute(stmt.order_by(BulkImportError.line).limit(limit))
    return list(rows.scalars())


# -------------------------------------------------------------------------------------------------------------
# running


#: The error of an import whose run was cancelled (its server or command stopped while it ran).
INTERRUPTED = "the import was stopped with its server or command; resume it to go on from its checkpoint"


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pages(records: Generator[Record], after: int, size: int) -> Iterator[list[Record]]:
    """``records`` in pages of ``size`` after line ``after``; closing the pages closes ``records`` (the file)."""
    page: list[Record] = []
    with contextlib.closing(records):
        for record in records:
            if record.line <= after:
                continue
            page.append(record)
            if len(page) >= size:
                yield page
                page = []
        if page:
            yield page


async def run_import(
    sessions: async_sessionmaker[AsyncSession],
    ctx: ImportContext,
    import_id: int,
    path: Path,
    *,
    mapping: dict[str, str] | None = None,
    page_size: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> Progress:
    """Import the file of ``import_id`` from its checkpoint to the end. Safe to run again at any point.
    ``page_size``: records per page, by default :func:`default_page_size` of the database."""
    holder = _holder()
    key = f"import:{import_id}"
    async with sessions() as session, session.begin():
        job = await get_import(session, import_id)
        if not await leases.acquire(session, key, holder, ctx.lease_ttl, now=ctx.clock()):
            current = await leases.holder_of(session, key, now=ctx.clock())
            raise Conflict(f"import {import_id} is being run by {current}")
        kind, source, fmt, account_id = job.kind, job.source, job.format, job.account_id
        after, total = job.line_reached, job.lines_total
        progress = Progress(import_id, total, after, job.imported, job.skipped, job.failed, 0, 0.0)
        finished = job.status == "finished"
        if not finished:
            job.status, job.error, job.updated_at = "running", None, ctx.clock()
    started = time.monotonic()
    bound = log.bind(import_id=import_id, kind=kind, source=source)
    try:
        if not finished:
            dialect = await _dialect(sessions)
            if page_size is None:
                page_size = default_page_size(dialect, kind)
            tables = SCHEDULED_TABLES.get(kind, GROWN_TABLES[kind])
            prepare = functools.partial(_prepare_page, ctx, kind, source, dialect)
            overlap = _Overlap()
            pages = _prepared_pages(
                _pages(read_records(path, fmt, mapping), after, page_size), prepare, overlap
            )
            # closed when the loop ends, by an error too: the reader thread and the file stop here, not at GC
            async with contextlib.aclosing(pages):
                async for page in pages:
                    async with sessions() as session, session.begin():
                        lease = leases.Renewal(key, holder, ctx.lease_ttl, ctx.clock())
                        try:
                            counts = await _import_page(
                                session, ctx, import_id, kind, source, account_id, page, lease
                            )
                        except leases.NotHeld:
                            raise Conflict(
                                f"lost the lease of import {import_id}; another process took over"
                            ) from None
                        if counts[3]:
                            tables = tuple(dict.fromkeys((*tables, *counts[3])))
                        await session.execute(
                            sa.update(BulkImport)
                            .where(BulkImport.id == import_id)
                            .values(
                                line_reached=page.records[-1].line,
                                imported=BulkImport.imported + counts[0],
                                skipped=BulkImport.skipped + counts[1],
                                failed=BulkImport.failed + counts[2],
                                updated_at=ctx.clock(),
                            )
                        )
                        analyse = stats.grown(session, len(page.records))
                    progress.line_reached = page.records[-1].line
                    progress.imported += counts[0]
                    progress.skipped += counts[1]
                    progress.failed += counts[2]
                    progress.records_done += len(page.records)
                    progress.elapsed_s = time.monotonic() - started
                    bound.info(
                        "import page done", line=progress.line_reached, imported=counts[0], failed=counts[2]
                    )
                    if on_progress is not None:
                        on_progress(progress)
                    if analyse and tables:  # an empty list would be ANALYZE of the whole database
                        async with sessions() as session, session.begin():
                            await stats.analyse(session, tables, SCHEDULED_COLUMNS)
            async with sessions() as session, session.begin():
                if progress.records_done:
                    await stats.analyse(session, tuple(dict.fromkeys((*GROWN_TABLES[kind], *tables))))
                now = ctx.clock()
                await session.execute(
                    sa.update(BulkImport)
                    .where(BulkImport.id == import_id)
                    .values(status="finished", finished_at=now, updated_at=now)
                )
            bound.info(
                "import read",
                records=progress.records_done,
                reading_s=round(overlap.reading_s, 3),
                waited_for_reading_s=round(overlap.waited_s, 3),
                elapsed_s=round(time.monotonic() - started, 3),
            )
        progress.done = True
        progress.elapsed_s = time.monotonic() - started
        if on_progress is not None:
            on_progress(progress)
    except asyncio.CancelledError:
        # stopped from outside (a server stopping, a command's Ctrl-C): the pages committed stay, and the row says
        # so at once rather than showing "running" until the next server start finds the run gone
        async with sessions() as session, session.begin():
            await session.execute(
                sa.update(BulkImport)
                .where(BulkImport.id == import_id, BulkImport.status == "running")
                .values(status="interrupted", error=INTERRUPTED, updated_at=ctx.clock())
            )
        bound.warning(
            "import interrupted; resume it to go on from its checkpoint", line=progress.line_reached
        )
        raise
    except Exception as exc:
        message = exc.message if isinstance(exc, TongcrmError) else f"{type(exc).__name__}: {exc}"
        async with sessions() as session, session.begin():
            await session.execute(
                sa.update(BulkImport)
                .where(BulkImport.id == import_id)
                .values(status="failed", error=message[:2000], updated_at=ctx.clock())
            )
        bound.error("import stopped; run it again to resume", error=message, line=progress.line_reached)
        raise
    finally:
        async with sessions() as session, session.begin():
            await leases.release(session, key, holder)
    return progress


async def _dialect(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions() as session:
        return dialect_name(session)


@dataclass(slots=True)
class _Overlap:
    """How much of the reading thread's work the page writes hid: the seconds it spent reading and preparing
    pages, and the seconds the writer waited for it (the part not hidden)."""

    reading_s: float = 0.0
    waited_s: float = 0.0


async def _prepared_pages(
    pages: Iterator[list[Record]], prepare: Callable[[list[Record]], _Page], overlap: _Overlap
) -> AsyncGenerator[_Page, None]:
    """The pages of ``pages``, each read and prepared by ``prepare`` in a thread of its own one page ahead of the
    caller: the next page's parsing, normalising and encryption run while the database writes this one (the
    event loop is idle then). At most two pages are held; the reading thread stops with the caller.

    The thread runs each page in a copy of the caller's context, so what it logs carries the caller's structlog
    context variables (a request's id, a job's name). However the caller stops — the end, an error, or a
    cancellation while it waits for a page — ``pages`` is closed (its file with it) in the thread, right after the
    page in preparation, and before this generator finishes."""
    loop = asyncio.get_running_loop()
    reader = ThreadPoolExecutor(1, thread_name_prefix="import-reader")

    def next_page() -> _Page | None:
        started = time.perf_counter()
        page = next(pages, None)
        prepared = None if page is None else prepare(page)
        overlap.reading_s += time.perf_counter() - started
        return prepared

    def read_ahead() -> asyncio.Future[_Page | None]:
        return loop.run_in_executor(reader, contextvars.copy_context().run, next_page)

    def close() -> None:
        with contextlib.suppress(Exception):
            close_pages = getattr(pages, "close", None)
            if close_pages is not None:
                close_pages()

    pending = read_ahead()
    try:
        while True:
            started = time.perf_counter()
            page = await pending
            overlap.waited_s += time.perf_counter() - started
            if page is None:
                break
            pending = read_ahead()
            yield page
    finally:
        # Not waited for: the page in preparation is not wanted (its error, if any, neither). The single reader
        # thread closes the file once that page is done — a generator cannot be closed while another thread runs
        # it — and the caller waits for that without blocking the event loop; a cancellation of that wait does not
        # stop the close, which is already queued in the thread.
        if not pending.done():
            pending.cancel()
        elif not pending.cancelled():
            pending.exception()  # a page prepared but not wanted: its error is not reported either
        closed = asyncio.wrap_future(reader.submit(close))
        reader.shutdown(wait=False)
        await asyncio.shield(closed)


def _prepare_page(ctx: ImportContext, kind: str, source: str, dialect: str, page: list[Record]) -> _Page:
    """Everything of a page that needs no database: keys, refusals, and the kind's per-row work (claims ready to
    store for members, parsed orders). Runs in the reading thread: pure functions of the rows only."""
    errors: list[tuple[Record, str | None, str]] = []
    keyed: list[tuple[Record, str]] = []
    for record in page:
        if record.error is not None:
            errors.append((record, None, record.error))
            continue
        try:
            keyed.append((record, f"{source}/{_natural_key(kind, record)}"))
        except ValueError as exc:
            errors.append((record, None, str(exc)))
    if kind == "members":
        rows = _prepare_members(ctx, source, dialect, keyed)
    elif kind == "orders":
        rows = _prepare_orders(ctx, source, dialect, keyed)
    else:
        rows = [_Row(record, key) for record, key in keyed]
    return _Page(page, rows, errors)


async def _import_page(
    session: AsyncSession,
    ctx: ImportContext,
    import_id: int,
    kind: str,
    source: str,
    account_id: int | None,
    page: _Page,
    lease: leases.Renewal,
) -> tuple[int, int, int, tuple[str, ...]]:
    """(imported, skipped, failed, the tables to analyse on the schedule from now on) of one page, applied in the
    caller's transaction after renewing the import's ``lease`` (:class:`tongcrm.jobs.leases.NotHeld` when another
    process holds it)."""
    errors = list(page.errors)
    rows = page.rows
    claimed = await _claim(session, import_id, kind, rows, lease)
    fresh = [r for r in rows if claimed.get(r.key) == r.record.line]
    skipped = len(rows) - len(fresh)
    outcome = _Outcome()
    if fresh:
        apply = {"members": _apply_members, "orders": _apply_orders, "points": _apply_points}[kind]
        outcome = await apply(session, ctx, source, account_id, fresh)
    if outcome.failures:
        failed_keys = sorted(outcome.failures)
        await session.execute(
            sa.delete(_KEYS).where(_KEYS.c.kind == kind, one_of(dialect_name(session), _KEYS.c.key, "keys")),
            {"keys": failed_keys},
        )
        errors.extend((r.record, r.key, outcome.failures[r.key]) for r in fresh if r.key in outcome.failures)
    if outcome.members - outcome.tiers_done:
        await reevaluate_tiers(
            session,
            TierContext(now=ctx.clock(), tz=ctx.tz, actor=ctx.actor),
            outcome.members - outcome.tiers_done,
        )
    if errors:
        now = ctx.clock()
        await session.execute(
            insert(session, _ERRORS).on_conflict_do_nothing(index_elements=["import_id", "line"]),
            [
                {
                    "import_id": import_id,
                    "line": record.line,
                    "key": key,
                    "reason": reason[:2000],
                    "row": masked_row(record),
                    "created_at": now,
                }
                for record, key, reason in errors
            ],
        )
    reads = (*RESOLVED_TABLES, *outcome.reads) if outcome.resolved else outcome.reads
    return len(fresh) - len(outcome.failures), skipped, len(errors), reads


def _natural_key(kind: str, record: Record) -> str:
    """A row's identity across files: the previous CRM's member, order or entry id."""
    if kind == "members":
        value = record.get("member_id")
        if value is None:
            raise ValueError("member_id is missing (the member's id in the previous CRM)")
    elif kind == "orders":
        value = record.get("order_id")
        if value is None:
            raise ValueError("order_id is missing")
        if len(value) > 64:
            raise ValueError("order_id is longer than 64 characters")
    else:
        entry, member = record.get("entry_id"), record.get("member_id")
        if entry is None and member is None:
            raise ValueError("an opening balance needs entry_id or member_id (one balance per member)")
        value = f"entry:{entry}" if entry is not None else f"member:{member}"
    if len(value) > 150:
        raise ValueError("the row's id is longer than 150 characters")
    return value


async def _claim(
    session: AsyncSession, import_id: int, kind: str, rows: Sequence[_Row], lease: leases.Renewal
) -> dict[str, int]:
    """Renew ``lease``, then insert the keys not imported yet; {key: line} of those this page claimed (the first
    line per key). On PostgreSQL both in one statement, one round trip less a page."""
    first: dict[str, int] = {}
    for r in rows:
        first.setdefault(r.key, r.record.line)
    if dialect_name(session) == "postgresql":
        if first:
            await lease.renew(session)
            if await _copy_keys(session, sorted((kind, k, import_id, line) for k, line in first.items())):
                return dict(first)
        # a key of the page is held (an overlapping file, another import): claim them one by one
        params = {"kind": kind, "import_id": import_id, "keys": list(first), "lines": list(first.values())}
        head = await direct.first(session, _claim_statement(), {**params, **lease.params()})
        assert head is not None  # one row, whatever was claimed
        lease.check(head.lease_holder)
        won = set(head.keys or ())
    else:
        await lease.renew(session)
        if not first:
            return {}
        values = [{"kind": kind, "key": k, "import_id": import_id, "line": line} for k, line in first.items()]
        result = await session.execute(
            _claim_statement_sqlite(), json_rows_param(_KEYS, _KEY_COLUMNS, values)
        )
        won = {row[0] for row in result.all()}
    return {k: line for k, line in first.items() if k in won}


_KEY_COLUMNS = ("kind", "key", "import_id", "line")


async def _copy_keys(session: AsyncSession, rows: Sequence[tuple[str, str, int, int]]) -> bool:
    """PostgreSQL: the page's keys inserted by ``COPY`` (in key order), under a savepoint of their own left to
    end with the page's transaction; False, and nothing written, when one of them is held already (the keys'
    primary key stops the ``COPY``). A first import's keys, or a resumed one's after its checkpoint, are all
    free: the ``COPY`` takes ~80 % of the server's CPU of the ``INSERT … ON CONFLICT DO NOTHING RETURNING`` of
    :func:`_claim_statement` (a speculative insertion a key), the fallback for a page that holds a key taken
    before. A read of which keys are held first was dearer than that claim: its plan follows the keys'
    statistics, which nothing refreshes while an import grows the table (#22)."""
    driver = await staged.driver_of(session)
    await driver.execute("SAVEPOINT bulk_import_keys")
    try:
        await staged.copy_rows(driver, _KEYS.name, rows, _KEY_COLUMNS)
    except staged.StoredMeanwhile:
        await driver.execute("ROLLBACK TO SAVEPOINT bulk_import_keys")
        log.debug("a key of the import page was imported before; claiming the page's keys one by one")
        return False
    return True


@functools.cache
def _claim_statement_sqlite() -> Any:
    """SQLite: a page's keys as one JSON array (:func:`tongcrm.db.dialect.json_rows`), one fixed text; an
    executemany with ``RETURNING`` was rendered by SQLAlchemy as a ``VALUES`` list of four binds per key on
    every page (#22)."""
    return (
        insert_rows("sqlite", _KEYS, _KEY_COLUMNS)
        .on_conflict_do_nothing(index_elements=["kind", "key"])
        .returning(_KEYS.c.key)
    )


@functools.cache
def _claim_statement() -> sa.Select[Any]:
    """PostgreSQL: the import's lease renewed (:func:`tongcrm.jobs.leases.renewal_cte`) and a page's keys
    claimed in one statement, the keys as two array parameters: one fixed text prepared once per connection,
    instead of a multi-row ``VALUES`` that SQLAlchemy renders and binds four parameters per row for (#22). One
    row: the lease's holder (None when it was not renewed) and the array of the keys claimed."""
    renewed = leases.renewal_cte()
    given = (
        sa.func.unnest(
            sa.bindparam("keys", type_=postgresql.ARRAY(_KEYS.c.key.type)),
            sa.bindparam("lines", type_=postgresql.ARRAY(_KEYS.c.line.type)),
        )
        .table_valued("k", "l")
        .render_derived()
    )
    claimed = (
        postgresql.insert(_KEYS)
        .from_select(
            list(_KEY_COLUMNS),
            sa.select(
                sa.bindparam("kind", type_=_KEYS.c.kind.type),
                given.c.k,
                sa.bindparam("import_id", type_=_KEYS.c.import_id.type),
                given.c.l,
            ),
        )
        .on_conflict_do_nothing(index_elements=["kind", "key"])
        .returning(_KEYS.c.key)
        .cte("claimed")
    )
    return sa.select(
        sa.select(renewed.c.holder).scalar_subquery().label("lease_holder"),
        sa.select(sa.func.array_agg(claimed.c.key)).scalar_subquery().label("keys"),
    )


_PERSONAL = ("mobile", "name")


def masked_row(record: Record) -> str:
    """The row for the error table: the columns the import reads, mobile, name and identities masked, never
    stored in the clear. A column no import reads is left out: it may hold anything personal (an ID card
    number, an address) that no masking rule knows."""
    out: dict[str, str | None] = {}
    for name, value in record.values.items():
        if not imported_column(name):
            continue
        if value is not None and name == "mobile":
            try:
                value = mask_mobile(normalise_mobile(value))
            except InvalidMobile:
                value = "****"
        elif value is not None and name == "name":
            value = mask_name(value)
        elif value is not None and name.startswith("identity."):
            value = value[:2] + "***" if len(value) > 4 else "***"
        out[name] = value
    return json.dumps(out, ensure_ascii=False)


def _claim_pairs(source: str, values: dict[str, str | None], record: Record) -> list[tuple[str, str]]:
    """``(kind, value)`` of the record's claims: its member id (under the source), mobile and identities. The
    reader gives no blank value (:func:`tongcrm.bulk.mapping.read_records` strips each to text or None)."""
    pairs: list[tuple[str, str]] = []
    member = values.get("member_id")
    if member is not None:
        pairs.append((IMPORTED_MEMBER_KIND, f"{source}/{member}"))
    mobile = values.get("mobile")
    if mobile is not None:
        pairs.append(("mobile", mobile))
    if record.identity_names != ():
        pairs.extend(record.identities())
    return pairs


def _claims(source: str, record: Record) -> tuple[IdentityClaim, ...]:
    said = evidence(source, record.line)
    return tuple(
        IdentityClaim(kind, value, said) for kind, value in _claim_pairs(source, record.values, record)
    )


def _resolution(ctx: ImportContext) -> ResolutionContext:
    return ResolutionContext(ctx.host, ctx.vault, ctx.clock, actor=ctx.actor, tz=ctx.tz)


# -------------------------------------------------------------------------------------------------------------
# members


def _member_claim_set(source: str, record: Record) -> ClaimSet:
    """The row's claim set as identity resolution takes it."""
    values = record.values
    return ClaimSet(
        claims=_claims(source, record),
        profile=BuyerProfile(
            name=values.get("name"), province=values.get("province"), city=values.get("city")
        ),
        source_channel=IMPORT_CHANNEL,
        source_campaign=source[:100],
    )


def _prepare_members(
    ctx: ImportContext, source: str, dialect: str, keyed: Sequence[tuple[Record, str]]
) -> list[_Row]:
    """Each row's work (reading thread): on PostgreSQL its claims ready for the set-based writer
    (:func:`tongcrm.bulk.staged.prepare_member`, from the row's ``(kind, value)`` pairs: the claim set's plugin
    types are made in :func:`_apply_members` only for the rows resolution takes, a few of a first import), on
    SQLite its claim set (every row is resolved)."""
    if dialect != "postgresql":
        return [_Row(record, key, _member_claim_set(source, record)) for record, key in keyed]
    resolution = _resolution(ctx)
    kinds = ctx.host.identity_kinds()
    prepare = staged.prepare_member
    rows = []
    for record, key in keyed:
        values = record.values
        prepared = prepare(
            resolution,
            kinds,
            _claim_pairs(source, values, record),
            evidence(source, record.line),
            (values.get("name"), values.get("province"), values.get("city")),
        )
        rows.append(_Row(record, key, prepared))
    return rows


async def _apply_members(
    session: AsyncSession, ctx: ImportContext, source: str, account_id: int | None, rows: Sequence[_Row]
) -> _Outcome:
    outcome = _Outcome()
    resolution = _resolution(ctx)
    done: dict[int, ResolveOutcome] = {}
    postgresql = dialect_name(session) == "postgresql"
    if postgresql:
        done = await staged.write_new_members(
            session,
            resolution,
            [r.work for r in rows],
            source_channel=IMPORT_CHANNEL,
            source_campaign=source[:100],
        )
    rest = [i for i in range(len(rows)) if i not in done]
    if rest:
        outcome.resolved = True  # resolution reads members too: analysed on the schedule from now on
        claim_sets: list[ClaimSet] = [
            _member_claim_set(source, rows[i].record) if postgresql else rows[i].work for i in rest
        ]
        resolved_rest = await resolve_many(session, resolution, claim_sets)
        done.update(zip(rest, resolved_rest, strict=True))
    for i, r in enumerate(rows):
        resolved = done[i]
        if resolved.error is not None or resolved.member_id is None:
            outcome.failures[r.key] = f"identity: {resolved.error or 'not resolved'}"
        else:
            outcome.members.add(resolved.member_id)
    return outcome


# -------------------------------------------------------------------------------------------------------------
# orders


#: An order's status by its value: a dict lookup, where ``OrderStatus(value)`` went through the enum machinery
#: for every row (5 % of the reading thread).
_STATUSES = {s.value: s for s in OrderStatus}


def _order(record: Record, source: str, tz: ZoneInfo) -> ImportedOrder:
    """The record's order, checked as :class:`NormalisedOrder` checks its values (whole numbers not negative,
    times with a zone, a known status, line ids once each), so that the writer need not build that type: the
    values read from the record's dict directly, whole numbers by ``int`` with :func:`parse_int` (and its
    message) only for one that is missing, negative or not a number."""
    values = record.values
    get = values.get
    order_id = get("order_id")
    assert order_id is not None  # checked by _natural_key
    status_raw = (get("status") or "completed").lower()
    status = _STATUSES.get(status_raw)
    if status is None:
        known = ", ".join(s.value for s in OrderStatus)
        raise ValueError(f"status {status_raw!r} is not one of {known}")
    # longer than the core stores: the row's error (PostgreSQL's COPY would refuse the page; SQLite store it whole)
    refuse_longer_than_stored(order_id, "order_id", ORDER_TEXT_LIMITS["external_id"])
    refuse_longer_than_stored(get("store_code"), "store_code", ORDER_TEXT_LIMITS["store_code"])
    placed = parse_time(record, "placed_at", tz, required=True)
    assert placed is not None
    paid_at = parse_time(record, "paid_at", tz) if "paid_at" in values else None
    if paid_at is None and status not in _UNPAID:
        paid_at = placed  # a paid order from a CRM that kept one time only: paid when placed
    completed = parse_time(record, "completed_at", tz) if "completed_at" in values else None
    modified = parse_time(record, "modified_at", tz) if "modified_at" in values else None
    if modified is None:  # the latest time given (a generator over the three was 4 % of the reading thread)
        modified = placed if paid_at is None or paid_at < placed else paid_at
        if completed is not None and completed > modified:
            modified = completed
    total = _whole(record, "total_fen", None)
    paid = _whole(record, "paid_fen", total)
    refunded = _whole(record, "refunded_fen", 0)
    if refunded > paid:
        raise ValueError(f"refunded_fen {refunded} exceeds paid_fen {paid}")
    raw_lines = get("lines")
    if raw_lines is not None:
        lines = _lines(raw_lines)
        if len({line.external_id for line in lines}) != len(lines):
            raise ValueError(f"order {order_id}: duplicate line ids")
    else:
        quantity = parse_int(record, "quantity", default=1, minimum=1) if "quantity" in values else 1
        lines = (
            ImportedLine(
                "1",
                (get("title") or f"order imported from {source}")[:300],
                quantity,
                paid // quantity,
                paid,
                _cut(get("sku"), 100),  # descriptive texts are cut to what is stored, as in _lines
                _cut(get("category"), 100),
                refunded,
            ),
        )
    return ImportedOrder(
        source,
        record.line,
        order_id,
        status,
        placed,
        modified,
        paid_at,
        completed,
        total,
        paid,
        _whole(record, "post_fee_fen", 0),
        _whole(record, "discount_fen", 0),
        get("store_code"),
        lines,
        tuple(_claim_pairs(source, values, record)),
        get("name"),
    )


_UNPAID = (OrderStatus.CREATED, OrderStatus.CLOSED)


def _cut(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


def _whole(record: Record, name: str, default: int | None) -> int:
    """:func:`parse_int` (``minimum`` 0), with its work only for a value that is missing or not plainly one."""
    raw = record.values.get(name)
    if raw is None:
        if default is not None:
            return default
    elif raw.isascii() and raw.isdigit():
        return int(raw)
    return parse_int(record, name, default=default)


def _lines(raw: str) -> tuple[ImportedLine, ...]:
    """The ``lines`` of a JSON Lines order: ``[{"line_id", "title", "amount_fen", "quantity"?, "sku"?,
    "category"?, "refunded_fen"?}, …]``; amounts are what the line was paid. Each is checked as an
    :class:`OrderLine` (built and dropped: JSON lines are few)."""
    try:
        items = json.loads(raw)
    except ValueError:
        raise ValueError("lines is not a JSON array of line objects") from None
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ValueError("lines must be a non-empty JSON array of line objects")
    out = []
    for n, item in enumerate(items, start=1):
        line_id = item.get("line_id", n)
        amount, quantity = item.get("amount_fen"), item.get("quantity", 1)
        refunded = item.get("refunded_fen", 0)
        if type(amount) is not int or type(quantity) is not int or type(refunded) is not int or quantity < 1:
            raise ValueError(f"line {n}: amount_fen, quantity (≥ 1) and refunded_fen must be whole numbers")
        sku, category = item.get("sku"), item.get("category")
        line = OrderLine(
            external_id=str(line_id)[:64],
            title=str(item.get("title") or f"line {n}")[:300],
            quantity=quantity,
            unit_price_fen=amount // quantity,
            amount_fen=amount,
            sku=None if sku is None else str(sku)[:100],
            category=None if category is None else str(category)[:100],
            refunded_fen=refunded,
        )
        out.append(
            ImportedLine(
                line.external_id, line.title, line.quantity, line.unit_price_fen, line.amount_fen, line.sku,
                line.category, line.refunded_fen,
            )
        )  # fmt: skip
    return tuple(out)


def _prepare_orders(
    ctx: ImportContext, source: str, dialect: str, keyed: Sequence[tuple[Record, str]]
) -> list[_Row]:
    """Each row's order (or why it cannot be one) and its claims ready for the set-based writer (reading
    thread)."""
    resolution = _resolution(ctx)
    kinds = ctx.host.identity_kinds()
    rows = []
    for record, key in keyed:
        try:
            order = _order(record, source, ctx.tz)
        except ValueError as exc:
            rows.append(_Row(record, key, str(exc)))
            continue
        rows.append(_Row(record, key, (order, staged.prepare_order(resolution, kinds, order))))
    return rows


async def _apply_orders(
    session: AsyncSession, ctx: ImportContext, source: str, account_id: int | None, rows: Sequence[_Row]
) -> _Outcome:
    assert account_id is not None  # open_import gives every orders import its account
    outcome = _Outcome()
    orders: list[ImportedOrder] = []
    claims_of: list[list[Any] | None] = []
    key_of: dict[str, str] = {}
    for r in rows:
        if isinstance(r.work, str):
            outcome.failures[r.key] = r.work
            continue
        order, claims = r.work
        orders.append(order)
        claims_of.append(claims)
        key_of[order.external_id] = r.key
    if not orders:
        return outcome
    # orders of buyers already known (most of a history imported after its members) and of buyers none of whose
    # claims is stored yet (a history imported without its members): set-based
    staged_orders = await staged.write_orders(
        session, _resolution(ctx), account_id, IMPORT_CHANNEL, orders, claims_of
    )
    outcome.members |= staged_orders.member_ids
    outcome.resolved = (
        staged_orders.members_created > 0
    )  # new members and identities: analysed like resolution's
    orders = [o for o in orders if o.external_id not in staged_orders.external_ids]
    key_of = {o.external_id: key_of[o.external_id] for o in orders}
    if not orders:
        return outcome
    ingest = IngestContext(host=ctx.host, vault=ctx.vault, clock=ctx.clock, tz=ctx.tz, actor=ctx.actor)
    outcome.resolved = True
    outcome.reads = INGESTED_TABLES  # ingest reads the stored orders: analysed on the schedule from now on
    result = await apply_orders_page(
        session,
        ingest,
        account_id,
        IMPORT_CHANNEL,
        [o.normalised() for o in orders],
        earn_points=False,
        emit_events=False,
    )
    outcome.members |= result.member_ids
    outcome.tiers_done = result.member_ids  # re-evaluated after the page's staged orders were written too
    if result.applied == len(orders):
        return outcome  # every order of the page was written (their keys were new): none to look for
    external = list(key_of)
    stored = set(
        (
            await session.execute(
                sa.select(Order.external_id).where(
                    Order.account_id == account_id, one_of(dialect_name(session), Order.external_id, "ids")
                ),
                {"ids": external},
            )
        ).scalars()
    )
    missing = [e for e in external if e not in stored]
    if missing:
        # apply_orders_page quarantined these (identity errors): take the reason it recorded
        found = await session.execute(
            sa.select(QuarantinedRecord.external_id, QuarantinedRecord.reason)
            .where(
                QuarantinedRecord.account_id == account_id,
                one_of(dialect_name(session), QuarantinedRecord.external_id, "ids"),
            )
            .order_by(QuarantinedRecord.id),
            {"ids": missing},
        )
        reasons: dict[str | None, str] = {external_id: reason for external_id, reason in found.all()}
        for e in missing:
            outcome.failures[key_of[e]] = reasons.get(e) or "the order could not be applied"
    return outcome


# -------------------------------------------------------------------------------------------------------------
# opening balances


async def _apply_points(
    session: AsyncSession, ctx: ImportContext, source: str, account_id: int | None, rows: Sequence[_Row]
) -> _Outcome:
    outcome = _Outcome()
    now = ctx.clock()
    ready: list[tuple[_Row, int, datetime, datetime | None]] = []
    for r in rows:
        try:
            points = parse_int(r.record, "points", minimum=1)
            occurred = parse_time(r.record, "occurred_at", ctx.tz) or now
            expires = parse_time(r.record, "expires_at", ctx.tz)
            if occurred > now:
                raise ValueError("occurred_at is in the future")
            if expires is not None and expires <= now:
                raise ValueError("expires_at has passed: an expired balance is not an opening balance")
            if not _claims(source, r.record):
                raise ValueError("no member: give member_id, mobile or an identity.<kind> column")
        except ValueError as exc:
            outcome.failures[r.key] = str(exc)
            continue
        ready.append((r, points, occurred, expires))
    if not ready:
        return outcome
    resolved = await resolve_many(
        session,
        _resolution(ctx),
        [
            # a member a balance row creates comes from the import like one a members file creates
            ClaimSet(
                claims=_claims(source, r.record), source_channel=IMPORT_CHANNEL, source_campaign=source[:100]
            )
            for r, *_ in ready
        ],
    )
    credits: list[Credit] = []
    for (r, points, occurred, expires), res in zip(ready, resolved, strict=True):
        if res.error is not None or res.member_id is None:
            outcome.failures[r.key] = f"identity: {res.error or 'not resolved'}"
            continue
        outcome.members.add(res.member_id)
        note = r.record.get("note")
        credits.append(
            Credit(
                member_id=res.member_id,
                key=f"opening:{r.key}",
                kind=EntryKind.OPENING,
                amount=points,
                occurred_at=occurred,
                available_at=occurred,
                expires_at=expires,
                status=AVAILABLE,
                reason=(f"imported from {source}" + (f": {note}" if note else ""))[:500],
                actor=ctx.actor,
                detail={"source": source, "line": r.record.line},
            )
        )
    await post_credits(session, credits, now=now)
    return outcome
