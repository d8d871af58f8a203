"""One order at a counter: the effects of a page of one order, in the fewest round trips.

A till's checkout recorded its sale through :func:`tongcrm.ingest.apply.apply_orders_page` with a page of one
order. That path is built for pages of hundreds, and for one order it paid for what a page needs and a receipt
does not: a ``SET LOCAL`` re-planning every statement, list-shaped reads, a savepoint and a second identity read
for a buyer the counter had just read, a follow-up read of lots that a brand-new order cannot have, the referral
read for a buyer nobody referred, the active rules and the tier ladder read in two statements. Across a socket
each of those is a round trip, and a round trip, not the row it carries, is what a checkout costs
(issue #22: ~23 statements, 0.01–0.05 of the bare endpoint).

:func:`apply_counter_order` brings about exactly what ``apply_orders_page(..., [order])`` does — forward-only
order and lines, identity resolution, points under the earning rules, referral rewards, tier upgrade, the
``order_changed`` event, quarantine of a refused identity — with:

* fixed-text statements for one row (no arrays, no ``IN`` lists): compiled once, prepared once per
  connection, planned generically (every one is a lookup by a unique key), and run straight on the session's
  driver connection (:mod:`tongcrm.db.direct`), not through ``session.execute``'s per-statement machinery;
* the identity resolution of a buyer the counter already read (:class:`KnownBuyer`, from the same unit of work)
  done without a second read or a savepoint: the resolution policy is asked exactly as
  :func:`tongcrm.identity.service.resolve_many` asks it, and only when it attaches the claim to that member
  does the identity's ``last_seen_at`` move — on PostgreSQL inside the order's upsert (a data-modifying CTE),
  elsewhere in one statement before it; any other answer, a new buyer, or a buyer with a profile to merge goes
  through ``resolve_many`` unchanged;
* the active rule set and tier ladder read with what is held for the order, in one statement, into the
  transaction's cache
  (:mod:`tongcrm.db.txcache`), where the points and tier services find them — or handed in as ``prefetched``,
  read along the statement that claimed the order for this transaction (a till's receipt claim);
* points posted with ``fresh=True`` for an order inserted just now without refunds: it has no lots to release
  or reverse, so the follow-up read is skipped, and no line can hold an award yet, so on PostgreSQL the award
  gate is written by the posting's statement;
* the tier re-evaluation only when the member qualifies above their tier
  (:func:`tongcrm.tiers.service.upgrade_due`, one read): one that upgrades nobody writes nothing;
* the referral hook skipped for a new order of a buyer without a referrer: no reward can hang on an order that
  did not exist, and no reward is due for a buyer nobody referred (the hook reads and decides nothing else).
* with ``tally``, the ``order_changed`` event's insert answers the order's points and the member's balance in
  its ``RETURNING``: the counter shows them without a read after the sale (issue #22); a caller's write that
  needs them (``then``, :data:`FollowUp`: a till's receipt row finished) rides in that statement on PostgreSQL;
* on PostgreSQL a new member's ``member_created`` event is written by the statement making the member.

Everything else is the page path's own code (the same upserts, the same points, tier and outbox services), so
the two cannot drift apart in what they write.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

from tongcrm.db import direct
from tongcrm.db.dialect import dialect_name, insert_for, rows_params
from tongcrm.identity.models import Identity
from tongcrm.identity.plugin import default_decision
from tongcrm.identity.service import (
    MOBILE,
    ClaimError,
    ClaimSet,
    ResolutionContext,
    prepare_claim,
    resolve_many,
)
from tongcrm.ingest.apply import (
    IngestContext,
    is_news,
    line_rows,
    line_upsert,
    order_facts,
    order_row,
    order_upsert,
    quarantine,
    upsert_lines,
    upsert_orders,
)
from tongcrm.ingest.apply import steps_ahead as apply_steps_ahead
from tongcrm.jobs import outbox
from tongcrm.members.masked import masked_index
from tongcrm.members.models import ERASED, Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.types import (
    IdentityClaim,
    MemberMatch,
    NormalisedOrder,
    OrderStatus,
    QuarantinedRecord,
)
from tongcrm.points import service as points
from tongcrm.points.models import PointsBalance, PointsEntry
from tongcrm.points.service import PointsContext
from tongcrm.referrals import service as referrals
from tongcrm.tiers import programme
from tongcrm.tiers import service as tiers
from tongcrm.tiers.service import TierContext

_FULLY_REFUNDED = frozenset({OrderStatus.CLOSED, OrderStatus.REFUNDED})


@dataclass(frozen=True, slots=True)
class KnownBuyer:
    """A buyer's live member and the identity that names them, as the counter read them in this unit of work."""

    identity_id: int
    kind: str
    #: the identity's value as stored (for a mobile: its blind index)
    value: str
    member_created_at: datetime
    #: the member holds an encrypted mobile (else resolution would fill it from a mobile claim)
    has_mobile: bool
    referrer_id: int | None


@dataclass(frozen=True, slots=True)
class CounterOrder:
    """What :func:`apply_counter_order` did: the order's id and member (None: unchanged or quarantined)."""

    order_id: int | None
    member_id: int | None
    quarantined: bool = False
    #: with ``tally``, once the order is written: Σ the order's points entries of those kinds
    points: int | None = None
    #: with ``tally``, once the order is written: the member's available points (None: no balance row)
    available: int | None = None
    #: the ``then`` statement ran, in the statement writing the ``order_changed`` event
    followed: bool = False


#: What a sale's till is shown once the order is written, as a one-row relation a caller's statement may read
#: (``SELECT points FROM order_figures``): ``points``, Σ the order's points entries of the tallied kinds, and
#: ``available``, the member's available points as the counter shows them (never below 0; NULL without a
#: member). See :data:`FollowUp`.
ORDER_FIGURES = sa.table(
    "order_figures", sa.column("points", sa.BigInteger()), sa.column("available", sa.BigInteger())
)
#: A caller's write that follows an order's application and reads :data:`ORDER_FIGURES` (a till's receipt row
#: finished with what the till shows): given the order's id and member, its statement (built once, on the
#: caller's tables, values as ``sa.bindparam``) and its values. On PostgreSQL it rides in the statement writing
#: the ``order_changed`` event, a data-modifying CTE reading that statement's ``RETURNING`` (issue #22: one round
#: trip fewer a checkout); elsewhere it runs just after it, the figures bound.
FollowUp = Callable[[int, int | None], tuple[Any, Mapping[str, Any]]]
#: Names the follow-up's values are bound under in the statements :func:`follow_up_statement` and
#: :func:`_followed_statement` build (so they never meet the core's own).
_THEN = "then_"


def on_figures(statement: Any, figures: Any) -> Any:
    """``statement`` reading ``figures`` where it names :data:`ORDER_FIGURES`, its values bound as ``then_<name>``."""

    def swap(element: Any, **_: Any) -> Any:
        if element is ORDER_FIGURES:
            return figures
        if isinstance(element, sa.ColumnClause) and element.table is ORDER_FIGURES:
            return figures.c[element.name]
        if isinstance(element, BindParameter) and element.required:  # a value the caller binds
            return sa.bindparam(_THEN + element.key, type_=element.type)
        return None

    return visitors.replacement_traverse(statement, {}, swap)


_ALONE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def follow_up_statement(statement: Any) -> Any:
    """A follow-up's ``statement`` on its own, the figures bound as ``figures_points`` and ``figures_available``
    (built once per statement)."""
    alone = _ALONE.get(statement)
    if alone is None:
        figures = sa.select(
            sa.bindparam("figures_points", type_=sa.BigInteger()).label("points"),
            sa.bindparam("figures_available", type_=sa.BigInteger()).label("available"),
        ).cte("order_figures")
        alone = _ALONE[statement] = on_figures(statement, figures)
    return alone


def follow_up_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {_THEN + name: value for name, value in params.items()}


_FOLLOWED: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], Any]] = weakref.WeakKeyDictionary()


def _followed_statement(kinds: tuple[str, ...], statement: Any) -> Any:
    """PostgreSQL: :func:`_order_changed_statement` with a follow-up's ``statement`` riding in it, reading the
    figures from the event insert's ``RETURNING`` (answering the same two columns)."""
    by_kinds = _FOLLOWED.setdefault(statement, {})
    followed = by_kinds.get(kinds)
    if followed is None:
        changed = _order_changed_statement(kinds).cte("changed")
        member = sa.bindparam("member_id", type_=sa.BigInteger())
        shown = sa.case(
            (member.is_(None), sa.null()),
            else_=sa.func.greatest(sa.func.coalesce(changed.c.available, 0), 0),
        )
        figures = sa.select(changed.c.points, shown.label("available")).cte("order_figures")
        then = on_figures(statement, figures).cte("followed")
        followed = by_kinds[kinds] = sa.select(changed.c.points, changed.c.available).add_cte(then)
    return followed


def _stored(account: str, external: str) -> Any:
    """What is held for one order (and whether its member was erased), its key bound as ``account`` and
    ``external``: fixed text, no list parameter."""
    return (
        sa.select(
            Order.modified_at,
            Order.status,
            Order.paid_fen,
            Order.member_id,
            Member.status.label("member_status"),
        )
        .outerjoin(Member, Member.id == Order.member_id)
        .where(Order.account_id == sa.bindparam(account), Order.external_id == sa.bindparam(external))
    )


def _stored_and_settings(stored: Any) -> Any:
    """The settings and what ``stored`` reads of the order, in one row (its order's columns NULL: no order)."""
    settings, held = programme.SETTINGS.subquery("settings"), stored.subquery("held")
    return sa.select(settings, held).select_from(settings.outerjoin(held, sa.true()))


_STORED = _stored("account_id", "external_id")
#: The settings and what is held for the order, in one round trip (the first order of a transaction).
_STORED_AND_SETTINGS = _stored_and_settings(_STORED)
#: The order's key as :data:`STORED_AND_SETTINGS` binds it: names no statement it is joined to uses.
HELD_ACCOUNT, HELD_EXTERNAL = "held_account_id", "held_external_id"
#: :data:`_STORED_AND_SETTINGS` with the order's key bound as :data:`HELD_ACCOUNT` and :data:`HELD_EXTERNAL`,
#: for a statement that runs before the order is applied to read along (a till's receipt claim,
#: :meth:`tongcrm.counter.CounterWork.first_with_buyer`); its row goes to :func:`apply_counter_order` as
#: ``prefetched`` (columns :data:`HELD_KEYS`).
STORED_AND_SETTINGS = _stored_and_settings(_stored(HELD_ACCOUNT, HELD_EXTERNAL))
HELD_KEYS: tuple[str, ...] = tuple(str(c.key) for c in _STORED_AND_SETTINGS.selected_columns)


@functools.cache
def _order_changed_statement(kinds: tuple[str, ...]) -> Any:
    """The ``order_changed`` event's row (as :func:`tongcrm.jobs.outbox.emit_many` writes it), answering in
    its ``RETURNING`` with Σ the points entries of ``kinds`` on the order bound as ``order_id`` and the
    available points of the member bound as ``member_id``. The receipt's last statement: what the till shows
    was read after everything the sale posted, without a read of its own."""
    events = outbox.EVENTS
    entries = cast(sa.Table, PointsEntry.__table__)
    balances = cast(sa.Table, PointsBalance.__table__)
    summed = (
        sa.select(sa.func.coalesce(sa.func.sum(entries.c.amount), 0))
        .where(
            entries.c.order_id == sa.bindparam("order_id", type_=entries.c.order_id.type),
            entries.c.kind.in_(list(kinds)),
        )
        .scalar_subquery()
    )
    available = (
        sa.select(balances.c.available)
        .where(balances.c.member_id == sa.bindparam("member_id", type_=balances.c.member_id.type))
        .scalar_subquery()
    )
    return (
        sa.insert(events)
        .values(
            name=sa.bindparam("name", type_=events.c.name.type),
            payload=sa.bindparam("payload", type_=events.c.payload.type),
            occurred_at=sa.bindparam("occurred_at", type_=events.c.occurred_at.type),
        )
        .returning(summed.label("points"), available.label("available"))
    )


_LINES = cast(sa.Table, OrderLine.__table__)
#: The columns of a line bound as arrays by the order-and-lines statement (the order's id comes from its upsert),
#: each as ``line_<column>``: the order's own arrays are named after its columns, some of them the same.
_LINE_VALUES = (
    "external_id", "sku", "category", "title", "quantity", "unit_price_fen", "amount_fen", "refunded_fen",
    "refund_status",
)  # fmt: skip


@functools.cache
def _order_and_lines_statement(columns: tuple[str, ...], touching: bool) -> Any:
    """PostgreSQL: the order's forward-only upsert (:func:`tongcrm.ingest.apply.order_upsert`, with the known
    buyer's ``last_seen_at`` when ``touching``) and its lines' upsert (:func:`tongcrm.ingest.apply.line_upsert`)
    in one statement, the lines inserted from the order's ``RETURNING``: one row per line written, (the order's
    id, external_id, member_id, status, the line's id and external_id). No row: the order is held in a newer
    version, and neither it nor its lines were written — what the two statements did, in one round trip."""
    written = order_upsert("postgresql", columns, touching).cte("written")
    arrays = [sa.bindparam(f"line_{n}", type_=postgresql.ARRAY(_LINES.c[n].type)) for n in _LINE_VALUES]
    values = sa.func.unnest(*arrays).table_valued(*_LINE_VALUES).render_derived("line_values")
    source = sa.select(written.c.id, *values.c).select_from(written.join(values, sa.true()))
    lines = line_upsert(postgresql.insert(_LINES).from_select(["order_id", *_LINE_VALUES], source)).cte(
        "lines"
    )
    return sa.select(
        written.c.id,
        written.c.external_id,
        written.c.member_id,
        written.c.status,
        lines.c.id.label("line_id"),
        lines.c.external_id.label("line_external_id"),
    ).select_from(written.outerjoin(lines, sa.true()))


async def _order_and_lines(
    session: AsyncSession, row: dict[str, Any], order: NormalisedOrder, touch: tuple[int, datetime] | None
) -> tuple[Any, dict[tuple[int, str], int]] | None:
    """The order's row and its lines' ids as :func:`upsert_orders` and :func:`upsert_lines` answer them (None:
    held in a newer version, nothing written): in one statement on PostgreSQL when the order has lines,
    else in those two."""
    if dialect_name(session) != "postgresql" or not order.lines:
        written_rows = await upsert_orders(session, [row], touch=touch)
        if not written_rows:
            return None
        lines = line_rows(int(written_rows[0].id), order)
        return written_rows[0], (await upsert_lines(session, lines) if lines else {})
    columns = tuple(row)
    params = rows_params("postgresql", cast(sa.Table, Order.__table__), columns, [row])
    if touch is not None:
        params.update(touch_identity_id=touch[0], touch_at=touch[1])
    for line in line_rows(0, order):
        for name in _LINE_VALUES:
            params.setdefault(f"line_{name}", []).append(line[name])
    written = await direct.rows(session, _order_and_lines_statement(columns, touch is not None), params)
    if not written:
        return None
    return written[0], {(r.id, r.line_external_id): r.line_id for r in written}


def known_member(
    ctx: IngestContext, order: NormalisedOrder, member_id: int, known: KnownBuyer
) -> tuple[int, datetime] | None:
    """(identity id, now) when ``resolve_many`` would attach this order's one claim to ``member_id`` named by
    ``known`` and change nothing but that identity's ``last_seen_at`` (to now); else None. The caller moves it
    with the order's upsert (:func:`tongcrm.ingest.apply.upsert_orders`)."""
    profile = order.buyer
    if len(order.claims) != 1 or any((profile.name, profile.mobile, profile.province, profile.city)):
        return None  # a profile may fill the member's blank fields: resolve_many decides
    kinds = ctx.host.identity_kinds()
    try:
        claim = prepare_claim(_resolution(ctx), kinds, order.claims[0], sealed=False)  # compared, not stored
    except ClaimError:
        return None  # resolve_many reports it, and the order is quarantined
    if claim.kind != known.kind or known.value not in claim.lookup:
        return None
    if claim.kind == MOBILE and not known.has_mobile:
        return None  # resolution would give the member this mobile
    said = [IdentityClaim(claim.kind, known.value, claim.evidence)]
    matches = [MemberMatch(member_id, claim.kind, known.value, claim.strong, known.member_created_at)]
    decision = ctx.host.resolve_member(said, matches) or default_decision(said, matches)
    if decision.create or decision.member_id != member_id or decision.merge_from:
        return None
    return known.identity_id, ctx.clock()


_MEMBERS = cast(sa.Table, Member.__table__)
_IDENTITIES = cast(sa.Table, Identity.__table__)
MEMBER_COLUMNS = (
    "status", "version", "created_at", "updated_at", "name", "province", "city", "mobile_enc",
    "mobile_masked_index", "profile_meta", "source_channel", "source_store", "source_campaign", "lifecycle_stage",
)  # fmt: skip
IDENTITY_COLUMNS = (
    "kind", "value", "value_enc", "masked_index", "account_id", "evidence", "first_seen_at", "last_seen_at",
)  # fmt: skip


def _bound(table: sa.Table, names: tuple[str, ...]) -> list[Any]:
    return [sa.bindparam(name, type_=table.c[name].type) for name in names]


@functools.cache
def _create_statement(dialect: str) -> Any:
    """A new member and their identity. PostgreSQL: one statement (the identity inserted from the member's
    ``RETURNING``, and the ``member_created`` event from the identity's, source bound as ``event_source``),
    answering the member's id and the identity's member id — None when the identity was there already (another
    transaction made it first; no event is written then). SQLite: the member's insert (its writers take turns)."""
    member = sa.insert(_MEMBERS).values(
        dict(zip(MEMBER_COLUMNS, _bound(_MEMBERS, MEMBER_COLUMNS), strict=True))
    )
    if dialect != "postgresql":
        return member.returning(_MEMBERS.c.id)
    made = member.returning(_MEMBERS.c.id).cte("made")
    identity = (
        insert_for(dialect, _IDENTITIES)
        .from_select(
            [*IDENTITY_COLUMNS, "member_id"],
            sa.select(*_bound(_IDENTITIES, IDENTITY_COLUMNS), made.c.id),
        )
        .on_conflict_do_nothing(index_elements=["kind", "value"])
        .returning(_IDENTITIES.c.member_id)
        .cte("attached")
    )
    # the member_created event, written when the identity was (as emit_many writes it after this statement)
    events = outbox.EVENTS
    payload = sa.func.jsonb_build_object(
        sa.literal_column("'member_id'"),
        identity.c.member_id,
        sa.literal_column("'source'"),
        sa.bindparam("event_source", type_=sa.String()),
    )
    announced = (
        sa.insert(events)
        .from_select(
            ["name", "payload", "occurred_at"],
            sa.select(
                sa.literal_column("'member_created'"),
                payload,
                sa.bindparam("created_at", type_=events.c.occurred_at.type),
            ).select_from(identity),
        )
        .cte("announced")
    )
    return (
        sa.select(made.c.id, identity.c.member_id)
        .select_from(made.outerjoin(identity, sa.true()))
        .add_cte(announced)
    )


@functools.cache
def _identity_statement(dialect: str) -> Any:
    """A new member's identity, unless it exists (SQLite's second statement of :func:`_create_statement`)."""
    values = dict(zip(IDENTITY_COLUMNS, _bound(_IDENTITIES, IDENTITY_COLUMNS), strict=True))
    values["member_id"] = sa.bindparam("member_id", type_=_IDENTITIES.c.member_id.type)
    return (
        insert_for(dialect, _IDENTITIES)
        .values(values)
        .on_conflict_do_nothing(index_elements=["kind", "value"])
        .returning(_IDENTITIES.c.member_id)
    )


_DROP_MEMBER = sa.delete(_MEMBERS).where(_MEMBERS.c.id == sa.bindparam("member_id"))


def new_member_rows(
    ctx: IngestContext, account_id: int, channel: str, order: NormalisedOrder
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The member row and identity row ``resolve_many`` would create for this order's one claim, as it creates
    them (``now`` their times) — or None when its answer might differ: the policy would not create, a profile
    would fill fields, the claim has values under rotated keys (resolve_many reads under each). Shared by the
    transactional path (:func:`_new_member`) and the quick checkout (:meth:`tongcrm.counter.CounterWork.quick_sale`),
    so both write the same rows."""
    profile = order.buyer
    if len(order.claims) != 1 or any((profile.name, profile.mobile, profile.province, profile.city)):
        return None
    try:
        claim = prepare_claim(_resolution(ctx), ctx.host.identity_kinds(), order.claims[0])
    except ClaimError:
        return None
    if claim.lookup != (claim.value,):
        return None
    said = [IdentityClaim(claim.kind, claim.value, claim.evidence)]
    decision = ctx.host.resolve_member(said, []) or default_decision(said, [])
    if not decision.create:
        return None
    now = ctx.clock()
    meta = {} if claim.value_enc is None else {"mobile_enc": {"at": now.isoformat(), "verified": True}}
    masked = None if claim.e164 is None else masked_index(ctx.vault, claim.e164)
    member = {
        "status": "active", "version": 1, "created_at": now, "updated_at": now, "name": None, "province": None,
        "city": None, "mobile_enc": claim.value_enc, "profile_meta": meta, "source_channel": channel,
        "mobile_masked_index": masked,
        "source_store": order.store_code, "source_campaign": None, "lifecycle_stage": "prospect",
    }  # fmt: skip
    identity = {
        "kind": claim.kind, "value": claim.value, "value_enc": claim.value_enc, "masked_index": masked,
        "account_id": account_id,
        "evidence": claim.evidence, "first_seen_at": now, "last_seen_at": now,
    }  # fmt: skip
    return member, identity


async def _new_member(
    session: AsyncSession, ctx: IngestContext, account_id: int, channel: str, order: NormalisedOrder
) -> int | None:
    """The member ``resolve_many`` would create for this order's one claim, created as it creates them — or
    None (nothing written) when its answer might differ (:func:`new_member_rows`), or the identity exists
    (another transaction made it since the counter looked): resolve_many then decides, as before."""
    made_rows = new_member_rows(ctx, account_id, channel, order)
    if made_rows is None:
        return None
    member, identity = made_rows
    now = member["created_at"]
    dialect = dialect_name(session)
    source = channel or "unknown"
    if dialect == "postgresql":
        bound = {**member, **identity, "event_source": source}
        [row] = await direct.rows(session, _create_statement(dialect), bound)
        member_id, attached = int(row[0]), row[1]
    else:
        [made] = await direct.rows(session, _create_statement(dialect), member)
        member_id = int(made[0])
        found = await direct.first(
            session, _identity_statement(dialect), {**identity, "member_id": member_id}
        )
        attached = None if found is None else found[0]
    if attached is None:  # the identity was there: this member never was
        await direct.rows(session, _DROP_MEMBER, {"member_id": member_id})
        return None
    if dialect != "postgresql":  # PostgreSQL's was written by the statement that made the member
        await outbox.emit_many(
            session, [("member_created", {"member_id": member_id, "source": source})], now=now
        )
    return member_id


def _resolution(ctx: IngestContext) -> ResolutionContext:
    return ResolutionContext(ctx.host, ctx.vault, ctx.clock, actor=ctx.actor, tz=ctx.tz)


def steps_ahead(
    dialect: str, row: Mapping[str, Any], order: NormalisedOrder, tally: tuple[str, ...]
) -> list[tuple[Any, Mapping[str, Any]]]:
    """The statements :func:`apply_counter_order` runs on ``dialect`` for a first sale of ``order``'s shape
    (``row``: its :func:`tongcrm.ingest.apply.order_row`, whose columns are what count) with ``tally``, without
    caps, tiers or referrals, to a new buyer and to a known member (the programme's settings read with the
    stored order; a new member, its identity and ``member_created``; the identity's ``last_seen_at``; the order
    and its lines; the award gate and the posting of as many credits as lines, and one more for a first
    purchase; the ``order_changed`` event), with the parameters their plans are kept under — for a start-up
    step that compiles them ahead (:mod:`tongcrm.warmup`; issue #22, branch till15: a till's first checkout on
    SQLite compiled ~15 plans). Built by the builders the sale calls, so they are the statements it runs;
    nothing is run. None on PostgreSQL, where a till's sale takes the quick path
    (:func:`tongcrm.counter.compile_quick_sale`) and this path is its fallback."""
    if dialect == "postgresql":
        return []
    lines = len(order.lines)
    return [
        (_STORED_AND_SETTINGS, {}),
        (_create_statement(dialect), {}),
        (_identity_statement(dialect), {}),
        *outbox.steps_ahead(dialect, 1),
        *apply_steps_ahead(dialect, tuple(row), lines, touching=True),
        *points.steps_ahead(dialect, lines, (lines, lines + 1)),
        (_order_changed_statement(tally), {}),
    ]


async def apply_counter_order(
    session: AsyncSession,
    ctx: IngestContext,
    account_id: int,
    channel: str,
    order: NormalisedOrder,
    *,
    member_id: int | None = None,
    known: KnownBuyer | None = None,
    tally: tuple[str, ...] | None = None,
    prefetched: Any = None,
    then: FollowUp | None = None,
) -> CounterOrder:
    """Apply one order as ``apply_orders_page`` would apply a page of it (see the module docstring).

    ``member_id`` and ``known``: the buyer whose claim leads ``order.claims``, as read in this unit of work.
    ``tally``: points entry kinds to sum on the order, answered with the member's available points by the
    statement that writes the ``order_changed`` event (:func:`_order_changed_statement`).
    ``prefetched``: a row of :data:`STORED_AND_SETTINGS` for this order, read in this transaction by a statement
    since which nothing wrote the order (its key's claim: see :meth:`tongcrm.counter.CounterWork._apply`),
    instead of reading it here.
    ``then`` (with ``tally``): a caller's write reading :data:`ORDER_FIGURES`, run in the statement writing the
    ``order_changed`` event on PostgreSQL (``followed`` in the answer); left to the caller otherwise."""
    key = {"account_id": account_id, "external_id": order.external_id}
    held: Any
    if prefetched is not None:  # read by a statement of this transaction just before, nothing written since
        programme.hold(session, prefetched)
        held = None if prefetched.modified_at is None else prefetched
    elif programme.held(session):
        held = await direct.first(session, _STORED, key)
    else:
        [held] = await direct.rows(session, _STORED_AND_SETTINGS, key)
        programme.hold(session, held)
        if held.modified_at is None:  # no such order (an order always has its modified_at)
            held = None
    stored = None if held is None else (held.modified_at, held.status, held.paid_fen)
    if not is_news(order, stored):
        return CounterOrder(None, None)
    erased_owner = held.member_id if held is not None and held.member_status == ERASED else None

    # who bought it
    buyer: int | None = erased_owner
    created = False
    touch: tuple[int, datetime] | None = None
    if order.claims and erased_owner is None:
        fast = None
        if member_id is not None and known is not None:
            touch = known_member(ctx, order, member_id, known)
            fast = None if touch is None else member_id
        elif member_id is None:
            fast = await _new_member(session, ctx, account_id, channel, order)
            created = fast is not None
        if fast is not None:
            buyer = fast
        else:
            [outcome] = await resolve_many(
                session,
                _resolution(ctx),
                [
                    ClaimSet(
                        claims=order.claims,
                        account_id=account_id,
                        profile=order.buyer,
                        source_channel=channel,
                        source_store=order.store_code,
                    )
                ],
            )
            if outcome.error is not None:
                evidence = json.dumps(
                    {"external_id": order.external_id, "claim_kinds": [c.kind for c in order.claims]}
                )
                bad = QuarantinedRecord(order.external_id, f"identity: {outcome.error}", evidence)
                await quarantine(session, ctx.vault, account_id, [bad])
                return CounterOrder(None, None, quarantined=True)
            buyer, created = outcome.member_id, outcome.created

    # the order and its lines, forward only
    now = ctx.clock()
    prior_status = held.status if held is not None else None
    stored_now = await _order_and_lines(
        session, order_row(account_id, channel, order, buyer, prior_status, now), order, touch
    )
    if stored_now is None:  # another transaction stored a newer version first
        return CounterOrder(None, None)
    written, line_ids = stored_now
    order_id, member, status = int(written.id), written.member_id, written.status

    # points, referral rewards, tiers
    if member is not None:
        facts = order_facts(written, account_id, channel, order, line_ids)
        fresh = (
            held is None
            and status not in _FULLY_REFUNDED
            and not any(line.refunded_fen > 0 for line in order.lines)
        )
        points_ctx = PointsContext(clock=ctx.clock, tz=ctx.tz, actor=ctx.actor)
        await points.apply_orders(session, points_ctx, [facts], fresh=fresh)
        nobody_referred = created or (known is not None and known.referrer_id is None and member == member_id)
        if not (held is None and nobody_referred):
            await referrals.on_orders(session, points_ctx, [facts])
        tier_ctx = TierContext(now=ctx.clock(), tz=ctx.tz, actor=ctx.actor)
        if await tiers.upgrade_due(session, tier_ctx, member):
            await tiers.reevaluate(session, tier_ctx, [member])

    changed = {
        "order_id": order_id,
        "account_id": account_id,
        "channel": channel,
        "external_id": order.external_id,
        "member_id": member,
        "status": status,
        "previous": prior_status,
        "refunded_fen": sum(line.refunded_fen for line in order.lines),
        "changed_at": order.modified_at.isoformat(),
    }
    if tally is None:
        await outbox.emit_many(session, [("order_changed", changed)], now=now)
        return CounterOrder(order_id, member)
    event = {"name": "order_changed", "payload": changed, "occurred_at": now}
    bound = {**event, "order_id": order_id, "member_id": member}
    statement = _order_changed_statement(tally)
    followed = then is not None and dialect_name(session) == "postgresql"
    if followed:
        assert then is not None
        own, values = then(order_id, member)
        statement = _followed_statement(tally, own)
        bound.update(follow_up_params(values))
    [row] = await direct.rows(session, statement, bound)
    return CounterOrder(
        order_id,
        member,
        points=int(row.points),
        available=None if row.available is None else int(row.available),
        followed=followed,
    )
