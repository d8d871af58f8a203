"""Benchmarks print their figures (throughput next to the ceiling measured in the same run) at the end."""

from __future__ import annotations

import os
from typing import Any

import pytest

FIGURES: list[str] = []


@pytest.fixture(scope="session")
def tongcrm_durable_commits() -> bool:
    """The benchmarks' database commits durably, as the product's does (the tests' does not). The database is
    made once per session and backend, so in a session that runs tests and benchmarks together the first one to
    ask decides; benchmarks are measured in runs of their own (``--benchmark-only``, or a benchmark file alone)."""
    return True


@pytest.fixture
def report_figure() -> Any:
    def add(line: str) -> None:
        FIGURES.append(f"[{os.cpu_count()} cores] {line}")

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("tongcrm benchmark figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
