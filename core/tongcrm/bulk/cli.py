"""``tongcrm import members|orders|points FILE`` and ``tongcrm export members|orders|ledger``.

The import prints its progress (lines, rate and time left) at most once a second and lists the first bad rows
at the end; an interrupted import is resumed by running the same command again. The export writes to a file or
to standard output, masked unless ``--reveal`` (audited as the CLI acting as admin).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click
from tongcrm import heap
from tongcrm.audit import service as audit
from tongcrm.bulk import export, kept
from tongcrm.bulk import service as imports
from tongcrm.bulk.mapping import KINDS, file_format, load_mapping
from tongcrm.bulk.refusals import refusing_unreadable
from tongcrm.cli_run import CLI_ACTOR
from tongcrm.db.base import utcnow
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import BadRequest
from tongcrm.heap import BATCH_GC_THRESHOLD


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


#: The youngest generation's threshold while an import runs (CPython's default is 700 allocations).
IMPORT_GC_THRESHOLD = BATCH_GC_THRESHOLD


def batch_collector(young: int = IMPORT_GC_THRESHOLD) -> contextlib.AbstractContextManager[None]:
    """The cyclic garbage collector set for a batch (:func:`tongcrm.heap.batch_collector`, shared with a
    sync's pages): what the programme loaded to start (modules, mappers, plugins: ~110,000 containers) is frozen
    out of the collector's view, and the youngest generation is collected every ``young`` allocations instead
    of 700. With the defaults a 100,000-order import ran ~5,100 collections, 38 of them of the oldest
    generation walking the start-up heap again, and they took a fifth of the process's CPU; a page's rows are
    garbage once the page is written either way, and a page's worth of young objects is a few MB. Everything
    is put back on leaving."""
    return heap.batch_collector(young)


#: The SQLite page cache of the import's connections (KiB; SQLite's default is 2,000). An import inserts at random
#: places of large indexes (the orders' activity indexes, the keys, the identities): with 2 MB most of those
#: leaves were read from the file again (a system call each) for every page. The orders' insert alone, 300,000
#: orders into the real schema in pages of 10,000: 31 µs of CPU a row with 2 MB, 23 with 32 MB, 20 with 64 MB.
#: The cache fills only as far as the database is large, so a small import stays small; the peak RSS of a large
#: one grows by up to this much (#22).
IMPORT_SQLITE_CACHE_KIB = 64 * 1024


#: Seconds a thread that wants the GIL waits before the one holding it must hand it over, while an import runs
#: (CPython's default is 0.005).
IMPORT_SWITCH_INTERVAL = 0.001


@contextlib.contextmanager
def batch_switching(interval: float = IMPORT_SWITCH_INTERVAL) -> Iterator[None]:
    """The interpreter's thread switch interval shortened while an import runs, and put back after.

    The import's writer waits on the database about ten times a page while its reading thread parses the next
    page, holding the GIL; each time an answer arrived the writer waited for the reader to drop the GIL, up to
    the default 5 ms, before it could send the next statement — up to 50 ms a page of the database and the
    writer both idle. At 1 ms the writer gets back to the database sooner; the reader is interrupted only when
    the writer asks (#22)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Reporter:
    """Prints progress to stderr, at most once a second (and once at the end)."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, p: imports.Progress) -> None:
        now = time.monotonic()
        if not p.done and now - self._last < 1.0:
            return
        self._last = now
        left = max(p.lines_total - p.imported - p.skipped - p.failed, 0)
        click.echo(
            f"line {p.line_reached}: imported {p.imported}, skipped {p.skipped}, failed {p.failed} of "
            f"{p.lines_total} · {p.rate:,.0f} rows/s · ETA {_duration(p.eta_s(left) if not p.done else 0)}",
            err=True,
        )


@click.command("import")
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="Default: from the file's suffix.")
@click.option(
    "--mapping",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON file {"documented column": "column in your file"} (docs/bulk.md).',
)
@click.option("--source", default="legacy", show_default=True, help="The previous CRM's name (keys rows).")
@click.option(
    "--page-size",
    type=click.IntRange(1, 50_000),
    help=(
        f"Records per transaction (default {imports.PAGE_SIZE:,}, orders {imports.POSTGRESQL_ORDERS_PAGE_SIZE:,}; "
        f"{imports.SQLITE_PAGE_SIZE:,} on SQLite)."
    ),
)
@click.pass_obj
def import_command(
    ctx: Any, kind: str, file: Path, fmt: str | None, mapping: Path | None, source: str, page_size: int | None
) -> None:
    """Import members, historical orders or opening points balances from a CSV or JSON Lines FILE.

    Safe to run again: a finished file imports nothing, an interrupted one resumes after its last page, and a
    row imported before (by its member, order or entry id) is skipped in any file."""
    settings = ctx.settings
    fmt = file_format(file, fmt)
    if file.stat().st_size == 0:
        raise BadRequest(f"{file.name} is empty: nothing to import (a CSV file starts with its header row)")
    columns = load_mapping(mapping, kind) if mapping else {}
    import_ctx = imports.ImportContext(
        host=ctx.host, vault=settings.vault(), clock=utcnow, tz=settings.tz, actor="cli"
    )

    async def body() -> tuple[imports.Progress, list[Any]]:
        engine = create_engine(settings.database_url, sqlite_cache_kib=IMPORT_SQLITE_CACHE_KIB)
        try:
            sessions = session_factory(engine)
            with refusing_unreadable(file.name):
                job = await imports.open_import(
                    sessions, import_ctx, kind, file, fmt, source=source, created_by="cli", mapping=columns
                )
            if job.status == "finished":
                click.echo(f"import {job.id}: this file was imported before; nothing to do", err=True)
            elif job.line_reached:
                click.echo(f"import {job.id}: resuming after line {job.line_reached}", err=True)
            # after open_import: its first queries finished loading the mappers
            with batch_collector(), batch_switching():
                progress = await imports.run_import(
                    sessions,
                    import_ctx,
                    job.id,
                    file,
                    mapping=columns,
                    page_size=page_size,
                    on_progress=_Reporter(),
                )
            # a file an API upload kept for this import is not needed any more (docs/architecture.md, "The data
            # folder")
            await kept.drop_finished_file(sessions, settings.data_folder, job.id)
            async with sessions() as session:
                return progress, await imports.import_errors(session, job.id, limit=20)
        finally:
            await engine.dispose()

    progress, errors = asyncio.run(body())
    for e in errors:
        click.echo(f"  line {e.line}: {e.reason}", err=True)
    if progress.failed > len(errors):
        click.echo(
            f"  … {progress.failed - len(errors)} more (GET /api/imports/{progress.import_id})", err=True
        )
    click.echo(
        f"import {progress.import_id}: {progress.imported} imported, {progress.skipped} already there, "
        f"{progress.failed} refused (this run read {progress.records_done} rows)"
    )


@click.command("export")
@click.argument("kind", type=click.Choice(list(export.KINDS)))
@click.option("--format", "fmt", type=click.Choice(list(export.FORMATS)), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@click.option("--reveal", is_flag=True, help="Full mobiles and names (audited).")
@click.pass_obj
def export_command(ctx: Any, kind: str, fmt: str, output: Path | None, reveal: bool) -> None:
    """Export members, orders or the points ledger as CSV or JSON Lines, in constant memory.

    Mobiles and names are masked unless --reveal. Parquet is not offered (see docs/bulk.md)."""
    settings = ctx.settings

    async def body(out: BinaryIO) -> None:
        engine = create_engine(settings.database_url)
        try:
            if reveal:
                async with session_factory(engine)() as session, session.begin():
                    audit.record(
                        session,
                        CLI_ACTOR,
                        "export.reveal",
                        "export",
                        kind,
                        after={"format": fmt, "via": "cli"},
                    )
            reads = session_factory(engine, readonly=True)
            # a page's rows, dicts and cells are garbage once it is written, as an import's are
            with batch_collector():
                async for chunk in export.stream(reads, kind, fmt, settings.vault(), reveal=reveal):
                    out.write(chunk)
        finally:
            await engine.dispose()

    if output is None:
        asyncio.run(body(sys.stdout.buffer))
        sys.stdout.buffer.flush()
        return
    with output.open("wb") as f:
        asyncio.run(body(f))
    click.echo(f"exported {kind} to {output}", err=True)
