"""Ledger mechanics shared by every points operation.

Two write paths, both inside the caller's transaction:

* :func:`post_credits` — earns and other pure credits in bulk: the entries are inserted with
  ``ON CONFLICT DO NOTHING`` on their idempotency key, and only the entries that were really inserted create
  lots and move balances (an upsert that adds to the cached balance). A handful of statements per batch.
* :class:`Book` — everything that takes points (redeem, reverse, expire, transfer, clawback) or moves them between
  pending and available: it first locks the members' balance rows (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite
  writers are already serialised by ``BEGIN IMMEDIATE``), reads the lots it needs, decides in Python and writes
  everything back in bulk in :meth:`Book.flush`.

Invariants (checked by :func:`verify`): for every member ``available + pending = Σ entries``; ``pending`` is the
remainder of pending lots; ``max(available, 0)`` is the remainder of available lots (``available < 0`` is debt,
recorded by a reversal under the ``debt`` policy, and no available lot has points while it lasts); ``owed`` (the
``clawback`` policy) is ``Σ shortfall − Σ clawbacks``; every lot's remainder is its amount minus its draws, and
never negative.

Merges (:mod:`tongcrm.members.merge`) move entries and lots to the survivor and recompute balances. An undo moves
them back, and :func:`split_after_undo` settles what the merged member did meanwhile: draws follow the lot (each
lot goes back as it is; entries about a row that goes back, such as its expiry or refund reversal, go back with
it), and one pair of ``merge_split`` entries, summing to zero, with no lot and no draw of their own, moves the
points (and owed points) that one member's lots lost to the other's entries, so the invariants above hold for
both members again.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db import direct
from tongcrm.db.dialect import (
    among,
    dialect_name,
    insert,
    insert_for,
    insert_rows,
    json_records,
    json_records_text,
    one_of,
    rows_params,
    values_size,
)
from tongcrm.errors import Conflict
from tongcrm.jobs import outbox
from tongcrm.points.models import (
    EntryKind,
    PointsBalance,
    PointsEntry,
    PointsLineAward,
    PointsLot,
    PointsLotDraw,
)

ENTRIES = cast(sa.Table, PointsEntry.__table__)
LOTS = cast(sa.Table, PointsLot.__table__)
DRAWS = cast(sa.Table, PointsLotDraw.__table__)
BALANCES = cast(sa.Table, PointsBalance.__table__)
AWARDS = cast(sa.Table, PointsLineAward.__table__)
#: The columns of an award gate's rows (:func:`post_gated`'s ``gate``).
AWARD_COLUMNS = ("line_id", "order_id", "member_id", "rule_version", "points", "evaluated_at")

PENDING = "pending"
AVAILABLE = "available"

#: The most points one manual entry (adjustment, redemption, transfer) may move: a billion points is far past
#: any real correction, and keeps a single request from pushing a balance near its bound.
MAX_ENTRY_POINTS = 10**9
#: The most points a member may hold (available plus pending): 2^53 - 1, the largest integer every JSON
#: client (JavaScript's numbers included) reads exactly, and far inside the 64-bit columns, so sums of
#: balances over many members cannot overflow them either. A credit past it is refused (409), not stored.
MAX_BALANCE = 2**53 - 1


@dataclass(slots=True)
class Credit:
    """A credit to post in bulk: an entry and, when ``lot`` is true, the lot it creates."""

    member_id: int
    key: str
    kind: str
    amount: int
    occurred_at: datetime
    available_at: datetime | None
    expires_at: datetime | None
    status: str = AVAILABLE
    release_on: str = "paid"
    return_window_days: int = 0
    account_id: int | None = None
    order_id: int | None = None
    line_id: int | None = None
    rule_code: str | None = None
    rule_version: int | None = None
    reason: str | None = None
    actor: str = "system"
    ref_entry_id: int | None = None
    detail: dict[str, Any] | None = None


def check_balance_bound(member_id: int, total: int) -> None:
    """Refuse (409) a credit that would take a member's points past :data:`MAX_BALANCE`."""
    if total > MAX_BALANCE:
        raise Conflict(
            f"member {member_id}'s points would exceed the most a balance may hold ({MAX_BALANCE})",
            extra={"max_balance": MAX_BALANCE},
        )


def _entry_row(c: Credit, now: datetime) -> dict[str, Any]:
    """The entry's row. ``created_at`` is when it was written (``now``), not when its event happened
    (``occurred_at``): an imported opening balance or a backfilled order's earn is written long after."""
    return {
        "member_id": c.member_id,
        "kind": c.kind,
        "amount": c.amount,
        "shortfall": 0,
        "idempotency_key": c.key,
        "account_id": c.account_id,
        "order_id": c.order_id,
        "line_id": c.line_id,
        "rule_code": c.rule_code,
        "rule_version": c.rule_version,
        "reason": c.reason,
        "actor": c.actor,
        "ref_entry_id": c.ref_entry_id,
        "occurred_at": c.occurred_at,
        "available_from": c.available_at if c.status == AVAILABLE else None,
        "expires_at": c.expires_at,
        "detail": c.detail,
        "created_at": now,
    }


def _by_key(credits: Sequence[Credit]) -> dict[str, Credit]:
    """The credits that move points (amount > 0), the first of each idempotency key."""
    by_key: dict[str, Credit] = {}
    for c in credits:
        if c.amount > 0:
            by_key.setdefault(c.key, c)
    return by_key


def posted_credits(credits: Sequence[Credit], posted: Mapping[str, int]) -> dict[int, Credit]:
    """The credits of ``credits`` that a posting wrote (``posted``: entry ids by key, as :func:`post_gated`
    returns them), by entry id — which is their lot's id."""
    return {posted[key]: c for key, c in _by_key(credits).items() if key in posted}


def posted_lot(credit: Credit, entry_id: int) -> Lot:
    """The lot ``credit`` created when it was posted as entry ``entry_id``, as a read of it right after finds
    it (what :func:`_posting` inserts; datetimes in UTC as they are read back): for the transaction that
    posted it, which alone can see it until it commits, so nothing else can have changed it."""
    lot = _credit_lot(credit, entry_id, None, new=False)
    lot.available_at, lot.expires_at = _utc(lot.available_at), _utc(lot.expires_at)
    lot.earned_at = lot.earned_at.astimezone(UTC)
    return lot


def _credit_lot(credit: Credit, lot_id: int | None, key: str | None, *, new: bool) -> Lot:
    """The lot a credit creates, before anything draws on it."""
    return Lot(
        id=lot_id,
        key=key,
        member_id=credit.member_id,
        amount=credit.amount,
        remaining=credit.amount,
        reversed=0,
        status=credit.status,
        release_on=credit.release_on,
        return_window_days=credit.return_window_days,
        available_at=credit.available_at,
        expires_at=credit.expires_at,
        earned_at=credit.occurred_at,
        order_id=credit.order_id,
        line_id=credit.line_id,
        rule_code=credit.rule_code,
        new=new,
    )


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


async def post_gated(
    session: AsyncSession,
    credits: Sequence[Credit],
    *,
    gate: Sequence[dict[str, Any]],
    lots_of: Sequence[int],
    now: datetime,
) -> tuple[dict[str, int], list[Any], dict[int, tuple[int, int, int]]]:
    """PostgreSQL: :func:`post_credits` behind an award gate, in one statement, with the lots of the lines
    ``lots_of`` as a read of them right after would find them.

    ``gate``: ``points_line_awards`` rows (columns :data:`AWARD_COLUMNS`) claimed in the same statement, before
    the credits: a credit of a line (``line_id`` set) is posted only when its line's award was claimed now, and
    a credit without a line only when its member's award of some line was — what posting the credits of the
    lines an award gate returned (and the events of their members) did in two statements. The awards are
    claimed even when no credit is left to post.

    Returns the entry ids posted by key; the lots of ``lots_of`` (the columns of a lot that decide its
    release and reversal: ``id``, ``member_id``, ``line_id``, ``status``, ``available_at``, ``release_on``,
    ``return_window_days``, ``amount``, ``reversed``): those held before the statement and those it posted;
    and the balances (available, pending, owed) of the members it credited, by member, as its upsert left
    them — locked by it for the rest of the transaction (:meth:`Book.hold`) — unless settling debt moved them
    since."""
    if dialect_name(session) != "postgresql":
        raise ValueError("an award gate rides with the posting on PostgreSQL only")
    return await _post_in_one(session, _by_key(credits), now=now, emit_events=True, gate=(gate, lots_of))


async def post_credits(
    session: AsyncSession, credits: Sequence[Credit], *, now: datetime, emit_events: bool = True
) -> dict[str, int]:
    """Post credits whose keys are new; credits whose key was already posted change nothing.

    Returns the entry id of every credit that was posted, by key.
    """
    by_key = _by_key(credits)
    if not by_key:
        return {}
    dialect = dialect_name(session)
    if dialect == "postgresql":
        posted, _, _ = await _post_in_one(session, by_key, now=now, emit_events=emit_events)
        return posted
    bulk = _bulk(dialect)
    entry_rows = [_entry_row(c, now) for c in by_key.values()]
    size = values_size(dialect, _ENTRY_COLUMNS, len(entry_rows))
    params = rows_params(dialect, ENTRIES, _ENTRY_COLUMNS, entry_rows, size=size)
    rows = await direct.rows(session, _insert_entries(dialect, size), params)
    posted = {key: entry_id for entry_id, key in rows}
    if not posted:
        return {}
    # The lots, the balance changes and the events are derived in the database from the entries just
    # written: binding each of them row by row from Python cost three times the entries' own insert.
    groups: dict[tuple[str, str, int, datetime | None], list[int]] = defaultdict(list)
    deltas: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for key, entry_id in posted.items():
        c = by_key[key]
        pending_at = None if c.status == AVAILABLE else c.available_at
        groups[(c.status, c.release_on, c.return_window_days, pending_at)].append(entry_id)
        deltas[c.member_id][0 if c.status == AVAILABLE else 1] += c.amount
    ids = sorted(posted.values())
    # lots, balances and events have no Python between them: one hand-off to SQLite's thread (direct.batch)
    steps: list[direct.Step] = []
    for (status, release_on, window, pending_at), entry_ids in groups.items():
        for chunk in _chunks(entry_ids):
            steps.append(
                (
                    bulk.lots_from_pending_entries
                    if status != AVAILABLE
                    else bulk.lots_from_available_entries,
                    {
                        "ids": chunk,
                        "status": status,
                        "release_on": release_on,
                        "return_window_days": window,
                        "available_at": pending_at,
                    },
                )
            )
    lots_steps = len(steps)
    steps.extend((bulk.add_lots_to_balances, {"ids": chunk, "now": now}) for chunk in _chunks(ids))
    balance_steps = len(steps)
    if emit_events:
        steps.extend((bulk.events_for_lots, {"ids": chunk, "now": now}) for chunk in _chunks(ids))
    results = await direct.batch(session, steps)
    balances: dict[int, tuple[int, int, int]] = {
        r[0]: (r[1], r[2], r[3]) for result in results[lots_steps:balance_steps] for r in result
    }
    await _settle_credited(session, balances, {m: d[0] for m, d in deltas.items()}, now=now)
    return posted


def steps_ahead(dialect: str, counts: Iterable[int]) -> list[tuple[Any, Mapping[str, Any]]]:
    """The statements :func:`post_credits` runs on ``dialect`` for each number of credits in ``counts`` (their
    entries, then the lots, balances and events made from them: available lots and pending ones) with the
    parameters their plans are kept under, for a start-up step that compiles them ahead (:mod:`tongcrm.warmup`;
    issue #22, branch till15: SQLite's first till checkout). None on PostgreSQL, whose posting is one statement
    built per call's shape (:func:`_post_in_one`). Nothing is run."""
    if dialect == "postgresql":
        return []
    bulk = _bulk(dialect)
    sizes = sorted({values_size(dialect, _ENTRY_COLUMNS, count) for count in counts}, key=lambda s: s or 0)
    steps: list[tuple[Any, Mapping[str, Any]]] = [(_insert_entries(dialect, size), {}) for size in sizes]
    for statement in (
        bulk.lots_from_available_entries,
        bulk.lots_from_pending_entries,
        bulk.add_lots_to_balances,
        bulk.events_for_lots,
    ):
        steps.append((statement, {}))
    return steps


async def settle_credited(
    session: AsyncSession,
    balances: dict[int, tuple[int, int, int]],
    available_deltas: dict[int, int],
    *,
    now: datetime,
) -> list[int]:
    """:func:`_settle_credited` for a caller that posted credits in a statement of its own (a till's
    one-statement checkout, :mod:`tongcrm.counter_quick`)."""
    return await _settle_credited(session, balances, available_deltas, now=now)


async def _settle_credited(
    session: AsyncSession,
    balances: dict[int, tuple[int, int, int]],
    available_deltas: dict[int, int],
    *,
    now: datetime,
) -> list[int]:
    """After credits moved ``balances`` (available, pending, owed): refuse a balance past its bound, and let a
    member in debt or owing points pay it from what it just earned. Returns the members settled."""
    for m, (available, pending, _owed) in balances.items():
        check_balance_bound(m, available + pending)
    needs_settling = [
        m
        for m, (available, _pending, owed) in balances.items()
        if available_deltas.get(m, 0) and (available - available_deltas[m] < 0 or owed > 0)
    ]
    if needs_settling:
        book = Book(session, now=now)
        await book.lock(needs_settling)
        await book.settle(needs_settling)
        await book.flush()
    return needs_settling


async def _post_in_one(
    session: AsyncSession,
    by_key: dict[str, Credit],
    *,
    now: datetime,
    emit_events: bool,
    gate: tuple[Sequence[dict[str, Any]], Sequence[int]] | None = None,
) -> tuple[dict[str, int], list[Any], dict[int, tuple[int, int, int]]]:
    """PostgreSQL: the entries, their lots, the balance changes and the ``points_changed`` events in ONE
    statement (data-modifying CTEs, :func:`_posting`), where they were five round trips a page; with ``gate``
    (award rows, lines: see :func:`post_gated`) the award gate's claim and the lines' lots too.

    Writes the same rows as the SQLite path: lots share their entry's id, balances move by what the new lots
    hold, one event per member with its balance after them, in member order."""
    credits = list(by_key.values())
    params: dict[str, Any] = {
        "credits": json_records_text(credits),
        "now": now,
    }
    lots: list[Any] = []
    if gate is not None:
        awards, lots_of = gate
        params["awards"] = json_records_text(awards)
        params["lots_of"] = list(lots_of)
        rows: list[Any] = []
        for row in await direct.rows(session, _posting(emit_events, True), params):
            (rows if row.kind == "entry" else lots).append(row)
    else:
        rows = await direct.rows(session, _posting(emit_events), params)
    posted = {r.idempotency_key: r.id for r in rows}
    if not posted:
        return {}, lots, {}
    deltas: dict[int, int] = defaultdict(int)
    balances: dict[int, tuple[int, int, int]] = {}
    for r in rows:
        if by_key[r.idempotency_key].status == AVAILABLE:
            deltas[r.member_id] += by_key[r.idempotency_key].amount
        balances[r.member_id] = (r.available, r.pending, r.owed)
    settled = await _settle_credited(session, dict(sorted(balances.items())), deltas, now=now)
    for m in settled:
        del balances[m]
    return posted, lots, balances


@functools.cache
def _posting(emit_events: bool, gated: bool = False) -> Any:
    """The statement of :func:`_post_in_one`: one fixed text (one array per column), prepared once per
    connection. Each CTE sees only what the ones before it returned, so balances and events are computed from
    the entries' RETURNING and the balances' RETURNING, not re-read.

    ``gated``: the award rows bound as ``a_<column>`` are claimed first (``ON CONFLICT (line_id) DO NOTHING``,
    the award gate's own insert), and only the credits the claim lets through (see :func:`post_gated`) are
    the statement's ``r``; rows carry a ``kind``: ``entry`` rows as above, then ``lot`` rows, the lots of the
    lines bound as ``lots_of`` — those the statement's snapshot holds (a CTE does not see its siblings'
    inserts) and those it inserts."""
    events = (
        f""",
events AS (
    INSERT INTO outbox_events (name, payload, occurred_at)
    SELECT 'points_changed', {POINTS_CHANGED_PAYLOAD}, :now
    FROM sums s JOIN balances b ON b.member_id = s.member_id
    ORDER BY s.member_id
)"""  # noqa: S608 - this module's constant text
        if emit_events
        else ""
    )
    sql = f"""
WITH{posting_ctes(gated)}{events}
SELECT p.id, p.idempotency_key, p.member_id, b.available, b.pending, b.owed
FROM posted p JOIN balances b ON b.member_id = p.member_id
"""  # noqa: S608 - built from this module's constant column names, no input
    binds: list[Any] = [sa.bindparam("credits", type_=sa.Text())]
    if gated:
        sql = sql.replace(
            "\nSELECT p.id, p.idempotency_key, p.member_id, b.available, b.pending, b.owed\n",
            _GATED_TAIL,
        )
        binds.append(sa.bindparam("awards", type_=sa.Text()))
        binds.append(sa.bindparam("lots_of", type_=postgresql.ARRAY(sa.BigInteger())))
    binds.append(sa.bindparam("now", type_=BALANCES.c.updated_at.type))
    return sa.text(sql).bindparams(*binds)


#: the points_changed event of a posting, as :func:`_posting` writes it: from its ``sums`` and ``balances``
POINTS_CHANGED_PAYLOAD = (
    "jsonb_build_object('member_id', s.member_id, 'delta', s.available + s.pending, "
    "'available', b.available, 'pending', b.pending)"
)


def posting_ctes(gated: bool, gate_on: str | None = None) -> str:
    """The CTEs of :func:`_posting` (without its events and its final select), as SQL text after ``WITH``:
    ``[gate,] r, entries, posted, lots, sums, balances``, reading the credits bound as ``:credits`` (and the
    awards as ``:awards`` when ``gated``) and the time as ``:now``. ``gate_on``: the name of a relation of
    the statement they go in (a CTE before them) without whose row the award gate claims nothing — so no
    credit of a line is posted (a till's one-statement checkout, :mod:`tongcrm.counter_quick`)."""
    # built here, not at import: a foreign key's column takes its type once the table it names is known
    credits = json_records("credits", [(n, c.type) for n, c in _CREDIT_FIELDS], alias="c")
    entry_values = _entry_values("r")
    gate = ""
    passes = ""
    if gated:
        only = "" if gate_on is None else f"\n    WHERE EXISTS (SELECT 1 FROM {gate_on})"  # noqa: S608 - a CTE's name
        gate = f"""
gate AS (
    INSERT INTO points_line_awards ({", ".join(AWARD_COLUMNS)})
    SELECT {", ".join(AWARD_COLUMNS)} FROM {json_records("awards", [(n, AWARDS.c[n].type) for n in AWARD_COLUMNS], alias="a")}{only}
    ON CONFLICT (line_id) DO NOTHING
    RETURNING line_id, member_id
),"""  # noqa: S608 - this module's constant column names
        passes = """
    WHERE c.line_id IN (SELECT line_id FROM gate)
        OR (c.line_id IS NULL AND c.member_id IN (SELECT member_id FROM gate))"""
    # the entry's columns, and the lot's, from the credit as msgspec wrote it (:data:`_CREDIT_FIELDS`)
    return f"""{gate}
r AS (
    SELECT c.member_id, c.kind, c.amount, 0 AS shortfall, c.key AS idempotency_key, c.account_id, c.order_id,
        c.line_id, c.rule_code, c.rule_version, c.reason, c.actor, c.ref_entry_id, c.occurred_at,
        CASE WHEN c.status = 'available' THEN c.available_at END AS available_from, c.expires_at, c.detail,
        CAST(:now AS TIMESTAMP WITH TIME ZONE) AS created_at, c.status AS lot_status,
        c.release_on AS lot_release_on, c.return_window_days AS lot_window,
        CASE WHEN c.status = 'available' THEN NULL ELSE c.available_at END AS lot_available_at,
        c.ordinality AS position
    FROM {credits}{passes}
),
entries AS (
    INSERT INTO points_entries ({", ".join(_ENTRY_COLUMNS)})
    SELECT {entry_values} FROM r ORDER BY r.position
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key, member_id, order_id, line_id, rule_code, amount, available_from, expires_at,
        occurred_at
),
posted AS (
    SELECT e.*, r.lot_status, r.lot_release_on, r.lot_window, r.lot_available_at
    FROM entries e JOIN r ON r.idempotency_key = e.idempotency_key
),
lots AS (
    INSERT INTO points_lots (id, member_id, order_id, line_id, rule_code, amount, remaining, reversed, status,
        release_on, return_window_days, available_at, expires_at, earned_at)
    SELECT id, member_id, order_id, line_id, rule_code, amount, amount, 0, lot_status, lot_release_on,
        lot_window, CASE WHEN lot_status = 'available' THEN available_from ELSE lot_available_at END,
        expires_at, occurred_at
    FROM posted
),
sums AS (
    SELECT member_id,
        sum(CASE WHEN lot_status = 'available' THEN amount ELSE 0 END) AS available,
        sum(CASE WHEN lot_status = 'available' THEN 0 ELSE amount END) AS pending
    FROM posted GROUP BY member_id
),
balances AS (
    INSERT INTO points_balances AS b (member_id, available, pending, owed, updated_at)
    SELECT member_id, available, pending, 0, :now FROM sums ORDER BY member_id
    ON CONFLICT (member_id) DO UPDATE SET available = b.available + excluded.available,
        pending = b.pending + excluded.pending, updated_at = excluded.updated_at
    RETURNING b.member_id, b.available, b.pending, b.owed
)"""  # noqa: S608 - built from this module's constant column names, no input


#: The fields of :class:`Credit` the posting reads (msgspec writes a dataclass as an object of its fields), with
#: the types of the columns they are stored in.
_CREDIT_FIELDS: tuple[tuple[str, sa.Column[Any]], ...] = (
    ("member_id", ENTRIES.c.member_id),
    ("key", ENTRIES.c.idempotency_key),
    ("kind", ENTRIES.c.kind),
    ("amount", ENTRIES.c.amount),
    ("occurred_at", ENTRIES.c.occurred_at),
    ("available_at", ENTRIES.c.available_from),
    ("expires_at", ENTRIES.c.expires_at),
    ("status", LOTS.c.status),
    ("release_on", LOTS.c.release_on),
    ("return_window_days", LOTS.c.return_window_days),
    *((n, ENTRIES.c[n]) for n in ("account_id", "order_id", "line_id", "rule_code", "rule_version")),
    *((n, ENTRIES.c[n]) for n in ("reason", "actor", "ref_entry_id", "detail")),
)

#: The gated posting's rows (:func:`_posting`): its entries, then the lots of the lines ``lots_of`` held before
#: it, then those it posted on them (a lot's columns as :func:`_lots_of_lines` in :mod:`tongcrm.points.service`).
_GATED_TAIL = """,
old_lots AS (
    SELECT id, member_id, line_id, status, available_at, release_on, return_window_days, amount, reversed
    FROM points_lots WHERE line_id = ANY(CAST(:lots_of AS BIGINT[]))
)
SELECT 'lot' AS kind, id, CAST(NULL AS VARCHAR) AS idempotency_key, member_id, CAST(NULL AS BIGINT) AS available,
    CAST(NULL AS BIGINT) AS pending, CAST(NULL AS BIGINT) AS owed, line_id, status, available_at, release_on,
    return_window_days, amount, reversed
FROM old_lots
UNION ALL
SELECT 'lot', id, NULL, member_id, NULL, NULL, NULL, line_id, lot_status,
    CASE WHEN lot_status = 'available' THEN available_from ELSE lot_available_at END, lot_release_on, lot_window,
    amount, 0
FROM posted WHERE line_id = ANY(CAST(:lots_of AS BIGINT[]))
UNION ALL
SELECT 'entry', p.id, p.idempotency_key, p.member_id, b.available, b.pending, b.owed, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL
"""


def _chunks(ids: Sequence[int], size: int = 5000) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


_ENTRY_COLUMNS = (
    "member_id",
    "kind",
    "amount",
    "shortfall",
    "idempotency_key",
    "account_id",
    "order_id",
    "line_id",
    "rule_code",
    "rule_version",
    "reason",
    "actor",
    "ref_entry_id",
    "occurred_at",
    "available_from",
    "expires_at",
    "detail",
    "created_at",
)


@dataclass(frozen=True, slots=True)
class _BulkStatements:
    """The statements of :func:`post_credits` for one dialect, built once."""

    unnest: bool
    insert_entries: Any
    lots_from_available_entries: sa.Insert
    lots_from_pending_entries: sa.Insert
    add_lots_to_balances: Any
    events_for_lots: sa.Insert


@functools.cache
def _insert_entries(dialect: str, size: int | None = None) -> Any:
    """Entries whose key is new, returning (id, key) of those inserted: one fixed text (on SQLite one per
    ``size``, :func:`tongcrm.db.dialect.values_size`)."""
    return (
        insert_rows(dialect, ENTRIES, _ENTRY_COLUMNS, size=size)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(ENTRIES.c.id, ENTRIES.c.idempotency_key)
    )


@functools.cache
def _bulk(dialect: str) -> _BulkStatements:
    postgres = dialect == "postgresql"

    def among(column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """``column`` is one of ``:ids``: one parameter whatever their number (an array on PostgreSQL, a JSON
        array on SQLite, :func:`tongcrm.db.dialect.one_of`), so the text is fixed: an expanded ``IN`` list was a
        new statement for SQLite to prepare, and for :mod:`tongcrm.db.direct` to compile, at every length."""
        return cast(sa.ColumnElement[bool], one_of(dialect, column, "ids"))

    insert_entries = _insert_entries(dialect)

    def lots_from_entries(*, pending: bool) -> sa.Insert:
        """A lot for each entry in ``:ids`` (sharing its entry's id); what entries do not hold is bound."""
        available_at: Any = (
            sa.bindparam("available_at", type_=ENTRIES.c.available_from.type)
            if pending
            else ENTRIES.c.available_from
        )
        select = sa.select(
            ENTRIES.c.id,
            ENTRIES.c.member_id,
            ENTRIES.c.order_id,
            ENTRIES.c.line_id,
            ENTRIES.c.rule_code,
            ENTRIES.c.amount,
            ENTRIES.c.amount.label("remaining"),
            sa.literal(0, sa.BigInteger).label("reversed"),
            sa.bindparam("status", type_=sa.String).label("status"),
            sa.bindparam("release_on", type_=sa.String).label("release_on"),
            sa.bindparam("return_window_days", type_=sa.Integer).label("return_window_days"),
            available_at.label("available_at"),
            ENTRIES.c.expires_at,
            ENTRIES.c.occurred_at,
        ).where(among(ENTRIES.c.id))
        columns = ["id", "member_id", "order_id", "line_id", "rule_code", "amount", "remaining", "reversed"]
        columns += ["status", "release_on", "return_window_days", "available_at", "expires_at", "earned_at"]
        return sa.insert(LOTS).from_select(columns, select)

    is_available = LOTS.c.status == AVAILABLE
    sums = (
        sa.select(
            LOTS.c.member_id,
            sa.func.sum(sa.case((is_available, LOTS.c.amount), else_=0)).label("available"),
            sa.func.sum(sa.case((is_available, 0), else_=LOTS.c.amount)).label("pending"),
        )
        .where(among(LOTS.c.id))
        .group_by(LOTS.c.member_id)
        .subquery()
    )
    now = sa.bindparam("now", type_=BALANCES.c.updated_at.type)
    select = (
        sa.select(sums.c.member_id, sums.c.available, sums.c.pending, sa.literal(0, sa.BigInteger), now)
        .where(sa.true())  # SQLite needs a WHERE before an upsert's ON CONFLICT
        .order_by(sums.c.member_id)  # one lock order for every writer
    )
    add: Any = insert_for(dialect, BALANCES).from_select(
        ["member_id", "available", "pending", "owed", "updated_at"], select
    )
    add = add.on_conflict_do_update(
        index_elements=["member_id"],
        set_={
            "available": BALANCES.c.available + add.excluded.available,
            "pending": BALANCES.c.pending + add.excluded.pending,
            "updated_at": add.excluded.updated_at,
        },
    ).returning(BALANCES.c.member_id, BALANCES.c.available, BALANCES.c.pending, BALANCES.c.owed)

    # one points_changed event per member, with the balance after the lots: the rows outbox.emit() writes
    build = sa.func.jsonb_build_object if postgres else sa.func.json_object
    payload = build(
        "member_id",
        sums.c.member_id,
        "delta",
        sums.c.available + sums.c.pending,
        "available",
        BALANCES.c.available,
        "pending",
        BALANCES.c.pending,
    )
    events = sa.insert(outbox.EVENTS).from_select(
        ["name", "payload", "occurred_at"],
        sa.select(sa.literal("points_changed", sa.String), payload, now)
        .select_from(sums.join(BALANCES, BALANCES.c.member_id == sums.c.member_id))
        .order_by(sums.c.member_id),
    )
    return _BulkStatements(
        unnest=postgres,
        insert_entries=insert_entries,
        lots_from_available_entries=lots_from_entries(pending=False),
        lots_from_pending_entries=lots_from_entries(pending=True),
        add_lots_to_balances=add,
        events_for_lots=events,
    )


# -------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Lot:
    id: int | None
    key: str | None  # the creating entry's key while the lot is new
    member_id: int
    amount: int
    remaining: int
    reversed: int
    status: str
    release_on: str
    return_window_days: int
    available_at: datetime | None
    expires_at: datetime | None
    earned_at: datetime
    order_id: int | None = None
    line_id: int | None = None
    rule_code: str | None = None
    new: bool = False
    dirty: bool = False

    def sort_key(self) -> tuple[int, datetime, datetime, int]:
        far = self.earned_at.replace(year=9999)
        return (0 if self.expires_at else 1, self.expires_at or far, self.earned_at, self.id or 0)


@dataclass(slots=True)
class Balance:
    member_id: int
    available: int
    pending: int
    owed: int
    before: tuple[int, int, int] = (0, 0, 0)


@dataclass(slots=True)
class _Draw:
    lot: Lot
    entry: str | int  # the new entry's key, or an existing entry's id
    kind: str
    amount: int


@dataclass(slots=True)
class Taken:
    pending: int = 0
    available: int = 0
    draws: list[tuple[Lot, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.pending + self.available


def _lot_from_row(row: Any) -> Lot:
    return Lot(
        id=row.id,
        key=None,
        member_id=row.member_id,
        amount=row.amount,
        remaining=row.remaining,
        reversed=row.reversed,
        status=row.status,
        release_on=row.release_on,
        return_window_days=row.return_window_days,
        available_at=row.available_at,
        expires_at=row.expires_at,
        earned_at=row.earned_at,
        order_id=row.order_id,
        line_id=row.line_id,
        rule_code=row.rule_code,
    )


class Book:
    """A unit of ledger work on locked members: read, decide in memory, write back in bulk."""

    def __init__(self, session: AsyncSession, *, now: datetime, actor: str = "system") -> None:
        self.session = session
        self.now = now
        self.actor = actor
        self.balances: dict[int, Balance] = {}
        self.lots: dict[int, Lot] = {}
        self.new_lots: list[Lot] = []
        self.entries: list[dict[str, Any]] = []
        self.draws: list[_Draw] = []
        self._available_loaded: set[int] = set()
        self.flushed_ids: dict[str, int] = {}

    # -- reading -------------------------------------------------------------------------------------------------

    def hold(self, balances: Mapping[int, tuple[int, int, int]]) -> None:
        """Balances (available, pending, owed) this transaction has already locked and read as they are — the
        rows a posting's upsert just updated, as it returned them (:func:`post_gated`): :meth:`lock` then
        skips them (one round trip less)."""
        for m, (available, pending, owed) in balances.items():
            self.balances.setdefault(m, Balance(m, available, pending, owed, (available, pending, owed)))

    def know(self, lots: Iterable[Lot]) -> None:
        """Lots as they are in this transaction without a read: those it inserted itself (:func:`posted_lot`),
        which no other transaction can see, let alone change. :meth:`load_lots` keeps these objects for
        their rows."""
        for lot in lots:
            self.lots.setdefault(int(lot.id or 0), lot)

    async def lock(self, member_ids: Iterable[int]) -> None:
        """Create missing balance rows, then lock and read them, in member id order."""
        ids = sorted(set(member_ids) - self.balances.keys())
        if not ids:
            return
        if dialect_name(self.session) == "postgresql":
            rows = (await self.session.execute(_lock_statement(), {"ids": ids, "now": self.now})).all()
            for m, available, pending, owed in sorted(rows):
                self.balances[m] = Balance(m, available, pending, owed, (available, pending, owed))
            # a row another transaction inserted after this statement's snapshot is neither inserted nor read
            # by it: lock those the long way
            ids = [m for m in ids if m not in self.balances]
            if not ids:
                return
        ensure = insert(self.session, BALANCES).on_conflict_do_nothing(index_elements=["member_id"])
        await self.session.execute(
            ensure,
            [{"member_id": m, "available": 0, "pending": 0, "owed": 0, "updated_at": self.now} for m in ids],
        )
        query = (
            sa.select(BALANCES.c.member_id, BALANCES.c.available, BALANCES.c.pending, BALANCES.c.owed)
            .where(BALANCES.c.member_id.in_(ids))
            .order_by(BALANCES.c.member_id)
        )
        if dialect_name(self.session) == "postgresql":
            query = query.with_for_update()
        for m, available, pending, owed in (await self.session.execute(query)).all():
            self.balances[m] = Balance(m, available, pending, owed, (available, pending, owed))

    async def load_lots(
        self, where: sa.ColumnElement[bool], *, with_available_of: Iterable[int] = ()
    ) -> list[Lot]:
        """Lots matching ``where`` (call after :meth:`lock` for their members). ``with_available_of``: the
        same read also does :meth:`load_available` for those members (one round trip instead of two)."""
        ids = sorted(set(with_available_of) - self._available_loaded)
        query = sa.select(LOTS)
        if ids:
            query = sa.select(LOTS, where.label("wanted")).where(sa.or_(where, self._available_of(ids)))
        rows = (await self.session.execute(query if ids else query.where(where))).all()
        out = []
        for row in rows:
            lot = self.lots.get(row.id)
            if lot is None:
                lot = self.lots[row.id] = _lot_from_row(row)
            if not ids or row.wanted:
                out.append(lot)
        self._available_loaded.update(ids)
        return out

    def _available_of(self, member_ids: Sequence[int]) -> sa.ColumnElement[bool]:
        return sa.and_(
            among(dialect_name(self.session), LOTS.c.member_id, member_ids),
            LOTS.c.status == AVAILABLE,
            LOTS.c.remaining > 0,
        )

    async def load_available(self, member_ids: Iterable[int]) -> None:
        ids = sorted(set(member_ids) - self._available_loaded)
        if not ids:
            return
        await self.load_lots(self._available_of(ids))
        self._available_loaded.update(ids)

    def balance(self, member_id: int) -> Balance:
        try:
            return self.balances[member_id]
        except KeyError:
            raise RuntimeError(f"member {member_id}'s balance is not locked in this unit of work") from None

    def available_lots(self, member_id: int) -> list[Lot]:
        if member_id not in self._available_loaded:
            raise RuntimeError(f"available lots of member {member_id} were not loaded")
        lots = [
            lot
            for lot in (*self.lots.values(), *self.new_lots)
            if lot.member_id == member_id and lot.status == AVAILABLE and lot.remaining > 0
        ]
        return sorted(lots, key=Lot.sort_key)

    # -- deciding -----------------------------------------------------------------------------------------------

    def entry(
        self,
        member_id: int,
        kind: str,
        amount: int,
        key: str,
        *,
        shortfall: int = 0,
        occurred_at: datetime | None = None,
        **fields: Any,
    ) -> str:
        row: dict[str, Any] = {
            "member_id": member_id,
            "kind": kind,
            "amount": amount,
            "shortfall": shortfall,
            "idempotency_key": key,
            "account_id": None,
            "order_id": None,
            "line_id": None,
            "rule_code": None,
            "rule_version": None,
            "reason": None,
            "actor": self.actor,
            "ref_entry_id": None,
            "occurred_at": occurred_at or self.now,
            "available_from": None,
            "expires_at": None,
            "detail": None,
            "created_at": self.now,
        }
        row.update(fields)
        self.entries.append(row)
        return key

    def draw(self, lot: Lot, entry: str | int, amount: int, kind: str) -> None:
        if amount <= 0:
            return
        if amount > lot.remaining:
            raise RuntimeError(f"lot {lot.id} has {lot.remaining} points, cannot draw {amount}")
        lot.remaining -= amount
        lot.dirty = True
        self.draws.append(_Draw(lot, entry, kind, amount))

    def take(
        self,
        member_id: int,
        points: int,
        entry: str,
        kind: str,
        *,
        first: Lot | None = None,
        spill: bool = True,
    ) -> Taken:
        """Draw up to ``points``: from ``first`` (pending or available), then the member's available lots FIFO
        by expiry then age. Moves the balance for what it took; returns how much came from where."""
        taken = Taken()
        balance = self.balance(member_id)
        wanted = (
            points
            if first is None
            else self._take_from(first, wanted=points, taken=taken, balance=balance, entry=entry, kind=kind)
        )
        # the member's available lots only when ``first`` did not cover it: they need not be loaded otherwise
        # (a reversal of a lot the transaction just posted, :meth:`know`)
        if spill and wanted > 0:
            for lot in self.available_lots(member_id):
                if wanted <= 0:
                    break
                if lot is not first:
                    wanted = self._take_from(
                        lot, wanted=wanted, taken=taken, balance=balance, entry=entry, kind=kind
                    )
        return taken

    def _take_from(
        self, lot: Lot, *, wanted: int, taken: Taken, balance: Balance, entry: str, kind: str
    ) -> int:
        """:meth:`take`'s draw from one lot; what is still wanted after it."""
        amount = min(lot.remaining, wanted)
        if amount <= 0:
            return wanted
        self.draw(lot, entry, amount, kind)
        taken.draws.append((lot, amount))
        if lot.status == PENDING:
            taken.pending += amount
            balance.pending -= amount
        else:
            taken.available += amount
            balance.available -= amount
        return wanted - amount

    def new_lot(self, credit: Credit) -> Lot:
        """A credit posted through the book (transfer-in, adjustment): entry, lot and balance."""
        self.entry(
            credit.member_id,
            credit.kind,
            credit.amount,
            credit.key,
            occurred_at=credit.occurred_at,
            account_id=credit.account_id,
            order_id=credit.order_id,
            line_id=credit.line_id,
            rule_code=credit.rule_code,
            rule_version=credit.rule_version,
            reason=credit.reason,
            actor=credit.actor,
            ref_entry_id=credit.ref_entry_id,
            available_from=credit.available_at if credit.status == AVAILABLE else None,
            expires_at=credit.expires_at,
            detail=credit.detail,
        )
        lot = _credit_lot(credit, None, credit.key, new=True)
        balance = self.balance(credit.member_id)
        check_balance_bound(credit.member_id, balance.available + balance.pending + credit.amount)
        self.new_lots.append(lot)
        if credit.status == AVAILABLE:
            balance.available += credit.amount
        else:
            balance.pending += credit.amount
        return lot

    def release(self, lot: Lot) -> bool:
        """A pending lot becomes spendable. Call :meth:`settle` for its member afterwards."""
        if lot.status != PENDING:
            return False
        lot.status = AVAILABLE
        lot.dirty = True
        balance = self.balance(lot.member_id)
        balance.pending -= lot.remaining
        balance.available += lot.remaining
        return True

    async def settle(self, member_ids: Iterable[int]) -> None:
        """Pay recorded debt and owed clawbacks from available lots, restoring the invariants."""
        ids = sorted(set(member_ids))
        await self.load_available(ids)
        for m in ids:
            balance = self.balance(m)
            lots = self.available_lots(m)
            in_lots = sum(lot.remaining for lot in lots)
            # debt: the lots shrink with the debt, the (negative) balance already counts them
            excess = in_lots - max(balance.available, 0)
            for lot in lots:
                if excess <= 0:
                    break
                amount = min(lot.remaining, excess)
                self.draw(lot, lot.id if lot.id is not None else str(lot.key), amount, "settle")
                excess -= amount
            if balance.owed > 0 and balance.available > 0:
                amount = min(balance.owed, balance.available)
                key = f"clawback:{m}:{self.now.isoformat()}:{balance.owed}"
                self.entry(m, EntryKind.CLAWBACK, -amount, key, reason="clawback of an earlier reversal")
                taken = self.take(m, amount, key, EntryKind.CLAWBACK)
                balance.owed -= taken.total

    # -- writing ------------------------------------------------------------------------------------------------

    async def flush(self) -> None:
        if dialect_name(self.session) == "postgresql":
            await self._flush_in_one()
            return
        ids: dict[str, int] = {}
        if self.entries:
            dialect = dialect_name(self.session)
            size = values_size(dialect, _ENTRY_COLUMNS, len(self.entries))
            params = rows_params(dialect, ENTRIES, _ENTRY_COLUMNS, self.entries, size=size)
            rows = await direct.rows(self.session, _insert_entries(dialect, size), params)
            ids = {key: entry_id for entry_id, key in rows}
            if len(ids) != len(self.entries):
                missing = sorted({e["idempotency_key"] for e in self.entries} - ids.keys())
                raise Conflict(
                    "a concurrent change posted the same ledger effect; retry",
                    extra={"idempotency_keys": missing[:10]},
                )
        self.flushed_ids.update(ids)
        # the rest has no Python between its statements: one hand-off to SQLite's thread (direct.batch)
        steps: list[direct.Step] = []
        if self.new_lots:
            for lot in self.new_lots:
                lot.id = ids[str(lot.key)]
            steps.append((_FLUSH_NEW_LOTS, [_lot_params(lot) for lot in self.new_lots]))
        dirty = [lot for lot in self.lots.values() if lot.dirty]
        if dirty:
            steps.append(
                (
                    _FLUSH_LOTS,
                    [
                        {
                            "lot_id": lot.id,
                            "u_remaining": lot.remaining,
                            "u_reversed": lot.reversed,
                            "u_status": lot.status,
                            "u_available_at": lot.available_at,
                        }
                        for lot in sorted(dirty, key=lambda x: x.id or 0)
                    ],
                )
            )
        if self.draws:
            steps.append(
                (
                    _FLUSH_DRAWS,
                    [
                        {
                            "d_lot_id": d.lot.id,
                            "d_entry_id": d.entry if isinstance(d.entry, int) else ids[d.entry],
                            "d_kind": d.kind,
                            "d_amount": d.amount,
                        }
                        for d in self.draws
                    ],
                )
            )
        changed, events = self._changed_balances()
        if changed:
            steps.append(
                (
                    _FLUSH_BALANCES,
                    [
                        {
                            "m": b.member_id,
                            "u_available": b.available,
                            "u_pending": b.pending,
                            "u_owed": b.owed,
                            "u_now": self.now,
                        }
                        for b in changed
                    ],
                )
            )
            for b in changed:
                b.before = (b.available, b.pending, b.owed)
            # one fixed-text statement (the ORM's flush of added events rendered a VALUES list per count)
            step = outbox.emit_step(dialect_name(self.session), events, now=self.now)
            if step is not None:
                steps.append(step)
        await direct.batch(self.session, steps)
        self._flushed()

    def _changed_balances(self) -> tuple[list[Balance], list[tuple[str, dict[str, Any]]]]:
        """The balances that moved, in member order, and their ``points_changed`` events."""
        changed = sorted(
            (b for b in self.balances.values() if (b.available, b.pending, b.owed) != b.before),
            key=lambda b: b.member_id,
        )
        events: list[tuple[str, dict[str, Any]]] = []
        for b in changed:
            delta = b.available + b.pending - b.before[0] - b.before[1]
            payload = {
                "member_id": b.member_id,
                "delta": delta,
                "available": b.available,
                "pending": b.pending,
            }
            events.append(("points_changed", payload))
        return changed, events

    async def _flush_in_one(self) -> None:
        """PostgreSQL: everything :meth:`flush` writes — entries, new lots, changed lots, draws, balances and
        their events — in ONE statement (:func:`_flush_statement`), where it was up to six round trips. When an
        entry's key was posted meanwhile, nothing but the other entries is written, and it raises
        :class:`Conflict` as the SQLite path does.

        Each record set is bound as one JSON text (:func:`tongcrm.db.dialect.json_records`): lots and balances
        as the dataclasses they are, where 38 arrays cost asyncpg a Python check per element (issue #22)."""
        changed = sorted(
            (b for b in self.balances.values() if (b.available, b.pending, b.owed) != b.before),
            key=lambda b: b.member_id,
        )
        dirty = sorted((lot for lot in self.lots.values() if lot.dirty), key=lambda x: x.id or 0)
        entries = self.entries
        if any(len(row) != len(_ENTRY_COLUMNS) for row in entries):  # a key the statement would drop
            extra = {name for row in entries for name in row} - set(_ENTRY_COLUMNS)
            raise ValueError(
                f"points_entries: values for columns the statement does not write: {sorted(extra)}"
            )
        draws = [
            {
                "lot_id": d.lot.id,
                "lot_key": None if d.lot.id is not None else d.lot.key,
                "entry_id": d.entry if isinstance(d.entry, int) else None,
                "entry_key": d.entry if isinstance(d.entry, str) else None,
                "kind": d.kind,
                "amount": d.amount,
            }
            for d in self.draws
        ]
        # a balance and its points_changed event (the payload :meth:`_changed_balances` builds)
        balances = [
            {
                "member_id": b.member_id,
                "available": b.available,
                "pending": b.pending,
                "owed": b.owed,
                "delta": b.available + b.pending - b.before[0] - b.before[1],
            }
            for b in changed
        ]
        params: dict[str, Any] = {
            "entries": json_records_text(entries),
            "entry_count": len(entries),
            "now": self.now,
            "new_lots": json_records_text(self.new_lots),
            "lots": json_records_text(dirty),
            "draws": json_records_text(draws),
            "balances": json_records_text(balances),
            # the rows the updates change, as arrays the planner can count (see _flush_statement)
            "lot_ids": [lot.id for lot in dirty if lot.id is not None],
            "balance_ids": [b.member_id for b in changed],
        }
        rows = await direct.rows(self.session, _flush_statement(), params)
        ids = {key: entry_id for entry_id, key in rows}
        if len(ids) != len(entries):
            missing = sorted({e["idempotency_key"] for e in entries} - ids.keys())
            raise Conflict(
                "a concurrent change posted the same ledger effect; retry",
                extra={"idempotency_keys": missing[:10]},
            )
        self.flushed_ids.update(ids)
        for lot in self.new_lots:
            lot.id = ids[str(lot.key)]
        for b in changed:
            b.before = (b.available, b.pending, b.owed)
        self._flushed()

    def _flushed(self) -> None:
        for lot in self.lots.values():
            lot.dirty = False
        for lot in self.new_lots:
            lot.new = False
            self.lots[int(lot.id or 0)] = lot
        self.new_lots = []
        self.entries = []
        self.draws = []


_NEW_LOT_COLUMNS = (
    "member_id", "order_id", "line_id", "rule_code", "amount", "remaining", "reversed", "status", "release_on",
    "return_window_days", "available_at", "expires_at", "earned_at",
)  # fmt: skip


@functools.cache
def _lock_statement() -> Any:
    """PostgreSQL, :meth:`Book.lock` in ONE statement where it was two round trips: create the missing balance
    rows of the members bound as ``ids`` (returned as inserted, locked by the insert) and lock and read the
    others, both in member id order. The locking read runs on the statement's snapshot, so it does not see the
    rows the insert adds (the two halves never return a member twice), nor a row another transaction inserted
    since: that member is in neither half, and the caller locks it again with the two statements."""
    sql = """
WITH ids AS (
    SELECT unnest(CAST(:ids AS BIGINT[])) AS member_id
),
ensured AS (
    INSERT INTO points_balances (member_id, available, pending, owed, updated_at)
    SELECT member_id, 0, 0, 0, :now FROM ids ORDER BY member_id
    ON CONFLICT (member_id) DO NOTHING
    RETURNING member_id, available, pending, owed
),
locked AS (
    SELECT b.member_id, b.available, b.pending, b.owed FROM points_balances b
    WHERE b.member_id IN (SELECT member_id FROM ids)
    ORDER BY b.member_id
    FOR UPDATE OF b
)
SELECT * FROM ensured
UNION ALL
SELECT * FROM locked
"""
    return sa.text(sql).bindparams(
        sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger())),
        sa.bindparam("now", type_=BALANCES.c.updated_at.type),
    )


def _entry_values(alias: str) -> str:
    """The entry columns read from the unnested row ``alias``, the JSON one cast back from text."""
    return ", ".join(
        f"CAST({alias}.{n} AS JSONB)" if n == "detail" else f"{alias}.{n}" for n in _ENTRY_COLUMNS
    )


@functools.cache
def _flush_statement() -> Any:
    """The statement of :meth:`Book._flush_in_one`, its record sets read from JSON texts
    (:func:`tongcrm.db.dialect.json_records`). Lots and draws find the ids of the entries inserted with them by
    key; nothing but the entries is written unless every entry was inserted (``:entry_count``).

    The lots and balances it updates are limited to the ids bound as arrays (``lot_ids``, ``balance_ids``) as
    well as joined to their JSON rows: estimating a JSON record set at a hundred rows, the planner scanned every
    lot and every balance for the few a flush changes (issue #22, ingestpg18: 2.3 → 1.1 ms of server CPU a
    flush at 20,000 JD orders, and growing with the ledger before)."""
    # built here, not at import: a foreign key's column takes its type once the table it names is known
    entries = json_records("entries", [(n, ENTRIES.c[n].type) for n in _ENTRY_COLUMNS], alias="r")
    new_lots = json_records(
        "new_lots", [("key", sa.Text()), *((n, LOTS.c[n].type) for n in _NEW_LOT_COLUMNS)], alias="n"
    )
    lots = json_records(
        "lots",
        [(n, LOTS.c[n].type) for n in ("id", "remaining", "reversed", "status", "available_at")],
        alias="u",
    )
    draws = json_records(
        "draws",
        [("lot_id", sa.BigInteger()), ("lot_key", sa.Text()), ("entry_id", sa.BigInteger()),
         ("entry_key", sa.Text()), ("kind", DRAWS.c.kind.type), ("amount", sa.BigInteger())],
        alias="d",
    )  # fmt: skip
    balance_columns = [
        *((n, BALANCES.c[n].type) for n in ("member_id", "available", "pending", "owed")),
        ("delta", sa.BigInteger()),
    ]
    balances = json_records("balances", balance_columns, alias="u")
    events = json_records("balances", balance_columns, alias="v")
    complete = "(SELECT count(*) FROM e) = :entry_count"
    sql = f"""
WITH e AS (
    INSERT INTO points_entries ({", ".join(_ENTRY_COLUMNS)})
    SELECT {_entry_values("r")} FROM {entries}
    ORDER BY r.ordinality
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key
),
new_lots AS (
    INSERT INTO points_lots (id, {", ".join(_NEW_LOT_COLUMNS)})
    SELECT e.id, {", ".join(f"n.{n}" for n in _NEW_LOT_COLUMNS)}
    FROM {new_lots}
    JOIN e ON e.idempotency_key = n.key
    WHERE {complete}
    ORDER BY n.ordinality
),
changed_lots AS (
    UPDATE points_lots l SET remaining = u.remaining, reversed = u.reversed, status = u.status,
        available_at = u.available_at
    FROM {lots}
    WHERE l.id = u.id AND l.id = ANY(CAST(:lot_ids AS BIGINT[])) AND {complete}
),
draws AS (
    INSERT INTO points_lot_draws (lot_id, entry_id, kind, amount)
    SELECT coalesce(d.lot_id, lot_entry.id), coalesce(d.entry_id, entry.id), d.kind, d.amount
    FROM {draws}
    LEFT JOIN e lot_entry ON lot_entry.idempotency_key = d.lot_key
    LEFT JOIN e entry ON entry.idempotency_key = d.entry_key
    WHERE {complete}
    ORDER BY d.ordinality
),
balances AS (
    UPDATE points_balances b SET available = u.available, pending = u.pending, owed = u.owed, updated_at = :now
    FROM {balances}
    WHERE b.member_id = u.member_id AND b.member_id = ANY(CAST(:balance_ids AS BIGINT[])) AND {complete}
),
events AS (
    INSERT INTO outbox_events (name, payload, occurred_at)
    SELECT 'points_changed', jsonb_build_object('member_id', v.member_id, 'delta', v.delta,
        'available', v.available, 'pending', v.pending), :now
    FROM {events}
    WHERE {complete}
    ORDER BY v.ordinality
)
SELECT id, idempotency_key FROM e
"""  # noqa: S608 - built from this module's constant column names, no input
    binds: list[Any] = [
        sa.bindparam(name, type_=sa.Text()) for name in ("entries", "new_lots", "lots", "draws", "balances")
    ]
    binds += [
        sa.bindparam("now", type_=BALANCES.c.updated_at.type),
        sa.bindparam("entry_count", type_=sa.Integer()),
        sa.bindparam("lot_ids", type_=postgresql.ARRAY(sa.BigInteger())),
        sa.bindparam("balance_ids", type_=postgresql.ARRAY(sa.BigInteger())),
    ]
    return sa.text(sql).bindparams(*binds)


_LOT_COLUMNS = (
    "id", "member_id", "order_id", "line_id", "rule_code", "amount", "remaining", "reversed", "status",
    "release_on", "return_window_days", "available_at", "expires_at", "earned_at",
)  # fmt: skip

#: SQLite's :meth:`Book.flush`, executemany statements built once with every column they write named (fixed
#: text: they run straight on the driver, together, :func:`tongcrm.db.direct.batch`).
_FLUSH_NEW_LOTS = sa.insert(LOTS).values(
    {c: sa.bindparam(f"n_{c}", type_=LOTS.c[c].type) for c in _LOT_COLUMNS}
)
_FLUSH_LOTS = (
    sa.update(LOTS)
    .where(LOTS.c.id == sa.bindparam("lot_id"))
    .values(
        remaining=sa.bindparam("u_remaining"),
        reversed=sa.bindparam("u_reversed"),
        status=sa.bindparam("u_status"),
        available_at=sa.bindparam("u_available_at", type_=LOTS.c.available_at.type),
    )
)
_FLUSH_DRAWS = sa.insert(DRAWS).values(
    lot_id=sa.bindparam("d_lot_id"),
    entry_id=sa.bindparam("d_entry_id"),
    kind=sa.bindparam("d_kind"),
    amount=sa.bindparam("d_amount"),
)
_FLUSH_BALANCES = (
    sa.update(BALANCES)
    .where(BALANCES.c.member_id == sa.bindparam("m"))
    .values(
        available=sa.bindparam("u_available"),
        pending=sa.bindparam("u_pending"),
        owed=sa.bindparam("u_owed"),
        updated_at=sa.bindparam("u_now", type_=BALANCES.c.updated_at.type),
    )
)


def _lot_params(lot: Lot) -> dict[str, Any]:
    """The parameters of :data:`_FLUSH_NEW_LOTS` for ``lot``."""
    return {f"n_{c}": v for c, v in _lot_row(lot).items()}


def _lot_row(lot: Lot) -> dict[str, Any]:
    return {
        "id": lot.id,
        "member_id": lot.member_id,
        "order_id": lot.order_id,
        "line_id": lot.line_id,
        "rule_code": lot.rule_code,
        "amount": lot.amount,
        "remaining": lot.remaining,
        "reversed": lot.reversed,
        "status": lot.status,
        "release_on": lot.release_on,
        "return_window_days": lot.return_window_days,
        "available_at": lot.available_at,
        "expires_at": lot.expires_at,
        "earned_at": lot.earned_at,
    }


# -------------------------------------------------------------------------------------------------------------
# expiry and release (jobs), recompute and verify


async def expire_due(session: AsyncSession, *, now: datetime, limit: int = 500) -> int:
    """Post an ``expire`` entry for what is left of each lot whose expiry has passed. Returns lots expired."""
    due = sa.and_(LOTS.c.expires_at <= now, LOTS.c.remaining > 0)
    picked = (
        await session.execute(
            sa.select(LOTS.c.id, LOTS.c.member_id).where(due).order_by(LOTS.c.id).limit(limit)
        )
    ).all()
    if not picked:
        return 0
    book = Book(session, now=now)
    await book.lock(r[1] for r in picked)
    lots = await book.load_lots(sa.and_(LOTS.c.id.in_([r[0] for r in picked]), due))
    for lot in lots:
        key = f"expire:{lot.id}"
        points = lot.remaining
        book.entry(
            lot.member_id,
            EntryKind.EXPIRE,
            -points,
            key,
            ref_entry_id=lot.id,
            occurred_at=lot.expires_at,
            reason="points expired",
            detail={"lot_id": lot.id},
        )
        book.take(lot.member_id, points, key, EntryKind.EXPIRE, first=lot, spill=False)
    await book.flush()
    return len(lots)


async def release_due(session: AsyncSession, *, now: datetime, limit: int = 500) -> int:
    """Make pending lots whose business event (e.g. the end of a return window) has passed available."""
    due = sa.and_(LOTS.c.status == PENDING, LOTS.c.available_at <= now)
    picked = (
        await session.execute(
            sa.select(LOTS.c.id, LOTS.c.member_id).where(due).order_by(LOTS.c.id).limit(limit)
        )
    ).all()
    if not picked:
        return 0
    book = Book(session, now=now)
    members = {r[1] for r in picked}
    await book.lock(members)
    lots = await book.load_lots(sa.and_(LOTS.c.id.in_([r[0] for r in picked]), due))
    for lot in lots:
        book.release(lot)
    await book.settle(members)
    await book.flush()
    return len(lots)


@dataclass(frozen=True, slots=True)
class Derived:
    available: int
    pending: int
    owed: int
    in_available_lots: int


async def derive(session: AsyncSession, member_ids: Sequence[int] | None = None) -> dict[int, Derived]:
    """Balances recomputed from entries and lots (all members when ``member_ids`` is None)."""
    entry_q = sa.select(
        ENTRIES.c.member_id,
        sa.func.coalesce(sa.func.sum(ENTRIES.c.amount), 0),
        sa.func.coalesce(sa.func.sum(ENTRIES.c.shortfall), 0),
        sa.func.coalesce(
            sa.func.sum(sa.case((ENTRIES.c.kind == EntryKind.CLAWBACK, ENTRIES.c.amount), else_=0)), 0
        ),
    ).group_by(ENTRIES.c.member_id)
    lot_q = sa.select(
        LOTS.c.member_id,
        sa.func.coalesce(sa.func.sum(sa.case((LOTS.c.status == PENDING, LOTS.c.remaining), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(sa.case((LOTS.c.status == AVAILABLE, LOTS.c.remaining), else_=0)), 0),
    ).group_by(LOTS.c.member_id)
    if member_ids is not None:
        entry_q = entry_q.where(ENTRIES.c.member_id.in_(list(member_ids)))
        lot_q = lot_q.where(LOTS.c.member_id.in_(list(member_ids)))
    totals = {r[0]: (int(r[1]), int(r[2]) + int(r[3])) for r in (await session.execute(entry_q)).all()}
    lots = {r[0]: (int(r[1]), int(r[2])) for r in (await session.execute(lot_q)).all()}
    out: dict[int, Derived] = {}
    for m in set(totals) | set(lots) | set(member_ids or ()):
        total, owed = totals.get(m, (0, 0))
        pending, in_available = lots.get(m, (0, 0))
        out[m] = Derived(total - pending, pending, owed, in_available)
    return out


async def recompute_balances(
    session: AsyncSession, member_ids: Sequence[int], *, now: datetime | None = None
) -> None:
    """Rewrite the cached balances of ``member_ids`` from their entries and lots (after a merge moved rows),
    then settle debt and owed points against any available lots the member now has."""
    from tongcrm.db.base import utcnow

    now = now or utcnow()
    ids = sorted(set(member_ids))
    book = Book(session, now=now)
    await book.lock(ids)
    for m, d in (await derive(session, ids)).items():
        b = book.balance(m)
        b.available, b.pending, b.owed = d.available, d.pending, d.owed
    await book.settle(ids)
    await book.flush()


@dataclass(frozen=True, slots=True)
class UndoSplit:
    """What :func:`split_after_undo` did: the entries that went back with what they are about, the points it moved
    from ``restored_id`` to ``survivor_id`` (negative: the other way) and the owed points it moved onto
    ``restored_id`` (negative: onto ``survivor_id``)."""

    restored_id: int
    survivor_id: int
    followed: tuple[int, ...]
    points: int
    owed: int


async def split_after_undo(
    session: AsyncSession,
    restored_id: int,
    survivor_id: int,
    *,
    merge_id: int,
    now: datetime,
    actor: str = "system",
) -> UndoSplit:
    """Make both members' ledgers whole again after an undone merge moved the absorbed member's rows back.

    Call it after the rows moved and before balances are recomputed. The rule (see the module docstring of
    :mod:`tongcrm.members.merge` for the whole story):

    1. **Entries follow what they are about.** An entry that the survivor got while merged and whose
       ``ref_entry_id`` names an entry that went back (the expiry or the refund reversal of a lot that went back,
       the refund of a redemption that went back) goes back too, with the lot it created if any. Repeated until
       nothing more follows, so an expiry of such a refund lot follows as well.
    2. **Lots are the truth.** Every lot stays as it is with its owner: what was drawn from it while merged
       (a redemption, transfer out, clawback or debt settlement made by the other member) is its owner's loss.
       Where a member's entries now exceed its open lots, exactly that excess moves to the other member with one
       pair of ``merge_split`` entries (sum zero; no lot, no draw: the draws already happened). Whatever debt the
       two had while merged stays with the member whose entries recorded it, which has no spendable lot then.
    3. **Owed points likewise.** Where one member's clawbacks paid more than its own shortfalls (it paid the
       other's), the surplus moves back as signed ``shortfall`` on the same pair, so neither ends with negative
       owed points.

    Sums over both members are unchanged, so every total (points issued, spent, owed) stays exact.
    """
    members = sorted({restored_id, survivor_id})
    book = Book(session, now=now, actor=actor)
    await book.lock(members)
    followed: list[int] = []
    for _ in range(16):  # each round follows one more link (an expiry of a refund lot of a redemption…)
        went_back = sa.select(ENTRIES.c.id).where(ENTRIES.c.member_id == restored_id).scalar_subquery()
        ids = sorted(
            (
                await session.execute(
                    sa.select(ENTRIES.c.id).where(
                        ENTRIES.c.member_id == survivor_id, ENTRIES.c.ref_entry_id.in_(went_back)
                    )
                )
            ).scalars()
        )
        if not ids:
            break
        for chunk in _chunks(ids):
            await session.execute(
                sa.update(ENTRIES).where(ENTRIES.c.id.in_(chunk)).values(member_id=restored_id)
            )
            await session.execute(sa.update(LOTS).where(LOTS.c.id.in_(chunk)).values(member_id=restored_id))
        followed += ids
    derived = await derive(session, members)
    # entries minus open lots: positive when the other member's entries drew this member's lots
    gap = {m: derived[m].available - derived[m].in_available_lots for m in members}
    points = gap[restored_id] if gap[restored_id] > 0 else -gap[survivor_id] if gap[survivor_id] > 0 else 0
    owed = {m: derived[m].owed for m in members}
    moved_owed = (
        -owed[restored_id] if owed[restored_id] < 0 else owed[survivor_id] if owed[survivor_id] < 0 else 0
    )
    if points or moved_owed:
        for member, other, sign in ((restored_id, survivor_id, -1), (survivor_id, restored_id, 1)):
            book.entry(
                member,
                EntryKind.MERGE_SPLIT,
                sign * points,
                f"merge-split:{merge_id}:{member}",
                shortfall=-sign * moved_owed,
                reason=f"undo of merge {merge_id}",
                detail={
                    "merge_id": merge_id,
                    "counterpart_id": other,
                    "points": sign * points,
                    "owed": -sign * moved_owed,
                    "followed_entries": len(followed),
                },
            )
        await book.flush()
    await recompute_balances(session, members, now=now)
    return UndoSplit(restored_id, survivor_id, tuple(followed), points, moved_owed)


@dataclass(frozen=True, slots=True)
class Drift:
    member_id: int | None
    lot_id: int | None
    problem: str


async def verify(session: AsyncSession) -> list[Drift]:
    """Every disagreement between the cached balances, the entries, the lots and their draws."""
    drifts: list[Drift] = []
    derived = await derive(session)
    cached = {
        r[0]: (r[1], r[2], r[3])
        for r in (
            await session.execute(
                sa.select(BALANCES.c.member_id, BALANCES.c.available, BALANCES.c.pending, BALANCES.c.owed)
            )
        ).all()
    }
    for m in sorted(set(derived) | set(cached)):
        d = derived.get(m, Derived(0, 0, 0, 0))
        available, pending, owed = cached.get(m, (0, 0, 0))
        if (available, pending, owed) != (d.available, d.pending, d.owed):
            drifts.append(
                Drift(
                    m,
                    None,
                    f"cached balance available={available} pending={pending} owed={owed}, but entries and lots "
                    f"give available={d.available} pending={d.pending} owed={d.owed}",
                )
            )
        if max(d.available, 0) != d.in_available_lots:
            drifts.append(
                Drift(
                    m,
                    None,
                    f"available lots hold {d.in_available_lots} points but the available balance is {d.available}",
                )
            )
        if d.owed < 0:
            drifts.append(Drift(m, None, f"owed points are negative ({d.owed})"))
    drawn = (
        sa.select(DRAWS.c.lot_id, sa.func.sum(DRAWS.c.amount).label("drawn"))
        .group_by(DRAWS.c.lot_id)
        .subquery()
    )
    bad_lots = (
        await session.execute(
            sa.select(LOTS.c.id, LOTS.c.member_id, LOTS.c.amount, LOTS.c.remaining, drawn.c.drawn)
            .select_from(LOTS.outerjoin(drawn, drawn.c.lot_id == LOTS.c.id))
            .where(
                sa.or_(
                    LOTS.c.remaining < 0,
                    LOTS.c.remaining != LOTS.c.amount - sa.func.coalesce(drawn.c.drawn, 0),
                )
            )
        )
    ).all()
    for lot_id, m, amount, remaining, drawn_sum in bad_lots:
        drifts.append(
            Drift(
                m,
                lot_id,
                f"lot {lot_id} of {amount} has {remaining} left but its draws took {drawn_sum or 0}",
            )
        )
    return drifts
