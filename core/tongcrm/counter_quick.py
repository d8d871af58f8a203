"""A known member's sale — or a new buyer's, named by a mobile nobody holds — at a counter on PostgreSQL as one
read and one statement, without a transaction.

Why (issue #22, Build 2; the fifteenth pass of *A receipt at the counter* designed it): a till's checkout for a
member named by id was ``BEGIN``, four statements and ``COMMIT`` — six round trips, each a socket write and a
wake-up of the backend, and asyncpg's own execution was ~29 % of the serving process's CPU. Here it is two:

1. **A read in autocommit** (:meth:`tongcrm.counter.CounterWork.quick_sale`): the caller's row for the sale
   (a till's receipt under its key), the buyer and their identities, the programme's settings, the order as
   stored, the buyer's balance, the API keys' revocation counter, and the ids the order and its lines will
   take (``nextval``). Whatever the read shows that this statement cannot do exactly as the transactional path
   does it sends the sale there (see the conditions in ``quick_sale``); nothing is written before that.
2. **One statement of data-modifying CTEs** (:func:`sale_statement`), atomic by itself: the order inserted
   ``ON CONFLICT (account_id, external_id) DO NOTHING`` is the gate — its ``RETURNING`` row is what every
   other write reads, so without it (the order is there: a replay, a concurrent upload) nothing is written;
   the known buyer's ``last_seen_at``; the lines; the award gate, entries, lots and balance as the ledger's
   gated posting writes them (:func:`tongcrm.points.ledger.posting_ctes`, the same text); the caller's row
   (a plain ``INSERT`` reading :data:`tongcrm.counter_sale.ORDER_FIGURES` — a row already there under its
   unique key makes the whole statement fail, writing nothing); and the ``points_changed`` then
   ``order_changed`` events in one ordered insert (their ids in the order the transactional path gives them).

A new buyer (issue #22, tillpg12): the read draws the member's id too and asks whether the mobile is held (then
the transactional path resolves the sale); the statement writes the member and its identity with the order
(:func:`new_buyer_ctes`, the identity a plain ``INSERT``: a mobile claimed meanwhile fails it whole) and the
``member_created`` event first among the sale's events.

When the statement writes nothing or fails on a unique key, the caller runs the transactional path in the same
unit of work: nothing of the quick attempt is left to undo, and the receipt key's idempotency is the
transactional path's own (its claim meets the row a concurrent upload committed).
"""

from __future__ import annotations

import functools
import re
import weakref
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tongcrm.counter_sale import IDENTITY_COLUMNS, MEMBER_COLUMNS
from tongcrm.db.dialect import json_table
from tongcrm.identity.models import Identity
from tongcrm.jobs import outbox
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.points import ledger

#: Off: every sale takes the transactional path (tests compare the two; an operator may switch it off).
ENABLED = True

_ORDERS = cast(sa.Table, Order.__table__)
_LINES = cast(sa.Table, OrderLine.__table__)
_IDENTITIES = cast(sa.Table, Identity.__table__)
_MEMBERS = cast(sa.Table, Member.__table__)
#: the columns of a line row (:func:`tongcrm.ingest.apply.line_rows`) and the id it was given
LINE_COLUMNS = (
    "id", "order_id", "external_id", "sku", "category", "title", "quantity", "unit_price_fen", "amount_fen",
    "refunded_fen", "refund_status",
)  # fmt: skip
#: the sequences the order and its lines take their ids from (as their inserts would)
ORDER_IDS, LINE_IDS = "orders_id_seq", "order_lines_id_seq"
#: the sequence a new buyer's member takes its id from, drawn by the read only for a new buyer
MEMBER_IDS = "members_id_seq"
_CTE = re.compile(r"\n(\w+) AS \(\n(.*?)\n\)", re.S)


def _text_ctes(sql: str, binds: dict[str, Any]) -> list[Any]:
    """SQL text of CTEs (``name AS (\\n…\\n)``, as :func:`tongcrm.points.ledger.posting_ctes` writes them) as
    CTE objects, each with the bound parameters of ``binds`` it names."""
    out = []
    for name, body in _CTE.findall(sql):
        text = sa.text(body)
        used = [bind for key, bind in binds.items() if re.search(rf"(?<![:\w]):{key}\b", body)]
        if used:
            text = text.bindparams(*used)
        out.append(text.columns().cte(name))
    return out


_SALES: weakref.WeakKeyDictionary[Any, dict[tuple[tuple[str, ...], bool], Any]] = weakref.WeakKeyDictionary()


def sale_statement(columns: tuple[str, ...], follow: Any, *, new_buyer: bool = False) -> Any:
    """The one statement of a quick sale (see the module docstring) for an order row of ``columns`` (with its
    ``id``) and the caller's ``follow`` (an ``INSERT`` of its row selecting from ``ORDER_FIGURES``, its values
    bound as ``then_<name>``). Built once per follow-up and columns. Binds: the order's columns as
    ``o_<column>``; ``touch_identity_id``, ``touch_at``; ``line_rows`` (JSON records of :data:`LINE_COLUMNS`);
    ``credits``, ``awards`` and ``now`` (the ledger's posting); ``member_id``; ``changed_payload`` and
    ``changed_at`` (the ``order_changed`` event). One row when the order was written: ``order_id``, ``points``
    (Σ the order's entries posted), ``shown`` (the available points the till is shown), ``delta`` (what the
    posted lots made available), the balance's ``available``, ``pending`` and ``owed`` after the posting (NULL
    when nothing was posted).

    ``new_buyer``: the buyer is made by the statement (:func:`new_buyer_ctes`), under the member id the read
    drew, binds ``new_member_id``, ``m_<column>`` and ``i_<column>`` (the rows of
    :func:`tongcrm.counter_sale.new_member_rows`), ``new_member_source`` and ``new_member_at`` (its
    ``member_created`` event, first in the outbox as the transactional path writes it)."""
    by_columns = _SALES.setdefault(follow, {})
    found = by_columns.get((columns, new_buyer))
    if found is None:
        found = by_columns[(columns, new_buyer)] = _build(columns, follow, new_buyer)
    return found


def new_buyer_ctes(gated: Any) -> list[Any]:
    """A new buyer's member and identity, written only with the order (``gated``: the order's gate). The
    member's id was drawn by the read (its sequence's ``nextval``), so the order, lines and posting name it
    before its row exists; the foreign keys are checked at the statement's end, when it does. The identity is
    a **plain** ``INSERT``: a mobile claimed meanwhile by another transaction (committed, or committing: the
    insert waits for it) fails the whole statement on ``(kind, value)`` and nothing is written — the caller
    then runs the transactional path, which resolves the sale to whoever holds the mobile, as it always did."""
    member_id = sa.bindparam("new_member_id", type_=_MEMBERS.c.id.type)
    made = (
        sa.insert(_MEMBERS)
        .from_select(
            ["id", *MEMBER_COLUMNS],
            sa.select(
                member_id, *(sa.bindparam(f"m_{c}", type_=_MEMBERS.c[c].type) for c in MEMBER_COLUMNS)
            ).where(gated),
        )
        .returning(_MEMBERS.c.id)
        .cte("made")
    )
    attached = (
        sa.insert(_IDENTITIES)
        .from_select(
            [*IDENTITY_COLUMNS, "member_id"],
            sa.select(
                *(sa.bindparam(f"i_{c}", type_=_IDENTITIES.c[c].type) for c in IDENTITY_COLUMNS), made.c.id
            ),
        )
        .returning(_IDENTITIES.c.member_id)
        .cte("attached")
    )
    return [made, attached]


#: the new buyer's ``member_created`` event, as the transactional path's statement writes it (its first step)
_MEMBER_CREATED = """
        SELECT -1 AS step, a.member_id AS m, 'member_created' AS name,
            jsonb_build_object('member_id', a.member_id, 'source', CAST(:new_member_source AS TEXT)) AS payload,
            CAST(:new_member_at AS TIMESTAMP WITH TIME ZONE) AS occurred_at
        FROM attached a
        UNION ALL"""


def _build(columns: tuple[str, ...], follow: Any, new_buyer: bool) -> Any:
    order = (
        postgresql.insert(_ORDERS)
        .values({c: sa.bindparam(f"o_{c}", type_=_ORDERS.c[c].type) for c in columns})
        .on_conflict_do_nothing(index_elements=["account_id", "external_id"])
        .returning(_ORDERS.c.id)
        .cte("o")
    )
    gated = sa.exists(sa.select(order.c.id))
    made = new_buyer_ctes(gated) if new_buyer else []
    touched = (
        sa.update(_IDENTITIES)
        .where(_IDENTITIES.c.id == sa.bindparam("touch_identity_id", type_=_IDENTITIES.c.id.type), gated)
        .values(last_seen_at=sa.bindparam("touch_at", type_=_IDENTITIES.c.last_seen_at.type))
        .cte("touched")
    )
    records = json_table("line_rows", [(c, _LINES.c[c].type) for c in LINE_COLUMNS], "x")
    lines = (
        postgresql.insert(_LINES)
        .from_select(list(LINE_COLUMNS), sa.select(*(records.c[c] for c in LINE_COLUMNS)).where(gated))
        .cte("lines")
    )
    now = sa.bindparam("now", type_=ledger.BALANCES.c.updated_at.type)
    binds = {
        "credits": sa.bindparam("credits", type_=sa.Text()),
        "awards": sa.bindparam("awards", type_=sa.Text()),
        "now": now,
        "member_id": sa.bindparam("member_id", type_=ledger.BALANCES.c.member_id.type),
        "changed_payload": sa.bindparam("changed_payload", type_=outbox.EVENTS.c.payload.type),
        "changed_at": sa.bindparam("changed_at", type_=outbox.EVENTS.c.occurred_at.type),
        "new_member_source": sa.bindparam("new_member_source", type_=sa.String()),
        "new_member_at": sa.bindparam("new_member_at", type_=outbox.EVENTS.c.occurred_at.type),
    }
    posting = ledger.posting_ctes(True, gate_on="o")
    tail = f"""
order_figures AS (
    SELECT (SELECT coalesce(sum(p.amount), 0) FROM posted p WHERE p.order_id = o.id) AS points,
        greatest(coalesce((SELECT b.available FROM balances b),
            (SELECT pb.available FROM points_balances pb WHERE pb.member_id = :member_id), 0), 0) AS available
    FROM o
)
events AS (
    INSERT INTO outbox_events (name, payload, occurred_at)
    SELECT ev.name, ev.payload, ev.occurred_at FROM ({_MEMBER_CREATED if new_buyer else ""}
        SELECT 0 AS step, s.member_id AS m, 'points_changed' AS name, {ledger.POINTS_CHANGED_PAYLOAD} AS payload,
            CAST(:now AS TIMESTAMP WITH TIME ZONE) AS occurred_at
        FROM sums s JOIN balances b ON b.member_id = s.member_id
        UNION ALL
        SELECT 1, 0, 'order_changed', CAST(:changed_payload AS JSONB),
            CAST(:changed_at AS TIMESTAMP WITH TIME ZONE)
        FROM o
    ) ev ORDER BY ev.step, ev.m
)"""  # noqa: S608 - constant text
    ctes = _text_ctes(posting + "\n" + tail, binds)
    figures_at = [c.name for c in ctes].index("order_figures")
    followed = follow.cte("followed")
    ordered = [order, *made, touched, lines, *ctes[: figures_at + 1], followed, *ctes[figures_at + 1 :]]
    return (
        sa.select(
            sa.literal_column("o.id").label("order_id"),
            sa.literal_column("f.points").label("points"),
            sa.literal_column("f.available").label("shown"),
            sa.literal_column(
                "(SELECT coalesce(sum(p.amount), 0) FROM posted p WHERE p.lot_status = 'available')"
            ).label("delta"),
            sa.literal_column("b.available").label("available"),
            sa.literal_column("b.pending").label("pending"),
            sa.literal_column("b.owed").label("owed"),
        )
        .select_from(sa.text("o JOIN order_figures f ON true LEFT JOIN balances b ON true"))
        .add_cte(*ordered)
    )


@functools.cache
def _sequence_ids() -> Any:
    """The ids a quick sale's order and ``line_count`` lines take, drawn once (a CTE: evaluated once), and a new
    buyer's member id when ``new_buyer`` and no identity holds its claim (``claim_kind``, ``claim_value``) yet
    (NULL otherwise: a ``CASE`` does not evaluate the ``nextval`` it does not take, so a known member's sale
    draws no member id, nor a sale by the mobile of a member the till had not resolved, which the transactional
    path then gives to that member: such a receipt burnt a member id each before, leftovers14)."""
    held = sa.exists().where(
        _IDENTITIES.c.kind == sa.bindparam("claim_kind", type_=_IDENTITIES.c.kind.type),
        _IDENTITIES.c.value == sa.bindparam("claim_value", type_=_IDENTITIES.c.value.type),
    )
    lines = (
        sa.select(sa.func.array_agg(sa.func.nextval(sa.literal_column(f"'{LINE_IDS}'"))))
        .select_from(sa.func.generate_series(1, sa.bindparam("line_count", type_=sa.Integer())))
        .scalar_subquery()
    )
    return sa.select(
        sa.func.nextval(sa.literal_column(f"'{ORDER_IDS}'")).label("quick_order_id"),
        lines.label("quick_line_ids"),
        sa.case(
            (
                sa.and_(sa.bindparam("new_buyer", type_=sa.Boolean()), ~held),
                sa.func.nextval(sa.literal_column(f"'{MEMBER_IDS}'")),
            )
        ).label("quick_member_id"),
    ).cte("quick_ids")


def sequence_ids() -> Any:
    """The CTE drawing a quick sale's ids (columns ``quick_order_id``, ``quick_line_ids``, ``quick_member_id``),
    built once."""
    return _sequence_ids()
