"""The collector set for batches (:mod:`tongcrm.heap`): overlapping batches restore it once, when the last ends."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from tongcrm.heap import batch_collector


def test_overlapping_batches_put_the_collector_back_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    if gc.get_freeze_count():
        pytest.skip("this process froze its heap before (the collector then leaves it frozen)")
    first, second = batch_collector(5_000), batch_collector(9_000)
    first.__enter__()
    # (a frozen object that is freed leaves the frozen count: compare it loosely)
    assert gc.get_freeze_count() > 10_000 and gc.get_threshold() == (5_000, *before[1:])
    second.__enter__()  # another batch starts while the first runs: it changes nothing
    assert gc.get_freeze_count() > 10_000 and gc.get_threshold() == (5_000, *before[1:])
    first.__exit__(None, None, None)  # the first ends before the second: the collector stays set
    assert gc.get_freeze_count() > 10_000 and gc.get_threshold() == (5_000, *before[1:])
    cycle: list[Any] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # what a batch makes is still collected
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_process_that_froze_its_heap_keeps_it_frozen() -> None:
    if gc.get_freeze_count():
        pytest.skip("this process froze its heap before")
    gc.freeze()  # as a server does at start-up
    try:
        with batch_collector():
            assert gc.get_freeze_count() > 10_000
        assert gc.get_freeze_count() > 10_000  # not given back: the process froze it, not the batch
    finally:
        gc.unfreeze()


def test_a_served_app_settles_with_its_mappers_configured() -> None:
    """A serving process's first requests do not pay SQLAlchemy's mapper configuration (issue #22, tillpg11):
    ``settle_heap`` configures the mappers the app's import left to configure. In a child process, since it
    also freezes the heap."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tongcrm.app\n"
        "registries = sys.modules['sqlalchemy.orm.mapper']._mapper_registries\n"
        "pending = any(r._new_mappers for r in list(registries))\n"
        "tongcrm.app.settle_heap()\n"
        "print(pending, any(r._new_mappers for r in list(registries)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["True", "False"]
