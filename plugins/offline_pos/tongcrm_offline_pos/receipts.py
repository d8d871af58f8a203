"""Receipts: checkout (earn, and pay with points), returns (reverse and give back line by line), offline batches.

Everything runs in one unit of work of the core's counter (:mod:`tongcrm.counter`): the counter records a sale
as a core order through the ingest engine (forward only, identity resolution, points under the earning rules,
tiers, outbox), and this module writes its own ``pos_receipts`` rows in the same transaction. Points paid at
the till are a redemption in the same unit of work; the part of the receipt paid with points earns nothing (it
is allocated over the lines by largest remainder, so each line's earning base is exact in fen).

A return never edits ledger entries: it re-applies the original sale with the returned fen on its lines, and the
points service posts the reversals (``floor(earned × refunded / amount)`` per line). The re-applied order
carries ``modified_at`` = the sale's time + one microsecond per applied return, so the forward-only engine takes
every return exactly once whatever order they arrive in. When the sale was paid partly with points, the return
also gives back the share of those points the returned goods account for (:func:`tongcrm.counter.paid_points_due`:
the redeemed points shared over the sale's lines by amount, a line's share given back in proportion to what of it
came back, cumulative over all returns, so never more than was redeemed), as a ``refund`` ledger entry that
references the redemption and is idempotent by the return's key.

A return may be made in another store of the brand than the sale (``original.store``), when the returning store
allows it (store setting ``allow_cross_store_returns``, default true). The return receipt belongs to the
returning store; the sale is found by its full key, and the member, lines and amounts come from it. The
cumulative returns are kept on the sale's row (locked while a return is applied), so a line cannot come back
twice in total, whichever stores take it back.

Idempotency: the receipt key (store, till, business day, sequence) is unique in ``pos_receipts``. A new key is
claimed with ``INSERT … ON CONFLICT DO NOTHING`` before any effect, so two uploads of one receipt meet there
and the second replays the first's answer. An *applied* receipt is final; a *rejected* one (points spent
meanwhile, original not uploaded yet…) applied nothing and is tried again when uploaded again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from tongcrm.counter import (
    ORDER_FIGURES,
    Buyer,
    CounterAccount,
    CounterRefused,
    CounterWork,
    PaidPointsBack,
    PointsPayment,
    ReturnedLine,
    compile_counter_sale,
    compile_quick_sale,
    insert_on,
)
from tongcrm.errors import Conflict, TongcrmError, Unprocessable
from tongcrm.logging import get_logger
from tongcrm.plugin.types import LineRefundStatus, NormalisedOrder, OrderLine, OrderStatus
from tongcrm.warmup import compile_ahead

from tongcrm_offline_pos.cards import card_claim
from tongcrm_offline_pos.models import TABLES, PosReceipt
from tongcrm_offline_pos.schemas import (
    BatchResult,
    LineIn,
    MemberRef,
    ReceiptIn,
    ReceiptResult,
    ReceiptView,
)
from tongcrm_offline_pos.stores import CHANNEL, Store, TillCache, find_store

log = get_logger(__name__)

#: Receipts per offline upload; a till with more sends several batches.
MAX_BATCH = 200
#: Skew beyond this is logged as a warning (and, like any skew, tolerated and recorded).
SKEW_WARNING_SECONDS = 300
_RECEIPTS = cast(sa.Table, PosReceipt.__table__)
_KEY_COLUMNS = ["account_id", "till_code", "business_day", "sequence"]


class ReceiptRejected(TongcrmError):
    """A receipt that cannot be applied as sent. ``reason`` is a stable code tills branch on."""

    title = "Receipt rejected"

    def __init__(self, reason: str, message: str, *, status: int = 409) -> None:
        super().__init__(message, extra={"reason": reason})
        self.reason = reason
        self.status_code = status


def receipt_key(store: str, till: str, business_day: date, sequence: int) -> str:
    # the day's digits as ``%Y%m%d`` writes them for any business day a receipt may have (years 1000-9999),
    # without strftime (~5 µs a call at load, twice a receipt; tillcpu17)
    day = business_day
    return f"{store}:{till}:{day.year:04d}{day.month:02d}{day.day:02d}:{sequence}"


def body_hash(receipt: ReceiptIn) -> str:
    """The receipt's content without ``sent_at`` (a retry is sent later, and is still the same receipt)."""
    return hashlib.sha256(msgspec.json.encode(msgspec.structs.replace(receipt, sent_at=None))).hexdigest()


def allocate(amounts: Sequence[int], take: int) -> list[int]:
    """Each amount less its share of ``take`` (largest remainder, so the shares sum exactly to ``take``)."""
    total = sum(amounts)
    take = min(max(take, 0), total)
    if take == 0:
        return list(amounts)
    shares = [a * take // total for a in amounts]
    rest = take - sum(shares)
    by_remainder = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] * take % total), i))
    for i in by_remainder[:rest]:
        shares[i] += 1
    return [a - s for a, s in zip(amounts, shares, strict=True)]


def effective_time(
    occurred_at: datetime, sent_at: datetime | None, now: datetime
) -> tuple[datetime, int | None]:
    """The sale's time on the server's clock, and the measured skew (server − till, seconds).

    With ``sent_at`` the skew is measured and the till's times are shifted by it. Without it a till time in the
    future is still evidence of a fast clock: that much skew is recorded. Nothing is ever later than ``now``.
    """
    skew: int | None = None
    effective = occurred_at
    if sent_at is not None:
        skew = round((now - sent_at).total_seconds())
        effective = occurred_at + timedelta(seconds=skew)
    if effective > now:
        if skew is None:
            skew = round((now - occurred_at).total_seconds())
        effective = now
    return effective, skew


# -------------------------------------------------------------------------------------------------------------
# validation


def _invalid(message: str) -> ReceiptRejected:
    return ReceiptRejected("invalid_receipt", message, status=422)


def _aware(value: datetime | None, what: str) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise _invalid(f"{what} needs a UTC offset (e.g. 2024-06-18T10:00:00+08:00)")


def unstorable_text(value: Any, path: str = "") -> str | None:
    """Why a text somewhere in ``value`` (decoded JSON) cannot be stored, naming where it is; ``None`` if all
    can. PostgreSQL keeps no NUL character (U+0000) in text or JSON, and no database keeps a lone surrogate
    (JSON allows ``"\ud800"``); SQLite would keep the NUL, so the rule is the same on both."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path or 'a text'} contains a NUL character (U+0000), which cannot be stored"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path or 'a text'} is not valid Unicode text (it holds a lone surrogate)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable_text(key, path or "a key") or unstorable_text(
                item, f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unstorable_text(item, f"{path}[{i}]")
            if found:
                return found
    return None


def stored_body(r: ReceiptIn, member_id: int | None = None) -> dict[str, Any]:
    """The receipt as ``pos_receipts.body`` keeps it: without ``sent_at`` and without the buyer's mobile or
    card, which would be personal data in clear at rest; the buyer is kept as the member it resolved to.
    Nothing reads them back: a return takes the member from the sale's row, and the replay check compares
    ``body_hash``, which is made from the receipt as sent."""
    member = None if r.member is None else MemberRef(member_id=member_id or r.member.member_id)
    body: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(r, sent_at=None, member=member))
    return body


def _all_text_storable(r: ReceiptIn) -> bool:
    """True when every text of ``r`` can be stored, told from its JSON in one C call: msgspec refuses a lone
    surrogate and writes a NUL as ``\\u0000``. False only says "look": :func:`unstorable_text`'s walk (57 calls
    for a one-line receipt, a copy of it as builtins first) then finds which text and where, and stays the
    judge (a text holding a backslash then ``u0000`` is looked at and passes)."""
    try:
        encoded = msgspec.json.encode(r)
    except Exception:  # a lone surrogate (UnicodeEncodeError), or anything else: the walk decides
        return False
    return b"\\u0000" not in encoded


def validate(r: ReceiptIn, tz: ZoneInfo, effective: datetime | None = None) -> None:
    if not _all_text_storable(r):
        bad_text = unstorable_text(msgspec.to_builtins(r))
        if bad_text:
            raise ReceiptRejected("invalid_text", bad_text, status=422)
    _aware(r.occurred_at, "occurred_at")
    _aware(r.sent_at, "sent_at")
    key = receipt_key(r.store, r.till, r.business_day, r.sequence)
    if len(key) > 64:
        raise _invalid("the receipt key (store:till:day:sequence) is longer than 64 characters")
    if effective is not None:
        validate_day(r, tz, effective)
    if r.kind == "sale":
        if r.original is not None or r.return_lines:
            raise _invalid("a sale has no original and no return_lines")
        if not r.lines:
            raise _invalid("a sale needs at least one line")
        numbers = [line.line_no for line in r.lines]
        if len(numbers) != len(set(numbers)):
            raise _invalid("line_no must be unique within a receipt")
        if sum(line.amount_fen for line in r.lines) != r.total_fen:
            raise _invalid("the lines' amount_fen do not add up to total_fen")
        if sum(p.amount_fen for p in r.payments) != r.total_fen:
            raise _invalid("the payments do not add up to total_fen")
        by_points = [p for p in r.payments if p.method == "points"]
        if len(by_points) > 1:
            raise _invalid("pay with points in one payment")
        for p in r.payments:
            if (p.method == "points") != (p.points > 0):
                raise _invalid("a points payment names its points (> 0); other payments name none")
        return
    if r.original is None or not r.return_lines:
        raise _invalid("a return names its original sale and its return_lines")
    if r.lines:
        raise _invalid("a return lists what goes back in return_lines, not lines")
    if any(p.method == "points" for p in r.payments):
        raise _invalid("a return cannot be paid with points")
    numbers = [line.line_no for line in r.return_lines]
    if len(numbers) != len(set(numbers)):
        raise _invalid("line_no must be unique within return_lines")
    if sum(line.amount_fen for line in r.return_lines) != r.total_fen:
        raise _invalid("the return_lines' amount_fen do not add up to total_fen")


def validate_day(r: ReceiptIn, tz: ZoneInfo, effective: datetime) -> None:
    """The part of :func:`validate` that needs the receipt's effective time: its business day within a day
    of it. Checked apart once that time is known, so a receipt's text is not walked twice (a copy of the
    whole receipt as builtins each time: issue #22, session 14)."""
    local = effective.astimezone(tz).date()
    if abs((r.business_day - local).days) > 1:
        raise _invalid(
            f"business_day {r.business_day.isoformat()} is more than a day from the receipt time "
            f"({local.isoformat()} in {tz.key})"
        )


# -------------------------------------------------------------------------------------------------------------
# applying


@dataclass(slots=True)
class _Claimed:
    row_id: int
    key: str
    hash: str
    effective: datetime
    skew: int | None
    #: The row was inserted by this call with the receipt as sent (not a retry of a rejected receipt).
    fresh: bool
    sent: datetime | None
    now: datetime
    #: The row was finished by the sale's own statements (:func:`_sale`'s follow-up): nothing left to write.
    finished: bool = False


def _result(r: ReceiptIn, key: str, status: str, **fields: Any) -> ReceiptResult:
    return ReceiptResult(
        key=key,
        store=r.store,
        till=r.till,
        business_day=r.business_day,
        sequence=r.sequence,
        kind=r.kind,
        status=status,
        **fields,
    )


def _order(
    r: ReceiptIn,
    key: str,
    effective: datetime,
    *,
    version: int = 0,
    refunds: dict[str, dict[str, int]] | None = None,
    offline: bool,
) -> NormalisedOrder:
    """The core order for a sale, as of ``version`` returns (``refunds``: fen and quantity per line). The
    counter adds the buyer's identity claim."""
    points_fen = sum(p.amount_fen for p in r.payments if p.method == "points")
    bases = allocate([line.amount_fen for line in r.lines], points_fen)
    refunds = refunds or {}
    lines = []
    fully = True
    for line, base in zip(r.lines, bases, strict=True):
        back = refunds.get(str(line.line_no), {}).get("fen", 0)
        refunded = (
            base if back >= line.amount_fen else (back * base // line.amount_fen if line.amount_fen else 0)
        )
        fully = fully and back >= line.amount_fen
        lines.append(
            OrderLine(
                external_id=str(line.line_no),
                title=line.title,
                quantity=line.quantity,
                unit_price_fen=line.unit_price_fen,
                amount_fen=base,
                sku=line.sku,
                category=line.category,
                refund_status=LineRefundStatus.REFUNDED if back else LineRefundStatus.NONE,
                refunded_fen=refunded,
            )
        )
    return NormalisedOrder(
        external_id=key,
        status=OrderStatus.REFUNDED if fully and refunds else OrderStatus.COMPLETED,
        created_at=effective,
        modified_at=effective + timedelta(microseconds=version),
        paid_at=effective,
        completed_at=effective,
        total_fen=r.total_fen,
        paid_fen=r.total_fen - points_fen,
        discount_fen=r.discount_fen,
        claims=(),
        lines=tuple(lines),
        store_code=r.store,
        platform_status="pos_offline" if offline else "pos",
    )


def _refused(exc: CounterRefused) -> ReceiptRejected:
    if exc.reason == "invalid_mobile":
        return _invalid(f"member.mobile: {exc.message}")
    return ReceiptRejected(exc.reason, exc.message, status=exc.status_code)


async def _sale(
    uow: CounterWork, store: Store, r: ReceiptIn, c: _Claimed, offline: bool
) -> tuple[ReceiptResult, dict[str, Any]]:
    buyer: Buyer | None = None
    if r.member is not None and r.member.member_id is not None:
        buyer = await uow.buyer(member_id=r.member.member_id, evidence="pos receipt")
    elif r.member is not None and r.member.mobile:
        buyer = await uow.buyer(mobile=r.member.mobile, evidence=f"given at till {r.store}/{r.till}")
    elif r.member is not None and r.member.card:
        try:
            claim = card_claim(r.member.card, evidence=f"card shown at till {r.store}/{r.till}")
        except Unprocessable as exc:
            raise _invalid(f"member.card: {exc.message}") from None
        buyer = await uow.buyer(claim=claim)
    want = sum(p.points for p in r.payments if p.method == "points")
    payment = (
        PointsPayment(want, key=f"pos:{c.key}", reason=f"paid at till: receipt {c.key}") if want else None
    )

    def sold(member_id: int | None, earned: int, available: int | None) -> ReceiptResult:
        return _result(
            r,
            c.key,
            "applied",
            offline=offline,
            member_id=member_id,
            points_earned=earned,
            points_redeemed=want,
            points_available=available,
            clock_skew_seconds=c.skew,
        )

    def finish(order_id: int, member_id: int | None) -> tuple[Any, dict[str, Any]]:
        # the receipt's row finished as _finish would, its result taking what the till is shown from the sale's
        # last statement (on PostgreSQL in it: one round trip fewer)
        values = _finish_values(
            c, r, offline, "applied", result=sold(member_id, 0, None), member_id=member_id, order_id=order_id
        )
        return _finish_statement(tuple(values), figures=uow.rows.dialect), {**values, "row_id": c.row_id}

    sale = await uow.record_sale(
        store.account,
        _order(r, c.key, c.effective, offline=offline),
        buyer=buyer,
        points_payment=payment,
        then=finish,
    )
    c.finished = True
    result = sold(sale.member_id, sale.points_earned, sale.points_available)
    return result, {"member_id": sale.member_id, "order_id": sale.order_id}


async def _original_store(uow: CounterWork, store: Store, code: str, original_key: str) -> Store:
    if code == store.code:
        return store
    if not store.allows_cross_store_returns:
        raise ReceiptRejected(
            "cross_store_return_refused",
            f"store {store.code!r} does not take back goods sold in other stores "
            "(its setting allow_cross_store_returns is false)",
            status=403,
        )
    origin = await find_store(uow, code)
    if origin is None:
        raise ReceiptRejected(
            "original_not_found", f"no applied sale {original_key} to return goods from (yet)", status=404
        )
    return origin


async def _return(
    uow: CounterWork, store: Store, r: ReceiptIn, c: _Claimed, offline: bool
) -> tuple[ReceiptResult, dict[str, Any]]:
    ref = r.original
    assert ref is not None
    code = ref.store or store.code
    original_key = receipt_key(code, ref.till, ref.business_day, ref.sequence)
    origin = await _original_store(uow, store, code, original_key)
    original = (
        await uow.rows.execute(
            sa.select(_RECEIPTS)
            .where(
                _RECEIPTS.c.account_id == origin.account_id,
                _RECEIPTS.c.till_code == ref.till,
                _RECEIPTS.c.business_day == ref.business_day,
                _RECEIPTS.c.sequence == ref.sequence,
                _RECEIPTS.c.kind == "sale",
                _RECEIPTS.c.status == "applied",
            )
            .with_for_update()  # returns of one sale, from any store, one at a time
        )
    ).first()
    if original is None:
        raise ReceiptRejected(
            "original_not_found", f"no applied sale {original_key} to return goods from (yet)", status=404
        )
    sale = msgspec.convert(original.body, ReceiptIn)
    lines: dict[int, LineIn] = {line.line_no: line for line in sale.lines}
    refunds: dict[str, dict[str, int]] = {k: dict(v) for k, v in (original.refunds or {}).items()}
    for back in r.return_lines:
        line = lines.get(back.line_no)
        if line is None:
            raise ReceiptRejected(
                "return_exceeds_original", f"sale {original_key} has no line {back.line_no}", status=422
            )
        done = refunds.setdefault(str(back.line_no), {"fen": 0, "qty": 0})
        if done["fen"] + back.amount_fen > line.amount_fen or done["qty"] + back.quantity > line.quantity:
            raise ReceiptRejected(
                "return_exceeds_original",
                f"line {back.line_no} of {original_key}: {done['qty']} of {line.quantity} items and "
                f"{done['fen']} of {line.amount_fen} fen were already returned",
                status=422,
            )
        done["fen"] += back.amount_fen
        done["qty"] += back.quantity
    buyer = None
    if original.member_id is not None:
        buyer = await uow.buyer(member_id=original.member_id, evidence="pos receipt")
    version = original.returns_applied + 1
    order = _order(
        sale, original_key, original.effective_at, version=version, refunds=refunds, offline=original.offline
    )
    paid_back = None
    if any(p.method == "points" for p in sale.payments):
        paid_back = PaidPointsBack(
            payment_key=f"pos:{original_key}",
            key=f"pos:{c.key}",
            lines=tuple(
                ReturnedLine(line.amount_fen, refunds.get(str(line.line_no), {}).get("fen", 0))
                for line in sale.lines
            ),
            reason=f"goods returned at till: receipt {c.key}",
        )
    recorded = await uow.record_return(origin.account, order, buyer=buyer, paid_points=paid_back)
    await uow.rows.execute(
        sa.update(_RECEIPTS)
        .where(_RECEIPTS.c.id == original.id)
        .values(refunds=refunds, returns_applied=version, updated_at=uow.clock())
    )
    result = _result(
        r,
        c.key,
        "applied",
        offline=offline,
        member_id=recorded.member_id,
        points_reversed=recorded.points_reversed,
        points_refunded=recorded.points_refunded,
        points_available=recorded.points_available,
        clock_skew_seconds=c.skew,
    )
    links = {"member_id": recorded.member_id, "order_id": recorded.order_id, "original_key": original_key}
    return result, links


#: The receipt under a key (statements on a till's path are built once, see :meth:`OwnRows.execute`).
_EXISTING = sa.select(_RECEIPTS.c.id, _RECEIPTS.c.status, _RECEIPTS.c.body_hash, _RECEIPTS.c.result).where(
    *(_RECEIPTS.c[name] == sa.bindparam(name) for name in _KEY_COLUMNS)
)
#: Columns a claimed receipt row is inserted with.
_CLAIM_COLUMNS = (
    "account_id", "till_code", "business_day", "sequence", "receipt_key", "kind", "status", "offline",
    "body_hash", "till_time", "sent_at", "received_at", "effective_at", "clock_skew_seconds", "refunds",
    "returns_applied", "body", "result", "updated_at",
)  # fmt: skip


_CLAIMS: dict[str, Any] = {}


def _claim_statement(uow: CounterWork) -> Any:
    """Insert a receipt's row unless its key has one, returning its id: built once per dialect."""
    return _claim_statement_on(uow.rows.dialect)


def _claim_statement_on(dialect: str) -> Any:
    """:func:`_claim_statement` for a dialect by name (a start-up step builds it without a unit of work)."""
    stmt = _CLAIMS.get(dialect)
    if stmt is None:
        stmt = _CLAIMS[dialect] = (
            insert_on(dialect, _RECEIPTS)
            .values({name: sa.bindparam(name, type_=_RECEIPTS.c[name].type) for name in _CLAIM_COLUMNS})
            .on_conflict_do_nothing(index_elements=_KEY_COLUMNS)
            .returning(_RECEIPTS.c.id)
        )
    return stmt


async def _existing(uow: CounterWork, store: Store, r: ReceiptIn) -> Any:
    key = {"account_id": store.account_id, "till_code": r.till, "business_day": r.business_day}
    return await uow.rows.first_stamped(_EXISTING, {**key, "sequence": r.sequence})


async def _claim(
    uow: CounterWork, store: Store, r: ReceiptIn, key: str, digest: str, effective: datetime,
    skew: int | None, offline: bool, sent: datetime | None, now: datetime,
) -> int | None:  # fmt: skip
    """Insert the receipt's row as ``pending``; ``None`` when the key already has a row (a replay, or a
    concurrent upload of the same receipt that committed first). The claim, or the read of the row it met,
    also reads the API keys' revocation counter (``uow.key_generation``), under which the online checkout
    confirms its till's key."""
    values = _claim_values(store, r, key, digest, effective, skew, offline, sent, now)
    if r.kind == "sale":
        # the sale reads its buyer (when named by id), the order it makes (its external id is the receipt's
        # key, which this claim takes) and the programme's settings next: on PostgreSQL with the claim, in
        # one round trip
        buyer = r.member.member_id if r.member is not None else None
        mobile = r.member.mobile if r.member is not None and buyer is None else None
        card = uow.buyer_key(mobile=mobile) if mobile and uow.rows.dialect == "postgresql" else None
        order = (store.account_id, key)
        row = await uow.first_with_buyer(
            _claim_statement(uow), values, member_id=buyer, order=order, card=card
        )
    else:
        row = await uow.rows.first_stamped(_claim_statement(uow), values)
    return None if row is None else int(row[0])


async def apply_receipt(
    uow: CounterWork,
    store: Store,
    r: ReceiptIn,
    *,
    tills: TillCache,
    offline: bool,
    sent_at: datetime | None,
    strict: bool,
    confirm: Callable[[int | None], Awaitable[None]] | None = None,
) -> ReceiptResult:
    """Apply one receipt. ``strict`` (an online checkout): a rejection raises, and the unit of work rolls
    back. Otherwise (a batch) the receipt is applied on a savepoint; a rejection is recorded and returned, and
    the batch goes on. ``confirm``: the caller's key check under a revocation counter (an online checkout's),
    which lets a known member's sale take the counter's quick path (:func:`_quick_sale`)."""
    now = uow.clock()
    key = receipt_key(r.store, r.till, r.business_day, r.sequence)
    digest = body_hash(r)
    sent = r.sent_at or sent_at
    try:
        if not await tills.has(uow, store, r.till):
            raise ReceiptRejected(
                "unknown_till", f"store {store.code!r} has no active till {r.till!r}", status=404
            )
        validate(r, uow.tz)
        effective, skew = effective_time(r.occurred_at, sent, now)
        validate_day(r, uow.tz, effective)
    except ReceiptRejected as exc:
        if strict:
            raise
        return _result(r, key, "rejected", offline=offline, reason=exc.reason, detail=exc.message)
    if skew is not None and abs(skew) > SKEW_WARNING_SECONDS:
        log.warning("till clock skew", store=store.code, till=r.till, skew_seconds=skew)
    if strict:  # a failure rolls the whole unit of work back
        if confirm is not None:
            quick = await _quick_sale(
                uow, store, r, key, digest, effective, skew, offline, sent, now, confirm
            )
            if quick is not None:
                return quick
        return await _claim_and_apply(uow, store, r, key, digest, effective, skew, offline, sent, now, strict)
    try:  # one receipt of a batch: whatever the database refuses of it, the others still apply
        async with uow.attempt():
            return await _claim_and_apply(
                uow, store, r, key, digest, effective, skew, offline, sent, now, strict
            )
    except sa.exc.DBAPIError as exc:
        log.warning("receipt not stored", store=store.code, key=key, error_type=type(exc.orig).__name__)
        return _result(
            r,
            key,
            "rejected",
            offline=offline,
            reason="not_stored",
            detail="the database refused this receipt and nothing of it was applied; send it again "
            "(if it is refused again, it holds something that cannot be stored)",
            clock_skew_seconds=skew,
        )


async def _quick_sale(
    uow: CounterWork, store: Store, r: ReceiptIn, key: str, digest: str, effective: datetime,
    skew: int | None, offline: bool, sent: datetime | None, now: datetime,
    confirm: Callable[[int | None], Awaitable[None]],
) -> ReceiptResult | None:  # fmt: skip
    """An online sale to a member named by id or to a buyer named by mobile (a new one becomes a member in the
    sale's statement; one the mobile names already goes the transactional path), without a points payment,
    through the counter's quick path
    (:meth:`tongcrm.counter.CounterWork.quick_sale`: a read and one statement, no transaction): the receipt's
    row is inserted with the sale, already finished as :func:`_finish` would leave it. The same receipt sent
    again is answered from the row the read found. None: nothing was written, and :func:`_claim_and_apply`
    applies the receipt as it always did (a key reused, a rejected receipt sent again, anything the counter
    leaves to its transactional path)."""
    if r.kind != "sale" or r.member is None or uow.rows.dialect != "postgresql":
        return None
    named_by_id = r.member.member_id is not None
    if not named_by_id and not r.member.mobile:
        return None
    if any(p.method == "points" for p in r.payments):
        return None

    def sold(member_id: int | None, earned: int, available: int | None) -> ReceiptResult:
        return _quick_result(r, key, offline, skew, member_id, earned, available)

    def own(order_id: int, member_id: int) -> tuple[Any, dict[str, Any]]:
        values = _quick_values(
            store, r, key, digest, effective, skew, offline, sent, now, order_id, member_id
        )
        return _quick_insert(tuple(values)), values

    found = await uow.quick_sale(
        store.account,
        _order(r, key, effective, offline=offline),
        member_id=r.member.member_id,
        evidence="pos receipt" if named_by_id else f"given at till {r.store}/{r.till}",
        mobile=None if named_by_id else r.member.mobile,
        existing=_EXISTING,
        existing_params={
            "account_id": store.account_id,
            "till_code": r.till,
            "business_day": r.business_day,
            "sequence": r.sequence,
        },
        own_row=own,
        confirm=confirm,
    )
    if found is None:
        return None
    if found.sale is not None:
        sale = found.sale
        return sold(sale.member_id, sale.points_earned, sale.points_available)
    existing = found.existing
    if existing.status == "applied" and existing.body_hash == digest:
        stored = msgspec.convert(existing.result, ReceiptResult)
        return msgspec.structs.replace(stored, replayed=True)
    return None  # a key reused, or a receipt rejected before and sent again: as it always was


def _quick_result(
    r: ReceiptIn, key: str, offline: bool, skew: int | None, member_id: int | None, earned: int,
    available: int | None,
) -> ReceiptResult:  # fmt: skip
    """A quick sale's answer (and, with no figures yet, the ``result`` its row is inserted with)."""
    return _result(
        r,
        key,
        "applied",
        offline=offline,
        member_id=member_id,
        points_earned=earned,
        points_redeemed=0,
        points_available=available,
        clock_skew_seconds=skew,
    )


def _quick_values(
    store: Store, r: ReceiptIn, key: str, digest: str, effective: datetime, skew: int | None, offline: bool,
    sent: datetime | None, now: datetime, order_id: int, member_id: int,
) -> dict[str, Any]:  # fmt: skip
    """The columns of a receipt's row inserted with a quick sale, already finished (:func:`_quick_insert`)."""
    c = _Claimed(0, key, digest, effective, skew, True, sent, now)
    return {
        **_claim_values(store, r, key, digest, effective, skew, offline, sent, now),
        **_finish_values(
            c,
            r,
            offline,
            "applied",
            result=_quick_result(r, key, offline, skew, member_id, 0, None),
            member_id=member_id,
            order_id=order_id,
        ),
    }


#: a sale of one line, its buyer named by mobile: the shape of the till's checkout that
#: :func:`_compile_checkout` compiles ahead (its values are never written anywhere)
_REHEARSED_RECEIPT: dict[str, Any] = {
    "store": "WARMUP", "till": "T0", "business_day": "2025-01-01", "sequence": 1,
    "occurred_at": "2025-01-01T00:00:00+00:00", "total_fen": 100,
    "lines": [{"line_no": 1, "title": "warm-up", "quantity": 1, "unit_price_fen": 100, "amount_fen": 100}],
    "payments": [{"method": "cash", "amount_fen": 100}], "member": {"mobile": "13800000000"},
}  # fmt: skip


@compile_ahead
def _compile_checkout(dialect: Dialect) -> int:
    """A serving process's start-up step (:mod:`tongcrm.warmup`): the statements of a till's checkout built and
    compiled for ``dialect`` as its first checkout would build them, without running any. On PostgreSQL the
    quick checkout's (:func:`_quick_sale`): this module's read of the receipt's row and its finished insert, the
    counter's read and sale statement (:func:`tongcrm.counter.compile_quick_sale`, branch till14). Elsewhere
    (SQLite, no quick path) the transactional path's (:func:`_claim_and_apply`, branch till15): this module's
    claim of the receipt's row and its finish after a sale to a member, the counter's and the sale's own
    statements for a new buyer and a known member (:func:`tongcrm.counter.compile_counter_sale`). Answers how
    many plans it holds ready."""
    r = msgspec.convert(_REHEARSED_RECEIPT, ReceiptIn)
    now = r.occurred_at
    key = receipt_key(r.store, r.till, r.business_day, r.sequence)
    store = Store(CounterAccount(0, CHANNEL, r.store, "active", {}))
    order = _order(r, key, now, offline=False)
    values = _quick_values(store, r, key, body_hash(r), now, None, False, None, now, 0, 0)
    made = compile_quick_sale(
        dialect, CHANNEL, order, existing=_EXISTING, follow=_quick_insert(tuple(values)), tables=TABLES
    )
    c = _Claimed(0, key, body_hash(r), now, None, True, None, now)
    result = _quick_result(r, key, False, None, 0, 0, None)
    finished = _finish_values(c, r, False, "applied", result=result, member_id=0, order_id=0)
    finish = _finish_statement(tuple(finished), figures=dialect.name)
    return made + compile_counter_sale(
        dialect, CHANNEL, order, claim=_claim_statement_on(dialect.name), finish=finish, tables=TABLES
    )


_QUICK_INSERTS: dict[tuple[str, ...], Any] = {}


def _quick_insert(names: tuple[str, ...]) -> Any:
    """The receipt's row, finished, inserted with a quick sale: a plain ``INSERT`` (a row already under the key
    fails the sale's whole statement) selecting from :data:`ORDER_FIGURES` — one row when the order was written
    — its ``result`` taking the figures as :func:`_finish_statement` does. Built once per set of columns."""
    stmt = _QUICK_INSERTS.get(names)
    if stmt is None:
        values = {name: sa.bindparam(name, type_=_RECEIPTS.c[name].type) for name in names}
        values["result"] = _with_figures(values["result"], "postgresql")
        stmt = _QUICK_INSERTS[names] = sa.insert(_RECEIPTS).from_select(
            list(names), sa.select(*(values[name] for name in names)).select_from(ORDER_FIGURES)
        )
    return stmt


def _claim_values(
    store: Store, r: ReceiptIn, key: str, digest: str, effective: datetime, skew: int | None, offline: bool,
    sent: datetime | None, now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """The columns a receipt's row is claimed with (``pending``)."""
    return {
        "account_id": store.account_id,
        "till_code": r.till,
        "business_day": r.business_day,
        "sequence": r.sequence,
        "receipt_key": key,
        "kind": r.kind,
        "status": "pending",
        "offline": offline,
        "body_hash": digest,
        "till_time": r.occurred_at,
        "sent_at": sent,
        "received_at": now,
        "effective_at": effective,
        "clock_skew_seconds": skew,
        "refunds": {},
        "returns_applied": 0,
        "body": stored_body(r),
        "result": {},
        "updated_at": now,
    }


async def _claim_and_apply(
    uow: CounterWork, store: Store, r: ReceiptIn, key: str, digest: str, effective: datetime,
    skew: int | None, offline: bool, sent: datetime | None, now: datetime, strict: bool,
) -> ReceiptResult:  # fmt: skip
    row_id = await _claim(uow, store, r, key, digest, effective, skew, offline, sent, now)
    fresh = row_id is not None
    if row_id is None:  # the key is known: a replay, a retry of a rejected receipt, or a concurrent upload
        existing = await _existing(uow, store, r)
        assert existing is not None
        if existing.status == "applied":
            if existing.body_hash != digest:
                message = f"receipt key {key} was already used for a different receipt"
                if strict:
                    raise Conflict(message, extra={"reason": "key_reused"})
                return _result(r, key, "conflict", offline=offline, reason="key_reused", detail=message)
            stored = msgspec.convert(existing.result, ReceiptResult)
            return msgspec.structs.replace(stored, replayed=True)
        row_id = int(existing.id)
    c = _Claimed(row_id, key, digest, effective, skew, fresh, sent, now)
    apply = _sale if r.kind == "sale" else _return
    try:
        if strict:  # a rejection rolls the whole unit of work back: no savepoint needed
            result, links = await _applied(apply, uow, store, r, c, offline)
        else:
            async with uow.attempt():
                result, links = await _applied(apply, uow, store, r, c, offline)
    except ReceiptRejected as exc:
        if strict:
            raise
        await _finish(uow, c, r, offline, "rejected", reason=exc.reason, detail=exc.message)
        return _result(
            r,
            key,
            "rejected",
            offline=offline,
            reason=exc.reason,
            detail=exc.message,
            clock_skew_seconds=skew,
        )
    if not c.finished:
        await _finish(uow, c, r, offline, "applied", result=result, **links)
    return result


async def _applied(
    apply: Any, uow: CounterWork, store: Store, r: ReceiptIn, c: _Claimed, offline: bool
) -> tuple[ReceiptResult, dict[str, Any]]:
    try:
        out: tuple[ReceiptResult, dict[str, Any]] = await apply(uow, store, r, c, offline)
    except CounterRefused as exc:
        raise _refused(exc) from None
    return out


async def _finish(
    uow: CounterWork, c: _Claimed, r: ReceiptIn, offline: bool, status: str, *,
    result: ReceiptResult | None = None, reason: str | None = None, detail: str | None = None, **links: Any,
) -> None:  # fmt: skip
    values = _finish_values(c, r, offline, status, result=result, reason=reason, detail=detail, **links)
    await uow.rows.run(_finish_statement(tuple(values)), {**values, "row_id": c.row_id})


def _finish_values(
    c: _Claimed, r: ReceiptIn, offline: bool, status: str, *, result: ReceiptResult | None = None,
    reason: str | None = None, detail: str | None = None, **links: Any,
) -> dict[str, Any]:  # fmt: skip
    """The columns a claimed receipt's row is finished with."""
    values: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "detail": detail,
        "result": msgspec.to_builtins(result) if result is not None else {},
        "updated_at": c.now,
        **links,
    }
    if r.member is not None and links.get("member_id") is not None:  # the buyer, as the member it became
        values["body"] = stored_body(r, links["member_id"])
    if not c.fresh:  # a rejected receipt tried again: the row still describes the earlier attempt
        values.update(
            offline=offline,
            body_hash=c.hash,
            body=values.get("body") or stored_body(r),
            till_time=r.occurred_at,
            sent_at=c.sent,
            received_at=c.now,
            effective_at=c.effective,
            clock_skew_seconds=c.skew,
        )
    return values


#: ``_finish``'s updates, one per set of columns and per dialect whose result takes the sale's figures
#: (built once: building and checking one cost more than running it).
_FINISHES: dict[tuple[tuple[str, ...], str | None], Any] = {}
#: What the till is shown of a sale (:data:`ORDER_FIGURES`), as the sale's last statement answers it.
_SHOWN = (
    ("points_earned", sa.select(ORDER_FIGURES.c.points).scalar_subquery()),
    ("points_available", sa.select(ORDER_FIGURES.c.available).scalar_subquery()),
)


def _finish_statement(names: tuple[str, ...], figures: str | None = None) -> Any:
    """The update finishing a receipt's row with ``names``; with ``figures`` (a dialect), its ``result`` takes
    ``points_earned`` and ``points_available`` from :data:`ORDER_FIGURES` (a sale's follow-up)."""
    stmt = _FINISHES.get((names, figures))
    if stmt is None:
        values = {name: sa.bindparam(name, type_=_RECEIPTS.c[name].type) for name in names}
        if figures is not None:
            values["result"] = _with_figures(values["result"], figures)
        stmt = _FINISHES[(names, figures)] = (
            sa.update(_RECEIPTS).where(_RECEIPTS.c.id == sa.bindparam("row_id")).values(values)
        )
    return stmt


def _with_figures(result: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        return result.op("||")(sa.func.jsonb_build_object(*_keyed_figures("")))
    return sa.func.json_set(result, *_keyed_figures("$."))


def _keyed_figures(prefix: str) -> list[Any]:
    """The shown figures as key, value, key, value… (each key ``prefix`` + its name, as SQL text)."""
    keyed: list[Any] = []
    for name, value in _SHOWN:
        keyed += [sa.literal_column(f"'{prefix}{name}'"), value]
    return keyed


async def apply_batch(
    uow: CounterWork,
    store: Store,
    receipts: Sequence[ReceiptIn],
    *,
    tills: TillCache,
    sent_at: datetime | None,
    offline: bool = True,
    strict: bool = False,
) -> BatchResult:
    """Apply receipts in key order (business day, till, sequence), each on its own savepoint. Receipts
    rejected because of another receipt (a return before its sale, points not yet earned) are tried once
    more at the end of the batch, so a batch's own order never decides its outcome."""
    order = sorted(
        range(len(receipts)), key=lambda i: (receipts[i].business_day, receipts[i].till, receipts[i].sequence)
    )
    results: dict[int, ReceiptResult] = {}
    retry: list[int] = []
    for i in order:
        res = await apply_receipt(
            uow, store, receipts[i], tills=tills, offline=offline, sent_at=sent_at, strict=strict
        )
        results[i] = res
        if res.status == "rejected" and res.reason in {"original_not_found", "insufficient_points"}:
            retry.append(i)
    if retry and len(retry) < len(order):
        for i in retry:
            results[i] = await apply_receipt(
                uow, store, receipts[i], tills=tills, offline=offline, sent_at=sent_at, strict=strict
            )
    # tiers were re-evaluated by the ingest engine with each applied receipt, in this same transaction
    out = [results[i] for i in range(len(receipts))]
    return BatchResult(
        applied=sum(1 for x in out if x.status == "applied" and not x.replayed),
        replayed=sum(1 for x in out if x.replayed),
        rejected=sum(1 for x in out if x.status != "applied"),
        results=out,
    )


async def receipt_view(
    uow: CounterWork, store: Store, till: str, business_day: date, sequence: int
) -> ReceiptView | None:
    row = (
        await uow.rows.execute(
            sa.select(_RECEIPTS).where(
                _RECEIPTS.c.account_id == store.account_id,
                _RECEIPTS.c.till_code == till,
                _RECEIPTS.c.business_day == business_day,
                _RECEIPTS.c.sequence == sequence,
                _RECEIPTS.c.status != "pending",
            )
        )
    ).first()
    if row is None:
        return None
    if row.status == "applied":
        result = msgspec.convert(row.result, ReceiptResult)
    else:
        result = ReceiptResult(
            key=row.receipt_key,
            store=store.code,
            till=row.till_code,
            business_day=row.business_day,
            sequence=row.sequence,
            kind=row.kind,
            status=row.status,
            offline=row.offline,
            reason=row.reason,
            detail=row.detail,
            clock_skew_seconds=row.clock_skew_seconds,
        )
    return ReceiptView(
        result=result,
        receipt=dict(row.body),
        received_at=row.received_at,
        effective_at=row.effective_at,
        till_time=row.till_time,
        original_key=row.original_key,
        returned_fen={k: int(v.get("fen", 0)) for k, v in (row.refunds or {}).items()},
    )
