"""``tongcrm rfm recompute|cells``: RFM scores from a terminal, with a progress bar on recompute."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Protocol

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tongcrm.config import Settings
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.rfm import service


class _Obj(Protocol):
    @property
    def settings(self) -> Settings: ...


def _run(obj: _Obj, body: Any) -> Any:
    async def main() -> Any:
        engine = create_engine(obj.settings.database_url)
        try:
            return await body(session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


@click.group("rfm")
def rfm_group() -> None:
    """RFM scores: recompute them, count members per cell."""


@rfm_group.command("recompute")
@click.option("--incremental", is_flag=True, help="only members whose orders changed since the last run")
@click.option("--batch", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True)
@click.pass_obj
def recompute(obj: _Obj, incremental: bool, batch: int) -> None:
    """Recompute RFM scores (full by default: new quintile edges over every member)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("rfm " + ("incremental" if incremental else "full"), total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        async def body(sessions: Any) -> service.RunResult:
            run = service.recompute_incremental if incremental else service.recompute_full
            return await run(sessions, datetime.now(UTC), obj.settings.tz, batch=batch, progress=step)

        done: service.RunResult = _run(obj, body)
    click.echo(f"rfm {done.kind} run {done.run_id}: {done.members} members looked at, {done.scored} scored")


@rfm_group.command("cells")
@click.pass_obj
def cells(obj: _Obj) -> None:
    """Members in each of the eight RFM cells."""

    async def body(sessions: Any) -> dict[str, int]:
        async with sessions() as session:
            return await service.cell_counts(session)

    table = Table("cell", "name", "members")
    for code, n in _run(obj, body).items():
        table.add_row(code, service.CELL_NAMES[code], str(n))
    Console().print(table)
