"""Watch which statement plans a test's code compiles (the warm start's tests: what a first request still pays)."""

from __future__ import annotations

from typing import Any

import pytest

from tongcrm.db import direct, point_reads


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
