"""Fetching and normalising a sync's pages in a child process, fed to the sync through a bounded queue.

A page's fetch and normalisation (HTTP, JSON, time parsing, the plugin's ``normalise``) cost about as much CPU as
its apply, and in one process the GIL keeps them from overlapping however the awaits interleave. A child process
builds the account's adapter again through the channel's own ``ChannelSpec.factory`` and fetches page after page
ahead of the sync; the sync applies them in order, each only after its predecessor committed, exactly as with
the in-process prefetch. The queue holds at most :data:`QUEUE_PAGES` pages: a child that runs ahead blocks,
so memory stays flat whatever the size of the sync.

The child needs the factory, the account's context and the call gate's database again: the factory and the
clock must be picklable (a module-level function or class, found again by import in the child), the call gate
must be the core's :class:`DatabaseCallGate` on a database a second process can open. Anything else (a test
plugin's closure, an in-memory database) is fetched in the sync's own process as before, with a debug log
saying why (:func:`recipe`). The child is started only once the first pages fetched in-process showed there is
more (:data:`CHILD_AFTER_PAGES`), so a sync of a few pages never pays for it; it ignores Ctrl-C (the parent stops
it), and exits by itself when its parent is gone (:func:`_watch_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import dataclasses
import functools
import io
import multiprocessing
import os
import pickle
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.limits.gate import DatabaseCallGate
from tongcrm.logging import configure_logging, configured, get_logger
from tongcrm.plugin import types
from tongcrm.plugin.types import ChannelAdapter, ChannelContext, OrderPage

log = get_logger(__name__)

#: Pages fetched ahead of the sync at most (the queue's bound): enough to ride out a slow platform answer,
#: few enough that a big page size stays a few megabytes.
QUEUE_PAGES = 3
#: How often a waiting parent looks whether its child is still alive, and the child whether its parent is.
POLL_SECONDS = 0.5
#: Pages a sync fetches in its own process before it starts a child (each of them said there is more): the
#: child's start-up (~0.5 s of CPU importing the plugin and the core, more on a loaded machine) is what fetching
#: tens of pages costs, so a sync that is over in a few pages — the periodic job's usual catch-up — never pays it.
CHILD_AFTER_PAGES = 4
#: How long a child stopped with SIGTERM gets before it is killed.
STOP_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class FetchRecipe:
    """What a child needs to build the account's adapter again: the channel's factory, the account's context
    (without its call gate, which holds the parent's sessions) and the call gate's database, if any."""

    factory: Callable[[ChannelContext], ChannelAdapter]
    context: ChannelContext
    database_url: str | None
    #: the parent's logging set-up (:func:`tongcrm.logging.configured`), repeated in the child
    logging: tuple[bool, str] | None = None


def recipe(
    factory: Callable[[ChannelContext], ChannelAdapter], context: ChannelContext
) -> tuple[FetchRecipe | None, str]:
    """The recipe for a child fetching with ``factory`` and ``context``, or ``None`` and the reason it cannot."""
    gate, url = context.call_gate, None
    if gate is not None:
        if not isinstance(gate, DatabaseCallGate):
            return None, f"the call gate {type(gate).__name__} cannot be shared with another process"
        url = _shareable_url(gate.sessions)
        if url is None:
            return None, "the database cannot be opened by another process (in memory)"
    found = FetchRecipe(factory, replace(context, call_gate=None), url, configured())
    try:
        pickle.dumps(found)
    except Exception as exc:
        return None, f"the channel's factory or context cannot be sent to another process ({exc})"
    return found, ""


def _shareable_url(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    bind = sessions.kw.get("bind")
    url = getattr(bind, "url", None)
    if url is None:
        return None
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in {"", ":memory:"} or "mode=memory" in str(url):
            return None
    rendered: str = url.render_as_string(hide_password=False)
    return rendered


class ChildPages:
    """A child process fetching pages from ``cursor`` on, at most ``pages`` of them, in order.

    :meth:`next` returns the next page, raises what the adapter raised fetching it (the same exception,
    pickled across), or returns ``None`` when the child is gone without a word (it could not import the plugin,
    say): the caller then fetches in its own process from the page after the last one received."""

    def __init__(self, fetch: FetchRecipe, cursor: str | None, pages: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.queue: multiprocessing.queues.Queue[tuple[str, Any]] = context.Queue(maxsize=QUEUE_PAGES)
        self.process = context.Process(
            target=_child_main,
            args=(fetch, cursor, pages, self.queue, os.getpid()),
            name=f"tongcrm-fetch:{fetch.context.account_name}",
            daemon=True,
        )
        self.process.start()
        self.started = time.monotonic()

    async def next(self) -> OrderPage | None:
        while True:
            try:
                kind, value = await asyncio.to_thread(self._get, POLL_SECONDS)
            except queue.Empty:
                if self.process.is_alive():
                    continue
                try:  # a last message may have landed as the child exited
                    kind, value = self._get(0.05)
                except queue.Empty:
                    log.warning("the fetching process ended unexpectedly", exitcode=self.process.exitcode)
                    return None
            if kind == "page":
                return loads(value)
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            log.warning("the fetching process could not build the adapter", error=value)
            return None

    def _get(self, timeout: float) -> tuple[str, Any]:
        return self.queue.get(True, timeout)

    def close(self) -> None:
        """Stop the child (whatever it is doing) and wait for it: no orphan outlives its sync."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(STOP_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        # not ``queue.close()``: a reader thread of a cancelled ``next`` may still be polling it (it times out)
        self.queue.cancel_join_thread()
        self.process.close()


def _child_main(
    fetch: FetchRecipe,
    cursor: str | None,
    pages: int,
    out: multiprocessing.queues.Queue[tuple[str, Any]],
    parent: int,
) -> None:
    """The child's entry point: Ctrl-C is its parent's to handle (it stops the child); a parent that died
    without stopping it ends it too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if fetch.logging is not None:
        configure_logging(json=fetch.logging[0], level=fetch.logging[1])
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    asyncio.run(_produce(fetch, cursor, pages, out))


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent:
            os._exit(0)


async def _produce(
    fetch: FetchRecipe, cursor: str | None, pages: int, out: multiprocessing.queues.Queue[tuple[str, Any]]
) -> None:
    from tongcrm.db.engine import create_engine, session_factory

    engine = None
    try:
        gate = None
        if fetch.database_url is not None:
            engine = create_engine(fetch.database_url, pool_size=1)
            gate = DatabaseCallGate(session_factory(engine))
        adapter = fetch.factory(replace(fetch.context, call_gate=gate))
    except Exception as exc:
        out.put(("unable", f"{type(exc).__name__}: {exc}"))
        if engine is not None:
            await engine.dispose()
        return
    sent = 0
    try:
        while sent < pages:
            sent += 1
            try:
                page = await adapter.fetch_orders(cursor)
            except Exception as exc:  # raised again in the parent
                out.put(("error", _portable(exc)))
                return
            out.put(("page", dumps(page)))
            if not page.has_more or page.next_cursor == cursor:
                return  # caught up, or looping on one cursor (the parent refuses that page)
            cursor = page.next_cursor
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        log.info(
            "fetching process done",
            account=fetch.context.account_name,
            pages=sent,
            cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
            max_rss_mb=_peak_rss_mb(usage),
        )
        with contextlib.suppress(Exception):
            await adapter.aclose()
        if engine is not None:
            await engine.dispose()


def _peak_rss_mb(usage: resource.struct_rusage) -> int:
    """This process's peak RSS since it started: Linux's ``VmHWM`` (``ru_maxrss`` keeps the peak of the process
    image before ``exec``: the forked copy of the parent)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return usage.ru_maxrss // 1024


def dumps(page: OrderPage) -> bytes:
    """A page as bytes for the parent, with the plugin types' frozen dataclasses in a lean form.

    Pickled as they are, their ``__setstate__`` (the dataclass default) calls ``dataclasses.fields`` for every
    object: unpickling a page cost the sync 40 % of what fetching and normalising it had cost the child. Here
    each one is its class and a tuple of its field values, set again without validation by :func:`_rebuild`
    (they were validated when the child built them)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _dispatch_table()
    pickler.dump(page)
    return out.getvalue()


def loads(data: bytes) -> OrderPage:
    page = pickle.loads(data)  # noqa: S301 - our own child's bytes
    assert isinstance(page, OrderPage)
    return page


@functools.cache
def _dispatch_table() -> dict[Any, Any]:
    table: dict[Any, Any] = dict(copyreg.dispatch_table)
    for value in vars(types).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value) and "__slots__" in vars(value):
            _FIELDS[value] = tuple(f.name for f in dataclasses.fields(value))
            table[value] = _reduce
    return table


#: The field names of each class :func:`dumps` writes in the lean form.
_FIELDS: dict[type, tuple[str, ...]] = {}


def _reduce(obj: Any) -> tuple[Any, ...]:
    cls = type(obj)
    return _rebuild, (cls, tuple([getattr(obj, name) for name in _FIELDS[cls]]))


def _rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    names = _FIELDS.get(cls)
    if names is None:
        _dispatch_table()
        names = _FIELDS[cls]
    obj: Any = object.__new__(cls)
    for name, value in zip(names, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling as itself, else a :class:`RuntimeError` that tells what it was."""
    try:
        again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    except Exception:
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    assert isinstance(again, Exception)
    return again


class Prefetch:
    """The next page, fetched while the sync applies this one: by a task in this process for the first page,
    then (with a recipe, when the first page shows there is more) by a child process running ahead.

    :meth:`ask` names the page wanted next (the cursor the sync would fetch from); :meth:`take` returns it.
    """

    def __init__(self, adapter: ChannelAdapter, fetch: FetchRecipe | None, **context: Any) -> None:
        self.adapter = adapter
        self.fetch = fetch
        self.context = context
        self.task: asyncio.Task[OrderPage] | None = None
        self.child: ChildPages | None = None
        #: with a child: the cursor of the page it sends next
        self.cursor: str | None = None
        #: pages fetched in this process so far
        self.fetched_here = 0

    @property
    def waiting(self) -> bool:
        return self.task is not None or self.child is not None

    def ask(self, cursor: str | None, *, pages: int) -> None:
        """Fetch the page after ``cursor``; ``pages``: how many the sync may still apply, this one included."""
        if self.child is not None:
            assert cursor == self.cursor, "a child sends the pages in order"
            return
        if (
            self.fetch is not None
            and self.task is None
            and cursor is not None
            and self.fetched_here >= CHILD_AFTER_PAGES
            and pages > 1
        ):
            try:
                self.child = ChildPages(self.fetch, cursor, pages)
            except Exception as exc:
                log.warning("could not start a fetching process", error=str(exc), **self.context)
                self.fetch = None
            else:
                self.cursor = cursor
                log.debug("fetching in a child process", pid=self.child.process.pid, **self.context)
                return
        self.task = asyncio.create_task(self.adapter.fetch_orders(cursor))

    async def take(self) -> OrderPage:
        if self.child is not None:
            page = await self.child.next()
            if page is not None:
                self.cursor = page.next_cursor
                return page
            self.child.close()
            self.child, self.fetch = None, None  # gone without a word: fetch here from where it stopped
            self.task = asyncio.create_task(self.adapter.fetch_orders(self.cursor))
        assert self.task is not None
        task, self.task = self.task, None
        page = await task
        self.fetched_here += 1
        return page

    async def close(self) -> None:
        if self.task is not None:  # an error ended the run with a prefetch in flight
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
            self.task = None
        if self.child is not None:
            self.child.close()
            self.child = None
