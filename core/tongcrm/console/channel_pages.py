"""Console page for channel accounts and stores: each account's sync state (status, ``needs_reauth``, last
success, last error and when), and the stores.

Accounts come from :func:`tongcrm.channels.service.list_accounts`, the service behind
``GET /api/channel-accounts`` (settings without secrets; which secrets are set). Stores are the accounts of
channels that declare :attr:`tongcrm.plugin.types.ChannelCapability.STORE` (the account name is the store
code), with what their orders say: how many and the latest sale. The core names no channel here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from litestar import Request, Response, get
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels import service as channels
from tongcrm.channels.models import SyncState
from tongcrm.console.web import PREFIX, ConsoleController, page, render
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelCapability


@dataclass(frozen=True, slots=True)
class AccountRow:
    account: channels.AccountView
    channel_title: str
    needs_reauth: bool
    last_error_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoreRow:
    code: str
    channel: str
    status: str
    title: str
    city: str
    address: str
    orders: int
    last_sale_at: datetime | None


@dataclass(frozen=True, slots=True)
class ChannelsView:
    accounts: list[AccountRow]
    stores: list[StoreRow]


async def channels_view(session: AsyncSession, host: PluginHost) -> ChannelsView:
    specs = host.channels()
    views = await channels.list_accounts(session)
    error_at = {
        int(account_id): at
        for account_id, at in await session.execute(sa.select(SyncState.account_id, SyncState.last_error_at))
    }
    accounts = [
        AccountRow(
            v,
            specs[v.channel].display_name if v.channel in specs else v.channel,
            v.status == "needs_reauth",
            error_at.get(v.id),
        )
        for v in views
    ]
    store_channels = {name for name, spec in specs.items() if ChannelCapability.STORE in spec.capabilities}
    store_views = [v for v in views if v.channel in store_channels]
    sales: dict[int, tuple[int, datetime | None]] = {}
    if store_views:
        rows = await session.execute(
            sa.select(Order.account_id, sa.func.count(), sa.func.max(Order.placed_at))
            .where(Order.account_id.in_([v.id for v in store_views]))
            .group_by(Order.account_id)
        )
        sales = {int(a): (int(n), last) for a, n, last in rows}
    stores = [
        StoreRow(
            code=v.name,
            channel=v.channel,
            status=v.status,
            title=v.settings.get("title", ""),
            city=v.settings.get("city", ""),
            address=v.settings.get("address", ""),
            orders=sales.get(v.id, (0, None))[0],
            last_sale_at=sales.get(v.id, (0, None))[1],
        )
        for v in store_views
    ]
    return ChannelsView(accounts, stores)


class ChannelsPage(ConsoleController):
    path = PREFIX + "/channels"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        async with request.app.state.read_sessions() as session:
            view = await channels_view(session, request.app.state.host)
        return render(request, "channels/channels.html", {"v": view}, title="chan.title")
