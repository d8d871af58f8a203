"""Holding a rate grant over one HTTP request: what channel and messenger plugins wrap each request in.

A :class:`~tongcrm.plugin.types.RateGrant` is released when its request has finished, dated to that moment,
because platforms count calls on arrival and the request arrived by then. A request that failed *after* it may
have been sent (a read timeout, a deadline that cancelled it, a connection lost mid-exchange) proves nothing of
the kind: it can still reach the platform, and be counted, after the client gave up. Such a grant is released
``in_doubt`` and keeps counting as in flight. A request that never left (no connection could be made) cannot
arrive later and is released as finished.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from tongcrm.plugin.types import RateGrant

__all__ = ["NEVER_SENT", "holding"]

#: httpx failures raised before any byte of the request was sent.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@asynccontextmanager
async def holding(grant: RateGrant | None) -> AsyncIterator[None]:
    """``async with holding(grant): <send the request and read its answer>`` — releases ``grant`` (if any) when
    the block ends: as finished when it completed or the request was never sent, in doubt otherwise
    (cancellation included)."""
    in_doubt = True
    try:
        yield
        in_doubt = False
    except NEVER_SENT:
        in_doubt = False
        raise
    finally:
        if grant is not None:
            await grant.release(in_doubt=in_doubt)
