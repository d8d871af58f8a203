"""Console page for channel accounts and stores: each account's sync state (status, ``needs_reauth``, last
success, last error and when), and the stores.

Accounts come from :func:`tongcrm.channels.service.list_accounts`, the service behind
``GET /api/channel-accounts`` (settings without secrets; which secrets are set). Stores are the accounts of
channels that declare :attr:`tongcrm.plugin.types.ChannelCapability.STORE` (the account name is the store
code), with what their orders say: how many and the latest sale. The core names no channel here.

Re-authorising an account (its token expired or was revoked, ``needs_reauth``) follows the channel's own
contract: the form asks for the settings the plugin's :class:`~tongcrm.plugin.types.ChannelSpec` says a
re-authorisation renews (``reauthorise``; every secret setting if it names none), each with the plugin's own
help text, and saves them with :func:`tongcrm.channels.service.update_secrets`, the service behind
``PUT /api/channel-accounts/{name}/credentials`` (operators and admins; audited as
``channel_account.reauthorise`` with the names of the settings given, never their values).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from litestar import Request, Response, get, post
from litestar.params import PathParameter
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels import service as channels
from tongcrm.channels.models import SyncState
from tongcrm.console.forms import form_fields
from tongcrm.console.i18n import CATALOGS, translate
from tongcrm.console.web import (
    PREFIX,
    ConsoleController,
    action,
    actor_of,
    context_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.errors import PluginError, TongcrmError, Unprocessable
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelCapability, ChannelSpec, SettingField

AccountName = Annotated[str, PathParameter(max_length=100)]


@dataclass(frozen=True, slots=True)
class AccountRow:
    account: channels.AccountView
    channel_title: str
    needs_reauth: bool
    last_error_at: datetime | None
    #: The last sync error as the page says it: from its ``sync.*`` code in the page's language
    #: (:func:`sync_error_text`), else the English sentence as stored.
    last_error_text: str = ""
    #: The stored sentence shown after a headline said from its code (:func:`sync_error_detail`), else "".
    last_error_detail: str = ""
    #: The secrets set, each as ``(name, label)``: the label in the page's language from the plugin's
    #: :meth:`~tongcrm.plugin.types.SettingField.label_in` (the name where the plugin gives none or is not
    #: installed), so an operator reads 卖家授权码（SessionKey） rather than ``session``.
    secret_labels: tuple[tuple[str, str], ...] = ()
    #: The channel's adapter pulls orders from a platform, so a backfill can pull a stretch again (a store's
    #: tills push theirs).
    fetches: bool = False


def pulls_orders(spec: ChannelSpec | None) -> bool:
    """Whether a backfill can pull the channel's orders again: its adapter fetches them, and its accounts are
    not stores (:attr:`~tongcrm.plugin.types.ChannelCapability.STORE`: the tills push their receipts, and the
    adapter's fetch answers an empty page)."""
    capabilities = spec.capabilities if spec else frozenset()
    return ChannelCapability.FETCH_ORDERS in capabilities and ChannelCapability.STORE not in capabilities


def secret_labels(spec: ChannelSpec | None, names: list[str], lang: str) -> tuple[tuple[str, str], ...]:
    """Each set secret's name with its label in ``lang``, in the order the plugin declares its settings (those
    the plugin no longer declares after them, by name)."""
    fields = {f.name: f for f in spec.settings} if spec else {}
    order = {name: i for i, name in enumerate(fields)}
    ordered = sorted(names, key=lambda n: (order.get(n, len(order)), n))
    return tuple((n, fields[n].label_in(lang) if n in fields else n) for n in ordered)


def sync_error_text(lang: str, code: str | None, stored: str | None) -> str:
    """A sync error's headline in ``lang``: the catalogue's sentence for its code (``sync_error.<code>``) on a
    page not in English; else, and for an error recorded without a code or with one the catalogue lacks, the
    stored English sentence (which the API and the logs keep)."""
    key = f"sync_error.{code}"
    if code and lang != "en" and key in CATALOGS.get(lang, {}):
        return translate(lang, key)
    return stored or ""


def sync_error_detail(lang: str, code: str | None, stored: str | None) -> str:
    """What the page shows after the headline: the stored sentence — the platform's own words (a Taobao
    ``sub_msg``, a JD ``zh_desc``), which name what the operator must fix — when the headline replaced it with
    the catalogue's; nothing when the headline is that sentence already. The template escapes it."""
    headline = sync_error_text(lang, code, stored)
    return stored if stored and headline != stored else ""


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


async def channels_view(session: AsyncSession, host: PluginHost, lang: str = "en") -> ChannelsView:
    specs = host.channels()
    views = await channels.list_accounts(session)
    errors = {
        int(account_id): (at, code)
        for account_id, at, code in await session.execute(
            sa.select(SyncState.account_id, SyncState.last_error_at, SyncState.last_error_code)
        )
    }
    accounts = [
        AccountRow(
            v,
            specs[v.channel].display_name_in(lang) if v.channel in specs else v.channel,
            v.status == "needs_reauth",
            errors.get(v.id, (None, None))[0],
            sync_error_text(lang, errors.get(v.id, (None, None))[1], v.last_error),
            sync_error_detail(lang, errors.get(v.id, (None, None))[1], v.last_error),
            secret_labels(specs.get(v.channel), v.secrets_set, lang),
            pulls_orders(specs.get(v.channel)),
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
            view = await channels_view(session, request.app.state.host, context_of(request).lang)
        return render(request, "channels/channels.html", {"v": view}, title="chan.title")


@dataclass(frozen=True, slots=True)
class ReauthView:
    account: AccountRow
    #: What the channel's plugin asks for; None when the plugin is not installed (nothing to re-authorise with).
    fields: tuple[SettingField, ...] | None


async def reauth_view(session: AsyncSession, host: PluginHost, name: str, lang: str = "en") -> ReauthView:
    """One account's state (``GET /api/channel-accounts/{name}``'s view) and what its plugin asks for."""
    account = await channels.get_account(session, name)
    state = await session.get(SyncState, account.id)
    try:
        spec = host.channel(account.channel)
    except PluginError:
        spec = None
    view = channels.view(account, state)
    code, stored = (state.last_error_code, state.last_error) if state else (None, None)
    row = AccountRow(
        view,
        spec.display_name_in(lang) if spec else account.channel,
        account.status == "needs_reauth",
        state.last_error_at if state else None,
        sync_error_text(lang, code, stored),
        sync_error_detail(lang, code, stored),
        secret_labels(spec, view.secrets_set, lang),
    )
    return ReauthView(row, spec.reauth_settings if spec else None)


async def _reauth_page(
    request: Request[Any, Any, Any], name: str, *, problem: str | None = None, status_code: int = 200
) -> Response[str]:
    async with request.app.state.read_sessions() as session:
        view = await reauth_view(session, request.app.state.host, name, context_of(request).lang)
    return render(
        request,
        "channels/reauthorise.html",
        {"v": view, "problem": problem},
        title="chan.reauth_title",
        status_code=status_code,
    )


class ChannelAccountPages(ConsoleController):
    path = PREFIX + "/channels/{name:str}"

    @get("/reauthorise", opt=page())
    async def show(self, request: Request[Any, Any, Any], name: AccountName) -> Response[str]:
        return await _reauth_page(request, name)

    @post("/reauthorise", opt=action())
    async def reauthorise(self, request: Request[Any, Any, Any], name: AccountName) -> Response[Any]:
        """Save the renewed settings the form names (blank ones keep their value) and resume the account."""
        form = await form_fields(request)
        state = request.app.state
        lang = context_of(request).lang
        fields: tuple[SettingField, ...] | None = None
        try:
            async with state.sessions() as session, session.begin():
                fields = (await reauth_view(session, state.host, name, lang)).fields
                if fields is None:
                    raise Unprocessable(
                        "the channel's plugin is not installed: nothing can re-authorise it",
                        code="channel.no_plugin",
                    )
                given = {f.name: form[f.name] for f in fields if form.get(f.name, "").strip()}
                if not given:
                    raise Unprocessable(
                        "give the renewed value of at least one of: " + ", ".join(f.name for f in fields),
                        code="channel.nothing_renewed",
                        params={"fields": "、".join(f.label_in(lang) for f in fields)},
                    )
                await channels.update_secrets(
                    session, state.host, state.settings.vault(), name, given, actor=actor_of(request)
                )
        except TongcrmError as exc:
            if exc.status_code >= 500 or exc.status_code == 404:
                raise
            # the settings bounds name a setting by its key (settings.nul, …): the form names it by its label
            label = {f.name: f.label_in(lang) for f in fields or ()}.get(str(exc.params.get("name")))
            if label is not None and exc.code and exc.code.startswith("settings."):
                exc.params = {**exc.params, "name": label}
            return await _reauth_page(
                request, name, problem=problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, f"{PREFIX}/channels?reauthorised={name}")
