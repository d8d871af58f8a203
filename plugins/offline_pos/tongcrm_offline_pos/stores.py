"""Stores and their tills.

A store is a core channel account of the ``offline_pos`` channel whose name is the store code
(``tongcrm channel add offline_pos --name SH001``); a POS API key names that code (``tongcrm apikey create
--role pos --store SH001``). Tills are registered per store (``tongcrm pos till add``) so that a receipt from a
till nobody set up is refused instead of silently creating a new key space.

Everything here runs inside a unit of work of the core's counter (:mod:`tongcrm.counter`): stores are read
through it (the core caches accounts for a few seconds), tills are the plugin's own rows. The POS API keeps the
active tills of each store in a :class:`TillCache`, so a checkout does not read them again; a till added
elsewhere is picked up at once (a miss reloads), a till disabled elsewhere stops working within the cache's TTL.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from tongcrm.consent.models import ConsentEvent
from tongcrm.counter import CounterAccount, CounterWork, compile_own_reads
from tongcrm.db.base import utcnow
from tongcrm.db.lengths import column_length
from tongcrm.errors import BadRequest, Conflict, NotFound, Unprocessable, listed, shown
from tongcrm.shared_reads import SharedReads
from tongcrm.warmup import compile_ahead

from tongcrm_offline_pos.models import TABLES, PosTill
from tongcrm_offline_pos.schemas import STORE_CODE_MAX, TILL_CODE_MAX

CHANNEL = "offline_pos"
#: The store setting that lets a store take back goods sold in another store of the brand (default true).
CROSS_STORE_RETURNS = "allow_cross_store_returns"
_TILL = re.compile(rf"^[A-Za-z0-9_-]{{1,{TILL_CODE_MAX}}}$")
_TILLS = cast(sa.Table, PosTill.__table__)


@dataclass(frozen=True, slots=True)
class Store:
    account: CounterAccount

    @property
    def account_id(self) -> int:
        return self.account.id

    @property
    def code(self) -> str:
        return self.account.name

    @property
    def allows_cross_store_returns(self) -> bool:
        """Whether this store takes back goods sold in another store of the brand (a store created before the
        setting existed does)."""
        return self.account.settings.get(CROSS_STORE_RETURNS, "true").lower() != "false"


@dataclass(frozen=True, slots=True)
class TillView:
    store: str
    till: str
    label: str
    status: str
    created_at: datetime


async def get_store(uow: CounterWork, code: str) -> Store:
    """The active store with this code. Any other case is a 404 with the same words, so a key cannot probe
    which store codes exist."""
    account = await uow.account(CHANNEL, code)
    if account is None or not account.active:
        raise NotFound(f"no store {code!r}")
    return Store(account)


async def managed_store(uow: CounterWork, code: str) -> Store:
    """The active store with this code, for the operator who sets up its tills (``tongcrm pos till …``): an
    unknown or closed one is a 404 that lists the active stores and says how to add one, as ``tongcrm apikey
    create --store`` does. The tills' own routes keep :func:`get_store`'s bare words (a key may not probe)."""
    accounts = await uow.accounts(CHANNEL)
    for account in accounts:
        if account.name == code and account.active:
            return Store(account)
    known = [repr(a.name) for a in accounts if a.active]
    closed = " (that store is not active)" if any(a.name == code for a in accounts) else ""
    stores = f"the active stores are {listed(known)}" if known else "there is no active store yet"
    raise NotFound(
        f"no store {shown(code)}{closed}: {stores}; add a store first with "
        f"`tongcrm channel add {CHANNEL} --name CODE`"
    )


def too_long_for_tills(code: str) -> Unprocessable:
    """The refusal for a store whose code is longer than :data:`STORE_CODE_MAX`: one made before the bound
    (migration-era data). Such a store's tills cannot send a receipt (its ``store`` is bounded), so setting up
    a till for it is refused, and so is an enrolment whose consent source would not fit; it says what to do."""
    return Unprocessable(
        f"store {shown(code)} has a code of {len(code)} characters, too long for its tills: a store code is at "
        f"most {STORE_CODE_MAX} (a receipt carries it, and a till's consent is kept as pos:STORE:TILL); add the "
        f"store under a shorter code (`tongcrm channel add {CHANNEL} --name CODE`) and give its tills a key "
        "for that one",
        extra={"store": code[:100]},
    )


def till_place(store: Store, till: str) -> str:
    """Where a till's customer gave something (``pos:STORE:TILL``): a consent's source, an identity's evidence.
    Kept whole or refused (422, :func:`too_long_for_tills`), never cut: a cut one may name another store."""
    place = f"pos:{store.code}:{till}"
    if len(place) > column_length(ConsentEvent.source):
        raise too_long_for_tills(store.code)
    return place


async def find_store(uow: CounterWork, code: str) -> Store | None:
    """The store with this code whatever its status (a sale made in a store that has closed since)."""
    account = await uow.account(CHANNEL, code)
    return None if account is None else Store(account)


#: A store's active tills (built once: run straight on the driver, :meth:`tongcrm.counter.OwnRows.read_alone`).
_ACTIVE_TILLS = sa.select(_TILLS.c.till_code).where(
    _TILLS.c.account_id == sa.bindparam("account_id"), _TILLS.c.status == "active"
)


@compile_ahead
def _compile_tills(dialect: Dialect) -> int:
    """A serving process's start-up step (:mod:`tongcrm.warmup`): the read of a store's tills compiled for
    ``dialect``, so a serving process's first till lookup compiles nothing (nothing is run)."""
    return compile_own_reads(dialect, [_ACTIVE_TILLS], tables=TABLES)


async def active_tills(uow: CounterWork, store: Store) -> frozenset[str]:
    """The store's active tills, read outside the unit of work's transaction where it has begun nothing
    (:meth:`tongcrm.counter.OwnRows.read_alone`): a checkout that reloads the :class:`TillCache` keeps the
    counter's quick path on PostgreSQL (issue #22, branch till15; through ``uow.rows.execute`` the reload
    began the transaction, and that receipt took the transactional path)."""
    rows = await uow.rows.read_alone(_ACTIVE_TILLS, {"account_id": store.account_id})
    return frozenset(row.till_code for row in rows)


class TillCache:
    """The active tills of each store, kept ``ttl`` seconds; a till that is not in the cache is looked up again
    before it is refused (so a till registered a moment ago works at once)."""

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._tills: dict[int, tuple[float, frozenset[str]]] = {}
        #: the tills' requests that find a store's tills lapsed together (at start, then every TTL) read once
        self._reads: SharedReads[int, frozenset[str]] = SharedReads()

    def forget(self) -> None:
        self._tills.clear()

    async def has(self, uow: CounterWork, store: Store, till: str) -> bool:
        cached = self._tills.get(store.account_id)
        if cached is not None and cached[0] > time.monotonic() and till in cached[1]:
            return True
        tills, own = await self._reads.read(store.account_id, partial(self._reload, uow, store))
        if till not in tills and not own:  # refused by a read begun before this request: read again
            tills = await self._reload(uow, store)
        return till in tills

    async def _reload(self, uow: CounterWork, store: Store) -> frozenset[str]:
        now = time.monotonic()
        tills = await active_tills(uow, store)
        if len(self._tills) > 10_000:
            self._tills.clear()
        self._tills[store.account_id] = (now + self.ttl, tills)
        return tills

    async def require(self, uow: CounterWork, store: Store, till: str) -> None:
        if not await self.has(uow, store, till):
            raise NotFound(
                f"store {store.code!r} has no active till {till!r}: register it with `tongcrm pos till add`"
            )


async def _till_row(
    uow: CounterWork, store: Store, till: str
) -> sa.Row[tuple[int, str, str, datetime]] | None:
    row: sa.Row[tuple[int, str, str, datetime]] | None = (
        await uow.rows.execute(
            sa.select(_TILLS.c.id, _TILLS.c.label, _TILLS.c.status, _TILLS.c.created_at).where(
                _TILLS.c.account_id == store.account_id, _TILLS.c.till_code == till
            )
        )
    ).first()
    return row


async def add_till(uow: CounterWork, store_code: str, till: str, *, label: str = "") -> TillView:
    if not _TILL.match(till):
        raise BadRequest(f"a till code is 1-{TILL_CODE_MAX} letters, digits, '_' or '-'")
    store = await managed_store(uow, store_code)
    if len(store.code) > STORE_CODE_MAX:
        raise too_long_for_tills(store.code)
    existing = await _till_row(uow, store, till)
    if existing is not None:
        if existing.status == "active":
            raise Conflict(f"store {store_code!r} already has till {till!r}")
        label = label or existing.label
        await uow.rows.execute(
            sa.update(_TILLS).where(_TILLS.c.id == existing.id).values(status="active", label=label)
        )
        return TillView(store.code, till, label, "active", existing.created_at)
    created = utcnow()
    await uow.rows.execute(
        sa.insert(_TILLS).values(
            account_id=store.account_id, till_code=till, label=label, status="active", created_at=created
        )
    )
    return TillView(store.code, till, label, "active", created)


async def disable_till(uow: CounterWork, store_code: str, till: str) -> TillView:
    store = await managed_store(uow, store_code)
    existing = await _till_row(uow, store, till)
    if existing is None:
        raise NotFound(f"store {store_code!r} has no till {till!r}")
    await uow.rows.execute(sa.update(_TILLS).where(_TILLS.c.id == existing.id).values(status="disabled"))
    return TillView(store.code, till, existing.label, "disabled", existing.created_at)


async def list_tills(uow: CounterWork, store_code: str | None = None) -> list[TillView]:
    accounts = await uow.accounts(CHANNEL)
    if store_code is not None and all(a.name != store_code for a in accounts):
        await managed_store(uow, store_code)  # refused, naming the stores there are
    names = {a.id: a.name for a in accounts if store_code in (None, a.name)}
    if not names:
        return []
    rows = (
        await uow.rows.execute(
            sa.select(
                _TILLS.c.account_id, _TILLS.c.till_code, _TILLS.c.label, _TILLS.c.status, _TILLS.c.created_at
            )
            .where(_TILLS.c.account_id.in_(sorted(names)))
            .order_by(_TILLS.c.till_code)
        )
    ).all()
    views = [TillView(names[r.account_id], r.till_code, r.label, r.status, r.created_at) for r in rows]
    return sorted(views, key=lambda v: (v.store, v.till))
