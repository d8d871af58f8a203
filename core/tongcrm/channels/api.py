"""Channel accounts over HTTP: create (secrets accepted, never returned), list, show, re-authorise."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import SettingsIn
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.channels import service
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.db.lengths import fits
from tongcrm.plugin.host import PluginHost


class AccountIn(msgspec.Struct, forbid_unknown_fields=True):
    channel: Annotated[str, fits(ChannelAccount.channel)]
    #: at most 100, or the channel's own bound (an offline_pos store code: 20), refused (400) when made
    name: Annotated[str, fits(ChannelAccount.name)]
    settings: SettingsIn = {}


class ReauthIn(msgspec.Struct, forbid_unknown_fields=True):
    settings: SettingsIn


class AccountOut(msgspec.Struct):
    id: int
    channel: str
    name: str
    settings: dict[str, str]
    secrets_set: list[str]
    status: str
    status_detail: str
    pages: int
    orders: int
    watermark: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    created_at: datetime


def _out(v: service.AccountView) -> AccountOut:
    return AccountOut(
        id=v.id,
        channel=v.channel,
        name=v.name,
        settings=v.settings,
        secrets_set=v.secrets_set,
        status=v.status,
        status_detail=v.status_detail,
        pages=v.pages,
        orders=v.orders,
        watermark=v.watermark,
        last_success_at=v.last_success_at,
        last_error=v.last_error,
        created_at=v.created_at,
    )


class ChannelAccountController(Controller):
    path = "/api/channel-accounts"
    tags = ["channels"]

    @post("/", status_code=HTTP_201_CREATED, opt=requires(Role.ADMIN), summary="Connect a shop or store")
    async def create(
        self,
        data: JSONBody[AccountIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        host: NamedDependency[PluginHost],
        settings: NamedDependency[Settings],
    ) -> AccountOut:
        async with sessions() as session, session.begin():
            await service.create_account(
                session, host, settings.vault(), data.channel, data.name, data.settings
            )
            return _out(await service.account_view(session, data.name))

    @get("/", opt=requires(*READ_ROLES), summary="Channel accounts with their sync state")
    async def list_accounts(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> list[AccountOut]:
        async with read_sessions() as session:
            return [_out(v) for v in await service.list_accounts(session)]

    @get("/{name:str}", opt=requires(*READ_ROLES), summary="One channel account")
    async def show(
        self, name: FromPath[str], read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> AccountOut:
        async with read_sessions() as session:
            return _out(await service.account_view(session, name))

    @put(
        "/{name:str}/credentials",
        opt=requires(*WRITE_ROLES),
        summary="Re-authorise: replace settings (audited)",
    )
    async def reauthorise(
        self,
        name: FromPath[str],
        data: JSONBody[ReauthIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        host: NamedDependency[PluginHost],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> AccountOut:
        async with sessions() as session, session.begin():
            await service.update_secrets(
                session, host, settings.vault(), name, data.settings, actor=Actor.of(principal)
            )
            return _out(await service.account_view(session, name))
