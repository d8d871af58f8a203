"""Serving a member in person, for any channel with a counter: a store's till, a pop-up stand, a service desk.

What a counter does with the one member base: find a member by mobile or identity and show what a cashier may
see (masked name and mobile, tier, entitlements usable now, available points); enrol a walk-in customer with the
consent they give there; record a sale with the ingest engine's effects (through its single-order path,
:mod:`tongcrm.counter_sale`), optionally paid in part with points (a redemption in the same unit of work);
record a return, which reverses the points the returned lines earned and gives back the proportional share of
the points they were paid with.

Design: a unit of work the core owns
------------------------------------
:class:`CounterService` is made once by the app (``app.state.counter``) and handed to plugin routes by
dependency injection (``counter: NamedDependency[CounterService]``), like
:class:`tongcrm.membership.MembershipService`. A plugin never sees a session factory, a session or a
transaction; it opens a unit of work and does everything inside it::

    async with counter.unit_of_work(actor=actor, tables=MY_TABLES) as uow:
        row = (await uow.rows.execute(sa.select(my_table).where(...))).first()   # the plugin's own rows
        buyer = await uow.buyer(mobile=mobile, evidence="till S1/T01")
        sale = await uow.record_sale(account, order, buyer=buyer, points_payment=paid)  # core operations
        await uow.rows.execute(sa.update(my_table).values(result=...))

The facade begins the transaction, commits when the block ends and rolls everything back when it raises, so a
receipt row and the points it moved commit or fail together (one transaction per unit of work).
``uow.attempt()`` is a savepoint for a part that may fail on its own (one receipt of an offline batch).

``uow.rows`` is the narrow repository the design promises plugins that own tables: it runs the plugin's
statements on the tables it named in ``tables`` and refuses any statement that touches another table (core's
tables are reached only through the operations of ``uow``), and it refuses writes in a ``readonly`` unit of
work. A context manager rather than one callback per operation, because a counter flow interleaves plugin rows
and core operations with the plugin's own decisions in between (claim a receipt key, redeem, apply the sale,
record the answer); one block reads like that flow, and the core still owns begin, commit, rollback and
savepoints. Read-only units of work run on the read-only session factory, which on SQLite does not take the
write lock, so lookups never queue behind checkouts; on PostgreSQL they run in autocommit (each statement its
own snapshot, no ``BEGIN``/``ROLLBACK`` round trips).

Nothing here knows which channel calls it: accounts, orders and idempotency keys are the caller's, and the
refusals carry stable ``reason`` codes (:class:`CounterRefused`) that a channel maps to its own answers.

Caching: channel accounts are cached for ``account_ttl`` seconds (10 by default): a counter asks for its
account on every call, and accounts change rarely (a changed setting or status is seen within the TTL).

Writers on SQLite: the database has one writer at a time. Writing units of work of one process take turns on
an in-process lock (first come, first served) instead of waiting in SQLite's busy handler, whose growing sleeps
left the database idle and gave checkouts multi-second tails. Units of work do not nest (a second one opened
inside the first is refused: on SQLite it would wait for the first forever).
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections import namedtuple
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.auth.service import GENERATION_COLUMN
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.consent import service as consent
from tongcrm.counter_sale import (
    HELD_ACCOUNT,
    HELD_EXTERNAL,
    HELD_KEYS,
    STORED_AND_SETTINGS,
    CounterOrder,
    FollowUp,
    KnownBuyer,
    apply_counter_order,
    follow_up_params,
    follow_up_statement,
    known_member,
    new_member_rows,
    on_figures,
)
from tongcrm.counter_sale import (
    ORDER_FIGURES as ORDER_FIGURES,
)
from tongcrm.counter_sale import steps_ahead as sale_steps_ahead
from tongcrm.crypto import Vault
from tongcrm.db import direct
from tongcrm.db.base import utcnow
from tongcrm.db.dialect import dialect_name, json_records_text
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.db.held import GroupCommit, held_unit, holds
from tongcrm.db.point_reads import PointQuery, PointReader
from tongcrm.entitlements import service as entitlements
from tongcrm.entitlements.catalogue import CATALOGUE
from tongcrm.entitlements.models import EntitlementGrant, GrantStatus
from tongcrm.errors import Conflict, NotFound, PluginError, TongcrmError, Unprocessable
from tongcrm.identity.models import Identity
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve_many
from tongcrm.ingest.apply import IngestContext, line_rows, order_facts, order_row
from tongcrm.members import service as members
from tongcrm.members.masked import mask_name
from tongcrm.members.models import Member
from tongcrm.members.phone import (
    MOBILE_CONTEXT,
    InvalidMobile,
    drop_lookups,
    keep_lookups,
    mask_mobile,
    normalise_mobile,
)
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import BuyerProfile, IdentityClaim, NormalisedOrder
from tongcrm.points import ledger
from tongcrm.points import service as points
from tongcrm.points.models import EntryKind, PointsBalance, PointsEntry
from tongcrm.points.multipliers import NO_TIER
from tongcrm.shared_reads import SharedReads
from tongcrm.tiers import programme
from tongcrm.tiers import service as tier_service
from tongcrm.tiers.models import MemberTier, TierLadder
from tongcrm.tiers.service import TierContext

#: Set while a unit of work is open in the current task: a second one inside it would wait for the first.
_OPEN: ContextVar[bool] = ContextVar("tongcrm_counter_unit_of_work", default=False)
#: Entitlements shown at a counter, at most (the soonest to expire first).
MAX_ENTITLEMENTS = 50
_MAX_MERGE_HOPS = 8


class CounterRefused(TongcrmError):
    """What was asked at the counter cannot be done. ``reason`` is a stable code callers branch on:
    ``unknown_member``, ``member_without_identity``, ``invalid_mobile``, ``points_without_member``,
    ``insufficient_points``, ``identity_rejected``, ``order_not_found``, ``redemption_not_found``; for
    entitlement uses those of :meth:`CounterWork.use_entitlement`."""

    title = "Refused at the counter"

    def __init__(self, reason: str, message: str, *, status: int = 409) -> None:
        super().__init__(message, extra={"reason": reason})
        self.reason = reason
        self.status_code = status


# -------------------------------------------------------------------------------------------------------------
# what the facade answers


@dataclass(frozen=True, slots=True)
class CounterAccount:
    """A channel account (a store, a stand) as a counter needs it: no secrets."""

    id: int
    channel: str
    name: str
    status: str
    settings: Mapping[str, str]

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class TierBadge:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class UsableEntitlement:
    """A grant usable now: a standing benefit of the member's tier (``valid_until`` None: while the tier lasts)
    or a granted coupon or gift."""

    kind: str
    name: str
    value: int
    grant_id: int
    valid_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class MemberAtCounter:
    """What a cashier may see of a member, and nothing more: name and mobile stay masked."""

    member_id: int
    name: str | None
    mobile: str | None
    tier: TierBadge | None
    entitlements: tuple[UsableEntitlement, ...]
    points_available: int
    created: bool = False


@dataclass(frozen=True, slots=True)
class EntitlementUsed:
    """A use of an entitlement recorded at a counter; ``created`` False when its usage key was seen before
    (the recorded use is answered again)."""

    usage_id: int
    grant_id: int
    kind: str
    name: str
    member_id: int
    usage_key: str
    reference: str
    used_at: datetime
    created: bool


@dataclass(frozen=True, slots=True)
class Buyer:
    """Who a sale is for: the strong identity claim that names them, and their member id when they have one
    yet (a mobile nobody has becomes a member when the sale is recorded)."""

    member_id: int | None
    claim: IdentityClaim
    #: the member and the identity behind ``claim`` as read in this unit of work: the sale's identity
    #: resolution then needs no second read (:func:`tongcrm.counter_sale.apply_counter_order`)
    known: KnownBuyer | None = None


@dataclass(frozen=True, slots=True)
class PointsPayment:
    """Part of a sale paid with points. ``key`` makes the redemption idempotent and names it for refunds."""

    points: int
    key: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReturnedLine:
    """A line of the original sale: what it cost (before any points payment), and how much of that has come
    back in total, this return included."""

    amount_fen: int
    returned_fen: int


@dataclass(frozen=True, slots=True)
class PaidPointsBack:
    """Give back the points a sale was paid with, in proportion to what came back.

    ``payment_key`` is the key of the sale's :class:`PointsPayment`; ``key`` is the return's own key (the refund
    is idempotent by it); ``lines`` are all lines of the sale (see :func:`paid_points_due`).
    """

    payment_key: str
    key: str
    lines: tuple[ReturnedLine, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SaleRecorded:
    order_id: int
    member_id: int | None
    points_earned: int
    points_redeemed: int
    points_available: int | None


@dataclass(frozen=True, slots=True)
class QuickSale:
    """What :meth:`CounterWork.quick_sale` did: found the caller's row (``existing``, nothing written) or
    recorded the sale (``sale``)."""

    existing: Any = None
    sale: SaleRecorded | None = None


#: A caller's own row written with a quick sale (:meth:`CounterWork.quick_sale`): given the order's id and
#: member, an ``INSERT`` of its table selecting from :data:`ORDER_FIGURES` (one row when the order was written;
#: values as ``sa.bindparam``, built once) and its values.
QuickRow = Callable[[int, int], tuple[Any, Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class ReturnRecorded:
    order_id: int
    member_id: int | None
    #: Earned points taken back by this return.
    points_reversed: int
    #: Redeemed points given back by this return.
    points_refunded: int
    points_available: int | None


def share_out(amounts: Sequence[int], total: int) -> list[int]:
    """``total`` split over ``amounts`` in proportion, by largest remainder (ties: the earlier line): the
    shares are integers that add up to exactly ``total``."""
    whole = sum(amounts)
    if whole <= 0 or total <= 0:
        return [0] * len(amounts)
    shares = [a * total // whole for a in amounts]
    rest = total - sum(shares)
    by_remainder = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] * total % whole), i))
    for i in by_remainder[:rest]:
        shares[i] += 1
    return shares


def paid_points_due(redeemed: int, lines: Sequence[ReturnedLine]) -> int:
    """How many of the ``redeemed`` points the returned goods account for, in total over all returns so far.

    The points are shared over the lines by their amounts (:func:`share_out`); a fully returned line gives back
    its whole share, a partly returned one ``floor(share × returned / amount)``. The result never exceeds
    ``redeemed``, never decreases as more comes back, and is ``redeemed`` once everything has come back — so a
    return gives back ``paid_points_due(after) − already given back``, and any split of a return into several
    gives back the same in the end.
    """
    shares = share_out([max(line.amount_fen, 0) for line in lines], redeemed)
    due = 0
    for share, line in zip(shares, lines, strict=True):
        if line.amount_fen <= 0 or line.returned_fen <= 0:
            continue
        due += share if line.returned_fen >= line.amount_fen else share * line.returned_fen // line.amount_fen
    return due


# -------------------------------------------------------------------------------------------------------------
# the plugin's own rows


#: Statements :class:`OwnRows` found to touch only a caller's tables: statement → {(tables, readonly)}.
_CHECKED: weakref.WeakKeyDictionary[Any, set[tuple[frozenset[str], bool]]] = weakref.WeakKeyDictionary()
#: A caller's statement → the same statement answering the API keys' revocation counter too (built once).
_STAMPED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _stamped(statement: sa.Executable) -> Any:
    """``statement`` answering :data:`tongcrm.auth.service.GENERATION_COLUMN` as its last column."""
    stamped = _STAMPED.get(statement)
    if stamped is None:
        if isinstance(statement, sa.Select):
            stamped = statement.add_columns(GENERATION_COLUMN)
        elif isinstance(statement, sa.Insert | sa.Update | sa.Delete):
            stamped = statement.returning(GENERATION_COLUMN)
        else:
            raise PluginError(f"a statement answering rows is needed, not {type(statement).__name__}")
        _STAMPED[statement] = stamped
    return stamped


def _refuse_foreign(statement: sa.Executable, tables: frozenset[str], readonly: bool) -> None:
    """Refuse ``statement`` unless it is a statement on ``tables`` alone (and, ``readonly``, no write)."""
    if readonly and isinstance(statement, UpdateBase):
        raise PluginError("this unit of work is read-only")
    clause: object = statement
    if not isinstance(clause, ClauseElement):
        raise PluginError(f"not a SQL statement: {type(statement).__name__}")
    used: set[str] = set()
    stack: list[Any] = [clause]
    while stack:  # every table the statement names (bound values name none: not walked)
        element = stack.pop()
        if isinstance(element, BindParameter):
            continue
        if isinstance(element, sa.Table):
            used.add(element.fullname)
            continue
        if isinstance(element, sa.Column) and isinstance(element.table, sa.Table):
            used.add(element.table.fullname)
        elif isinstance(element, sa.TextClause):
            raise PluginError("SQL text cannot go through the counter: build the statement on your tables")
        stack.extend(element.get_children())
    foreign = used - tables
    if foreign:
        raise PluginError(
            f"a plugin may use only its own tables through the counter; {', '.join(sorted(foreign))} "
            "belong to the core or another plugin"
        )


def check_own(statement: sa.Executable, tables: frozenset[str], *, readonly: bool = False) -> None:
    """What :class:`OwnRows` checks of a caller's statement, for ``tables`` (their ``fullname``): that it uses
    only them (and writes nothing when ``readonly``). Checked once per statement and set of tables (the walk cost
    a till's first checkout more than running its statements), so a start-up step may check it ahead."""
    passed = _CHECKED.get(statement)
    if passed is None or (tables, readonly) not in passed:
        _refuse_foreign(statement, tables, readonly)
        _CHECKED.setdefault(statement, set()).add((tables, readonly))


class SessionOnDemand:
    """A unit of work's ORM session, made the first time something asks for it (:meth:`__call__`).

    Why (issue #22, branch tillcpu17): a till's lookup is a read-only unit of work whose store and till checks
    are cached and whose card is read through the point reader, so it usually never touches its session; making
    one anyway (``AsyncSession`` and its ``Session``, events and identity map) cost ~30 µs of CPU a lookup."""

    __slots__ = ("_make", "dialect", "made")

    def __init__(self, make: Callable[[], AsyncSession], dialect: str) -> None:
        self._make = make
        #: the dialect's name the session will be bound to (known without making it)
        self.dialect = dialect
        #: the session, once made (None: nobody asked for it)
        self.made: AsyncSession | None = None

    @classmethod
    def of(cls, session: AsyncSession | SessionOnDemand) -> SessionOnDemand:
        """``session`` itself when it is one, else a source of a session made already."""
        if isinstance(session, SessionOnDemand):
            return session
        source = cls(lambda: session, dialect_name(session))
        source.made = session
        return source

    def __call__(self) -> AsyncSession:
        made = self.made
        if made is None:
            made = self.made = self._make()
        return made


class OwnRows:
    """Statements on the tables a caller owns, in the unit of work's transaction, and nothing else."""

    def __init__(
        self, session: AsyncSession | SessionOnDemand, tables: Iterable[sa.Table], *, readonly: bool
    ) -> None:
        self._source = SessionOnDemand.of(session)
        self._tables = frozenset(t.fullname for t in tables)
        self._readonly = readonly
        self.dialect = self._source.dialect
        #: the API keys' revocation counter as a statement of this unit of work last read it (None: not read)
        self.key_generation: int | None = None

    @property
    def _session(self) -> AsyncSession:
        return self._source()

    def _refuse_foreign(self, statement: sa.Executable) -> None:
        _refuse_foreign(statement, self._tables, self._readonly)

    def insert(self, table: sa.Table) -> Any:
        """An ``INSERT`` with ``on_conflict_do_nothing``/``on_conflict_do_update`` on both databases."""
        if table.fullname not in self._tables:
            raise PluginError(f"table {table.fullname} is not one of this unit of work's own tables")
        return insert_on(self.dialect, table)

    async def execute(self, statement: sa.Executable, params: Mapping[str, Any] | None = None) -> Any:
        """Execute ``statement`` (select, insert, update, delete) on the caller's own tables, with ``params``
        for its ``bindparam``s.

        A statement built once (with ``sa.bindparam``) and run with ``params`` is checked once per set of
        tables: on a till's path, building a statement and walking it cost more than running it."""
        self._checked(statement)
        if params is None:
            return await self._session.execute(statement)
        return await self._session.execute(statement, dict(params))

    async def first(self, statement: sa.Executable, params: Mapping[str, Any]) -> Any | None:
        """The first row of ``statement`` (built once, with ``sa.bindparam``s) run with ``params``, or None; the
        rest of its rows are dropped. Runs straight on the driver (:mod:`tongcrm.db.direct`): for a till's
        statements of one row, where ``execute``'s machinery cost more than the statement. Rows are named
        tuples of the statement's columns; no list parameters."""
        self._checked(statement)
        return await direct.first(self._session, statement, params)

    async def first_stamped(self, statement: sa.Executable, params: Mapping[str, Any]) -> Any | None:
        """:meth:`first`, the statement also answering the API keys' revocation counter (a ``SELECT``'s extra
        column, a write's extra ``RETURNING``), kept in :attr:`key_generation` when a row came back: a request
        handler that confirms its caller's key itself (:func:`tongcrm.api.security.confirms_key_itself`)
        confirms it under that counter, without a round trip of its own. The row carries it as
        ``key_generation`` after the statement's own columns."""
        self._checked(statement)
        row = await direct.first(self._session, _stamped(statement), params)
        if row is not None:
            self.key_generation = int(row.key_generation or 0)
        return row

    async def run(self, statement: sa.Executable, params: Mapping[str, Any]) -> None:
        """Run ``statement`` (built once) with ``params`` as :meth:`first` does, for a write answering nothing."""
        self._checked(statement)
        await direct.rows(self._session, statement, params)

    async def read_alone(self, statement: sa.Executable, params: Mapping[str, Any]) -> list[Any]:
        """Every row of the read ``statement`` (built once, a ``SELECT`` of the caller's own tables) run with
        ``params``, for what need not be read in the unit of work's transaction (a cache the caller reloads):
        on PostgreSQL, while the unit of work has begun nothing, outside any transaction
        (:func:`tongcrm.db.direct.rows_alone`), so that the unit of work can still make a quick sale
        (:meth:`CounterWork.quick_sale` needs one that has begun nothing); elsewhere on the driver in its
        transaction (:func:`tongcrm.db.direct.rows`: on SQLite the held connection's, the ORM session not
        begun). Rows as :meth:`first` answers them.

        Why (issue #22, branch till15): a till's tills, read through :meth:`execute` when their cache expired,
        began the session's transaction, and that receipt took the transactional path."""
        check_own(statement, self._tables, readonly=True)
        if direct.alone_possible(self._session):
            return await direct.rows_alone(self._session, statement, params)
        return await direct.rows(self._session, statement, params)

    def _checked(self, statement: sa.Executable) -> None:
        check_own(statement, self._tables, readonly=self._readonly)


# -------------------------------------------------------------------------------------------------------------
# the unit of work


class CounterWork:
    """One unit of work at a counter: core operations plus the caller's own rows, in one transaction."""

    def __init__(
        self,
        service: CounterService,
        session: AsyncSession | SessionOnDemand,
        actor: Actor,
        clock: Callable[[], datetime],
        tables: Iterable[sa.Table],
        *,
        readonly: bool,
    ) -> None:
        self._service = service
        source = SessionOnDemand.of(session)
        #: the unit of work's ORM session, made when first used (a till's lookup usually never uses it)
        self._source = source
        self.actor = actor
        self.clock = clock
        self.readonly = readonly
        self.rows = OwnRows(source, tables, readonly=readonly)
        self._members: dict[int, Member] = {}
        #: in a read-only unit of work, the card rows :meth:`find_member` read (nothing here can change them)
        self._cards: dict[int, Any] = {}
        #: a buyer's rows (as :data:`_BUYER_BY_ID` reads them) read along another statement, for :meth:`buyer`
        self._buyers: dict[int, list[Any]] = {}
        #: the order a claim read along (:meth:`first_with_buyer`): its key and its row of
        #: :data:`tongcrm.counter_sale.STORED_AND_SETTINGS`, for the next application of that order
        self._held: tuple[tuple[int, str], Any] | None = None
        #: a buyer's card row (as :data:`_CARD` reads it; None: nobody) read along another statement, by the
        #: identity kind and values it was looked up by, for :meth:`buyer`
        self._found_cards: dict[tuple[str, tuple[str, ...]], Any] = {}

    @property
    def _session(self) -> AsyncSession:
        return self._source()

    @property
    def tz(self) -> ZoneInfo:
        return self._service.tz

    @property
    def key_generation(self) -> int | None:
        """The API keys' revocation counter as a statement of this unit of work read it (the till's lookup,
        :meth:`OwnRows.first_stamped`), for :func:`tongcrm.api.security.confirm_key`; None: none read it."""
        return self.rows.key_generation

    def _writable(self) -> None:
        if self.readonly:
            raise PluginError("this unit of work is read-only")

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """A savepoint: what the block did is undone if it raises; the unit of work goes on. What a claim in it
        read along (:meth:`first_with_buyer`: a buyer, a held order, a found card) is for its receipt alone: not
        kept past it."""
        try:
            async with self._session.begin_nested():
                yield
        finally:
            self._buyers.clear()
            self._held = None
            self._found_cards.clear()

    async def first_with_buyer(
        self,
        statement: sa.Executable,
        params: Mapping[str, Any],
        *,
        member_id: int | None,
        order: tuple[int, str] | None = None,
        card: tuple[str, tuple[str, ...]] | None = None,
    ) -> Any | None:
        """``uow.rows.first_stamped(statement, params)`` and, on PostgreSQL in the same statement, the read
        that ``buyer(member_id=member_id)`` makes first (None: no buyer to read), kept for it in this unit of
        work (one round trip for a till's receipt row and its buyer). Kept only when the statement answered a
        row, and only until that buyer read or the end of the receipt's savepoint (:meth:`attempt`): a read of
        the member later in the unit of work (a batch's return of the same member, receipts on) must see the
        member as it is then, not as this claim saw it.

        ``order``: the key (account id, external id) of the order a sale of this unit of work applies next,
        when ``statement`` claims it for this unit of work — a row returned means nobody else can write that
        order until this transaction ends. The order as stored and the programme's settings (rule set, tier
        ladder), which the sale reads first, are then read in the same statement and kept for the next
        :meth:`record_sale` of that order (on PostgreSQL; SQLite's statements are function calls in process).

        ``card``: the identity kind and stored values (:func:`tongcrm.members.service.lookup_key`) a sale's
        buyer is named by (a mobile given at the till): the member they name is read in the same statement and
        kept for :meth:`buyer`, which would read it next.
        """
        if self.rows.dialect != "postgresql":
            return await self.rows.first_stamped(statement, params)
        self.rows._checked(statement)
        plan = _with_buyer(statement, held=order is not None, card=card is not None)
        bound = {**params, _BUYER_ID: member_id}
        if order is not None:
            bound[HELD_ACCOUNT], bound[HELD_EXTERNAL] = order
        if card is not None:
            bound["card_kind"], bound["card_values"] = card[0], list(card[1])
        rows = await direct.rows(self._session, plan.statement, bound)
        own = next((r for r in rows if r.own_present), None)
        self._held = None
        if (
            own is None
        ):  # the claim met its row: this receipt reads nothing along it, and a later read must be fresh
            if member_id is not None:
                self._buyers.pop(member_id, None)
            return None
        if member_id is not None:
            self._buyers[member_id] = [plan.buyer(r) for r in rows if r.buyer_status is not None]
        if card is not None:
            self._found_cards[card] = plan.card(rows[0])
        if order is not None:
            self._held = (order, plan.held(rows[0]))
        row = plan.own(own)
        self.rows.key_generation = int(row.key_generation or 0)
        return row

    # -- accounts and members ---------------------------------------------------------------------------------

    async def account(self, channel: str, name: str) -> CounterAccount | None:
        """The ``channel`` account called ``name`` (any status), or None."""
        return await self._service._account(self._source, channel, name)  # the session made only on a miss

    async def accounts(self, channel: str) -> list[CounterAccount]:
        rows = (
            await self._session.execute(
                sa.select(
                    ChannelAccount.id, ChannelAccount.name, ChannelAccount.status, ChannelAccount.settings
                )
                .where(ChannelAccount.channel == channel)
                .order_by(ChannelAccount.name)
            )
        ).all()
        return [CounterAccount(r.id, channel, r.name, r.status, dict(r.settings or {})) for r in rows]

    async def live_member(self, member_id: int) -> int | None:
        """The live member ``member_id`` is (itself, or the survivor of its merges), or None."""
        return await members.resolve_live_id(self._session, member_id)

    async def find_member(self, *, mobile: str | None = None, identity: str | None = None) -> int | None:
        """The live member a mobile or a ``kind:value`` identity names, or None."""
        if self.readonly:
            return await self._find_card(mobile=mobile, identity=identity)
        try:
            member = await members.lookup(
                self._session, self._service.vault, self._service.host, mobile=mobile, identity=identity
            )
        except NotFound:
            return None
        except InvalidMobile as exc:
            raise CounterRefused("invalid_mobile", exc.message, status=422) from None
        self._members[member.id] = member  # the session's identity map holds it only weakly
        return member.id

    async def _find_card(self, *, mobile: str | None, identity: str | None, keep: bool = True) -> int | None:
        """:meth:`find_member` in a read-only unit of work: the member, their available points and whether
        there is a tier ladder in one statement (a till's lookup by mobile is then one round trip without a
        ladder), kept for :meth:`member_card` (``keep``). A member found not live goes the long way. A sale's
        buyer (:meth:`buyer`) is found with it too, without ``keep``: the sale changes what it read."""
        try:
            kind, values = members.lookup_key(
                self._service.vault, self._service.host, mobile=mobile, identity=identity
            )
        except NotFound:
            return None
        except InvalidMobile as exc:
            raise CounterRefused("invalid_mobile", exc.message, status=422) from None
        along = (kind, tuple(values))
        reader = self._service.reader
        if along in self._found_cards:  # read with the receipt's claim (first_with_buyer), just before
            row = self._found_cards.pop(along)
        elif (
            self.readonly and reader is not None
        ):  # its own snapshot, as any read of a read-only unit of work
            query = _CARD_OR_NONE_READ if self.rows.dialect == "postgresql" else _CARD_READ
            row = await reader.first(query, {"kind": kind, "values": values})
        else:
            row = await direct.first(self._session, _CARD, {"kind": kind, "values": values})
        if row is None:
            return None
        self.rows.key_generation = int(row.key_generation or 0)
        if row.id is None:  # nobody holds it (_CARD_OR_NONE_READ): the counter was read all the same
            return None
        if row.status != "active":
            found = await members.resolve_live_id(self._session, row.id)
            return found
        if keep:
            self._cards[row.id] = row
        return int(row.id)

    async def member_card(self, member_id: int, *, created: bool = False) -> MemberAtCounter:
        """What a cashier may see of a live member."""
        card = self._cards.get(member_id)
        if card is None:
            member = self._members.get(member_id) or await self._session.get(Member, member_id)
            if member is None:
                raise NotFound(f"no member {member_id}")
            balance = await points.balance(self._session, member_id)
            card = _CardFields(member.name, member.mobile_enc, balance.available, has_ladder=True)
        return await self._card(member_id, card, created)

    async def _card(self, member_id: int, card: Any, created: bool) -> MemberAtCounter:
        """:meth:`member_card` from a row of :data:`_CARD` or :class:`_CardFields`: entitlements are read only
        under a ladder (or when it is not known whether there is one)."""
        mobile = None
        if card.mobile_enc:
            mobile = mask_mobile(self._service.vault.decrypt(card.mobile_enc, context=MOBILE_CONTEXT))
        tier: TierBadge | None = None
        usable: tuple[UsableEntitlement, ...] = ()
        if card.has_ladder:
            now = self.clock()
            try:
                held = await entitlements.for_member(
                    self._session, TierContext(now, self.tz, self.actor.name), member_id
                )
            except NotFound:  # the brand has no tier ladder (the member exists: read above)
                held = None
            if held is not None:
                tier = TierBadge(held.tier.code, held.tier.name)
                usable = _usable_now(held, now)
        return MemberAtCounter(
            member_id=member_id,
            name=mask_name(card.name),
            mobile=mobile,
            tier=tier,
            entitlements=usable,
            points_available=max(int(card.available or 0), 0),
            created=created,
        )

    async def use_entitlement(
        self,
        member_id: int,
        *,
        grant_id: int | None = None,
        kind: str | None = None,
        usage_key: str,
        reference: str,
    ) -> EntitlementUsed:
        """Record that the member served here used an entitlement: a grant by its id (a coupon, a birthday
        gift, or a standing benefit shown at the lookup) or their live standing benefit of ``kind`` (gift
        packaging). The recording is the entitlements service's (:func:`tongcrm.entitlements.service.use`,
        :func:`~tongcrm.entitlements.service.use_standing`): idempotent by ``usage_key``, a recurring grant
        once. The counter adds what the service cannot know: the grant must be this member's, since a
        counter knows the member by who stands there and must not spend another member's grant by its id.

        Refusals (:class:`CounterRefused`): ``grant_not_found`` (404: no such grant, or another member's,
        alike so a counter cannot probe grant ids), ``grant_closed``, ``grant_not_valid_now``, ``grant_used``,
        ``not_held`` (no live standing benefit of ``kind``), ``usage_key_taken`` (the key was used for another
        grant), all 409; ``not_standing``, ``unknown_entitlement``, ``invalid_usage`` (422)."""
        self._writable()
        if (grant_id is None) == (kind is None):
            raise ValueError("name the entitlement by exactly one of grant_id or kind")
        ctx = TierContext(self.clock(), self.tz, self.actor.name)
        try:
            if grant_id is not None:
                owner = (
                    await self._session.execute(
                        sa.select(EntitlementGrant.member_id).where(EntitlementGrant.id == grant_id)
                    )
                ).scalar_one_or_none()
                if owner != member_id:
                    raise CounterRefused(
                        "grant_not_found", f"this member holds no entitlement grant {grant_id}", status=404
                    )
                usage, created = await entitlements.use(
                    self._session, ctx, grant_id, usage_key=usage_key, reference=reference,
                    actor=self.actor.name,
                )  # fmt: skip
            else:
                assert kind is not None
                usage, created = await entitlements.use_standing(
                    self._session, ctx, member_id, kind, usage_key=usage_key, reference=reference,
                    actor=self.actor.name,
                )  # fmt: skip
        except (Conflict, Unprocessable) as exc:
            default = "unknown_entitlement" if "entitlement" in exc.extra else "invalid_usage"
            reason = str(exc.extra.get("reason") or ("conflict" if isinstance(exc, Conflict) else default))
            raise CounterRefused(reason, exc.message, status=exc.status_code) from None
        grant = await self._session.get(EntitlementGrant, usage.grant_id)
        assert grant is not None  # a usage's grant is never deleted (foreign key)
        return EntitlementUsed(
            usage_id=usage.id,
            grant_id=usage.grant_id,
            kind=grant.kind,
            name=_kind_name(grant.kind),
            member_id=usage.member_id,
            usage_key=usage.usage_key,
            reference=usage.reference,
            used_at=usage.used_at,
            created=created,
        )

    async def enrol(
        self,
        account: CounterAccount,
        *,
        mobile: str,
        name: str | None,
        marketing: bool,
        service: bool,
        proof: str,
        place: str,
        claims: Sequence[IdentityClaim] = (),
    ) -> MemberAtCounter:
        """Enrol a walk-in customer (or find them, when the mobile is a member already) and record the consent
        they gave at ``place`` (e.g. ``pos:S1:T01``). A new member gets the sign-up event points.

        ``claims``: other identities the customer hands over at the counter (a membership card issued to them
        now), attached to the member. One that already names another member is refused (``identity_taken``,
        409) rather than merging the two: at a counter that is far more often a card handed out twice or a
        number mistyped than one person with two memberships; an operator merges those."""
        self._writable()
        try:
            e164 = normalise_mobile(mobile)
        except InvalidMobile as exc:
            raise CounterRefused("invalid_mobile", exc.message, status=422) from None
        kinds = self._service.host.identity_kinds()
        for claim in claims:
            if claim.kind not in kinds:
                raise CounterRefused(
                    "unknown_identity_kind", f"unknown identity kind {claim.kind!r}", status=422
                )
        if claims:
            owner = await self.find_member(mobile=e164)
            for claim in claims:
                named = await self.find_member(identity=f"{claim.kind}:{claim.value}")
                if named is not None and named != owner:
                    raise CounterRefused(
                        "identity_taken",
                        f"this {claim.kind} already belongs to member {named}, not to this mobile's "
                        f"{'member ' + str(owner) if owner is not None else 'new member'}",
                        status=409,
                    )
        now = self.clock()
        [outcome] = await resolve_many(
            self._session,
            self._resolution(),
            [
                ClaimSet(
                    claims=(IdentityClaim("mobile", e164, evidence=f"enrolled at {place}"), *claims),
                    account_id=account.id,
                    profile=BuyerProfile(name=name.strip() if name and name.strip() else None, mobile=e164),
                    source_channel=account.channel,
                    source_store=account.name,
                )
            ],
        )
        if outcome.error is not None or outcome.member_id is None:
            raise CounterRefused(
                "identity_rejected", f"cannot enrol this customer: {outcome.error}", status=422
            )
        member_id = outcome.member_id
        for purpose, given in ((consent.Purpose.MARKETING, marketing), (consent.Purpose.SERVICE, service)):
            await consent.record_consent(
                self._session,
                member_id,
                purpose.value,
                (consent.ConsentStatus.OPT_IN if given else consent.ConsentStatus.OPT_OUT).value,
                source=place,
                proof=proof,
                actor=self.actor,
                at=now,
            )
        if outcome.created:
            await points.award_event(
                self._session, self._points(), member_id, "signup", str(member_id), occurred_at=now
            )
        audit.record(
            self._session,
            self.actor,
            "counter.enrol" if outcome.created else "counter.enrol_existing",
            "member",
            member_id,
            after={"channel": account.channel, "account": account.name, "place": place,
                   "mobile": mask_mobile(e164), "marketing": marketing},
            at=now,
        )  # fmt: skip
        return await self.member_card(member_id, created=outcome.created)

    async def buyer(
        self,
        *,
        member_id: int | None = None,
        mobile: str | None = None,
        claim: IdentityClaim | None = None,
        evidence: str = "",
    ) -> Buyer:
        """The buyer of a sale, by member id (their strong identity: mobile first), by a mobile given at the
        counter, or by another strong identity shown there (a membership card) — the last two not necessarily
        a member yet: the sale then makes one."""
        if sum(x is not None for x in (member_id, mobile, claim)) != 1:
            raise ValueError("name the buyer by exactly one of member_id, mobile or claim")
        if claim is not None:
            spec = self._service.host.identity_kinds().get(claim.kind)
            if spec is None or not spec.strong:
                raise CounterRefused(
                    "unknown_identity_kind",
                    f"{claim.kind!r} is not an identity a buyer can be named by",
                    status=422,
                )
            named = await self._find_card(mobile=None, identity=f"{claim.kind}:{claim.value}", keep=False)
            return Buyer(named, claim)
        if mobile is not None:
            try:
                e164 = normalise_mobile(mobile)
            except InvalidMobile as exc:
                raise CounterRefused("invalid_mobile", exc.message, status=422) from None
            claim = IdentityClaim("mobile", e164, evidence)
            return Buyer(await self._find_card(mobile=e164, identity=None, keep=False), claim)
        assert member_id is not None
        return await self._buyer_by_id(member_id, evidence)

    def buyer_key(self, *, mobile: str) -> tuple[str, tuple[str, ...]] | None:
        """What :meth:`buyer` (``mobile=``) looks the buyer up by: the identity kind and stored values, for
        :meth:`first_with_buyer`'s ``card``; None when the mobile is not one (``buyer`` then refuses it)."""
        try:
            kind, values = members.lookup_key(
                self._service.vault, self._service.host, mobile=normalise_mobile(mobile), identity=None
            )
        except (InvalidMobile, NotFound):
            return None
        return kind, tuple(values)

    async def _buyer_by_id(self, member_id: int, evidence: str) -> Buyer:
        kinds = self._service.host.identity_kinds()
        asked = member_id
        for _ in range(_MAX_MERGE_HOPS):
            rows = self._buyers.pop(member_id, None)
            if rows is None:
                rows = await direct.rows(self._session, _BUYER_BY_ID, {"member_id": member_id})
            if not rows:
                break
            if rows[0].status == "merged" and rows[0].merged_into_id is not None:
                member_id = rows[0].merged_into_id
                continue
            for row in rows:
                spec = kinds.get(row.kind) if row.kind is not None else None
                if spec is None or not spec.strong:
                    continue
                known = None
                if rows[0].status == "active":
                    known = KnownBuyer(
                        row.identity_id, row.kind, row.value, row.created_at, row.has_mobile, row.referrer_id
                    )
                if row.kind == "mobile":
                    if row.value_enc:
                        mobile = self._service.vault.decrypt(row.value_enc, context=MOBILE_CONTEXT)
                        return Buyer(member_id, IdentityClaim("mobile", mobile, evidence), known)
                    continue
                return Buyer(member_id, IdentityClaim(row.kind, row.value, evidence), known)
            raise CounterRefused(
                "member_without_identity",
                f"member {member_id} has no mobile or other strong identity to attribute a sale to",
                status=422,
            )
        raise CounterRefused("unknown_member", f"no member {asked}", status=422)

    # -- sales and returns ------------------------------------------------------------------------------------

    async def record_sale(
        self,
        account: CounterAccount,
        order: NormalisedOrder,
        *,
        buyer: Buyer | None,
        points_payment: PointsPayment | None = None,
        then: FollowUp | None = None,
    ) -> SaleRecorded:
        """Record a sale as an order of ``account`` with what the ingest engine does to an order (identity
        resolution, earning rules, tiers, outbox), on its single-order path (:mod:`tongcrm.counter_sale`). A points payment is redeemed first, so the sale cannot be paid with the points
        it earns; the order's lines should carry as ``amount_fen`` what earns points (the part not paid with
        points).

        ``then``: a write of the caller's own tables that follows the sale and reads what the till is shown
        (:data:`tongcrm.counter_sale.ORDER_FIGURES`; a receipt row finished with the sale's figures), given the
        order's id and member. On PostgreSQL it rides in the sale's last statement (one round trip fewer);
        elsewhere, or when the order was not written (sent again), it runs after it with the figures bound.
        Either way it has run when this returns, in the unit of work's transaction."""
        self._writable()
        redeemed = 0
        if points_payment is not None and points_payment.points > 0:
            if buyer is None or buyer.member_id is None:
                raise CounterRefused("points_without_member", "a sale paid with points needs a known member")
            try:
                await points.redeem(
                    self._session,
                    self._points(),
                    buyer.member_id,
                    points_payment.points,
                    key=points_payment.key,
                    reason=points_payment.reason,
                )
            except Conflict as exc:
                raise CounterRefused("insufficient_points", exc.message) from None
            redeemed = points_payment.points
        kinds = (EntryKind.EARN,)
        checked = None if then is None else self._own_follow_up(then)
        applied = await self._apply(account, order, buyer, kinds, then=checked)
        order_id, member_id, earned, available = await self._after(
            account.id, order.external_id, kinds, applied
        )
        payer = buyer.member_id if buyer is not None else None
        if redeemed and member_id != payer:
            raise Conflict(
                f"the sale resolved to member {member_id}, not to member {payer} who paid with points"
            )
        if checked is not None and not applied.followed:
            statement, values = checked(order_id, member_id)
            figures = {"figures_points": earned, "figures_available": available}
            await direct.rows(
                self._session, follow_up_statement(statement), {**follow_up_params(values), **figures}
            )
        return SaleRecorded(order_id, member_id, earned, redeemed, available)

    async def quick_sale(
        self,
        account: CounterAccount,
        order: NormalisedOrder,
        *,
        member_id: int | None,
        evidence: str,
        mobile: str | None = None,
        existing: sa.Select[Any],
        existing_params: Mapping[str, Any],
        own_row: QuickRow,
        confirm: Callable[[int | None], Awaitable[None]],
    ) -> QuickSale | None:
        """A sale to the member ``member_id`` on PostgreSQL in one read and one statement, outside a transaction
        (:mod:`tongcrm.counter_quick`); None when it is not for this path — nothing written then, and
        :meth:`record_sale` in this unit of work does what it always did.

        ``existing``: a select of the caller's own row for this sale (a till's receipt under its key), run with
        ``existing_params`` in the read; a row found is answered (``existing``) and nothing is written.
        ``own_row``: the caller's row, written with the sale (its insert fails on the row's unique key when
        the row appeared since the read: then nothing at all is written, and None is answered). ``confirm``: the
        caller's key check under the revocation counter the read answered, run before anything is written.

        Not for this path (None), as the read finds it: the caller's statement off, another dialect, a unit of
        work that began already; a buyer not active (merged, unknown, erased), not named by a strong identity
        the resolution policy would attach the sale to changing only its ``last_seen_at``, or referred by
        someone (a referral reward may hang on the order); the order already stored; a rule set with caps; a
        balance in debt or owing points, or one the credits would take past its bound. Under a tier ladder the
        buyer's tier row is read alone when a tier multiplies what a line earns, and an upgrade the sale made
        due is decided after the statement (in a transaction, as the transactional path decides it)."""
        from tongcrm import counter_quick

        self._writable()
        if (
            not counter_quick.ENABLED
            or self.rows.dialect != "postgresql"
            or not direct.alone_possible(self._session)
            or order.paid_at is None
            or not order.lines
        ):
            return None
        ctx = self._ingest_context()
        made: tuple[dict[str, Any], dict[str, Any]] | None = None
        if member_id is None:
            if mobile is None:
                return None
            try:
                claim = IdentityClaim("mobile", normalise_mobile(mobile), evidence)
            except InvalidMobile:
                return None  # the transactional path refuses it as it always did
            claimed = _with_claim(order, claim)
            # before the read: a sale this path cannot make draws no member id
            made = new_member_rows(ctx, account.id, account.channel, claimed)
            if made is None:
                return None
        self.rows._checked(existing)
        plan = _quick_read(existing)
        bound = {
            **existing_params,
            _BUYER_ID: member_id,
            HELD_ACCOUNT: account.id,
            HELD_EXTERNAL: order.external_id,
            "line_count": len(order.lines),
            "new_buyer": made is not None,
            "claim_kind": None if made is None else made[1]["kind"],
            "claim_value": None if made is None else made[1]["value"],
        }
        rows = await direct.rows_alone(self._session, plan.statement, bound)
        first = rows[0]
        self.rows.key_generation = int(first.key_generation or 0)
        if first.own_present:
            return QuickSale(existing=plan.own(first))
        touch: tuple[int, datetime] | None = None
        if made is None:
            assert member_id is not None
            if first.buyer_status != "active":
                return None
            self._buyers[member_id] = [plan.buyer(r) for r in rows if r.buyer_status is not None]
            try:
                buyer = await self._buyer_by_id(member_id, evidence)
            except CounterRefused:
                return None  # the transactional path refuses it as it always did
            known = buyer.known
            if known is None or buyer.member_id != member_id or known.referrer_id is not None:
                return None
            claimed = _with_claim(order, buyer.claim)
        elif first.claim_taken:
            return None  # the mobile is someone's: the transactional path resolves the sale to them
        else:
            member_id = int(first.quick_member_id)
        held = plan.held(first)
        if held.modified_at is not None:
            return None
        programme.hold(self._session, held)
        rules = await points.active_rules(self._session)
        ladder = await tier_service.active_ladder(self._session)
        if rules.has_caps:
            return None
        available, pending = int(first.balance_available or 0), int(first.balance_pending or 0)
        if int(first.balance_owed or 0) > 0 or available < 0:
            return None
        now = ctx.clock()
        if made is None:
            assert known is not None
            touch = known_member(ctx, claimed, member_id, known)
            if touch is None:
                return None
        order_id, line_ids = int(first.quick_order_id), [int(i) for i in first.quick_line_ids]
        row = {"id": order_id, **order_row(account.id, account.channel, claimed, member_id, None, now)}
        lines = [
            {"id": line_id, **line}
            for line_id, line in zip(line_ids, line_rows(order_id, claimed), strict=True)
        ]
        written = _Written(order_id, member_id, row["status"])
        ids = {(order_id, line["external_id"]): line["id"] for line in lines}
        facts = order_facts(written, account.id, account.channel, claimed, ids)
        points_now = ctx.clock()
        tier = NO_TIER
        if ladder is not None and any(r.tier_multiplier for r in rules.spend_rules):
            # the tier the buyer holds multiplies what a line earns (read as the transactional path reads it;
            # a new buyer holds none yet)
            held_tier = (
                []
                if made is not None
                else await direct.rows_alone(self._session, _MEMBER_TIER, {"tier_member_id": member_id})
            )
            tier = tier_service.points_tier(held_tier[0] if held_tier else None, ladder, points_now)
        credits, awards = points.fresh_order_credits(self._points(), rules, facts, points_now, tier)
        if available + pending + sum(c.amount for c in credits) > ledger.MAX_BALANCE:
            return None
        await confirm(self.rows.key_generation)
        follow, values = own_row(order_id, member_id)
        self.rows._checked(follow)
        statement = counter_quick.sale_statement(
            tuple(row), _quick_follow(follow), new_buyer=made is not None
        )
        changed = {
            "order_id": order_id,
            "account_id": account.id,
            "channel": account.channel,
            "external_id": claimed.external_id,
            "member_id": member_id,
            "status": row["status"],
            "previous": None,
            "refunded_fen": sum(line.refunded_fen for line in claimed.lines),
            "changed_at": claimed.modified_at.isoformat(),
        }
        params: dict[str, Any] = {f"o_{name}": value for name, value in row.items()}
        params.update(follow_up_params(values))
        if made is not None:
            member, identity = made
            params.update({f"m_{name}": value for name, value in member.items()})
            params.update({f"i_{name}": value for name, value in identity.items()})
            params.update(
                new_member_id=member_id,
                new_member_source=account.channel or "unknown",
                new_member_at=member["created_at"],
            )
        params.update(
            touch_identity_id=None if touch is None else touch[0],
            touch_at=None if touch is None else touch[1],
            line_rows=json_records_text(lines),
            credits=json_records_text(credits),
            awards=json_records_text(awards),
            now=points_now,
            member_id=member_id,
            changed_payload=changed,
            changed_at=now,
        )
        try:
            done = await direct.rows_alone(self._session, statement, params)
        except sa.exc.IntegrityError as exc:
            # the caller's row appeared since the read, or a new buyer's mobile was claimed: nothing was written
            if _sqlstate(exc) == "23505":
                return None
            raise
        if not done:  # the order appeared since the read: nothing was written
            return None
        out = done[0]
        if out.available is not None:
            balance = (int(out.available), int(out.pending), int(out.owed))
            # a debt that appeared since the read is settled now, in a transaction, as a later credit would
            await ledger.settle_credited(
                self._session, {member_id: balance}, {member_id: int(out.delta)}, now=points_now
            )
        if ladder is not None:
            # an upgrade the sale made due, decided after it as the transactional path decides it (one read;
            # the upgrade, almost never, in a transaction right after): its tier events then follow the
            # order's ``order_changed`` instead of coming before it
            tier_ctx = TierContext(now=ctx.clock(), tz=ctx.tz, actor=ctx.actor)
            if await tier_service.upgrade_due(self._session, tier_ctx, member_id):
                await tier_service.reevaluate(self._session, tier_ctx, [member_id])
        shown = max(int(out.shown or 0), 0)
        return QuickSale(sale=SaleRecorded(order_id, member_id, int(out.points), 0, shown))

    def _own_follow_up(self, then: FollowUp) -> FollowUp:
        """``then``, its statement checked to write only the caller's own tables (as :class:`OwnRows` checks)."""

        def checked(order_id: int, member_id: int | None) -> tuple[Any, Mapping[str, Any]]:
            statement, values = then(order_id, member_id)
            self.rows._checked(statement)
            return statement, values

        return checked

    async def record_return(
        self,
        account: CounterAccount,
        order: NormalisedOrder,
        *,
        buyer: Buyer | None,
        paid_points: PaidPointsBack | None = None,
    ) -> ReturnRecorded:
        """Record goods coming back: ``order`` is the sale as it now stands (its lines' ``refunded_fen``
        cumulative, ``modified_at`` later than the last version), re-applied through the ingest engine, which
        reverses the points the lines earned. With ``paid_points``, the share of the sale's points payment
        that the returned goods account for is given back (never more than was redeemed, once per ``key``)."""
        self._writable()
        kinds = (EntryKind.EARN, EntryKind.REVERSE)
        before = (await self._order_points(account.id, order.external_id, kinds))[2]
        applied = await self._apply(account, order, buyer, kinds)
        order_id, member_id, after, available = await self._after(
            account.id, order.external_id, kinds, applied
        )
        refunded = 0
        if paid_points is not None:
            refunded, balance = await self._give_back(paid_points)
            if balance is not None and member_id is not None:
                available = max(balance, 0)
        return ReturnRecorded(order_id, member_id, before - after, refunded, available)

    async def _give_back(self, back: PaidPointsBack) -> tuple[int, int | None]:
        """(points given back for ``back.key``, the member's available points after, when they moved)."""
        state = await points.redemption_state(self._session, back.payment_key)
        if state is None:
            raise CounterRefused(
                "redemption_not_found", f"no points payment {back.payment_key!r} to give back", status=409
            )
        already = await self._session.execute(
            sa.select(PointsEntry.amount).where(PointsEntry.idempotency_key == f"refund:{back.key}")
        )
        if (done := already.scalar_one_or_none()) is not None:
            return int(done), None  # this return gave them back already
        due = paid_points_due(state.redeemed, back.lines) - state.refunded
        if due <= 0:
            return 0, None
        refund = await points.refund_redemption(
            self._session, self._points(), back.payment_key, due, key=back.key, reason=back.reason
        )
        return due, refund.balance.available

    async def points_available(self, member_id: int) -> int:
        return max((await points.balance(self._session, member_id)).available, 0)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _ingest_context(self) -> IngestContext:
        """The context a sale is written under, the same for the quick and the transactional path."""
        return IngestContext(
            host=self._service.host,
            vault=self._service.vault,
            clock=self.clock,
            tz=self.tz,
            actor=self.actor.name,
        )

    def _resolution(self) -> ResolutionContext:
        return ResolutionContext(
            self._service.host,
            self._service.vault,
            self.clock,
            actor=self.actor.name,
            tz=self._service.settings.tz,
        )

    def _points(self) -> points.PointsContext:
        return points.PointsContext(clock=self.clock, tz=self.tz, actor=self.actor.name)

    async def _apply(
        self,
        account: CounterAccount,
        order: NormalisedOrder,
        buyer: Buyer | None,
        tally: tuple[str, ...],
        *,
        then: FollowUp | None = None,
    ) -> CounterOrder:
        if buyer is not None:
            order = _with_claim(order, buyer.claim)
        ctx = self._ingest_context()
        held, self._held = self._held, None  # read along the claim of this order, if it was: used once
        applied = await apply_counter_order(
            self._session,
            ctx,
            account.id,
            account.channel,
            order,
            member_id=buyer.member_id if buyer is not None else None,
            known=buyer.known if buyer is not None else None,
            tally=tally,
            prefetched=held[1] if held is not None and held[0] == (account.id, order.external_id) else None,
            then=then,
        )
        if applied.quarantined:
            raise CounterRefused("identity_rejected", "the buyer's identity claim was refused", status=422)
        return applied

    async def _after(
        self, account_id: int, external_id: str, kinds: tuple[str, ...], applied: CounterOrder
    ) -> tuple[int, int | None, int, int | None]:
        """What :meth:`_order_points` reads, as the order's write answered it (``tally``) when it was written;
        read when it was not (a receipt sent again)."""
        if applied.order_id is None or applied.points is None:
            return await self._order_points(account_id, external_id, kinds)
        member_id = applied.member_id
        shown = None if member_id is None else max(applied.available or 0, 0)
        return applied.order_id, member_id, applied.points, shown

    async def _order_points(
        self, account_id: int, external_id: str, kinds: Sequence[str]
    ) -> tuple[int, int | None, int, int | None]:
        """(order id, member id, Σ points entries of ``kinds`` on the order, the member's available points),
        in one query. CounterRefused ``order_not_found`` when there is no such order."""
        row = await direct.first(
            self._session,
            _order_points_statement(tuple(kinds)),
            {"account_id": account_id, "external_id": external_id},
        )
        if row is None:
            raise CounterRefused("order_not_found", f"no order {external_id}", status=404)
        member_id = row[1]
        shown = None if member_id is None else max(int(row[3] or 0), 0)
        return int(row[0]), member_id, int(row[2]), shown


#: A member's status and identities, mobile first (statements on a till's path are built once: building one
#: cost more than running it).
_BUYER_COLUMNS = (
    Member.status,
    Member.merged_into_id,
    Identity.kind,
    Identity.value,
    Identity.value_enc,
    Identity.id.label("identity_id"),
    Member.created_at,
    Member.mobile_enc.is_not(None).label("has_mobile"),
    Member.referrer_id,
)
_BUYER_ORDER = (sa.case((Identity.kind == "mobile", 0), else_=1), Identity.id)
_BUYER_BY_ID = (
    sa.select(*_BUYER_COLUMNS)
    .select_from(Member)
    .outerjoin(Identity, Identity.member_id == Member.id)
    .where(Member.id == sa.bindparam("member_id"))
    .order_by(*_BUYER_ORDER)
)
_BUYER_ID = "buyer_member_id"
_BUYER_KEYS: tuple[str, ...] = tuple(str(c.key) for c in _BUYER_BY_ID.selected_columns)
_BuyerRow = namedtuple("_BuyerRow", _BUYER_KEYS)  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class _WithBuyer:
    """A caller's statement (stamped), :data:`_BUYER_BY_ID` and, as asked, the order and settings of
    :data:`tongcrm.counter_sale.STORED_AND_SETTINGS` and the member of :data:`_CARD_ALONG`, in one: its rows
    split back into the parts."""

    statement: Any
    own_row: Any
    own_width: int
    held_width: int

    def own(self, row: Any) -> Any:
        return self.own_row(*row[: self.own_width])

    def buyer(self, row: Any) -> Any:
        return _BuyerRow(*row[self.own_width + 1 : self.own_width + 1 + len(_BUYER_KEYS)])

    def held(self, row: Any) -> Any:
        start = self.own_width + 1 + len(_BUYER_KEYS)
        return _HeldRow(*row[start : start + self.held_width])

    def card(self, row: Any) -> Any | None:
        """The member :data:`_CARD_ALONG` found, as :data:`_CARD` answers it; None: none."""
        start = self.own_width + 1 + len(_BUYER_KEYS) + self.held_width
        found = row[start : start + len(_CARD_KEYS)]
        return None if found[0] is None else _CardRow(*found)


_HeldRow = namedtuple("_HeldRow", HELD_KEYS)  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class _Written:
    """An order row as its insert would answer it (what :func:`tongcrm.ingest.apply.order_facts` reads)."""

    id: int
    member_id: int
    status: str


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)


_QUICK_FOLLOWS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


#: A quick sale's read of the buyer's tier row, when a tier multiplies what a line earns.
_TIERS = cast(sa.Table, MemberTier.__table__)
_MEMBER_TIER = sa.select(_TIERS).where(
    _TIERS.c.member_id == sa.bindparam("tier_member_id", type_=_TIERS.c.member_id.type)
)


def _quick_follow(statement: Any) -> Any:
    """A quick sale's caller row ``statement`` with its values bound as ``then_<name>`` (built once)."""
    found = _QUICK_FOLLOWS.get(statement)
    if found is None:
        found = _QUICK_FOLLOWS[statement] = on_figures(statement, ORDER_FIGURES)
    return found


@dataclass(frozen=True, slots=True)
class _QuickRead:
    """The read of :meth:`CounterWork.quick_sale`, and its rows split back into the parts."""

    statement: Any
    own_row: Any
    own_keys: tuple[str, ...]

    def own(self, row: Any) -> Any:
        return self.own_row(*(getattr(row, f"own_{k}") for k in self.own_keys))

    def buyer(self, row: Any) -> Any:
        return _BuyerRow(*(getattr(row, f"buyer_{k}") for k in _BUYER_KEYS))

    def held(self, row: Any) -> Any:
        return _HeldRow(*(getattr(row, f"held_{k}") for k in HELD_KEYS))


_QUICK_READS: weakref.WeakKeyDictionary[Any, _QuickRead] = weakref.WeakKeyDictionary()


def compile_quick_sale(
    dialect: Dialect,
    channel: str,
    order: NormalisedOrder,
    *,
    existing: sa.Select[Any],
    follow: Any,
    tables: Iterable[sa.Table],
) -> int:
    """Build and compile, for ``dialect``, the statements :meth:`CounterWork.quick_sale` runs for a sale of
    ``order``'s shape (its columns; the values are not used) with the caller's ``existing`` read and ``follow``
    row (the statement its ``own_row`` answers), both checked as the caller's own (``tables``, as its unit of work
    names them): the read, and the sale's statement for a known member and for a new buyer. Answers how many
    plans it holds ready (none off PostgreSQL, where there is no quick path).

    Nothing reaches the database: the statements are built by the builders the sale calls (kept per caller
    statement) and compiled into the process-wide plans :func:`tongcrm.db.direct.plan` keeps per dialect, so a
    serving process's first quick sale compiles nothing (:mod:`tongcrm.warmup`; issue #22, branch till14)."""
    from tongcrm import counter_quick

    if dialect.name != "postgresql" or not counter_quick.ENABLED:
        return 0
    own = frozenset(t.fullname for t in tables)
    check_own(existing, own)
    check_own(follow, own)
    read = _quick_read(existing)
    statements = [read.statement]
    row = {"id": 0, **order_row(0, channel, order, 0, None, utcnow())}
    for new_buyer in (False, True):
        statements.append(
            counter_quick.sale_statement(tuple(row), _quick_follow(follow), new_buyer=new_buyer)
        )
    made = 0
    for statement in statements:
        if direct.plan(statement, dialect, {}) is not None:
            made += 1
    return made


def compile_counter_sale(
    dialect: Dialect,
    channel: str,
    order: NormalisedOrder,
    *,
    claim: Any,
    finish: Any,
    tables: Iterable[sa.Table],
) -> int:
    """Build and compile, for ``dialect``, the statements a till's first sale of ``order``'s shape (its columns
    and its number of lines; the values are not used) runs through :meth:`CounterWork.record_sale` where there
    is no quick path (SQLite), with the caller's ``claim`` (the write it claims its row with through
    :meth:`CounterWork.first_with_buyer`) and ``finish`` (the write its ``then`` answers), both checked as the
    caller's own (``tables``): the claim answering the revocation counter, the buyer's reads (by mobile, by
    id), the sale's own statements to a new buyer and to a known member
    (:func:`tongcrm.counter_sale.steps_ahead`) and the finish reading the figures. Answers how many plans it
    holds ready (none on PostgreSQL, whose sales take :func:`compile_quick_sale`'s statements).

    Nothing reaches the database (no row, no event, no id drawn): the statements are built by the builders the
    sale calls and compiled into the process-wide plans :func:`tongcrm.db.direct.plan` keeps per dialect, so a
    serving process's first checkout on SQLite compiles nothing (:mod:`tongcrm.warmup`; issue #22, branch
    till15: it compiled ~15 plans, ~35-75 ms of CPU on the serving loop while the other tills waited)."""
    if dialect.name == "postgresql":
        return 0
    own = frozenset(t.fullname for t in tables)
    check_own(claim, own)
    check_own(finish, own)
    row = order_row(0, channel, order, 0, None, utcnow())
    steps: list[tuple[Any, Mapping[str, Any]]] = [
        (_stamped(claim), {}),
        (_CARD, {"kind": "", "values": [""]}),  # a mobile stored under one key (no rotation under way)
        (_BUYER_BY_ID, {}),
        *sale_steps_ahead(dialect.name, row, order, (EntryKind.EARN,)),
        (follow_up_statement(finish), {}),
    ]
    made = 0
    for statement, params in steps:
        if direct.plan(statement, dialect, params) is not None:
            made += 1
    return made


def compile_own_reads(dialect: Dialect, statements: Iterable[Any], *, tables: Iterable[sa.Table]) -> int:
    """Check ``statements`` as reads of the caller's own ``tables`` and compile them for ``dialect``, as their
    first run through :meth:`OwnRows.read_alone` (or :meth:`OwnRows.first`) would; answers how many plans it
    holds ready. For a start-up step (:mod:`tongcrm.warmup`); nothing is run."""
    own = frozenset(t.fullname for t in tables)
    made = 0
    for statement in statements:
        check_own(statement, own, readonly=True)
        if direct.plan(statement, dialect, {}) is not None:
            made += 1
    return made


def insert_on(dialect: str, table: sa.Table) -> Any:
    """:meth:`OwnRows.insert` for a dialect by name: a caller's statement built without a unit of work (a
    start-up step's, :func:`compile_counter_sale`) is the one its unit of work builds."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def _ranked_buyer() -> Any:
    """The buyer named by ``_BUYER_ID`` with one row an identity, ranked: the part the quick and the transactional
    reads share."""
    return (
        sa.select(*_BUYER_COLUMNS, sa.func.row_number().over(order_by=_BUYER_ORDER).label("buyer_rank"))
        .select_from(Member)
        .outerjoin(Identity, Identity.member_id == Member.id)
        .where(Member.id == sa.bindparam(_BUYER_ID, type_=Member.id.type))
        .subquery("buyer")
    )


#: Whether the new buyer's identity (bound ``claim_kind``, ``claim_value``; NULL for a known member's sale) is
#: held already: such a sale is the transactional path's (it resolves to whoever holds it).
_CLAIM_TAKEN = (
    sa.exists()
    .where(
        Identity.kind == sa.bindparam("claim_kind", type_=Identity.kind.type),
        Identity.value == sa.bindparam("claim_value", type_=Identity.value.type),
    )
    .label("claim_taken")
)


def _quick_read(existing: sa.Select[Any]) -> _QuickRead:
    """PostgreSQL, one statement: the caller's ``existing`` row (``own_present``), the buyer's rows of
    :data:`_BUYER_BY_ID` for ``buyer_member_id``, the order and settings of
    :data:`tongcrm.counter_sale.STORED_AND_SETTINGS`, the buyer's balance, the API keys' revocation counter and
    the ids the order and ``line_count`` lines would take (:func:`tongcrm.counter_quick.sequence_ids`; a new
    buyer's member id with ``new_buyer``), whether a new buyer's identity is held (``claim_taken``), one
    row per buyer identity (the same values on each). Built once per caller statement."""
    from tongcrm import counter_quick

    plan = _QUICK_READS.get(existing)
    if plan is not None:
        return plan
    own = existing.subquery("own")
    keys = tuple(str(c.key) for c in own.c)
    marked = sa.select(*own.c, sa.true().label("own_present")).subquery("own_row")
    ranked = _ranked_buyer()
    balances = cast(sa.Table, PointsBalance.__table__)
    balance = (
        sa.select(balances.c.available, balances.c.pending, balances.c.owed)
        .where(balances.c.member_id == sa.bindparam(_BUYER_ID, type_=Member.id.type))
        .subquery("balance")
    )
    held = STORED_AND_SETTINGS.subquery("held_order")
    ids = counter_quick.sequence_ids()
    anchor = sa.select(sa.literal(1).label("one")).subquery("anchor")
    joined = (
        anchor.join(ids, sa.true())
        .outerjoin(marked, sa.true())
        .outerjoin(ranked, sa.true())
        .outerjoin(held, sa.true())
        .outerjoin(balance, sa.true())
    )
    statement = (
        sa.select(
            *(marked.c[k].label(f"own_{k}") for k in keys),
            marked.c.own_present,
            *(ranked.c[k].label(f"buyer_{k}") for k in _BUYER_KEYS),
            *(held.c[k].label(f"held_{k}") for k in HELD_KEYS),
            balance.c.available.label("balance_available"),
            balance.c.pending.label("balance_pending"),
            balance.c.owed.label("balance_owed"),
            ids.c.quick_order_id,
            ids.c.quick_line_ids,
            ids.c.quick_member_id,
            _CLAIM_TAKEN,
            GENERATION_COLUMN,
        )
        .select_from(joined)
        .order_by(ranked.c.buyer_rank)
    )
    plan = _QUICK_READS[existing] = _QuickRead(statement, namedtuple("_Own", keys), keys)
    return plan


_WITH_BUYER: weakref.WeakKeyDictionary[Any, dict[tuple[bool, bool], _WithBuyer]] = weakref.WeakKeyDictionary()


def _with_buyer(statement: sa.Executable, *, held: bool, card: bool = False) -> _WithBuyer:
    """PostgreSQL: ``SELECT own.*, true, buyer.* FROM (SELECT 1) LEFT JOIN own LEFT JOIN buyer``, ``own`` the
    stamped statement as a CTE (a write in it runs once, whatever the rest reads), ``buyer`` the rows of
    :data:`_BUYER_BY_ID` for the member bound as ``buyer_member_id``, in its order; with ``held`` also
    ``LEFT JOIN`` the one row of :data:`tongcrm.counter_sale.STORED_AND_SETTINGS`, with ``card`` the row (or
    none) of :data:`_CARD_ALONG` (each the same on every row). Built once per statement and parts."""
    plans = _WITH_BUYER.setdefault(statement, {})
    plan = plans.get((held, card))
    if plan is not None:
        return plan
    own = _stamped(statement).cte("own")
    keys = [c.key for c in own.c]
    marked = sa.select(*own.c, sa.true().label("own_present")).subquery("own_row")
    ranked = _ranked_buyer()
    anchor = sa.select(sa.literal(1).label("one")).subquery("anchor")
    buyer_columns = [ranked.c[name].label(f"buyer_{name}") for name in _BUYER_KEYS]
    joined = anchor.outerjoin(marked, sa.true()).outerjoin(ranked, sa.true())
    extra: list[Any] = []
    if held:
        order = STORED_AND_SETTINGS.subquery("held_order")
        joined = joined.outerjoin(order, sa.true())
        extra += [order.c[name].label(f"held_{name}") for name in HELD_KEYS]
    if card:
        found = _CARD_ALONG.subquery("card")
        joined = joined.outerjoin(found, sa.true())
        extra += [found.c[name].label(f"card_{name}") for name in _CARD_KEYS]
    combined = (
        sa.select(*(marked.c[k] for k in keys), marked.c.own_present, *buyer_columns, *extra)
        .select_from(joined)
        .order_by(ranked.c.buyer_rank)
    )
    widths = len(HELD_KEYS) if held else 0
    plan = plans[(held, card)] = _WithBuyer(combined, namedtuple("_Own", keys), len(keys), widths)
    return plan


@dataclass(frozen=True, slots=True)
class _CardFields:
    """What :meth:`CounterWork.member_card` shows a member from, as :data:`_CARD` reads it."""

    name: str | None
    mobile_enc: str | None
    available: int | None
    has_ladder: bool


def _card_statement(kind: str, values: str) -> Any:
    """:data:`_CARD` with the identity's kind and values bound as ``kind`` and ``values`` (expanding)."""
    return (
        sa.select(
            Member.id,
            Member.status,
            Member.name,
            Member.mobile_enc,
            sa.select(PointsBalance.available)
            .where(PointsBalance.member_id == Member.id)
            .scalar_subquery()
            .label("available"),
            sa.select(TierLadder.version).exists().label("has_ladder"),
            GENERATION_COLUMN,
        )
        .join(Identity, Identity.member_id == Member.id)
        .where(Identity.kind == sa.bindparam(kind), Identity.value.in_(sa.bindparam(values, expanding=True)))
        .limit(1)
    )


#: A member an identity names (as :func:`tongcrm.members.service.lookup` finds them), with what a cashier sees
#: of them, their available points, whether a tier ladder exists and the API keys' revocation counter (the
#: till's key is confirmed under it, :attr:`CounterWork.key_generation`): a till's lookup in one statement.
_CARD = _card_statement("kind", "values")
#: :data:`_CARD` under bind names of its own, read along a receipt's claim (:meth:`CounterWork.first_with_buyer`)
_CARD_ALONG = _card_statement("card_kind", "card_values")
_CARD_KEYS: tuple[str, ...] = tuple(str(c.key) for c in _CARD.selected_columns)
#: :data:`_CARD` as a point read: a read-only unit of work's lookup through the app's point reader. Why: the
#: statement is all a till's lookup by mobile reads (without a tier ladder), and through the session it paid
#: for a connection's checkout, ``BEGIN``, ``COMMIT`` and check-in around it — on SQLite's inline writer ~300 µs
#: of CPU for a statement of ~15 (issue #22, session 14).
_CARD_READ = PointQuery(_CARD, lists=("values",))
_CARD_ANCHOR = sa.select(sa.literal(1).label("one")).subquery("anchor")
_CARD_FOUND = _card_statement("kind", "values").subquery("card")
#: :data:`_CARD_READ` answering one row whoever holds the identity: the card's columns (NULL when nobody does)
#: and the revocation counter read either way. Why: on PostgreSQL a lookup that found nobody (every new
#: customer's first) read the counter in a round trip of its own to confirm the till's key; this is one. Not on
#: SQLite, where that read is a point read of ~10 µs and the outer join costs every lookup ~4 µs (session 16).
_CARD_OR_NONE_READ = PointQuery(
    sa.select(
        *(_CARD_FOUND.c[k] for k in _CARD_KEYS if k != "key_generation"), GENERATION_COLUMN
    ).select_from(_CARD_ANCHOR.outerjoin(_CARD_FOUND, sa.true())),
    lists=("values",),
)
_CardRow = namedtuple("_CardRow", _CARD_KEYS)  # type: ignore[misc]


@functools.cache
def _order_points_statement(kinds: tuple[str, ...]) -> Any:
    """(order id, member id, Σ points entries of ``kinds`` on the order, the member's available points) of the
    order bound as ``account_id``/``external_id``."""
    summed = (
        sa.select(sa.func.coalesce(sa.func.sum(PointsEntry.amount), 0))
        .where(PointsEntry.order_id == Order.id, PointsEntry.kind.in_(list(kinds)))
        .scalar_subquery()
    )
    available = (
        sa.select(PointsBalance.available).where(PointsBalance.member_id == Order.member_id).scalar_subquery()
    )
    return sa.select(Order.id, Order.member_id, summed, available).where(
        Order.account_id == sa.bindparam("account_id"), Order.external_id == sa.bindparam("external_id")
    )


#: a counter order's fields, for :func:`_with_claim`
_ORDER_FIELDS = tuple(f.name for f in fields(NormalisedOrder))


def _with_claim(order: NormalisedOrder, claim: IdentityClaim) -> NormalisedOrder:
    """``order`` with ``claim`` first among its claims.

    Not ``dataclasses.replace`` (issue #22, branch tillcpu17): that makes the order anew and its
    ``__post_init__`` checks again every field it checked when the order was made — claims are not among them —
    which cost ~30 µs of CPU a till's sale at load against ~7 µs for the copy."""
    if type(order) is not NormalisedOrder:
        return replace(order, claims=(claim, *order.claims))
    copied = object.__new__(NormalisedOrder)
    for name in _ORDER_FIELDS:
        object.__setattr__(copied, name, getattr(order, name))
    object.__setattr__(copied, "claims", (claim, *order.claims))
    return copied


def _usable_now(held: entitlements.MemberEntitlements, now: datetime) -> tuple[UsableEntitlement, ...]:
    """The member's standing grants (usable any number of times while the tier lasts), then recurring grants
    usable now: active or fulfilled, within their validity, not used yet."""
    usable = (GrantStatus.ACTIVE, GrantStatus.FULFILLED)
    recurring = sorted(
        (
            g
            for g in held.grants
            if g.status in usable
            and g.valid_from <= now
            and (g.valid_until is None or now < g.valid_until)
            and not held.usages.get(g.id)
        ),
        key=lambda g: (g.valid_until is None, g.valid_until or now, g.id),
    )[:MAX_ENTITLEMENTS]
    out = [
        UsableEntitlement(g.kind, _kind_name(g.kind), g.value, g.id)
        for g in held.standing
        if g.status in usable
    ]
    out.extend(UsableEntitlement(g.kind, _kind_name(g.kind), g.value, g.id, g.valid_until) for g in recurring)
    return tuple(out)


def _kind_name(kind: str) -> str:
    spec = CATALOGUE.get(kind)
    return spec.name if spec is not None else kind


# -------------------------------------------------------------------------------------------------------------
# the service


class CounterService:
    """Made once per app; plugin routes receive it as the ``counter`` dependency."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        read_sessions: async_sessionmaker[AsyncSession],
        host: PluginHost,
        settings: Settings,
        *,
        vault: Vault | None = None,
        clock: Callable[[], datetime] | None = None,
        account_ttl: float = 10.0,
        reader: PointReader | None = None,
    ) -> None:
        self._sessions = sessions
        #: the app's point reader (:mod:`tongcrm.db.point_reads`): a read-only unit of work's member lookup by
        #: mobile or identity (:meth:`CounterWork.find_member`) reads through it, not the session (None: the
        #: session reads it)
        self.reader = reader
        self._read_sessions = _reads_alone(read_sessions)
        read_bind = read_sessions.kw.get("bind")
        #: the read-only sessions' dialect, known without making one (:class:`SessionOnDemand`)
        self._read_dialect = read_bind.dialect.name if read_bind is not None else ""
        self.host = host
        self.settings = settings
        self.vault = vault or settings.vault()
        self.tz = settings.tz
        self._clock = clock or utcnow
        self._account_ttl = account_ttl
        self._accounts: dict[tuple[str, str], tuple[float, CounterAccount]] = {}
        self._account_reads: SharedReads[tuple[str, str], CounterAccount | None] = SharedReads()
        self._sqlite: bool | None = None
        self._write_lock = asyncio.Lock()
        self._engine: AsyncEngine | None = sessions.kw.get("bind")
        #: whether writing units of work hold their connection (:func:`tongcrm.db.held.holds`; None: not asked)
        self._holds: bool | None = None
        #: SQLite's writer: its writing units of work take turns on one connection kept between them, and
        #: those queued while a transaction is open join it (group commit, :class:`tongcrm.db.held.GroupCommit`)
        self.group = GroupCommit()

    async def rehearse_lookup(self, kind: str, values: list[str]) -> None:
        """Read a card as a read-only till lookup by mobile reads it (:meth:`CounterWork.find_member` through the
        point reader), keeping nothing: a serving process's start-up rehearsal (:mod:`tongcrm.warmup`), so the
        first till's lookup does not compile the statement."""
        if self.reader is None:
            return
        postgres = self.settings.database_url.startswith("postgresql")
        await self.reader.first(
            _CARD_OR_NONE_READ if postgres else _CARD_READ, {"kind": kind, "values": values}
        )

    @asynccontextmanager
    async def unit_of_work(
        self,
        *,
        actor: Actor,
        tables: Iterable[sa.Table] = (),
        clock: Callable[[], datetime] | None = None,
        readonly: bool = False,
    ) -> AsyncIterator[CounterWork]:
        """One transaction: committed when the block ends, rolled back when it raises. ``tables``: the caller's
        own tables, reachable through ``uow.rows``. ``clock``: the caller's clock (tests), else the service's.
        ``readonly``: a read-only transaction (no write lock on SQLite); writes are refused."""
        if _OPEN.get():
            raise PluginError(
                "a unit of work is already open here: do the work inside it, not in a second one"
            )
        token = _OPEN.set(True)
        kept = keep_lookups()  # a mobile's blind index computed once in the unit of work
        try:
            if readonly:
                async with _read_transaction(self._read_sessions, self._read_dialect) as session:
                    yield CounterWork(self, session, actor, clock or self._clock, tables, readonly=True)
                return
            if self._grouped():
                async with self.group.unit(self._engine) as session:  # type: ignore[arg-type]
                    yield CounterWork(self, session, actor, clock or self._clock, tables, readonly=False)
                return
            async with self._writer_turn(), self._writing_session() as session:
                yield CounterWork(self, session, actor, clock or self._clock, tables, readonly=False)
        finally:
            drop_lookups(kept)
            _OPEN.reset(token)

    def _grouped(self) -> bool:
        """Whether writing units of work go through SQLite's group commit (the inline writer's held units)."""
        engine = self._engine
        if self._holds is None:
            self._holds = isinstance(engine, AsyncEngine) and holds(engine)
        return self._holds and engine is not None and engine.dialect.name == "sqlite"

    def _writing_session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A writing unit of work's transaction: on a connection it holds for its life, ``BEGIN``/``COMMIT`` on
        the driver and the ORM session begun only when a service needs it (:mod:`tongcrm.db.held`: a till's
        checkout runs its statements on the driver, and the session's machinery around them was ~300-580 µs
        of its CPU); on engines whose statements do not run on the driver, an ordinary session."""
        engine = self._engine
        if self._holds is None:
            self._holds = isinstance(engine, AsyncEngine) and holds(engine)
        if self._holds and engine is not None:
            return held_unit(engine)  # PostgreSQL's (SQLite's held units go through self.group)
        return _session_transaction(self._sessions)

    @asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        """On SQLite, one writing unit of work of this process at a time, first come first served.

        SQLite has one writer; without this, writers that find the lock taken wait in SQLite's busy handler,
        which sleeps in growing steps (up to 100 ms) and leaves the database idle after the lock is released.
        On PostgreSQL writers run concurrently and this is a no-op."""
        if self._sqlite is None:
            self._sqlite = self._sessions.kw["bind"].dialect.name == "sqlite"
        if not self._sqlite:
            yield
            return
        async with self._write_lock:
            yield

    async def close(self) -> None:
        """Commit a group left open and hand back the connection SQLite's writing units of work keep (before
        the engine is disposed)."""
        await self.group.close()

    def forget_accounts(self) -> None:
        """Drop cached accounts (after changing one in this process)."""
        self._accounts.clear()

    async def _account(self, session: SessionOnDemand, channel: str, name: str) -> CounterAccount | None:
        cached = self._accounts.get((channel, name))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        # the tills' requests that find the account lapsed together (at start, then every TTL) read it once
        account, own = await self._account_reads.read(
            (channel, name), functools.partial(self._read_account, session, channel, name)
        )
        if account is None and not own:  # missing from a read begun before this request: read it again
            account = await self._read_account(session, channel, name)
        return account

    async def _read_account(self, session: SessionOnDemand, channel: str, name: str) -> CounterAccount | None:
        now = time.monotonic()
        params = {"name": name, "channel": channel}
        made = session()  # the session only on a miss (tillcpu17), read alone while it has begun nothing
        if direct.alone_possible(made):
            found = await direct.rows_alone(made, _ACCOUNT_ROW, params)
        else:
            found = await direct.rows(made, _ACCOUNT_ROW, params)
        row = found[0] if found else None
        if row is None:
            self._accounts.pop((channel, name), None)
            return None
        account = CounterAccount(row.id, channel, name, row.status, dict(row.settings or {}))
        if len(self._accounts) > 10_000:
            self._accounts.clear()
        self._accounts[(channel, name)] = (now + self._account_ttl, account)
        return account


#: A counter account by channel and name, for :meth:`CounterService._account`'s cache. Read alone (outside any
#: transaction) on PostgreSQL while the unit of work has begun nothing, so that the receipt which reloads the
#: cache keeps the quick path: read through the session, it began the unit of work's transaction, and every till's
#: receipt that found the cache lapsed (every ``account_ttl``, all of them at once) took the transactional
#: path, whose statements each connection then parsed, its array types introspected, mid-run (issue #22, branch
#: tillpg17: 0.6 s for the receipts in flight at load 16).
_ACCOUNT_ROW = sa.select(ChannelAccount.id, ChannelAccount.status, ChannelAccount.settings).where(
    ChannelAccount.name == sa.bindparam("name"), ChannelAccount.channel == sa.bindparam("channel")
)


def compile_account_read(dialect: Dialect) -> int:
    """The start-up step of :data:`_ACCOUNT_ROW` (:func:`tongcrm.warmup.compile_ahead`): the first receipt
    compiles nothing for it."""
    return 0 if direct.plan(_ACCOUNT_ROW, dialect, {}) is None else 1


@asynccontextmanager
async def _session_transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessions() as session, session.begin():
        yield session


@asynccontextmanager
async def _read_transaction(
    sessions: async_sessionmaker[AsyncSession], dialect: str
) -> AsyncIterator[SessionOnDemand]:
    """A read-only unit of work's session, made only when something asks for it and begun only when something
    reads through it (the session's autobegin): committed then when the block ends, rolled back when it
    raises, and closed either way.

    Why (issue #22, Build 2): the till's lookup reads through the point reader, and its store and till checks
    are cached, so its session is usually never used; ``async with session, session.begin()`` still cost ~150 µs
    of CPU a lookup (the begin and commit each in a greenlet hand-off, the close in a task of its own), and
    making the session ~30 µs (tillcpu17)."""
    source = SessionOnDemand(sessions, dialect) if dialect else SessionOnDemand.of(sessions())
    try:
        yield source
        session = source.made
        if session is not None and session.sync_session.in_transaction():
            await session.commit()
    finally:
        session = source.made
        if session is not None:
            sync = session.sync_session
            if sync.in_transaction() or sync.identity_map or sync._new or sync._deleted:
                # closed (a transaction left is rolled back), shielded from cancellation as it closes itself
                async with session:
                    pass


def _reads_alone(read_sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """On PostgreSQL, read-only units of work in autocommit: each statement is its own snapshot, and the
    ``BEGIN`` and ``ROLLBACK`` around a till's lookup (two of its six round trips) are not sent. What a counter
    reads is shown to a cashier (a member's card, a receipt's answer), where statements a moment apart do as
    well as one snapshot; writes are refused in a read-only unit of work anyway. SQLite's readers stay as they
    are (in-process, and their deferred ``BEGIN`` takes no lock)."""
    bind = read_sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "postgresql":
        return read_sessions
    return async_sessionmaker(
        **{**read_sessions.kw, "bind": bind.execution_options(isolation_level="AUTOCOMMIT")}
    )


@asynccontextmanager
async def open_counter(settings: Settings, host: PluginHost | None = None) -> AsyncIterator[CounterService]:
    """A counter service on its own engine, for command-line tools (the app makes its own)."""
    engine = create_engine(settings.database_url)
    counter = CounterService(
        session_factory(engine), session_factory(engine, readonly=True), host or PluginHost(), settings
    )
    try:
        yield counter
    finally:
        await counter.close()
        await engine.dispose()
