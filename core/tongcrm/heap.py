"""The cyclic garbage collector, set for work that allocates a page of short-lived rows at a time.

A batch (a sync's pages, an import's or an export's) makes tens of thousands of containers a page (normalised
orders, their lines and shipments, the rows and parameters of the page's statements), all garbage once the
page is written. With CPython's defaults every 700 allocations run a collection of the youngest generation,
and every few hundred of those a collection of the oldest one, which walks again everything the programme
loaded to start (modules, classes, mappers, plugins: 100,000–200,000 containers that never become garbage).
Measured on a 20,000-order JD sync on PostgreSQL (issue #22): 3 collections of the oldest generation took
0.43 s of the sync's 5.8 s of CPU, the ~950 younger ones 0.2 s.

:func:`batch_collector` freezes what exists when the first batch starts out of the collector's view
(``gc.freeze``) and collects the youngest generation every ``young`` allocations, until the last batch of the
process ends; then everything is put back as it was. Batches may overlap (windows of a backfill synced by one
process, a sync job while another runs): the first to start sets the collector, the last to end restores it.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: The youngest generation's threshold while a batch runs (CPython's default is 700 allocations).
BATCH_GC_THRESHOLD = 10_000

_lock = threading.Lock()
_running = 0
#: What the first batch found: the thresholds, and whether it froze the heap (it does not when the process
#: froze it before, as a server does at start-up, :func:`tongcrm.app.settle_heap`).
_restore: tuple[tuple[int, int, int], bool] = ((700, 10, 10), False)


@contextlib.contextmanager
def batch_collector(young: int = BATCH_GC_THRESHOLD) -> Iterator[None]:
    """The collector set for a batch while this block runs (see the module docstring); re-entrant and safe
    for overlapping batches. Nothing is collected first: what is frozen is given back when the last batch
    ends (``gc.unfreeze``), so garbage that was frozen with the heap is collected then, not kept."""
    global _running, _restore
    with _lock:
        if _running == 0:
            before = gc.get_threshold()
            freezing = gc.get_freeze_count() == 0
            if freezing:
                gc.freeze()
            gc.set_threshold(young, *before[1:])
            _restore = (before, freezing)
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0:
                before, froze = _restore
                gc.set_threshold(*before)
                if froze:
                    gc.unfreeze()
