"""One read for the callers that miss the same cache entry together.

Why (issue #22, branch till18): a served app's caches of a store's account and of its tills lapse for every till
at once (at start-up, then every TTL), and the tills' requests that find them lapsed arrive together: each read
the row itself, eight reads where one would do, each a session, a pooled connection and a round trip on the
event loop that the first receipts of every till wait on. :class:`SharedReads` lets the first caller read and
the others wait for its answer.

Unlike :class:`tongcrm.auth.service.KeyVerifier`'s shared read (a task of its own, on the point reader), the read
here runs in the first caller's own flow, on its own unit of work's connection, as it did before: no task holds
a connection its caller may give back. When that caller is cancelled or its read fails, the callers waiting
are not given its failure: each reads for itself, as it would have without the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: what a waiting caller is given when the first caller's read did not answer: read for yourself
_READ_AGAIN = object()


class SharedReads(Generic[K, V]):
    """The reads under way, by cache key."""

    def __init__(self) -> None:
        self._reading: dict[K, asyncio.Future[object]] = {}

    async def read(self, key: K, read: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """``read()``'s answer and True when it was run here (no read of ``key`` under way), else the answer of
        the read under way and False. ``read`` should store what it read in the cache itself: the callers that
        wait take its answer without storing it. A read under way may have begun before this call: a caller
        whose answer must be no older than its own request (a refusal) reads again when given False."""
        while True:
            under_way = self._reading.get(key)
            if under_way is None:
                break
            given = await asyncio.shield(under_way)  # a waiter's cancellation leaves the read to the others
            if given is not _READ_AGAIN:
                return cast(V, given), False
        mine: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._reading[key] = mine
        answer: object = _READ_AGAIN
        try:
            value = await read()
            answer = value
            return value, True
        finally:
            if self._reading.get(key) is mine:
                del self._reading[key]
            mine.set_result(answer)
