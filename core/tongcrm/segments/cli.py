"""``tongcrm segments preview|save|list|count|export|fields``: the segment service from a terminal.

Definitions are read from a JSON file (``-`` for standard input). The CLI acts as ``cli`` with the admin role
(whoever runs it can read the database anyway); saves and exports are audited like the API's.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol, TextIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit.service import Actor
from tongcrm.config import Settings
from tongcrm.db.base import utcnow
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import BadRequest
from tongcrm.members.service import check_reveal
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import activity, service
from tongcrm.segments.schema import catalogue

CLI_ACTOR = Actor("cli", "admin")


class _Obj(Protocol):
    """What the root command passes down (:class:`tongcrm.cli.Context`)."""

    host: PluginHost

    @property
    def settings(self) -> Settings: ...


def _read(source: str) -> Any:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{source}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


def _run(obj: _Obj, body: Any) -> Any:
    import asyncio

    async def main() -> Any:
        engine = create_engine(obj.settings.database_url)
        try:
            return await body(session_factory(engine), session_factory(engine, readonly=True))
        finally:
            await engine.dispose()

    return asyncio.run(main())


Sessions = async_sessionmaker[AsyncSession]


@click.group("segments")
def segments_group() -> None:
    """Audience segments: preview a definition, save versions, count and export members."""


@segments_group.command("fields")
def fields() -> None:
    """The segment language: every field, its type, operators and parameters."""
    table = Table("field", "type", "operators", "parameters", "note")
    for f in catalogue().fields:
        params = ", ".join(p["name"] + ("*" if p["required"] else "") for p in f["parameters"])
        table.add_row(f["field"], f["type"], " ".join(f["operators"]), params, f["unavailable_reason"] or "")
    Console().print(table)


@segments_group.command("preview")
@click.argument("source")
@click.option("--sample", default=10, show_default=True, help="Members to show (masked).")
@click.pass_obj
def preview(obj: _Obj, source: str, sample: int) -> None:
    """Count the members a definition in SOURCE (a JSON file, or - for stdin) selects, without saving it."""
    definition = _read(source)

    async def body(sessions: Sessions, read: Sessions) -> service.Preview:
        await service.refresh_activity(sessions)
        async with read() as session:
            context = await service.load_context(session, obj.host, utcnow())
            return await service.preview(session, obj.settings.vault(), context, definition, sample=sample)

    result = _run(obj, body)
    click.echo(f"{result.count} members")
    for warning in result.warnings:
        click.echo(f"warning: {warning.pointer}: {warning.detail}", err=True)
    if result.sample:
        table = Table("id", "name", "mobile", "city", "tags")
        for m in result.sample:
            table.add_row(str(m.id), m.name or "", m.mobile or "", m.city or "", ", ".join(m.tags))
        Console().print(table)


@segments_group.command("save")
@click.argument("name")
@click.argument("source")
@click.option("--description", default=None, help="What the segment is for.")
@click.option("--note", default="", help="What changed in this version.")
@click.pass_obj
def save(obj: _Obj, name: str, source: str, description: str | None, note: str) -> None:
    """Save the definition in SOURCE as segment NAME (a new segment, or its next version)."""
    definition = _read(source)

    async def body(sessions: Sessions, read: Sessions) -> tuple[int, int]:
        async with sessions() as session, session.begin():
            context = await service.load_context(session, obj.host, utcnow())
            segment = await service.save(
                session, context, name, definition, CLI_ACTOR, description=description, note=note
            )
            return segment.id, segment.version

    segment_id, version = _run(obj, body)
    click.echo(f"saved segment {name!r} (#{segment_id}) version {version}")


@segments_group.command("list")
@click.pass_obj
def list_command(obj: _Obj) -> None:
    """Saved segments with their current version and latest daily count."""

    async def body(sessions: Sessions, read: Sessions) -> list[tuple[Any, ...]]:
        async with read() as session:
            out = []
            for s in await service.list_segments(session):
                daily = await service.counts(session, s.id)
                last = f"{daily[-1].members} on {daily[-1].on}" if daily else "-"
                out.append((str(s.id), s.name, str(s.version), last, s.description))
            return out

    table = Table("id", "name", "version", "last daily count", "description")
    for row in _run(obj, body):
        table.add_row(*row)
    Console().print(table)


@segments_group.command("rebuild-activity")
@click.pass_obj
def rebuild_activity(obj: _Obj) -> None:
    """Recompute the member activity summary from the orders, tiers and consent (after ``tongcrm verify``
    reports a difference; the refresh before each count is otherwise enough)."""

    async def body(sessions: Sessions, read: Sessions) -> int:
        async with sessions() as session, session.begin():
            await activity.rebuild(session)
        async with read() as session:
            return len(await activity.differences(session))

    click.echo("member activity summary rebuilt" if _run(obj, body) == 0 else "rebuilt, but it still differs")


@segments_group.command("count")
@click.argument("name")
@click.pass_obj
def count_command(obj: _Obj, name: str) -> None:
    """How many members segment NAME has now."""

    async def body(sessions: Sessions, read: Sessions) -> int:
        await service.refresh_activity(sessions)
        async with read() as session:
            segment = await service.get_segment(session, name)
            context = await service.load_context(session, obj.host, utcnow())
            return await service.count(session, await service.prepared_segment(session, context, segment))

    click.echo(str(_run(obj, body)))


@segments_group.command("export")
@click.argument("name")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True), help="CSV file (default: stdout)."
)
@click.option(
    "--reveal", default="", help="'mobile' or 'name' to write mobiles and names unmasked (audited)."
)
@click.pass_obj
def export(obj: _Obj, name: str, output: str | None, reveal: str) -> None:
    """Write segment NAME's members as CSV, page by page, with a progress bar (on stderr)."""
    revealing = check_reveal([f.strip() for f in reveal.split(",") if f.strip()], CLI_ACTOR)

    async def body(sessions: Sessions, read: Sessions, sink: TextIO) -> int:
        await service.refresh_activity(sessions)
        async with sessions() as session, session.begin():
            segment = await service.get_segment(session, name)
            context = await service.load_context(session, obj.host, utcnow())
            prepared = await service.prepared_segment(session, context, segment)
            total = await service.count(session, prepared)
            service.record_export(session, CLI_ACTOR, segment, reveal=revealing, members_count=total)
        written = 0
        sink.write(service.csv_rows([], header=True))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=output is None) as progress:
            task = progress.add_task(f"export {name}", total=total)
            async for page in service.export_pages(read, obj.settings.vault(), prepared, reveal=revealing):
                sink.write(service.csv_rows(page))
                written += len(page)
                progress.update(task, advance=len(page))
        return written

    with open(output, "w", encoding="utf-8", newline="") if output else nullcontext(sys.stdout) as sink:
        written = _run(obj, lambda sessions, read: body(sessions, read, sink))
    click.echo(f"exported {written} members" + (f" to {output}" if output else ""), err=True)
