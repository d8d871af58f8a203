"""The channel adapter of a store.

A store pushes its receipts through the POS API; nothing is polled. ``fetch_orders`` therefore answers at once
with an empty, caught-up page, so the core's periodic sync of every active account treats a store like any
other account without ever fetching anything (and without a special case for stores in the core).
"""

from __future__ import annotations

from tongcrm.plugin.types import ChannelContext, OrderPage


class StoreAdapter:
    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx

    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        return OrderPage(orders=(), next_cursor=cursor or "push-only", has_more=False)

    async def aclose(self) -> None:
        return None
