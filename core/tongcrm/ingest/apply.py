"""Applying one page of normalised orders, inside the caller's transaction.

A page is applied in a fixed number of statements whatever its size: one read of the orders it names, one
identity resolution for the whole page, one upsert of orders, one of lines, the points for the page, one tier
re-evaluation of its members, one insert of outbox events — and each of those statements has one text whatever
the page size (array parameters on PostgreSQL, :func:`tongcrm.db.dialect.insert_rows`), so it is prepared once
per connection. Orders move only forward: a record older than what is stored changes nothing, and a status
never steps back along created → paid → shipped → delivered → completed (closed and refunded are final). That
is what makes a replayed page, a late push or an overlapping window harmless.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels.models import QuarantinedRecord as QuarantineRow
from tongcrm.crypto import Vault
from tongcrm.db import direct, stats
from tongcrm.db.dialect import (
    VALUES_SIZES,
    dialect_name,
    insert,
    insert_rows,
    json_records_text,
    json_table,
    one_of,
    rows_params,
    values_size,
)
from tongcrm.identity.models import Identity
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve_many
from tongcrm.jobs import leases, outbox
from tongcrm.logging import get_logger
from tongcrm.members.models import ERASED, Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.orders.shipments import encode as encode_shipments
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import NormalisedOrder, OrderStatus, QuarantinedRecord
from tongcrm.points.service import LineFacts, OrderFacts, PointsContext, apply_orders
from tongcrm.privacy.redact import redact
from tongcrm.privacy.sealed import QUARANTINE_PAYLOAD, seal
from tongcrm.referrals import service as referrals
from tongcrm.tiers import programme
from tongcrm.tiers.service import TierContext
from tongcrm.tiers.service import reevaluate as reevaluate_tiers

log = get_logger(__name__)

_FORWARD = {
    OrderStatus.CREATED: 0,
    OrderStatus.PAID: 1,
    OrderStatus.SHIPPED: 2,
    OrderStatus.DELIVERED: 3,
    OrderStatus.COMPLETED: 4,
}
_FINAL = {OrderStatus.CLOSED, OrderStatus.REFUNDED}


def next_status(stored: str | None, incoming: OrderStatus) -> OrderStatus:
    """The status to keep when ``incoming`` arrives for an order that has ``stored``."""
    if stored is None:
        return incoming
    current = OrderStatus(stored)
    if current in _FINAL and incoming not in _FINAL:
        return current
    if current in _FORWARD and incoming in _FORWARD and _FORWARD[incoming] < _FORWARD[current]:
        return current
    return incoming


@dataclass(frozen=True, slots=True)
class IngestContext:
    host: PluginHost
    vault: Vault
    clock: Callable[[], datetime]
    tz: ZoneInfo
    actor: str = "ingest"
    lease_ttl: timedelta = timedelta(minutes=2)
    #: Syncs fetch and normalise pages in a child process when the channel can run there
    #: (:mod:`tongcrm.ingest.fetcher`); ``tongcrm sync`` and the jobs take it from ``TONGCRM_SYNC_FETCH_PROCESS``.
    fetch_process: bool = False


@dataclass(slots=True)
class PageResult:
    applied: int = 0
    unchanged: int = 0
    quarantined: int = 0
    members_created: int = 0
    member_ids: set[int] = field(default_factory=set)
    #: With ``defer_events``: the page's ``order_changed`` events, still to be written in its transaction
    #: (whoever writes them takes them off; :func:`tongcrm.ingest.service.pull` writes what is left).
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Their ``occurred_at``.
    events_at: datetime | None = None


def fingerprint(external_id: str | None, payload: str) -> str:
    return hashlib.sha256(f"{external_id}\x00{payload}".encode()).hexdigest()


async def quarantine(
    session: AsyncSession, vault: Vault, account_id: int, records: Sequence[QuarantinedRecord]
) -> int:
    """Keep records that could not be applied; a replayed page does not add them twice. The record is the
    platform's, buyer's number and address included: it is kept sealed (:mod:`tongcrm.privacy.sealed`), and
    the reason a plugin gave is scrubbed of any number it quoted."""
    if not records:
        return 0
    rows = [
        {
            "account_id": account_id,
            "external_id": r.external_id,
            "reason": redact(r.reason),
            "payload": seal(vault, r.payload, context=QUARANTINE_PAYLOAD),
            "fingerprint": fingerprint(r.external_id, r.payload),
        }
        for r in records
    ]
    stmt = insert(session, QuarantineRow.__table__).values(rows)
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["account_id", "fingerprint"]))
    for r in records:
        log.warning("record quarantined", account_id=account_id, external_id=r.external_id, reason=r.reason)
    return len(records)


def _latest(orders: Sequence[NormalisedOrder]) -> list[NormalisedOrder]:
    """One record per order: the newest version the page carries."""
    newest: dict[str, NormalisedOrder] = {}
    for order in orders:
        seen = newest.get(order.external_id)
        if seen is None or order.modified_at > seen.modified_at:
            newest[order.external_id] = order
    return list(newest.values())


@functools.cache
def _order_upsert(
    dialect: str, columns: tuple[str, ...], touching: bool = False, size: int | None = None
) -> Any:
    """The forward-only order upsert, built once per dialect and row shape: building it (``excluded`` for
    every column) cost a few milliseconds per page, a till's whole checkout budget. One fixed text whatever the
    page size (:func:`tongcrm.db.dialect.insert_rows`); bind with ``rows_params``.

    ``touching`` (PostgreSQL): the statement also moves the ``last_seen_at`` of the identity bound as
    ``touch_identity_id`` to ``touch_at``, in a data-modifying CTE (see :func:`upsert_orders`)."""
    table = cast(sa.Table, Order.__table__)
    if touching:
        # The two columns alone: an UPDATE sets every column a parameter of the statement is named for, and
        # the upsert's parameters carry member_id and account_id.
        full = cast(sa.Table, Identity.__table__)
        identities = sa.table(
            full.name, sa.column("id", full.c.id.type), sa.column("last_seen_at", full.c.last_seen_at.type)
        )
        touch = (
            sa.update(identities)
            .where(identities.c.id == sa.bindparam("touch_identity_id", type_=identities.c.id.type))
            .values(last_seen_at=sa.bindparam("touch_at", type_=identities.c.last_seen_at.type))
        )
        return _order_upsert(dialect, columns).add_cte(touch.cte("touched"))
    return _forward_only(insert_rows(dialect, table, columns, size=size), columns)


def _forward_only(stmt: Any, columns: Sequence[str]) -> Any:
    """``stmt`` (an ``INSERT`` of ``orders`` rows of ``columns``) as the forward-only upsert."""
    table = cast(sa.Table, Order.__table__)
    updatable = [
        c for c in columns if c not in {"account_id", "external_id", "origin_member_id", "ingested_at"}
    ]
    return stmt.on_conflict_do_update(
        index_elements=["account_id", "external_id"],
        set_={c: stmt.excluded[c] for c in updatable},
        # a newer version, or the same version read anew with another paid amount (see _is_news)
        where=sa.or_(
            table.c.modified_at < stmt.excluded.modified_at,
            sa.and_(
                table.c.modified_at == stmt.excluded.modified_at,
                table.c.paid_fen != stmt.excluded.paid_fen,
            ),
        ),
    ).returning(table.c.id, table.c.external_id, table.c.member_id, table.c.status, table.c.referral_awarded)


#: What a sync grows, analysed on the database's schedule (:mod:`tongcrm.db.stats`).
GROWN_TABLES = (
    "orders", "order_lines", "identities", "members", "points_entries", "points_lots", "points_balances",
)  # fmt: skip


async def _analyse_as_tables_grow(session: AsyncSession, written: int) -> None:
    """Count the orders written on the database's analyse schedule (10,000, 20,000, 40,000… rows this process
    wrote, :mod:`tongcrm.db.stats`, shared with the bulk import) and refresh the planner statistics of what
    ingest writes when it is due, PostgreSQL only.

    A first channel sync grows orders, lines, identities, members and the ledger from empty, and nothing
    analyses them where autovacuum is off or lags behind; PostgreSQL's prepared statements then keep generic
    plans costed for near-empty tables. An ``ANALYZE`` invalidates those plans, so they are made again for the
    tables as they are. The schedule is geometric: all the analyses of a run cost at most twice the last one."""
    if dialect_name(session) != "postgresql":
        return
    if stats.grown(session, written):
        log.info("analysing the tables a sync grows", orders_written=written)
        await stats.analyse(session, GROWN_TABLES)


def _is_news(order: NormalisedOrder, stored: tuple[datetime, str, int] | None) -> bool:
    """Whether ``order`` changes what is held: it is new, a newer platform version, or the same version
    with another ``paid_fen``.

    Versions only move forward, so a replayed page changes nothing. The one exception is money received: when
    a plugin's reading of the same platform record is corrected (JD once stored ``orderPayment`` as paid for
    orders never paid), a re-sync (``tongcrm sync --since``) must correct the rows already stored — platforms
    never modify a cancelled order again, so no newer version would ever bring the fix.
    """
    if stored is None:
        return True
    modified_at, _status, paid_fen = stored
    return order.modified_at > modified_at or (
        order.modified_at == modified_at and order.paid_fen != paid_fen
    )


@functools.cache
def _stored_orders_renewing() -> Any:
    """PostgreSQL: :func:`_stored_orders` with the sync's lease renewed (:func:`tongcrm.jobs.leases.renewal_cte`)
    and the programme's settings read (:data:`tongcrm.tiers.programme.SETTINGS`) in the same statement, two
    round trips less a page. One head row (``head`` true) carries the lease's holder (None when it was not
    renewed) and the settings; the stored orders follow, in the columns after them."""
    renewed = leases.renewal_cte()
    stored = _stored_orders("postgresql").subquery("stored")
    settings = programme.SETTINGS.subquery("settings")
    holder = sa.select(renewed.c.holder).scalar_subquery()
    head = sa.select(
        sa.true().label("head"),
        holder.label("lease_holder"),
        *settings.c,
        *(sa.cast(sa.null(), c.type).label(c.name) for c in stored.c),
    ).select_from(settings)
    orders = sa.select(
        sa.false(),
        sa.cast(sa.null(), holder.type),
        *(sa.cast(sa.null(), c.type) for c in settings.c),
        *stored.c,
    )
    return sa.union_all(head, orders)


#: The columns of :func:`_stored_orders_renewing` before a stored order's.
_HEAD_COLUMNS = 6


async def _read_stored(
    session: AsyncSession, account_id: int, external_ids: list[str], lease: leases.Renewal | None
) -> list[Any]:
    """What :func:`_stored_orders` reads; with ``lease`` renewed first (:class:`tongcrm.jobs.leases.NotHeld`
    when someone else holds it), on PostgreSQL in the same statement, which also hands the transaction the
    programme's settings (:func:`tongcrm.tiers.programme.hold`)."""
    params = {"account_id": account_id, "external_ids": external_ids}
    dialect = dialect_name(session)
    if lease is None or dialect != "postgresql":
        if lease is not None:
            await lease.renew(session)
        return await direct.rows(session, _stored_orders(dialect), params)
    rows = (await session.execute(_stored_orders_renewing(), {**params, **lease.params()})).all()
    head = next(row for row in rows if row.head)
    lease.check(head.lease_holder)
    programme.hold(session, head)
    return [tuple(row)[_HEAD_COLUMNS:] for row in rows if not row.head]


@functools.cache
def _stored_orders(dialect: str) -> Any:
    """What is held for a page's orders (and whether their member was erased): one fixed statement for any
    page size, bound with ``account_id`` and the list ``external_ids``."""
    return (
        sa.select(
            Order.external_id,
            Order.modified_at,
            Order.status,
            Order.paid_fen,
            Order.member_id,
            Member.status,
        )
        .outerjoin(Member, Member.id == Order.member_id)
        .where(
            Order.account_id == sa.bindparam("account_id"),
            one_of(dialect, Order.external_id, "external_ids"),
        )
    )


#: The ``orders`` columns a page writes (the keys of :func:`order_row`).
ORDER_COLUMNS = (
    "account_id", "external_id", "member_id", "origin_member_id", "channel", "status", "platform_status",
    "store_code", "total_fen", "paid_fen", "refunded_fen", "post_fee_fen", "discount_fen", "placed_at", "paid_at",
    "shipped_at", "completed_at", "shipments", "modified_at", "ingested_at", "updated_at",
)  # fmt: skip


_LINE_COLUMNS = (
    "order_id", "external_id", "sku", "category", "title", "quantity", "unit_price_fen", "amount_fen",
    "refunded_fen", "refund_status",
)  # fmt: skip


@functools.cache
def _line_upsert(dialect: str, size: int | None = None) -> Any:
    return line_upsert(insert_rows(dialect, cast(sa.Table, OrderLine.__table__), _LINE_COLUMNS, size=size))


def line_upsert(stmt: Any) -> Any:
    """``stmt`` (a dialect's ``INSERT`` of ``order_lines`` rows of :func:`line_rows`' columns) as the lines'
    upsert, returning (id, order_id, external_id): the page's statement, and the tail of a till's order-and-lines
    statement (:mod:`tongcrm.counter_sale`)."""
    table = cast(sa.Table, OrderLine.__table__)
    changing = (
        "sku", "category", "title", "quantity", "unit_price_fen", "amount_fen", "refunded_fen", "refund_status",
    )  # fmt: skip
    return stmt.on_conflict_do_update(
        index_elements=["order_id", "external_id"], set_={c: stmt.excluded[c] for c in changing}
    ).returning(table.c.id, table.c.order_id, table.c.external_id)


#: The orders columns :func:`_orders_with_lines` binds as arrays; the others are the page's: ``account_id``,
#: ``channel``, ``ingested_at`` and ``updated_at`` one value each, ``origin_member_id`` the ``member_id``.
_ORDER_ARRAYS = tuple(
    c
    for c in ORDER_COLUMNS
    if c not in {"account_id", "channel", "origin_member_id", "ingested_at", "updated_at"}
)

#: A row of :func:`order_row`'s values for :data:`_ORDER_ARRAYS`, in that order.
_order_arrays_of = operator.itemgetter(*_ORDER_ARRAYS)


@functools.cache
def _orders_with_lines() -> Any:
    """PostgreSQL: the forward-only order upsert (:func:`_forward_only`) and the upsert of the lines of the
    orders it writes, in ONE statement (a data-modifying CTE), where they were two round trips a page. The
    orders are bound as one array per column of :data:`_ORDER_ARRAYS` (what is the same for every order of a
    page is one value: five arrays fewer for the driver to encode element by element); the lines as arrays
    named ``l_<column>``, each naming its order by external id in ``l_order``; they find the order's id in
    the upsert's ``RETURNING``, so the lines of an order held in a newer version are not written (as when
    they were upserted after it). Rows: ("order", id, external_id, member_id, status, referral_awarded) and
    ("line", id, external_id, order_id, NULL, NULL). One fixed text whatever the page size."""
    orders = cast(sa.Table, Order.__table__)
    lines = cast(sa.Table, OrderLine.__table__)
    order_rows = json_table("orders", [(c, orders.c[c].type) for c in _ORDER_ARRAYS], "o")
    source = sa.select(*(order_rows.c[c] for c in _ORDER_ARRAYS))
    per_order = dict(zip(_ORDER_ARRAYS, source.selected_columns, strict=True))
    now = sa.bindparam("now", type_=orders.c.ingested_at.type)
    page = {
        "account_id": sa.bindparam("account_id", type_=orders.c.account_id.type),
        "channel": sa.bindparam("channel", type_=orders.c.channel.type),
        "origin_member_id": per_order["member_id"],
        "ingested_at": now,
        "updated_at": now,
    }
    chosen: list[Any] = [per_order[c] if c in per_order else page[c] for c in ORDER_COLUMNS]
    values = source.with_only_columns(*chosen)
    written = _forward_only(
        postgresql.insert(orders).from_select(list(ORDER_COLUMNS), values), ORDER_COLUMNS
    ).cte("written")
    line_rows_ = json_table(
        "lines",
        [
            ("order_external_id", orders.c.external_id.type),
            *((c, lines.c[c].type) for c in _LINE_COLUMNS[1:]),
            ("position", sa.Integer()),
        ],
        "l",
    )
    line_source = (
        sa.select(written.c.id, *(line_rows_.c[c] for c in _LINE_COLUMNS[1:]))
        .join_from(line_rows_, written, written.c.external_id == line_rows_.c.order_external_id)
        .order_by(line_rows_.c.position)
    )
    upserted = line_upsert(postgresql.insert(lines).from_select(list(_LINE_COLUMNS), line_source)).cte(
        "lines"
    )
    return sa.union_all(
        sa.select(
            sa.literal("order").label("kind"),
            written.c.id,
            written.c.external_id,
            written.c.member_id,
            written.c.status,
            written.c.referral_awarded,
        ),
        sa.select(
            sa.literal("line"),
            upserted.c.id,
            upserted.c.external_id,
            upserted.c.order_id,
            sa.null(),
            sa.null(),
        ),
    )


async def _upsert_orders_with_lines(
    session: AsyncSession,
    account_id: int,
    channel: str,
    now: datetime,
    rows: Sequence[dict[str, Any]],
    orders: dict[str, NormalisedOrder],
) -> tuple[dict[str, Any], dict[tuple[int, str], int]]:
    """PostgreSQL: :func:`upsert_orders` of ``rows`` (of :func:`order_row`, of the page's account, channel and
    time) and :func:`upsert_lines` of the lines of those written (``orders`` by external id) in one statement
    (:func:`_orders_with_lines`); the orders written by external id, and the lines' ids by (order id, line
    external id). Each array is a column of the rows read with one ``itemgetter`` and one ``zip``."""
    if rows and (extra := rows[0].keys() - set(ORDER_COLUMNS)):  # the statement would drop them
        raise ValueError(f"orders: values for columns the statement does not write: {sorted(extra)}")
    # Only what the statement reads travels: the page's constants are single parameters, and every key of a
    # record is text the server parses (~150 bytes an order, the line's placeholder order_id ~12 bytes a line).
    records = [dict(zip(_ORDER_ARRAYS, _order_arrays_of(row), strict=True)) for row in rows]
    lines: list[dict[str, Any]] = []
    for row in rows:
        ext = row["external_id"]
        for line in line_rows(0, orders[ext]):
            del line["order_id"]
            line["order_external_id"] = ext
            line["position"] = len(lines)
            lines.append(line)
    params: dict[str, Any] = {
        "orders": json_records_text(records),
        "lines": json_records_text(lines),
        "account_id": account_id,
        "channel": channel,
        "now": now,
    }
    written: dict[str, Any] = {}
    line_ids: dict[tuple[int, str], int] = {}
    for r in (await session.execute(_orders_with_lines(), params)).all():
        if r.kind == "order":
            written[r.external_id] = r
        else:
            line_ids[(r.member_id, r.external_id)] = r.id  # the line's order id rides in the 4th column
    return written, line_ids


def order_upsert(dialect: str, columns: tuple[str, ...], touching: bool = False) -> Any:
    """The statement :func:`upsert_orders` runs for rows of ``columns`` (built once), for a caller that chains
    it with more (a till's order and its lines in one statement, :mod:`tongcrm.counter_sale`)."""
    return _order_upsert(dialect, columns, touching)


def steps_ahead(
    dialect: str, columns: tuple[str, ...], lines: int, *, touching: bool
) -> list[tuple[Any, Mapping[str, Any]]]:
    """The statements :func:`upsert_orders` (one row of ``columns``, with ``touch`` when ``touching``) and
    :func:`upsert_lines` (``lines`` rows) run on ``dialect``, with the parameters their plans are kept under,
    for a start-up step that compiles them ahead (:mod:`tongcrm.warmup`; issue #22, branch till15: SQLite's
    first till checkout). Built by the builders those functions call, so they are the statements they run;
    nothing is run."""
    steps: list[tuple[Any, Mapping[str, Any]]] = []
    if touching and dialect == "postgresql":
        steps.append((_order_upsert(dialect, columns, True), {}))
    else:
        if touching:
            steps.append((_TOUCH, {}))
        steps.append((_order_upsert(dialect, columns, size=values_size(dialect, columns, 1)), {}))
    if lines:
        steps.append((_line_upsert(dialect, values_size(dialect, _LINE_COLUMNS, lines)), {}))
    return steps


def is_news(order: NormalisedOrder, stored: tuple[datetime, str, int] | None) -> bool:
    """Whether ``order`` changes what is held (see :func:`_is_news`): for a single-order path."""
    return _is_news(order, stored)


def order_row(
    account_id: int,
    channel: str,
    order: NormalisedOrder,
    member_id: int | None,
    prior_status: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The ``orders`` row an order is upserted as, after what is held (``prior_status``): the one builder of
    the page path and of a till's single-order path (:mod:`tongcrm.counter_sale`)."""
    return {
        "account_id": account_id,
        "external_id": order.external_id,
        "member_id": member_id,
        "origin_member_id": member_id,
        "channel": channel,
        "status": next_status(prior_status, order.status).value,
        "platform_status": order.platform_status,
        "store_code": order.store_code,
        "total_fen": order.total_fen,
        "paid_fen": order.paid_fen,
        "refunded_fen": sum(line.refunded_fen for line in order.lines),
        "post_fee_fen": order.post_fee_fen,
        "discount_fen": order.discount_fen,
        "placed_at": order.created_at,
        "paid_at": order.paid_at,
        "shipped_at": order.shipped_at,
        "completed_at": order.completed_at,
        "shipments": encode_shipments(order.shipments),
        "modified_at": order.modified_at,
        "ingested_at": now,
        "updated_at": now,
    }


def line_rows(order_id: int, order: NormalisedOrder) -> list[dict[str, Any]]:
    """The ``order_lines`` rows of a stored order (columns :data:`_LINE_COLUMNS`)."""
    return [
        {
            "order_id": order_id,
            "external_id": line.external_id,
            "sku": line.sku,
            "category": line.category,
            "title": line.title[:300],
            "quantity": line.quantity,
            "unit_price_fen": line.unit_price_fen,
            "amount_fen": line.amount_fen,
            "refunded_fen": line.refunded_fen,
            "refund_status": line.refund_status.value,
        }
        for line in order.lines
    ]


def order_facts(
    written: Any, account_id: int, channel: str, order: NormalisedOrder, line_ids: dict[tuple[int, str], int]
) -> OrderFacts:
    """What the points service needs of an order just upserted (``written``: its row as the upsert returned
    it, with a member), its lines' ids keyed by (order id, line external id)."""
    return OrderFacts(
        order_id=written.id,
        member_id=written.member_id,
        account_id=account_id,
        channel=channel,
        store_code=order.store_code,
        status=written.status,
        placed_at=order.created_at,
        paid_at=order.paid_at,
        completed_at=order.completed_at,
        lines=tuple(
            LineFacts(
                line_id=line_ids[(written.id, line.external_id)],
                external_id=line.external_id,
                sku=line.sku,
                category=line.category,
                amount_fen=line.amount_fen,
                refunded_fen=line.refunded_fen,
            )
            for line in order.lines
        ),
    )


async def upsert_orders(
    session: AsyncSession, rows: Sequence[dict[str, Any]], *, touch: tuple[int, datetime] | None = None
) -> list[Any]:
    """Upsert ``rows`` (of :func:`order_row`) forward only; the rows written (id, external_id, member_id,
    status): an order held in a newer version is not among them.

    ``touch``: (identity id, time) — the identity a buyer was resolved to without a read (a till's known
    buyer, :mod:`tongcrm.counter_sale`) gets that ``last_seen_at``, whether or not the order is written, as
    when it was moved just before. On PostgreSQL in the upsert's own statement (one round trip less per
    receipt), elsewhere in a statement of its own before it."""
    dialect = dialect_name(session)
    if dialect == "sqlite" and touch is None and len(rows) > _SQLITE_BATCH:
        return [row for batch in _batches(rows) for row in await upsert_orders(session, batch)]
    columns = tuple(rows[0])
    size = values_size(dialect, columns, len(rows))
    params = rows_params(dialect, cast(sa.Table, Order.__table__), columns, rows, size=size)
    if touch is not None and dialect == "postgresql":
        params = {**params, "touch_identity_id": touch[0], "touch_at": touch[1]}
        stmt = _order_upsert(dialect, columns, True)
    else:
        if touch is not None:
            await direct.rows(session, _TOUCH, {"identity_id": touch[0], "now": touch[1]})
        stmt = _order_upsert(dialect, columns, size=size)
    return await direct.rows(session, stmt, params)


#: SQLite: the most rows one order or line upsert carries. Beyond the largest VALUES list
#: (:func:`tongcrm.db.dialect.values_rows`) the rows would travel as one JSON parameter, which SQLite (before 3.45)
#: parses again for every column read: a page of more rows (a bulk import's 1,000) is upserted in batches of it.
_SQLITE_BATCH = VALUES_SIZES[-1]


def _batches(rows: Sequence[dict[str, Any]]) -> list[Sequence[dict[str, Any]]]:
    return [rows[start : start + _SQLITE_BATCH] for start in range(0, len(rows), _SQLITE_BATCH)]


#: ``last_seen_at`` of one identity claimed again (:func:`upsert_orders` on SQLite).
_TOUCH = (
    sa.update(cast(sa.Table, Identity.__table__))
    .where(Identity.__table__.c.id == sa.bindparam("identity_id"))
    .values(last_seen_at=sa.bindparam("now"))
)


async def upsert_lines(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> dict[tuple[int, str], int]:
    """Upsert ``rows`` (of :func:`line_rows`); their ids by (order id, line external id)."""
    dialect = dialect_name(session)
    if dialect == "sqlite" and len(rows) > _SQLITE_BATCH:
        return {
            key: id_ for batch in _batches(rows) for key, id_ in (await upsert_lines(session, batch)).items()
        }
    size = values_size(dialect, _LINE_COLUMNS, len(rows))
    params = rows_params(dialect, cast(sa.Table, OrderLine.__table__), _LINE_COLUMNS, rows, size=size)
    return {
        (r.order_id, r.external_id): r.id
        for r in await direct.rows(session, _line_upsert(dialect, size), params)
    }


async def apply_orders_page(
    session: AsyncSession,
    ctx: IngestContext,
    account_id: int,
    channel: str,
    orders: Sequence[NormalisedOrder],
    quarantined: Sequence[QuarantinedRecord] = (),
    *,
    earn_points: bool = True,
    emit_events: bool = True,
    lease: leases.Renewal | None = None,
    defer_events: bool = False,
) -> PageResult:
    """Apply one page. ``earn_points=False`` and ``emit_events=False`` are for history brought in by
    ``tongcrm import orders``: an imported order counts for tiers, but earns nothing (the previous CRM's balance
    arrives as an opening balance) and triggers no care message about a parcel delivered years ago.

    ``lease``: renewed in the page's transaction before anything is read (:class:`tongcrm.jobs.leases.NotHeld`
    when it is lost), on PostgreSQL in the statement that reads the stored orders.

    ``defer_events``: the ``order_changed`` events are not written but left in ``PageResult.events`` for the
    caller to write in the same transaction (a sync writes them with its cursor, in one statement on
    PostgreSQL)."""
    result = PageResult()
    incoming = _latest(orders)
    if not incoming:
        if lease is not None:
            await lease.renew(session)
        result.quarantined += await quarantine(session, ctx.vault, account_id, quarantined)
        return result

    # 1. what we hold for these orders
    stored_rows = await _read_stored(session, account_id, [o.external_id for o in incoming], lease)
    result.quarantined += await quarantine(session, ctx.vault, account_id, quarantined)
    stored = {row[0]: (row[1], row[2], row[3]) for row in stored_rows}
    # an order of an erased member stays with that anonymous record: its buyer's claims are not resolved
    # again (that would re-create the personal data the erasure removed, from an old order)
    erased_owner = {row[0]: row[4] for row in stored_rows if row[5] == ERASED}
    todo = [o for o in incoming if _is_news(o, stored.get(o.external_id))]
    result.unchanged = len(incoming) - len(todo)
    if not todo:
        return result

    # 2. who bought them: one resolution for the page
    with_claims = [o for o in todo if o.claims and o.external_id not in erased_owner]
    outcomes = await resolve_many(
        session,
        ResolutionContext(ctx.host, ctx.vault, ctx.clock, actor=ctx.actor, tz=ctx.tz),
        [
            ClaimSet(
                claims=o.claims,
                account_id=account_id,
                profile=o.buyer,
                source_channel=channel,
                source_store=o.store_code,
            )
            for o in with_claims
        ],
    )
    member_of: dict[str, int | None] = {o.external_id: erased_owner.get(o.external_id) for o in todo}
    bad: list[QuarantinedRecord] = []
    unreferred: set[int] = set()  # buyers resolution read (or created) without a referrer
    for order, outcome in zip(with_claims, outcomes, strict=True):
        if outcome.error is not None:
            # the claims' values are personal data: keep only their kinds in the quarantine
            evidence = json.dumps(
                {"external_id": order.external_id, "claim_kinds": [c.kind for c in order.claims]}
            )
            bad.append(QuarantinedRecord(order.external_id, f"identity: {outcome.error}", evidence))
            del member_of[order.external_id]
            continue
        member_of[order.external_id] = outcome.member_id
        result.members_created += int(outcome.created)
        if outcome.referred is False and outcome.member_id is not None:
            unreferred.add(outcome.member_id)
    if bad:
        result.quarantined += await quarantine(session, ctx.vault, account_id, bad)
        todo = [o for o in todo if o.external_id in member_of]
        if not todo:
            return result

    # 3. orders, forward only
    now = ctx.clock()
    rows: list[dict[str, Any]] = []
    previous: dict[str, str | None] = {}
    for o in todo:
        prior = stored.get(o.external_id)
        previous[o.external_id] = prior[1] if prior else None
        rows.append(order_row(account_id, channel, o, member_of[o.external_id], previous[o.external_id], now))
    by_external = {o.external_id: o for o in todo}
    line_ids: dict[tuple[int, str], int] = {}
    with_lines = dialect_name(session) == "postgresql"  # 3 and 4 in one statement
    if with_lines:
        written, line_ids = await _upsert_orders_with_lines(
            session, account_id, channel, now, rows, by_external
        )
    else:
        written = {row.external_id: row for row in await upsert_orders(session, rows)}
    result.unchanged += len(todo) - len(written)
    result.applied = len(written)
    if not written:
        return result
    await _analyse_as_tables_grow(session, len(written))

    # 4. their lines
    if not with_lines:
        lines = [line for ext in written for line in line_rows(written[ext].id, by_external[ext])]
        line_ids = await upsert_lines(session, lines) if lines else {}

    # 5. points for every order that has a member
    facts = []
    for ext, row in written.items():
        if row.member_id is None:
            continue
        o = by_external[ext]
        result.member_ids.add(row.member_id)
        facts.append(order_facts(row, account_id, channel, o, line_ids))
    if facts:
        # the rule set and the ladder both services read, in one statement for the page
        await programme.read(session)
        if earn_points:  # imported history earns nothing, and fires no referral reward either
            points_ctx = PointsContext(clock=ctx.clock, tz=ctx.tz, actor=ctx.actor)
            await apply_orders(session, points_ctx, facts)
            # the referral rule: a referred member's first qualifying order credits the referrer; its refund
            # reverses it
            await referrals.on_orders(
                session,
                points_ctx,
                facts,
                unreferred=frozenset(unreferred),
                awarded=frozenset(row.id for row in written.values() if row.referral_awarded),
            )
        # a qualifying purchase upgrades at once (downgrades wait for review time)
        await reevaluate_tiers(
            session, TierContext(now=ctx.clock(), tz=ctx.tz, actor=ctx.actor), result.member_ids
        )

    # 6. one order_changed event per order that moved forward (status, refunds, shipping...)
    if not emit_events:
        return result
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "order_changed",
            {
                "order_id": row.id,
                "account_id": account_id,
                "channel": channel,
                "external_id": ext,
                "member_id": row.member_id,
                "status": row.status,
                "previous": previous[ext],
                "refunded_fen": sum(line.refunded_fen for line in by_external[ext].lines),
                # when the platform changed the order (a first sync brings changes months old)
                "changed_at": by_external[ext].modified_at.isoformat(),
            },
        )
        for ext, row in written.items()
    ]
    if defer_events:
        result.events, result.events_at = events, now
    else:
        await outbox.emit_many(session, events, now=now)
    return result
