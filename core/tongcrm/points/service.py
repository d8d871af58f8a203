"""The points service: what the rest of tongcrm calls. Domain logic only; every function runs inside the
caller's transaction and never commits.

Ingest calls :func:`apply_orders` with the facts of a page of orders; it brings the ledger to the state those
facts imply and is idempotent (deterministic keys per line and effect):

* ``earn:{line_id}:{rule}`` — on payment, per line and applicable spend rule, decided once under the rule version
  active then (``points_line_awards`` records the decision);
* the lot becomes available on the rule's business event (payment, completion, or the end of a return window
  after completion — the ``points.release`` job handles windows that end later);
* ``reverse:{lot_id}:{target}`` — a refund takes back ``floor(earned × refunded / amount)`` of each lot of the
  line (all of it when the line is fully refunded; an order closed or refunded after payment counts as fully
  refunded), never more than was earned; what was already spent follows the rule set's ``reversal_policy``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit_service
from tongcrm.db import direct, txcache
from tongcrm.db.dialect import among, dialect_name, insert, insert_rows, one_of, rows_params, values_size
from tongcrm.errors import BadRequest, Conflict, NotFound, Unprocessable
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.types import OrderStatus
from tongcrm.points import ledger
from tongcrm.points.ledger import (
    AVAILABLE,
    AWARD_COLUMNS,
    AWARDS,
    MAX_ENTRY_POINTS,
    PENDING,
    Book,
    Credit,
    Lot,
    post_credits,
    post_gated,
    posted_credits,
    posted_lot,
)
from tongcrm.points.models import (
    EntryKind,
    PointsBalance,
    PointsEntry,
    PointsLot,
    PointsLotDraw,
    PointsRequest,
    PointsRuleSet,
    PointsRuleUsage,
)
from tongcrm.points.multipliers import NO_TIER, TierInfo, resolve_tiers
from tongcrm.points.rules import (
    DEFAULT_DOCUMENT,
    EventRule,
    Expiry,
    LineInput,
    RuleSet,
    RuleSetDoc,
    SpendRule,
    compile_rules,
    earn_for_line,
    event_points,
    expires_at,
    parse_document,
    period_key,
)
from tongcrm.points.schemas import (
    BacktestGroup,
    BacktestReport,
    BalanceOut,
    DrawOut,
    EntryOut,
    LedgerResult,
    LotOut,
    PreviewLineOut,
    PreviewOrderIn,
    PreviewOut,
    PreviewRuleOut,
    RuleSetOut,
    StatementOut,
)

# -------------------------------------------------------------------------------------------------------------
# the interface ingest calls


#: Not frozen (issue #22): a page builds one per order and one per line, and a frozen dataclass's ``__init__`` sets
#: every field through ``object.__setattr__``; nothing changes one after it is made, and none is hashed (as
#: ``tongcrm.identity.service._Claim``).
@dataclass(slots=True)
class LineFacts:
    line_id: int
    external_id: str
    sku: str | None
    category: str | None
    amount_fen: int
    refunded_fen: int


#: Not frozen, as :class:`LineFacts`.
@dataclass(slots=True)
class OrderFacts:
    order_id: int
    member_id: int
    account_id: int
    channel: str
    store_code: str | None
    status: str  # tongcrm.plugin.types.OrderStatus value
    placed_at: datetime
    paid_at: datetime | None
    completed_at: datetime | None
    lines: tuple[LineFacts, ...]


@dataclass(frozen=True, slots=True)
class PointsContext:
    clock: Callable[[], datetime]
    tz: ZoneInfo
    actor: str = "system"
    #: A rule set to use instead of the active one (tests, dry runs).
    rules: RuleSet | None = None
    #: Who the audit log names for an operator's write (an adjustment): the API key and its role. The system's
    #: own writes (earning, expiry, imports) are the ledger's and are not audited.
    auditor: audit_service.Actor = audit_service.SYSTEM


_FULLY_REFUNDED = frozenset({OrderStatus.CLOSED.value, OrderStatus.REFUNDED.value})


def _refunded(order: OrderFacts, line: LineFacts) -> int:
    if order.status in _FULLY_REFUNDED:
        return line.amount_fen
    return min(max(line.refunded_fen, 0), line.amount_fen)


def _release_time(release_on: str, window_days: int, order: OrderFacts) -> datetime | None:
    if release_on == "paid":
        return order.paid_at
    if order.completed_at is None:
        return None
    if release_on == "completed":
        return order.completed_at
    return order.completed_at + timedelta(days=window_days)


def _lot_expiry(rules: RuleSet, expiry: Expiry | None, earned_at: datetime, tz: ZoneInfo) -> datetime | None:
    return expires_at(expiry or rules.doc.expiry, earned_at, tz)


async def apply_orders(
    session: AsyncSession, ctx: PointsContext, orders: Sequence[OrderFacts], *, fresh: bool = False
) -> None:
    """Bring the ledger to the state the order facts imply (see the module docstring). Idempotent, batched.

    ``fresh``: every order was inserted just now, with no refund and not closed, so none has a lot from before
    to release or reverse, and the lots posted now are already in their state: the follow-up read is skipped
    (a till's receipt, :mod:`tongcrm.counter_sale`)."""
    now = ctx.clock()
    paid = [o for o in orders if o.paid_at is not None]  # closed before payment: nothing to do
    if not paid:
        return
    rules = ctx.rules or await active_rules(session)
    read = await _earn(session, ctx, rules, paid, now)
    if not fresh:
        await _follow_up(session, rules, paid, now, read)


async def _earn(
    session: AsyncSession, ctx: PointsContext, rules: RuleSet, orders: Sequence[OrderFacts], now: datetime
) -> _Read | None:
    """Post what the orders' lines earn, once per line; on PostgreSQL without caps in one statement that also
    returns the lots of the lines the follow-up works on (:func:`_follow_up`'s read) and the balances it locked,
    else None."""
    spend = rules.spend_rules
    tiers = (
        await resolve_tiers(session, [o.member_id for o in orders], now)
        if any(r.tier_multiplier for r in spend)
        else {}
    )
    awards, planned = _plan(ctx, rules, orders, now, tiers)
    if not awards:
        return None
    dialect = dialect_name(session)
    if dialect == "postgresql" and not rules.has_caps:
        # the gate rides with the posting (:func:`tongcrm.points.ledger.post_gated`): every line's
        # credits, and every buyer's first-purchase credits, each posted only if the claim of its line (of one
        # of its member's lines) is won in the same statement — one round trip a page less
        gated = _gated(ctx, rules, orders, awards, planned)
        lines = sorted(line.line_id for o in _follow_up_candidates(orders) for line in o.lines)
        posted, lots, held = await post_gated(session, gated, gate=awards, lots_of=lines, now=now)
        return _Read(lots, held, posted, gated)
    size = values_size(dialect, AWARD_COLUMNS, len(awards))
    params = rows_params(dialect, AWARDS, AWARD_COLUMNS, awards, size=size)
    won = {r[0] for r in await direct.rows(session, _award_gate(dialect, size), params)}
    if not won:
        return None
    credits = [c for line_id in sorted(won) for c in planned[line_id]]
    first_buyers = sorted({a["member_id"] for a in awards if a["line_id"] in won})
    firsts = _first_orders(orders)
    for member_id in first_buyers:
        credits.extend(_first_purchase_credits(ctx, rules, firsts[member_id]))
    await _post_with_caps(session, ctx, rules, credits, now)
    return None


def steps_ahead(dialect: str, lines: int, credits: Iterable[int]) -> list[tuple[Any, Mapping[str, Any]]]:
    """The statements :func:`apply_orders` runs on ``dialect`` without caps for a fresh order of ``lines`` lines
    whose awards let each number of credits in ``credits`` through (the award gate, then the ledger's posting,
    :func:`tongcrm.points.ledger.steps_ahead`), with the parameters their plans are kept under, for a start-up
    step that compiles them ahead (:mod:`tongcrm.warmup`; issue #22, branch till15: SQLite's first till
    checkout). None on PostgreSQL, whose gated posting is one statement built per call. Nothing is run."""
    if dialect == "postgresql" or not lines:
        return []
    gate = _award_gate(dialect, values_size(dialect, AWARD_COLUMNS, lines))
    return [(gate, {}), *ledger.steps_ahead(dialect, credits)]


def fresh_order_credits(
    ctx: PointsContext, rules: RuleSet, order: OrderFacts, now: datetime, tier: TierInfo = NO_TIER
) -> tuple[list[Credit], list[dict[str, Any]]]:
    """What :func:`apply_orders` posts on PostgreSQL, without caps, for one paid order inserted just now
    (``fresh``) to a buyer holding ``tier`` (what :func:`resolve_tiers` answers for them; the multiplier counts
    only under rules that ask for it): the credits its award gate lets through (every
    line's, then the buyer's first-purchase credits) and the gate's award rows
    (:data:`tongcrm.points.ledger.AWARD_COLUMNS`), for a caller that writes them in a statement of its own (a
    till's one-statement checkout, :mod:`tongcrm.counter_quick`). The same credits, by the same code, at
    ``now``."""
    if rules.has_caps:
        raise ValueError("caps need the ledger's own path")
    tiers = {order.member_id: tier} if any(r.tier_multiplier for r in rules.spend_rules) else {}
    awards, planned = _plan(ctx, rules, [order], now, tiers)
    if not awards:
        return [], []
    return _gated(ctx, rules, [order], awards, planned), awards


def _gated(
    ctx: PointsContext,
    rules: RuleSet,
    orders: Sequence[OrderFacts],
    awards: Sequence[dict[str, Any]],
    planned: dict[int, list[Credit]],
) -> list[Credit]:
    """The credits a gated posting is given: every line's, in line order, then each buyer's first-purchase
    credits (posted only when one of their lines' awards is claimed with them)."""
    gated = [c for line_id in sorted(planned) for c in planned[line_id]]
    firsts = _first_orders(orders)
    for member_id in sorted({a["member_id"] for a in awards}):
        gated.extend(_first_purchase_credits(ctx, rules, firsts[member_id]))
    return gated


def _plan(
    ctx: PointsContext,
    rules: RuleSet,
    orders: Sequence[OrderFacts],
    now: datetime,
    tiers: Mapping[int, Any],
) -> tuple[list[dict[str, Any]], dict[int, list[Credit]]]:
    """The award rows of the orders' lines and each line's credits under ``rules`` (``tiers``: the buyers'
    tiers, for multipliers)."""
    awards: list[dict[str, Any]] = []
    planned: dict[int, list[Credit]] = {}
    for order in orders:
        paid_at = order.paid_at
        assert paid_at is not None
        pct = tiers.get(order.member_id, NO_TIER).multiplier_pct
        for line in order.lines:
            credits = []
            for earned in earn_for_line(
                rules,
                LineInput(order.channel, order.store_code, line.sku, line.category, line.amount_fen),
                pct,
            ):
                if earned.points <= 0:
                    continue
                rule = earned.rule
                available_at = _release_time(rule.release, rule.return_window_days, order)
                ready = available_at is not None and available_at <= now
                credits.append(
                    Credit(
                        member_id=order.member_id,
                        key=f"earn:{line.line_id}:{rule.code}",
                        kind=EntryKind.EARN,
                        amount=earned.points,
                        occurred_at=paid_at,
                        available_at=available_at,
                        expires_at=_lot_expiry(rules, rule.expiry, paid_at, ctx.tz),
                        status=AVAILABLE if ready else PENDING,
                        release_on=rule.release,
                        return_window_days=rule.return_window_days,
                        account_id=order.account_id,
                        order_id=order.order_id,
                        line_id=line.line_id,
                        rule_code=rule.code,
                        rule_version=rules.version,
                        actor=ctx.actor,
                        detail=earned.detail,
                    )
                )
            planned[line.line_id] = credits
            awards.append(
                {
                    "line_id": line.line_id,
                    "order_id": order.order_id,
                    "member_id": order.member_id,
                    "rule_version": rules.version,
                    "points": sum(c.amount for c in credits),
                    "evaluated_at": now,
                }
            )
    return awards, planned


def _first_orders(orders: Sequence[OrderFacts]) -> dict[int, OrderFacts]:
    """Each buyer's first order in the page, in one pass (a search per buyer was quadratic in the page)."""
    firsts: dict[int, OrderFacts] = {}
    for order in orders:
        firsts.setdefault(order.member_id, order)
    return firsts


def _first_purchase_credits(ctx: PointsContext, rules: RuleSet, order: OrderFacts) -> list[Credit]:
    """The first-purchase event credits of the buyer of ``order`` (its first in the page) whose line won its
    award, dated by that order's payment."""
    assert order.paid_at is not None
    member_id = order.member_id
    return _event_credits(ctx, rules, member_id, "first_purchase", str(member_id), order.paid_at, 100)


@functools.cache
def _award_gate(dialect: str, size: int | None = None) -> Any:
    """Claim the lines' awards; a line already awarded returns no row. One fixed text whatever the page (on
    SQLite one per ``size``, :func:`tongcrm.db.dialect.values_size`)."""
    stmt = insert_rows(dialect, AWARDS, AWARD_COLUMNS, size=size)
    stmt = stmt.on_conflict_do_nothing(index_elements=["line_id"])
    return stmt.returning(AWARDS.c.line_id)


def _event_credits(
    ctx: PointsContext, rules: RuleSet, member_id: int, event: str, ref: str, at: datetime, pct: int
) -> list[Credit]:
    out = []
    for rule, points in event_points(rules, event, pct):
        if points <= 0:
            continue
        out.append(
            Credit(
                member_id=member_id,
                key=f"event:{event}:{ref}:{rule.code}",
                kind=EntryKind.EARN,
                amount=points,
                occurred_at=at,
                available_at=at,
                expires_at=_lot_expiry(rules, rule.expiry, at, ctx.tz),
                rule_code=rule.code,
                rule_version=rules.version,
                actor=ctx.actor,
                reason=f"{event} bonus",
                detail={
                    "event": event,
                    "ref": ref,
                    "points": rule.points,
                    "multiplier_pct": pct if rule.tier_multiplier else 100,
                },
            )
        )
    return out


async def _post_with_caps(
    session: AsyncSession, ctx: PointsContext, rules: RuleSet, credits: list[Credit], now: datetime
) -> dict[str, int]:
    capped: dict[tuple[int, str, str], int] = {}
    if rules.has_caps:
        caps = {r.code: r.cap for r in rules.doc.rules if r.cap is not None}
        keys = {
            (c.member_id, str(c.rule_code), period_key(caps[str(c.rule_code)].period, c.occurred_at, ctx.tz))
            for c in credits
            if c.rule_code in caps
        }
        if keys:
            book = Book(session, now=now)
            await book.lock({k[0] for k in keys})  # caps are read-modify-write: serialise per member
            usage_t = cast(sa.Table, PointsRuleUsage.__table__)
            # A member absorbed by a merge keeps its usage rows (an undo gives them back untouched); what it
            # used counts toward the survivor's caps, so one person cannot earn a cap twice.
            owner = await _merged_into(session, {k[0] for k in keys})
            rows = (
                await session.execute(
                    sa.select(
                        usage_t.c.member_id, usage_t.c.rule_code, usage_t.c.period, usage_t.c.points
                    ).where(
                        among(dialect_name(session), usage_t.c.member_id, sorted(owner)),
                        among(dialect_name(session), usage_t.c.rule_code, sorted({k[1] for k in keys})),
                    )
                )
            ).all()
            used: dict[tuple[int, str, str], int] = defaultdict(int)
            for r in rows:
                used[(owner[r[0]], r[1], r[2])] += r[3]
            for c in credits:
                cap = caps.get(str(c.rule_code))
                if cap is None:
                    continue
                k = (c.member_id, str(c.rule_code), period_key(cap.period, c.occurred_at, ctx.tz))
                room = max(cap.points - used.get(k, 0), 0)
                if c.amount > room:
                    c.detail = {
                        **(c.detail or {}),
                        "capped_from": c.amount,
                        "cap": cap.points,
                        "period": k[2],
                    }
                    c.amount = room
                used[k] = used.get(k, 0) + c.amount
                capped[k] = capped.get(k, 0) + c.amount
    posted = await post_credits(session, credits, now=now)
    if capped and posted:
        increments: dict[tuple[int, str, str], int] = defaultdict(int)
        for c in credits:
            if c.key in posted and c.rule_code in {k[1] for k in capped}:
                cap_rule = rules.rule(c.rule_code)
                assert cap_rule is not None and cap_rule.cap is not None
                increments[
                    (c.member_id, str(c.rule_code), period_key(cap_rule.cap.period, c.occurred_at, ctx.tz))
                ] += c.amount
        if increments:
            usage_t = cast(sa.Table, PointsRuleUsage.__table__)
            stmt = insert(session, usage_t)
            stmt = stmt.on_conflict_do_update(
                index_elements=["member_id", "rule_code", "period"],
                set_={"points": usage_t.c.points + stmt.excluded.points},
            )
            await session.execute(
                stmt,
                [
                    {"member_id": k[0], "rule_code": k[1], "period": k[2], "points": v}
                    for k, v in sorted(increments.items())
                ],
            )
    return posted


async def _merged_into(session: AsyncSession, member_ids: set[int]) -> dict[int, int]:
    """Each of ``member_ids`` mapped to itself, and every member merged into one of them (through any chain of
    merges) mapped to that member."""
    owner = {m: m for m in member_ids}
    frontier = sorted(member_ids)
    for _ in range(8):  # merge chains are short
        if not frontier:
            break
        rows = (
            await session.execute(
                sa.select(Member.id, Member.merged_into_id).where(
                    among(dialect_name(session), Member.merged_into_id, frontier), Member.status == "merged"
                )
            )
        ).all()
        frontier = []
        for absorbed, into in rows:
            if absorbed not in owner and into is not None:
                owner[absorbed] = owner[into]
                frontier.append(absorbed)
    return owner


@functools.cache
def _lots_of_lines(dialect: str) -> Any:
    """The lots earned on the lines bound as the list ``line_ids``: one fixed text per dialect, whatever the
    page's number of lines (:func:`tongcrm.db.dialect.one_of`)."""
    lots_t = cast(sa.Table, PointsLot.__table__)
    return sa.select(
        lots_t.c.id,
        lots_t.c.member_id,
        lots_t.c.line_id,
        lots_t.c.status,
        lots_t.c.available_at,
        lots_t.c.release_on,
        lots_t.c.return_window_days,
        lots_t.c.amount,
        lots_t.c.reversed,
    ).where(one_of(dialect, lots_t.c.line_id, "line_ids"))


@dataclass(frozen=True, slots=True)
class _Read:
    """What the earning's statement read for the follow-up (:func:`tongcrm.points.ledger.post_gated`)."""

    lots: list[Any]
    held: dict[int, tuple[int, int, int]]
    #: The entries it posted, by key, and the credits it was given: the lots it inserted (:meth:`fresh`).
    posted: dict[str, int]
    credits: Sequence[Credit]

    def fresh(self, lot_ids: Sequence[int]) -> dict[int, Lot]:
        """Those of ``lot_ids`` the statement inserted for a member whose balance it locked and left as it
        returned it, as :meth:`tongcrm.points.ledger.Book.load_lots` would read them
        (:func:`tongcrm.points.ledger.posted_lot`): nothing but this transaction can have changed them — a
        member whose debt the posting settled is not among ``held``, and its lots are read."""
        ids = set(self.posted.values()).intersection(lot_ids)
        if not ids:
            return {}
        by_id = posted_credits(self.credits, self.posted)
        return {i: posted_lot(c, i) for i in sorted(ids) if (c := by_id[i]).member_id in self.held}


def _follow_up_candidates(orders: Sequence[OrderFacts]) -> list[OrderFacts]:
    """The orders whose lots :func:`_follow_up` may release or reverse."""
    return [
        o
        for o in orders
        if o.completed_at is not None
        or o.status in _FULLY_REFUNDED
        or any(line.refunded_fen > 0 for line in o.lines)
    ]


async def _follow_up(
    session: AsyncSession,
    rules: RuleSet,
    orders: Sequence[OrderFacts],
    now: datetime,
    read: _Read | None = None,
) -> None:
    """Release and reversal for lines that already earned: one read, and writes only when something changed.
    ``read``: the candidates' lots as the earning's statement returned them (:func:`_earn`), which then stands
    for the read, and the balances it locked, which the lock then skips."""
    candidates = _follow_up_candidates(orders)
    if not candidates:
        return
    facts: dict[int, tuple[OrderFacts, LineFacts]] = {
        line.line_id: (o, line) for o in candidates for line in o.lines
    }
    lots_t = cast(sa.Table, PointsLot.__table__)
    dialect = dialect_name(session)
    rows = (
        read.lots
        if read is not None
        else await direct.rows(session, _lots_of_lines(dialect), {"line_ids": sorted(facts)})
    )
    work: list[int] = []
    for r in rows:
        order, line = facts[r.line_id]
        target = _reversal_target(r.amount, line.amount_fen, _refunded(order, line))
        releasable = r.status == PENDING and (
            (r.available_at is None and _release_time(r.release_on, r.return_window_days, order) is not None)
            or (r.available_at is not None and r.available_at <= now)
        )
        if releasable or target > r.reversed:
            work.append(r.id)
    if not work:
        return
    book = Book(session, now=now)
    working = set(work)
    members = sorted({r.member_id for r in rows if r.id in working})
    fresh: dict[int, Lot] = {}
    if read is not None:  # the posting's upsert locked these rows: as it left them, they need no lock again
        book.hold({m: read.held[m] for m in members if m in read.held})
        # and the lots it inserted for them are as it inserted them: on a first sync, nearly every lot a page
        # reverses (a refund seen with its payment) — then the page reads no lot (one round trip less)
        fresh = read.fresh(work)
        book.know(fresh.values())
    await book.lock(members)
    # the other lots to work on, and (for reversals) their members' available lots, in one read
    rest = [i for i in work if i not in fresh]
    if rest:
        rest_ids = set(rest)
        loaded = await book.load_lots(
            among(dialect, lots_t.c.id, rest),
            with_available_of=sorted({r.member_id for r in rows if r.id in rest_ids}),
        )
    else:
        loaded = []
    lots = sorted([*fresh.values(), *loaded], key=lambda lot: lot.id or 0)
    released: set[int] = set()
    reversing = []
    for lot in lots:
        assert lot.line_id is not None
        order, line = facts[lot.line_id]
        if lot.status == PENDING and lot.available_at is None:
            lot.available_at = _release_time(lot.release_on, lot.return_window_days, order)
            lot.dirty = lot.available_at is not None
        if lot.status == PENDING and lot.available_at is not None and lot.available_at <= now:
            book.release(lot)
            released.add(lot.member_id)
        target = _reversal_target(lot.amount, line.amount_fen, _refunded(order, line))
        if target > lot.reversed:
            reversing.append((lot, target, order, line))
    # a reversal spills into its member's available lots only when its own lot cannot cover it (never a lot
    # just posted): those members' are loaded (read with the lots above unless only fresh lots were worked on)
    await book.load_available(
        {lot.member_id for lot, target, *_ in reversing if target - lot.reversed > lot.remaining}
    )
    for lot, target, order, line in reversing:
        _reverse(book, rules, lot, target, order, line)
    await book.settle(released)
    await book.flush()


def _reversal_target(earned: int, amount_fen: int, refunded_fen: int) -> int:
    if amount_fen <= 0 or refunded_fen >= amount_fen:
        return earned
    return earned * refunded_fen // amount_fen


def _reverse(book: Book, rules: RuleSet, lot: Any, target: int, order: OrderFacts, line: LineFacts) -> None:
    delta = target - lot.reversed
    key = f"reverse:{lot.id}:{target}"
    taken = book.take(lot.member_id, delta, key, EntryKind.REVERSE, first=lot)
    short = delta - taken.total
    balance = book.balance(lot.member_id)
    policy = rules.doc.reversal_policy
    if policy == "debt":
        amount, shortfall = -delta, 0
        balance.available -= short
    else:
        amount, shortfall = -taken.total, short
        balance.owed += short
    lot.reversed = target
    lot.dirty = True
    book.entry(
        lot.member_id,
        EntryKind.REVERSE,
        amount,
        key,
        shortfall=shortfall,
        account_id=order.account_id,
        order_id=order.order_id,
        line_id=line.line_id,
        rule_code=lot.rule_code,
        rule_version=rules.version,
        ref_entry_id=lot.id,
        reason="refund",
        detail={
            "lot_id": lot.id,
            "earned": lot.amount,
            "amount_fen": line.amount_fen,
            "refunded_fen": _refunded(order, line),
            "target": target,
            "policy": policy,
            "short": short,
        },
    )


# -------------------------------------------------------------------------------------------------------------
# event rules


async def award_event(
    session: AsyncSession,
    ctx: PointsContext,
    member_id: int,
    event: str,
    ref: str,
    *,
    occurred_at: datetime | None = None,
) -> int:
    """Award the event rules for ``event`` (signup, birthday, first_purchase, referral, review) once per ``ref``
    (e.g. the member id for sign-up, ``"{member}:{year}"`` for a birthday, the review id). Returns points posted."""
    now = ctx.clock()
    rules = ctx.rules or await active_rules(session)
    pct = 100
    if any(r.tier_multiplier for r in rules.event_rules(event)):
        pct = (await resolve_tiers(session, [member_id], now)).get(member_id, NO_TIER).multiplier_pct
    credits = _event_credits(ctx, rules, member_id, event, ref, occurred_at or now, pct)
    posted = await _post_with_caps(session, ctx, rules, credits, now)
    return sum(c.amount for c in credits if c.key in posted)


# -------------------------------------------------------------------------------------------------------------
# redemptions, adjustments, transfers (idempotent by the caller's key)


async def _member_ok(session: AsyncSession, member_id: int) -> None:
    row = (
        await session.execute(sa.select(Member.status, Member.merged_into_id).where(Member.id == member_id))
    ).first()
    if row is None:
        raise NotFound(f"no member {member_id}")
    if row[0] == "merged":
        raise Conflict(
            f"member {member_id} was merged into member {row[1]}",
            extra={"merged_into_id": row[1]},
            code="member.merged",
            params={"member_id": member_id, "merged_into_id": row[1]},
        )


def _balance_out(member_id: int, available: int, pending: int, owed: int) -> BalanceOut:
    return BalanceOut(member_id, available, pending, max(-available, 0), owed)


def _result(
    book: Book, key: str, member_id: int, kind: str, points: int, draws: list[DrawOut]
) -> LedgerResult:
    b = book.balance(member_id)
    return LedgerResult(
        entry_id=book.flushed_ids[key],
        member_id=member_id,
        kind=kind,
        points=points,
        balance=_balance_out(member_id, b.available, b.pending, b.owed),
        draws=draws,
    )


async def _debit(
    book: Book, member_id: int, points: int, key: str, kind: str, **fields: Any
) -> list[DrawOut]:
    balance = book.balance(member_id)
    if balance.available < points:
        raise Conflict(
            f"member {member_id} has {max(balance.available, 0)} points available; {points} requested",
            extra={"available": balance.available, "requested": points},
            code="points.insufficient",
            params={"available": max(balance.available, 0), "requested": points},
        )
    await book.load_available([member_id])
    book.entry(member_id, kind, -points, key, **fields)
    taken = book.take(member_id, points, key, kind)
    if taken.total != points:  # the cached balance disagrees with the lots: refuse rather than overdraw
        raise Conflict(f"member {member_id}'s lots do not cover the balance; run `tongcrm verify`")
    return [DrawOut(int(lot.id or 0), amount, kind) for lot, amount in taken.draws]


def _check_entry_size(points: int) -> None:
    if abs(points) > MAX_ENTRY_POINTS:
        raise Unprocessable(
            f"one entry moves at most {MAX_ENTRY_POINTS} points",
            code="points.entry_too_large",
            params={"max": MAX_ENTRY_POINTS},
        )


async def redeem(
    session: AsyncSession, ctx: PointsContext, member_id: int, points: int, *, key: str, reason: str = ""
) -> LedgerResult:
    """Spend available points (FIFO by expiry, then age). Conflict when the balance does not cover them."""
    if points <= 0:
        raise Unprocessable("points to redeem must be a positive integer")
    _check_entry_size(points)
    await _member_ok(session, member_id)
    book = Book(session, now=ctx.clock(), actor=ctx.actor)
    await book.lock([member_id])
    entry_key = f"redeem:{key}"
    draws = await _debit(book, member_id, points, entry_key, EntryKind.REDEEM, reason=reason or None)
    await book.flush()
    return _result(book, entry_key, member_id, EntryKind.REDEEM, points, draws)


async def adjust(
    session: AsyncSession,
    ctx: PointsContext,
    member_id: int,
    points: int,
    *,
    key: str,
    reason: str,
    expires: datetime | None = None,
) -> LedgerResult:
    """A manual correction with a reason and the actor. Positive: a new lot (expiring per the rule set's default
    unless ``expires`` is given); negative: taken FIFO, never below zero."""
    if points == 0:
        raise Unprocessable("an adjustment needs a non-zero number of points", code="points.zero")
    _check_entry_size(points)
    if not reason.strip():
        raise Unprocessable("an adjustment needs a reason", code="points.reason_required")
    if expires is not None:
        if expires.tzinfo is None:
            raise Unprocessable(
                "expires_at needs a time zone (e.g. 2027-01-01T00:00:00+08:00)", code="points.expiry_naive"
            )
        if expires <= ctx.clock():
            raise Unprocessable(
                "expires_at must be in the future: points that already expired are not available",
                code="points.expiry_past",
            )
    await _member_ok(session, member_id)
    now = ctx.clock()
    book = Book(session, now=now, actor=ctx.actor)
    await book.lock([member_id])
    entry_key = f"adjust:{key}"
    draws: list[DrawOut] = []
    if points > 0:
        rules = ctx.rules or await active_rules(session)
        book.new_lot(
            Credit(
                member_id=member_id,
                key=entry_key,
                kind=EntryKind.ADJUST,
                amount=points,
                occurred_at=now,
                available_at=now,
                expires_at=expires or _lot_expiry(rules, None, now, ctx.tz),
                reason=reason,
                actor=ctx.actor,
                rule_version=rules.version,
            )
        )
        await book.settle([member_id])
    else:
        draws = await _debit(book, member_id, -points, entry_key, EntryKind.ADJUST, reason=reason)
    await book.flush()
    result = _result(book, entry_key, member_id, EntryKind.ADJUST, points, draws)
    if ctx.auditor is not audit_service.SYSTEM:
        # an operator moving points by hand is a write the audit log answers for, as a key or a consent is;
        # inside the idempotent action, so a replayed request is not audited twice
        audit_service.record(
            session,
            ctx.auditor,
            "points.adjust",
            "member",
            member_id,
            after={
                "points": points,
                "reason": reason,
                "entry_id": result.entry_id,
                "expires_at": expires.isoformat() if expires is not None else None,
            },
        )
    return result


async def transfer(
    session: AsyncSession,
    ctx: PointsContext,
    from_member_id: int,
    to_member_id: int,
    points: int,
    *,
    key: str,
    reason: str = "",
) -> LedgerResult:
    """Move available points to another member: one ``transfer_out`` and one ``transfer_in`` entry in one
    transaction. The new lot keeps the earliest expiry of the lots drawn on (a transfer never extends life)."""
    if points <= 0:
        raise Unprocessable("points to transfer must be a positive integer")
    _check_entry_size(points)
    if from_member_id == to_member_id:
        raise Unprocessable("cannot transfer points to the same member")
    await _member_ok(session, from_member_id)
    await _member_ok(session, to_member_id)
    now = ctx.clock()
    book = Book(session, now=now, actor=ctx.actor)
    await book.lock([from_member_id, to_member_id])
    out_key, in_key = f"transfer:{key}:out", f"transfer:{key}:in"
    draws = await _debit(
        book,
        from_member_id,
        points,
        out_key,
        EntryKind.TRANSFER_OUT,
        reason=reason or None,
        detail={"to_member_id": to_member_id},
    )
    expiries = [book.lots[d.lot_id].expires_at for d in draws if d.lot_id in book.lots]
    known = [e for e in expiries if e is not None]
    book.new_lot(
        Credit(
            member_id=to_member_id,
            key=in_key,
            kind=EntryKind.TRANSFER_IN,
            amount=points,
            occurred_at=now,
            available_at=now,
            expires_at=min(known) if known else None,
            reason=reason or None,
            actor=ctx.actor,
            detail={"from_member_id": from_member_id},
        )
    )
    await book.settle([to_member_id])
    await book.flush()
    result = _result(book, out_key, from_member_id, EntryKind.TRANSFER_OUT, points, draws)
    b = book.balance(to_member_id)
    return msgspec.structs.replace(
        result,
        counterpart_entry_id=book.flushed_ids[in_key],
        counterpart_balance=_balance_out(to_member_id, b.available, b.pending, b.owed),
    )


@dataclass(frozen=True, slots=True)
class Grant:
    """Points a campaign or journey gives one member, under the caller's idempotency key."""

    member_id: int
    points: int
    key: str


async def grant_many(
    session: AsyncSession, ctx: PointsContext, grants: Sequence[Grant], *, reason: str
) -> dict[str, int]:
    """Give points away in bulk (a campaign run's treated members, a journey step): ``adjust`` entries with the
    reason and actor, each a new available lot expiring per the rule set's default, posted once per key
    (``grant:<key>``) so a replayed run or step grants nothing twice. Returns the entry id by caller's key of
    the grants posted now."""
    if not reason.strip():
        raise Unprocessable("a grant needs a reason")
    for g in grants:
        if g.points <= 0:
            raise Unprocessable("points to grant must be a positive integer")
        _check_entry_size(g.points)
    if not grants:
        return {}
    now = ctx.clock()
    rules = ctx.rules or await active_rules(session)
    expires = _lot_expiry(rules, None, now, ctx.tz)
    credits = [
        Credit(
            member_id=g.member_id,
            key=f"grant:{g.key}",
            kind=EntryKind.ADJUST,
            amount=g.points,
            occurred_at=now,
            available_at=now,
            expires_at=expires,
            reason=reason,
            actor=ctx.actor,
            rule_version=rules.version,
        )
        for g in grants
    ]
    posted = await post_credits(session, credits, now=now)
    return {key.removeprefix("grant:"): entry_id for key, entry_id in posted.items()}


# -- giving redeemed points back ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedemptionState:
    """A redemption and how much of it was given back so far (by :func:`refund_redemption`)."""

    entry_id: int
    member_id: int
    redeemed: int
    refunded: int


async def redemption_state(session: AsyncSession, redemption_key: str) -> RedemptionState | None:
    """The redemption made with ``redemption_key`` (the key given to :func:`redeem`), or None."""
    row = (
        await session.execute(
            sa.select(PointsEntry.id, PointsEntry.member_id, PointsEntry.amount).where(
                PointsEntry.idempotency_key == f"redeem:{redemption_key}",
                PointsEntry.kind == EntryKind.REDEEM,
            )
        )
    ).first()
    if row is None:
        return None
    # by reference only, whoever holds them now: an undone merge can leave a refund with the survivor while
    # the redemption goes back to the member it came from
    back = (
        await session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(PointsEntry.amount), 0)).where(
                PointsEntry.ref_entry_id == row.id,
                PointsEntry.kind == EntryKind.REFUND,
            )
        )
    ).scalar_one()
    return RedemptionState(int(row.id), int(row.member_id), -int(row.amount), int(back))


async def refund_redemption(
    session: AsyncSession,
    ctx: PointsContext,
    redemption_key: str,
    points: int,
    *,
    key: str,
    reason: str = "",
) -> LedgerResult:
    """Give back ``points`` of the redemption made with ``redemption_key`` (goods paid with points came back).

    A new ``refund`` entry references the redemption (which stays as it was) and creates a lot that expires
    under the programme's default expiry, counted from now; the cached balance moves in the same transaction.
    Idempotent by ``key``: the same key again changes nothing and returns the refund it made. Never gives back
    more than was redeemed, over all refunds of that redemption (a Conflict names what is left).
    """
    if points <= 0:
        raise Unprocessable("points to give back must be a positive integer")
    entry_key = f"refund:{key}"
    state = await redemption_state(session, redemption_key)
    if state is None:
        raise NotFound(f"no redemption with key {redemption_key!r}")
    now = ctx.clock()
    book = Book(session, now=now, actor=ctx.actor)
    await book.lock([state.member_id])  # serialises refunds of one member's redemptions
    done = (
        await session.execute(
            sa.select(PointsEntry.id, PointsEntry.amount, PointsEntry.ref_entry_id).where(
                PointsEntry.idempotency_key == entry_key
            )
        )
    ).first()
    if done is not None:
        if done.ref_entry_id != state.entry_id or done.amount != points:
            raise Conflict(f"refund key {key!r} was already used for another refund", extra={"key": key})
        b = book.balance(state.member_id)
        return LedgerResult(
            int(done.id), state.member_id, EntryKind.REFUND, points,
            _balance_out(state.member_id, b.available, b.pending, b.owed),
        )  # fmt: skip
    state = await redemption_state(session, redemption_key)  # again, under the member's lock
    assert state is not None
    left = state.redeemed - state.refunded
    if points > left:
        raise Conflict(
            f"only {left} of the {state.redeemed} redeemed points are left to give back; {points} asked",
            extra={"redeemed": state.redeemed, "refunded": state.refunded, "requested": points},
        )
    rules = ctx.rules or await active_rules(session)
    book.new_lot(
        Credit(
            member_id=state.member_id,
            key=entry_key,
            kind=EntryKind.REFUND,
            amount=points,
            occurred_at=now,
            available_at=now,
            expires_at=_lot_expiry(rules, None, now, ctx.tz),
            reason=reason or None,
            actor=ctx.actor,
            rule_version=rules.version,
            ref_entry_id=state.entry_id,
            detail={"redeemed": state.redeemed, "refunded_before": state.refunded},
        )
    )
    await book.settle([state.member_id])
    await book.flush()
    return _result(book, entry_key, state.member_id, EntryKind.REFUND, points, [])


async def idempotent(
    session: AsyncSession,
    *,
    key: str | None,
    kind: str,
    member_id: int,
    body: Mapping[str, Any],
    now: datetime,
    action: Callable[[], Awaitable[LedgerResult]],
) -> tuple[LedgerResult, bool]:
    """Run ``action`` once per ``key``. The same key with the same request returns the stored result
    (``True`` = replayed); with a different request it is refused. A failed action stores nothing."""
    if not key or not key.strip():
        raise BadRequest("this request needs an Idempotency-Key header")
    if len(key) > 150:
        raise BadRequest("the Idempotency-Key header may be at most 150 characters long")
    digest = hashlib.sha256(
        json.dumps({"kind": kind, "member_id": member_id, "body": body}, sort_keys=True, default=str).encode()
    ).hexdigest()
    table = cast(sa.Table, PointsRequest.__table__)
    claim = (
        insert(session, table)
        .values(key=key, kind=kind, member_id=member_id, body_hash=digest, response={}, created_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(table.c.key)
    )
    if (await session.execute(claim)).first() is None:
        stored = (await session.execute(sa.select(table).where(table.c.key == key))).one()
        if stored.body_hash != digest:
            raise Unprocessable(
                f"Idempotency-Key {key!r} was already used for a different request",
                extra={"idempotency_key": key},
                code="points.key_reused",
            )
        return msgspec.convert(stored.response, LedgerResult), True
    result = await action()
    await session.execute(
        sa.update(table).where(table.c.key == key).values(response=msgspec.to_builtins(result))
    )
    return result, False


# -------------------------------------------------------------------------------------------------------------
# rule sets

_compiled: dict[tuple[int, str], RuleSet] = {}


def _compile_cached(version: int, document: dict[str, Any]) -> RuleSet:
    fingerprint = json.dumps(document, sort_keys=True)
    cached = _compiled.get((version, fingerprint))
    if cached is None:
        if len(_compiled) > 64:
            _compiled.clear()
        cached = _compiled[(version, fingerprint)] = compile_rules(version, parse_document(document))
    return cached


_RULES_KEY = "tongcrm.points.active_rules"


def holds_active_rules(session: AsyncSession) -> bool:
    """Whether the transaction holds the active rule set already (read by :func:`active_rules` or handed in by
    :func:`hold_active_rules`)."""
    return txcache.get(session, _RULES_KEY)[0]


def hold_active_rules(session: AsyncSession, version: int | None, document: dict[str, Any] | None) -> None:
    """Hand the transaction the active rule set read by a caller with other rows in one statement (a till's
    checkout), so :func:`active_rules` needs no read of its own; ``version`` None: no rule set was activated."""
    rules = (
        compile_rules(0, DEFAULT_DOCUMENT)
        if version is None or document is None
        else _compile_cached(version, document)
    )
    txcache.put(session, _RULES_KEY, rules)


async def active_rules(session: AsyncSession) -> RuleSet:
    """The active rule set, read once per transaction; version 0 (the built-in default) while none was ever
    activated."""
    found, cached = txcache.get(session, _RULES_KEY)
    if found:
        return cast(RuleSet, cached)
    table = cast(sa.Table, PointsRuleSet.__table__)
    row = (
        await session.execute(sa.select(table.c.version, table.c.document).where(table.c.status == "active"))
    ).first()
    rules = compile_rules(0, DEFAULT_DOCUMENT) if row is None else _compile_cached(row[0], row[1])
    txcache.put(session, _RULES_KEY, rules)
    return rules


async def rule_set(session: AsyncSession, version: int) -> RuleSet:
    if version == 0:
        return compile_rules(0, DEFAULT_DOCUMENT)
    row = await session.get(PointsRuleSet, version)
    if row is None:
        raise NotFound(f"no rule set version {version}")
    return _compile_cached(row.version, row.document)


def draft_rules(document: Any) -> RuleSet:
    """A rule set that is not stored (dry runs, backtests): version -1."""
    return compile_rules(-1, parse_document(document))


async def create_rule_set(
    session: AsyncSession,
    document: Any,
    *,
    now: datetime,
    note: str = "",
    actor: str = "system",
    activate: bool = False,
    auditor: audit_service.Actor = audit_service.SYSTEM,
) -> RuleSetOut:
    doc = parse_document(document)
    version = (
        int(
            (
                await session.execute(sa.select(sa.func.coalesce(sa.func.max(PointsRuleSet.version), 0)))
            ).scalar_one()
        )
        + 1
    )
    row = PointsRuleSet(
        version=version,
        document=msgspec.to_builtins(doc),
        status="draft",
        note=note,
        created_by=actor,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    if activate:
        return await activate_rule_set(session, version, now=now, actor=auditor)
    return _rule_set_out(row)


async def activate_rule_set(
    session: AsyncSession,
    version: int,
    *,
    now: datetime,
    actor: audit_service.Actor = audit_service.SYSTEM,
) -> RuleSetOut:
    """Make ``version`` the rule set that earns from now on (the one active before retires), audited as
    ``points.rules.activate`` with the versions before and after: which rules paid an order is a question
    support answers from the audit log."""
    row = await session.get(PointsRuleSet, version, with_for_update=True)
    if row is None:
        raise NotFound(f"no rule set version {version}")
    before = (
        await session.execute(sa.select(PointsRuleSet.version).where(PointsRuleSet.status == "active"))
    ).scalar_one_or_none()
    await session.execute(
        sa.update(PointsRuleSet)
        .where(PointsRuleSet.status == "active", PointsRuleSet.version != version)
        .values(status="retired")
    )
    row.status = "active"
    row.activated_at = now
    await session.flush()
    txcache.forget(session, _RULES_KEY)
    audit_service.record(
        session,
        actor,
        "points.rules.activate",
        "points_rule_set",
        version,
        before={"active_version": before},
        after={"active_version": version, "note": row.note},
        at=now,
    )
    return _rule_set_out(row)


async def list_rule_sets(session: AsyncSession) -> list[RuleSetOut]:
    rows = (await session.execute(sa.select(PointsRuleSet).order_by(PointsRuleSet.version.desc()))).scalars()
    return [_rule_set_out(r) for r in rows]


def _rule_set_out(row: PointsRuleSet) -> RuleSetOut:
    return RuleSetOut(
        row.version, row.status, row.note, row.created_by, row.created_at, row.activated_at, row.document
    )


# -------------------------------------------------------------------------------------------------------------
# reading: balance and the explained statement


async def balance(session: AsyncSession, member_id: int) -> BalanceOut:
    row = await session.get(PointsBalance, member_id)
    if row is None:
        return _balance_out(member_id, 0, 0, 0)
    return _balance_out(member_id, row.available, row.pending, row.owed)


#: How far ahead the member view looks for points about to expire, and how many entries it shows.
EXPIRING_SOON = timedelta(days=30)
VIEW_ENTRIES = 5


async def view_section(session: AsyncSession, member_id: int, *, now: datetime) -> dict[str, Any]:
    """The ``points`` block of the member 360 view: the balance, the spendable points that expire within
    :data:`EXPIRING_SOON` (by expiry time, soonest first) and the newest ledger entries.

    Three indexed reads (the balance row, the member's available lots, the newest entries), so the view stays
    cheap for members with long histories."""
    bal = await balance(session, member_id)
    lots = (
        await session.execute(
            sa.select(PointsLot.expires_at, sa.func.sum(PointsLot.remaining))
            .where(
                PointsLot.member_id == member_id,
                PointsLot.status == AVAILABLE,
                PointsLot.remaining > 0,
                PointsLot.expires_at > now,
                PointsLot.expires_at <= now + EXPIRING_SOON,
            )
            .group_by(PointsLot.expires_at)
            .order_by(PointsLot.expires_at)
        )
    ).all()
    entries = (
        await session.execute(
            sa.select(
                PointsEntry.id,
                PointsEntry.kind,
                PointsEntry.amount,
                PointsEntry.occurred_at,
                PointsEntry.reason,
            )
            .where(PointsEntry.member_id == member_id)
            .order_by(PointsEntry.id.desc())
            .limit(VIEW_ENTRIES)
        )
    ).all()
    return {
        "available": bal.available,
        "pending": bal.pending,
        "debt": bal.debt,
        "owed": bal.owed,
        "expiring_soon": {
            "within_days": EXPIRING_SOON.days,
            "points": sum(int(points) for _, points in lots),
            "by_date": [{"expires_at": at, "points": int(points)} for at, points in lots],
        },
        "recent_entries": [
            {"id": e.id, "kind": e.kind, "amount": e.amount, "occurred_at": e.occurred_at, "reason": e.reason}
            for e in entries
        ],
    }


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _explain(entry: PointsEntry, lot: PointsLot | None, tz: ZoneInfo) -> str:
    d = entry.detail or {}
    rule = f"rule {entry.rule_code!r} v{entry.rule_version}"
    if entry.kind == EntryKind.EARN and "base_fen" in d:
        text = (
            f"{entry.amount} points under {rule}: {_yuan(d['base_fen'])} yuan × {d['points_per_yuan']} points/yuan"
            f" × {d['multiplier_pct']}% tier multiplier, rounded {d['rounding']}"
        )
        if "capped_from" in d:
            text += f", capped from {d['capped_from']} (cap {d['cap']} per {d['period']})"
        if lot is not None and lot.status == PENDING:
            text += f"; pending until the order's {lot.release_on.replace('_', ' ')}"
        return text
    if entry.kind == EntryKind.EARN:
        return f"{entry.amount} points under {rule} for the {d.get('event', 'event')} event"
    if entry.kind == EntryKind.REVERSE:
        text = (
            f"refund of {_yuan(d.get('refunded_fen', 0))} of {_yuan(d.get('amount_fen', 0))} yuan on line "
            f"{entry.line_id}: {d.get('target', 0)} of the {d.get('earned', 0)} points earned are taken back in total"
        )
        if d.get("short"):
            text += (
                f"; {d['short']} had been spent: recorded as debt"
                if d.get("policy") == "debt"
                else f"; {d['short']} had been spent: owed from future earnings"
            )
        return text
    if entry.kind == EntryKind.EXPIRE:
        at = entry.occurred_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
        return f"{-entry.amount} points of lot {entry.ref_entry_id} expired at {at}"
    if entry.kind == EntryKind.CLAWBACK:
        return f"{-entry.amount} points clawed back for an earlier refund"
    if entry.kind == EntryKind.REDEEM:
        return f"redeemed {-entry.amount} points" + (f": {entry.reason}" if entry.reason else "")
    if entry.kind == EntryKind.ADJUST:
        return f"manual adjustment of {entry.amount} by {entry.actor}: {entry.reason}"
    if entry.kind == EntryKind.OPENING:
        return f"opening balance of {entry.amount} carried over" + (
            f": {entry.reason}" if entry.reason else ""
        )
    if entry.kind == EntryKind.TRANSFER_OUT:
        return f"{-entry.amount} points transferred to member {d.get('to_member_id')}"
    if entry.kind == EntryKind.TRANSFER_IN:
        return f"{entry.amount} points transferred from member {d.get('from_member_id')}"
    if entry.kind == EntryKind.REFUND:
        return f"{entry.amount} redeemed points given back (redemption {entry.ref_entry_id})" + (
            f": {entry.reason}" if entry.reason else ""
        )
    if entry.kind == EntryKind.MERGE_SPLIT:
        other = d.get("counterpart_id")
        parts = []
        if entry.amount < 0:
            parts.append(f"{-entry.amount} points of this member's lots went to member {other} while merged")
        elif entry.amount > 0:
            parts.append(f"{entry.amount} points this member took from member {other}'s lots while merged")
        if entry.shortfall > 0:
            parts.append(f"{entry.shortfall} of this member's clawbacks paid member {other}'s owed points")
        elif entry.shortfall < 0:
            parts.append(f"{-entry.shortfall} owed points paid by member {other}'s clawbacks")
        return f"undo of merge {d.get('merge_id')}: " + "; ".join(parts)
    return entry.kind


async def statement(
    session: AsyncSession, member_id: int, *, tz: ZoneInfo, limit: int = 50, offset: int = 0
) -> StatementOut:
    """The balance and the newest entries, each explained: the rule and version that produced it, the
    computation, its lot and the lots it drew on."""
    if (await session.get(Member, member_id)) is None:
        raise NotFound(f"no member {member_id}")
    limit = max(1, min(limit, 500))
    total = int(
        (
            await session.execute(sa.select(sa.func.count()).where(PointsEntry.member_id == member_id))
        ).scalar_one()
    )
    entries = list(
        (
            await session.execute(
                sa.select(PointsEntry)
                .where(PointsEntry.member_id == member_id)
                .order_by(PointsEntry.id.desc())
                .limit(limit)
                .offset(max(offset, 0))
            )
        ).scalars()
    )
    ids = [e.id for e in entries]
    lots = {
        lot.id: lot
        for lot in (await session.execute(sa.select(PointsLot).where(PointsLot.id.in_(ids)))).scalars()
    }
    draws: dict[int, list[DrawOut]] = defaultdict(list)
    for d in (
        await session.execute(
            sa.select(PointsLotDraw).where(PointsLotDraw.entry_id.in_(ids)).order_by(PointsLotDraw.id)
        )
    ).scalars():
        draws[d.entry_id].append(DrawOut(d.lot_id, d.amount, d.kind))
    versions = {e.rule_version for e in entries if e.rule_version is not None}
    rule_docs: dict[int, RuleSet] = {}
    for v in versions:
        try:
            rule_docs[v] = await rule_set(session, v)
        except NotFound:
            continue
    out = []
    for e in entries:
        lot = lots.get(e.id)
        rule_doc = None
        if e.rule_version in rule_docs and e.rule_code:
            found = rule_docs[e.rule_version].rule(e.rule_code)
            rule_doc = msgspec.to_builtins(found) if found is not None else None
        out.append(
            EntryOut(
                id=e.id,
                kind=e.kind,
                amount=e.amount,
                occurred_at=e.occurred_at,
                explanation=_explain(e, lot, tz),
                idempotency_key=e.idempotency_key,
                shortfall=e.shortfall,
                available_from=e.available_from
                or (lot.available_at if lot and lot.status == AVAILABLE else None),
                expires_at=e.expires_at,
                rule_code=e.rule_code,
                rule_version=e.rule_version,
                rule=rule_doc,
                account_id=e.account_id,
                order_id=e.order_id,
                line_id=e.line_id,
                reason=e.reason,
                actor=e.actor,
                ref_entry_id=e.ref_entry_id,
                detail=e.detail,
                lot=LotOut(
                    lot.id,
                    lot.amount,
                    lot.remaining,
                    lot.reversed,
                    lot.status,
                    lot.release_on,
                    lot.available_at,
                    lot.expires_at,
                )
                if lot is not None
                else None,
                draws=draws.get(e.id, []),
            )
        )
    return StatementOut(await balance(session, member_id), out, total, limit, max(offset, 0))


# -------------------------------------------------------------------------------------------------------------
# dry runs


async def preview(
    session: AsyncSession, ctx: PointsContext, order: PreviewOrderIn, rules: RuleSet, *, draft: bool
) -> PreviewOut:
    """The points an order would earn under ``rules``; reads the member's tier, writes nothing."""
    tier = NO_TIER
    if order.member_id is not None:
        if (await session.get(Member, order.member_id)) is None:
            raise NotFound(f"no member {order.member_id}")
        tier = (await resolve_tiers(session, [order.member_id], ctx.clock())).get(order.member_id, NO_TIER)
    lines = []
    for line in order.lines:
        if line.amount_fen < 0:
            raise Unprocessable("a line amount cannot be negative")
        earned = earn_for_line(
            rules,
            LineInput(order.channel, order.store_code, line.sku, line.category, line.amount_fen),
            tier.multiplier_pct,
        )
        lines.append(
            PreviewLineOut(
                line.external_id,
                line.amount_fen,
                sum(e.points for e in earned),
                [PreviewRuleOut(e.rule.code, e.points, e.detail) for e in earned],
            )
        )
    return PreviewOut(
        rule_version=None if draft else rules.version,
        draft=draft,
        tier=tier.tier,
        multiplier_pct=tier.multiplier_pct,
        total=sum(line.points for line in lines),
        lines=lines,
    )


async def backtest(
    session: AsyncSession, ctx: PointsContext, rules: RuleSet, since: datetime, *, chunk: int = 2000
) -> BacktestReport:
    """Replay stored paid orders since ``since`` under ``rules`` (before caps) and compare with the points
    their lines actually earned."""
    by_channel: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    by_tier: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    totals = [0, 0, 0, 0]  # draft, actual, orders, lines
    last_id = 0
    while True:
        orders = (
            await session.execute(
                sa.select(Order.id, Order.member_id, Order.channel, Order.store_code, Order.paid_at)
                .where(
                    Order.paid_at.is_not(None),
                    Order.paid_at >= since,
                    Order.member_id.is_not(None),
                    Order.id > last_id,
                )
                .order_by(Order.id)
                .limit(chunk)
            )
        ).all()
        if not orders:
            break
        last_id = orders[-1].id
        ids = [o.id for o in orders]
        lines: dict[int, list[Any]] = defaultdict(list)
        for line in (
            await session.execute(
                sa.select(OrderLine.order_id, OrderLine.sku, OrderLine.category, OrderLine.amount_fen).where(
                    OrderLine.order_id.in_(ids)
                )
            )
        ).all():
            lines[line.order_id].append(line)
        actual = {
            r[0]: int(r[1])
            for r in (
                await session.execute(
                    sa.select(PointsEntry.order_id, sa.func.sum(PointsEntry.amount))
                    .where(PointsEntry.order_id.in_(ids), PointsEntry.kind == EntryKind.EARN)
                    .group_by(PointsEntry.order_id)
                )
            ).all()
        }
        tiers = await resolve_tiers(session, [int(o.member_id) for o in orders], ctx.clock())
        for o in orders:
            tier = tiers.get(int(o.member_id), NO_TIER)
            draft = sum(
                e.points
                for line in lines[o.id]
                for e in earn_for_line(
                    rules,
                    LineInput(o.channel, o.store_code, line.sku, line.category, line.amount_fen),
                    tier.multiplier_pct,
                )
            )
            got = actual.get(o.id, 0)
            for group in (by_channel[o.channel], by_tier[tier.tier or "(none)"]):
                group[0] += draft
                group[1] += got
                group[2] += 1
            totals[0] += draft
            totals[1] += got
            totals[2] += 1
            totals[3] += len(lines[o.id])
    return BacktestReport(
        since=since,
        orders=totals[2],
        lines=totals[3],
        draft_total=totals[0],
        actual_total=totals[1],
        difference=totals[0] - totals[1],
        by_channel={k: BacktestGroup(v[0], v[1], v[0] - v[1], v[2]) for k, v in sorted(by_channel.items())},
        by_tier={k: BacktestGroup(v[0], v[1], v[0] - v[1], v[2]) for k, v in sorted(by_tier.items())},
    )


# re-exported for jobs and the CLI
expire_due = ledger.expire_due
release_due = ledger.release_due
verify = ledger.verify
recompute_balances = ledger.recompute_balances

__all__ = [
    "EventRule",
    "LineFacts",
    "OrderFacts",
    "PointsContext",
    "RuleSetDoc",
    "SpendRule",
    "apply_orders",
    "award_event",
]
