"""The whole test run's order: the known-long tests first, longest first.

CI runs the suite on two xdist workers with work stealing (``--dist worksteal``): each worker starts with half of
the collected tests and one that runs out takes half of the other's queue — from its end. A long test collected
late (the demo's story, the console's browser walk) could therefore start in the last minutes and leave one
worker running it alone while the other idles. A test marked ``@pytest.mark.slow(seconds=N)`` (N: its body's
time on a quiet 2-core machine) is moved to the front, the longest first, so the long bodies run while there
is still short work to balance them, and the run ends on short tests. ``slow`` without ``seconds`` counts as
:data:`UNTIMED_SLOW`. Only the order changes: every test still runs, each on fresh data.
"""

from __future__ import annotations

import pytest

#: The weight of a test marked ``slow`` without ``seconds``: after the timed long ones, before the rest.
UNTIMED_SLOW = 5.0


def expected_seconds(item: pytest.Item) -> float:
    """The ``seconds`` of the test's nearest ``slow`` mark; 0 for a test not marked slow."""
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.kwargs.get("seconds", UNTIMED_SLOW))


def _backend(item: pytest.Item) -> str:
    """The test database's backend of a test that asks for ``tongcrm_db`` ('' for others)."""
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("tongcrm_backend", "")) if callspec is not None else ""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """After pytest's own grouping by fixture (trylast), a stable sort: slow tests first, longest first; the
    others keep the order pytest gave them. The slow ones are grouped by backend (in the order pytest grouped
    them) because the session's database fixture is built again whenever a worker's next test is on the other
    backend."""
    order = {name: rank for rank, name in enumerate(dict.fromkeys(_backend(item) for item in items))}
    order[""] = -1  # a test without the session's database does not make a worker build it again: first

    def key(item: pytest.Item) -> tuple[int, int, float]:
        seconds = expected_seconds(item)
        if seconds <= 0:
            return (1, 0, 0.0)
        return (0, order[_backend(item)], -seconds)

    items.sort(key=key)
