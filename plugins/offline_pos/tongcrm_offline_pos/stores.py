"""Stores and their tills.

A store is a core channel account of the ``offline_pos`` channel whose name is the store code
(``tongcrm channel add offline_pos --name SH001``); a POS API key names that code (``tongcrm apikey create
--role pos --store SH001``). Tills are registered per store (``tongcrm pos till add``) so that a receipt from a
till nobody set up is refused instead of silently creating a new key space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.channels.models import ChannelAccount
from tongcrm.db.base import utcnow
from tongcrm.errors import BadRequest, Conflict, NotFound

from tongcrm_offline_pos.models import PosTill

CHANNEL = "offline_pos"
_TILL = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


@dataclass(frozen=True, slots=True)
class Store:
    account_id: int
    code: str
    settings: dict[str, str]


@dataclass(frozen=True, slots=True)
class TillView:
    store: str
    till: str
    label: str
    status: str
    created_at: datetime


async def get_store(session: AsyncSession, code: str) -> Store:
    """The active store with this code. Any other case is a 404 with the same words, so a key cannot probe
    which store codes exist."""
    row = (
        await session.execute(
            sa.select(ChannelAccount.id, ChannelAccount.name, ChannelAccount.settings).where(
                ChannelAccount.name == code,
                ChannelAccount.channel == CHANNEL,
                ChannelAccount.status == "active",
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no store {code!r}")
    return Store(row.id, row.name, dict(row.settings or {}))


async def active_tills(session: AsyncSession, store: Store) -> set[str]:
    rows = await session.execute(
        sa.select(PosTill.till_code).where(PosTill.account_id == store.account_id, PosTill.status == "active")
    )
    return set(rows.scalars())


async def require_till(session: AsyncSession, store: Store, till: str) -> None:
    if till not in await active_tills(session, store):
        raise NotFound(
            f"store {store.code!r} has no active till {till!r}: register it with `tongcrm pos till add`"
        )


async def add_till(session: AsyncSession, store_code: str, till: str, *, label: str = "") -> TillView:
    if not _TILL.match(till):
        raise BadRequest("a till code is 1-16 letters, digits, '_' or '-'")
    store = await get_store(session, store_code)
    existing = (
        await session.execute(
            sa.select(PosTill).where(PosTill.account_id == store.account_id, PosTill.till_code == till)
        )
    ).scalar_one_or_none()
    if existing is not None:
        if existing.status == "active":
            raise Conflict(f"store {store_code!r} already has till {till!r}")
        existing.status = "active"
        existing.label = label or existing.label
        await session.flush()
        return _view(store.code, existing)
    row = PosTill(
        account_id=store.account_id, till_code=till, label=label, status="active", created_at=utcnow()
    )
    session.add(row)
    await session.flush()
    return _view(store.code, row)


async def disable_till(session: AsyncSession, store_code: str, till: str) -> TillView:
    store = await get_store(session, store_code)
    row = (
        await session.execute(
            sa.select(PosTill).where(PosTill.account_id == store.account_id, PosTill.till_code == till)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"store {store_code!r} has no till {till!r}")
    row.status = "disabled"
    await session.flush()
    return _view(store.code, row)


async def list_tills(session: AsyncSession, store_code: str | None = None) -> list[TillView]:
    stmt = (
        sa.select(ChannelAccount.name, PosTill)
        .join(ChannelAccount, ChannelAccount.id == PosTill.account_id)
        .order_by(ChannelAccount.name, PosTill.till_code)
    )
    if store_code is not None:
        stmt = stmt.where(ChannelAccount.name == store_code)
    return [_view(name, till) for name, till in (await session.execute(stmt)).all()]


def _view(store: str, row: PosTill) -> TillView:
    return TillView(store, row.till_code, row.label, row.status, row.created_at)
