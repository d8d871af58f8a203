"""A store channel for tests of what the core does with stores (a ``pos`` key is scoped to a known store) without
the offline_pos plugin: its accounts are stores (:attr:`ChannelCapability.STORE`), their names store codes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.channels.models import ChannelAccount, SyncState
from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import ChannelCapability, ChannelContext, ChannelSpec, OrderPage

STORE_CHANNEL = "test_store"


class _Adapter:
    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx

    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        return OrderPage((), next_cursor=cursor or "", has_more=False)

    async def aclose(self) -> None:
        return None


def store_plugin() -> Any:
    """A plugin object registering the ``test_store`` channel; register it on a hermetic host."""
    spec = ChannelSpec(
        name=STORE_CHANNEL,
        display_name="Test store",
        settings=(),
        factory=_Adapter,
        capabilities=frozenset({ChannelCapability.FETCH_ORDERS, ChannelCapability.STORE}),
    )
    return SimpleNamespace(channels=hookimpl(lambda: [spec]))


async def add_store(sessions: async_sessionmaker[AsyncSession], code: str) -> None:
    """An account of the ``test_store`` channel named ``code``: a store tongcrm knows."""
    async with sessions() as session, session.begin():
        account = ChannelAccount(
            channel=STORE_CHANNEL,
            name=code,
            settings={},
            secrets=None,
            secret_names=[],
            status="active",
            status_detail="",
        )
        session.add(account)
        await session.flush()
        session.add(SyncState(account_id=account.id, pages=0, orders=0))
