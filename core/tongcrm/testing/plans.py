"""Watch which statement plans a test's code compiles (the warm start's tests: what a first request still pays)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tongcrm.db import direct, point_reads
from tongcrm.testing.database import TestDatabase


def spy_compiled_plans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every plan compiled from here on, through either module that compiles plans; undone with
    ``monkeypatch``. Plans already cached are not seen: forget a query's (``_plans``) to watch it compile again."""
    seen: list[str] = []
    original = direct.compile_plan

    def spy(statement: Any, dialect: Any, lists: Any, params: Any, compiled: Any = None) -> Any:
        plan = original(statement, dialect, lists, params, compiled)
        seen.append(plan.sql)
        return plan

    monkeypatch.setattr(direct, "compile_plan", spy)
    monkeypatch.setattr(point_reads, "compile_plan", spy)
    return seen


async def written_state(db: TestDatabase) -> dict[str, Any]:
    """Every table's row count and, on PostgreSQL, every sequence's position: what a rehearsal that claims to
    write nothing must leave exactly as it found (the warm start's tests compare it before and after)."""
    async with db.engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        seen: dict[str, Any] = {
            name: (await conn.execute(sa.select(sa.func.count()).select_from(sa.table(name)))).scalar_one()
            for name in names
        }
        if db.backend == "postgresql":
            for name, value in await conn.execute(
                sa.text(
                    "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = current_schema()"
                )
            ):
                seen[f"sequence {name}"] = value
    return seen
