"""``tongcrm rfm recompute|cells``: RFM scores from a terminal, with a progress bar on recompute."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.cli_run import CliObj, Sessions, read, run_with_sessions
from tongcrm.rfm import service


@click.group("rfm")
def rfm_group() -> None:
    """RFM scores: recompute them, count members per cell."""


@rfm_group.command("recompute")
@click.option("--incremental", is_flag=True, help="only members whose orders changed since the last run")
@click.option("--batch", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True)
@click.pass_obj
def recompute(obj: CliObj, incremental: bool, batch: int) -> None:
    """Recompute RFM scores (full by default: new quintile edges over every member)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("rfm " + ("incremental" if incremental else "full"), total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        async def body(sessions: Sessions) -> service.RunResult:
            run = service.recompute_incremental if incremental else service.recompute_full
            return await run(sessions, datetime.now(UTC), obj.settings.tz, batch=batch, progress=step)

        done = run_with_sessions(obj, body)
    click.echo(f"rfm {done.kind} run {done.run_id}: {done.members} members looked at, {done.scored} scored")


@rfm_group.command("cells")
@click.pass_obj
def cells(obj: CliObj) -> None:
    """Members in each of the eight RFM cells."""

    async def counts(session: AsyncSession) -> dict[str, int]:
        return await service.cell_counts(session)

    table = Table("cell", "name", "members")
    for code, n in read(obj, counts).items():
        table.add_row(code, service.CELL_NAMES[code], str(n))
    Console().print(table)
