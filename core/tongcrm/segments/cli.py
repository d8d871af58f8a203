"""``tongcrm segments preview|save|list|count|export|fields``: the segment service from a terminal.

Definitions are read from a JSON file (``-`` for standard input). The CLI acts as ``cli`` with the admin role
(whoever runs it can read the database anyway); saves and exports are audited like the API's.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, TextIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tongcrm.cli_run import CLI_ACTOR, CliObj, Sessions, load_json, run_with_reads
from tongcrm.db.base import utcnow
from tongcrm.members.service import check_reveal
from tongcrm.segments import activity, service
from tongcrm.segments.schema import catalogue


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
def preview(obj: CliObj, source: str, sample: int) -> None:
    """Count the members a definition in SOURCE (a JSON file, or - for stdin) selects, without saving it."""
    definition = load_json(source)

    async def body(sessions: Sessions, read: Sessions) -> service.Preview:
        await service.refresh_activity(sessions)
        async with read() as session:
            context = await service.load_context(session, obj.host, utcnow())
            return await service.preview(session, obj.settings.vault(), context, definition, sample=sample)

    result = run_with_reads(obj, body)
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
def save(obj: CliObj, name: str, source: str, description: str | None, note: str) -> None:
    """Save the definition in SOURCE as segment NAME (a new segment, or its next version)."""
    definition = load_json(source)

    async def body(sessions: Sessions, read: Sessions) -> tuple[int, int]:
        async with sessions() as session, session.begin():
            context = await service.load_context(session, obj.host, utcnow())
            segment = await service.save(
                session, context, name, definition, CLI_ACTOR, description=description, note=note
            )
            return segment.id, segment.version

    segment_id, version = run_with_reads(obj, body)
    click.echo(f"saved segment {name!r} (#{segment_id}) version {version}")


@segments_group.command("list")
@click.pass_obj
def list_command(obj: CliObj) -> None:
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
    for row in run_with_reads(obj, body):
        table.add_row(*row)
    Console().print(table)


@segments_group.command("rebuild-activity")
@click.pass_obj
def rebuild_activity(obj: CliObj) -> None:
    """Recompute the member activity summary from the orders, tiers and consent (after ``tongcrm verify``
    reports a difference; the refresh before each count is otherwise enough)."""

    async def body(sessions: Sessions, read: Sessions) -> int:
        async with sessions() as session, session.begin():
            await activity.rebuild(session)
        async with read() as session:
            return len(await activity.differences(session))

    differences = run_with_reads(obj, body)
    click.echo("member activity summary rebuilt" if differences == 0 else "rebuilt, but it still differs")


@segments_group.command("count")
@click.argument("name")
@click.pass_obj
def count_command(obj: CliObj, name: str) -> None:
    """How many members segment NAME has now."""

    async def body(sessions: Sessions, read: Sessions) -> int:
        await service.refresh_activity(sessions)
        async with read() as session:
            segment = await service.get_segment(session, name)
            context = await service.load_context(session, obj.host, utcnow())
            return await service.count(session, await service.prepared_segment(session, context, segment))

    click.echo(str(run_with_reads(obj, body)))


@segments_group.command("export")
@click.argument("name")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True), help="CSV file (default: stdout)."
)
@click.option(
    "--reveal", default="", help="'mobile' or 'name' to write mobiles and names unmasked (audited)."
)
@click.pass_obj
def export(obj: CliObj, name: str, output: str | None, reveal: str) -> None:
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
        written = run_with_reads(obj, lambda sessions, read: body(sessions, read, sink))
    click.echo(f"exported {written} members" + (f" to {output}" if output else ""), err=True)
