"""Channel accounts: validated against the channel's declared settings, secrets encrypted, never echoed back."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit_service
from tongcrm.audit.service import SYSTEM, Actor
from tongcrm.channels.models import ChannelAccount, SyncState
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.errors import BadRequest, Conflict, NotFound, PluginError, shown
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.settings import split_settings
from tongcrm.plugin.types import CallGate, ChannelCapability, ChannelContext, ChannelSpec

SECRETS_CONTEXT = "channel_account.secrets"
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True, slots=True)
class AccountView:
    """What operators may see of an account: settings without secrets, which secrets are set, and sync state."""

    id: int
    channel: str
    name: str
    settings: dict[str, str]
    secrets_set: list[str]
    status: str
    status_detail: str
    cursor_set: bool
    watermark: datetime | None
    pages: int
    orders: int
    last_success_at: datetime | None
    last_error: str | None
    created_at: datetime


def _spec(host: PluginHost, channel: str) -> ChannelSpec:
    try:
        return host.channel(channel)
    except PluginError as exc:
        raise BadRequest(exc.message) from exc


def validate_settings(
    spec: ChannelSpec, given: Mapping[str, str | None]
) -> tuple[dict[str, str], dict[str, str]]:
    """Split into (plain, secret) settings, applying defaults; every problem is named in one message."""
    return split_settings(spec.settings, given, what=f"channel {spec.name!r}")


async def create_account(
    session: AsyncSession,
    host: PluginHost,
    vault: Vault,
    channel: str,
    name: str,
    settings: Mapping[str, str | None],
) -> ChannelAccount:
    spec = _spec(host, channel)
    if not _ACCOUNT_NAME.match(name):
        raise BadRequest(
            f"account name {shown(name)} must be 1-100 letters, digits, '-', '_' or '.' "
            "(it is used in URLs and commands)",
            extra={"pointer": "/name"},
        )
    if spec.max_account_name is not None and len(name) > spec.max_account_name:
        raise BadRequest(
            f"account name {shown(name)} is {len(name)} characters: a {spec.name} account's name is at most "
            f"{spec.max_account_name} (the channel writes it into bounded places)",
            extra={"pointer": "/name"},
        )
    plain, secret = validate_settings(spec, settings)
    exists = (await session.execute(sa.select(ChannelAccount.id).where(ChannelAccount.name == name))).first()
    if exists:
        raise Conflict(f"a channel account named {name!r} already exists")
    account = ChannelAccount(
        channel=channel,
        name=name,
        settings=plain,
        secrets=vault.encrypt(json.dumps(secret), context=SECRETS_CONTEXT) if secret else None,
        secret_names=sorted(secret),
        status="active",
        status_detail="",
    )
    session.add(account)
    await session.flush()
    session.add(SyncState(account_id=account.id, pages=0, orders=0))
    await session.flush()
    return account


async def get_account(session: AsyncSession, name: str) -> ChannelAccount:
    if "\x00" in name:  # no stored name has one, and PostgreSQL refuses it in a query: a 500 on public routes
        raise NotFound(f"no channel account named {name!r}")
    account = (
        await session.execute(sa.select(ChannelAccount).where(ChannelAccount.name == name))
    ).scalar_one_or_none()
    if account is None:
        raise NotFound(f"no channel account named {name!r}")
    return account


async def list_accounts(session: AsyncSession) -> list[AccountView]:
    rows = (
        await session.execute(
            sa.select(ChannelAccount, SyncState)
            .outerjoin(SyncState, SyncState.account_id == ChannelAccount.id)
            .order_by(ChannelAccount.name)
        )
    ).all()
    return [view(account, state) for account, state in rows]


def store_channels(host: PluginHost) -> list[str]:
    """The installed channels whose accounts are stores (:attr:`ChannelCapability.STORE`), by name."""
    return sorted(
        name for name, spec in host.channels().items() if ChannelCapability.STORE in spec.capabilities
    )


async def store_codes(session: AsyncSession, host: PluginHost) -> list[str]:
    """The codes of the stores tongcrm knows: the names of the accounts of :func:`store_channels`, whatever
    their status (a paused store is still the store its tills' keys belong to)."""
    channels = store_channels(host)
    if not channels:
        return []
    rows = await session.execute(
        sa.select(ChannelAccount.name)
        .where(ChannelAccount.channel.in_(channels))
        .order_by(ChannelAccount.name)
    )
    return list(rows.scalars())


async def account_view(session: AsyncSession, name: str) -> AccountView:
    account = await get_account(session, name)
    state = await session.get(SyncState, account.id)
    return view(account, state)


def view(account: ChannelAccount, state: SyncState | None) -> AccountView:
    return AccountView(
        id=account.id,
        channel=account.channel,
        name=account.name,
        settings=dict(account.settings),
        secrets_set=sorted(account.secret_names or []),
        status=account.status,
        status_detail=account.status_detail,
        cursor_set=bool(state and state.cursor),
        watermark=state.watermark if state else None,
        pages=state.pages if state else 0,
        orders=state.orders if state else 0,
        last_success_at=state.last_success_at if state else None,
        last_error=state.last_error if state else None,
        created_at=account.created_at,
    )


def channel_context(
    account: ChannelAccount,
    vault: Vault,
    *,
    clock: Callable[[], datetime],
    since: datetime | None = None,
    until: datetime | None = None,
    call_gate: CallGate | None = None,
) -> ChannelContext:
    settings: dict[str, Any] = dict(account.settings)
    if account.secrets:
        settings.update(json.loads(vault.decrypt(account.secrets, context=SECRETS_CONTEXT)))
    return ChannelContext(
        account_name=account.name,
        settings=settings,
        clock=clock,
        since=since,
        until=until,
        call_gate=call_gate,
    )


async def mark_status(session: AsyncSession, account_id: int, status: str, detail: str) -> None:
    await session.execute(
        sa.update(ChannelAccount)
        .where(ChannelAccount.id == account_id)
        .values(status=status, status_detail=detail, updated_at=utcnow())
    )


async def update_secrets(
    session: AsyncSession,
    host: PluginHost,
    vault: Vault,
    name: str,
    settings: Mapping[str, str | None],
    *,
    actor: Actor = SYSTEM,
) -> ChannelAccount:
    """Re-authorise: new settings (e.g. a fresh session token) replace the old ones and the account resumes.

    Audited as ``channel_account.reauthorise`` with the status before and the names of the settings given
    (never their values): a shop's sync resuming is something an operator did."""
    account = await get_account(session, name)
    before = {"status": account.status, "status_detail": account.status_detail}
    spec = _spec(host, account.channel)
    current = dict(account.settings)
    if account.secrets:
        current.update(json.loads(vault.decrypt(account.secrets, context=SECRETS_CONTEXT)))
    current.update({k: v for k, v in settings.items() if v is not None})
    plain, secret = validate_settings(spec, current)
    account.settings = plain
    account.secrets = vault.encrypt(json.dumps(secret), context=SECRETS_CONTEXT) if secret else None
    account.secret_names = sorted(secret)
    account.status = "active"
    account.status_detail = ""
    await session.flush()
    given = sorted(k for k, v in settings.items() if v is not None)
    audit_service.record(
        session,
        actor,
        "channel_account.reauthorise",
        "channel_account",
        account.name,
        before=before,
        after={"status": "active", "settings_given": given},
    )
    return account
