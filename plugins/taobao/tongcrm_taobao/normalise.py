"""Turn TOP trade JSON into :class:`~tongcrm.plugin.types.NormalisedOrder` records.

Rules, and why:

* **Money** arrives as yuan strings with two decimals ("99.00"). It becomes integer fen through ``Decimal``
  and only if it is exactly representable; "99.005", "-1.00", "abc" or a float are refused, because a
  silently rounded amount would become wrong points later.
* **Ids** (``tid``, ``oid``) exceed 2^53. ``tid_str``/``oid_str`` are preferred when present; otherwise the
  integer (parsed exactly by Python's ``json``) is used. A fractional or float id means some layer already
  rounded it, so the record is quarantined rather than guessed at.
* **Times** are GMT+8 strings and become aware UTC datetimes.
* **Statuses** map onto the core lifecycle (see :data:`STATUS_MAP`). ``TRADE_CLOSED`` is "closed after payment
  because everything was refunded", hence ``refunded``; ``TRADE_CLOSED_BY_TAOBAO`` is closed before payment.
* **Refunds** are per line. The trade API has no refund amount on a line (only ``refund_status`` and
  ``refund_id``; the amount lives on ``taobao.refund.get``), so a line whose refund succeeded counts as
  refunded in full: its paid amount (``divide_order_fee``, else ``payment``). Other lines stay untouched,
  which is how a partially refunded trade looks.
* **Shipments** come from the lines: TOP reports the parcel per order line (``logistics_company``, the
  carrier's name, and ``invoice_no``, the waybill of the parcel the line is in; ``consign_time`` on the line,
  else on the trade). Lines that share carrier and waybill are one :class:`~tongcrm.plugin.types.Shipment`.
  A line with a carrier but no waybill says nothing trackable and is left out.
* **Identity**: ``taobao.open_uid`` (``buyer_open_uid``, per app, stable), plus ``taobao.ouid`` and
  ``taobao.omid`` when the trade carries them. ``oaid`` names a receiver for a week and is never a claim.

A trade that breaks any rule becomes a :class:`~tongcrm.plugin.types.QuarantinedRecord` holding the raw JSON
and the reason; :func:`normalise_trades` never lets one bad trade stop the rest of a page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from tongcrm.plugin.types import (
    BuyerProfile,
    IdentityClaim,
    IdentityKindSpec,
    LineRefundStatus,
    NormalisedOrder,
    OrderLine,
    OrderStatus,
    QuarantinedRecord,
    Shipment,
)

from tongcrm_taobao.timefmt import parse_top_time

__all__ = [
    "IDENTITY_KINDS",
    "KIND_OMID",
    "KIND_OPEN_UID",
    "KIND_OUID",
    "LINE_REFUND_MAP",
    "REQUIRED_FIELDS",
    "STATUS_MAP",
    "TradeError",
    "missing_fields",
    "normalise_trade",
    "normalise_trades",
    "raw_json",
    "trade_id",
    "yuan_to_fen",
]

KIND_OPEN_UID = "taobao.open_uid"
KIND_OUID = "taobao.ouid"
KIND_OMID = "taobao.omid"

IDENTITY_KINDS: tuple[IdentityKindSpec, ...] = (
    IdentityKindSpec(
        name=KIND_OPEN_UID,
        strong=True,
        description="Taobao buyer_open_uid: one buyer, stable per app key even when the nick changes",
        labels={"zh": "淘宝买家 open_uid"},
    ),
    IdentityKindSpec(
        name=KIND_OUID,
        strong=True,
        description="Taobao CRM ouid: one buyer, unique per shop and the same across apps",
        labels={"zh": "淘宝 CRM ouid"},
    ),
    IdentityKindSpec(
        name=KIND_OMID,
        strong=True,
        description="Tmall 会员通 omid: one brand member across the brand's shops (needs a brand claim)",
        labels={"zh": "天猫会员通 omid"},
    ),
)

STATUS_MAP: Mapping[str, OrderStatus] = {
    "TRADE_NO_CREATE_PAY": OrderStatus.CREATED,
    "WAIT_BUYER_PAY": OrderStatus.CREATED,
    "PAY_PENDING": OrderStatus.CREATED,  # international card payment still being confirmed
    "WAIT_PRE_AUTH_CONFIRM": OrderStatus.CREATED,  # pre-authorised, not captured yet
    "WAIT_SELLER_SEND_GOODS": OrderStatus.PAID,
    "PAID_FORBID_CONSIGN": OrderStatus.PAID,  # paid, shipping held (e.g. group-buy not formed yet)
    "SELLER_CONSIGNED_PART": OrderStatus.SHIPPED,
    "WAIT_BUYER_CONFIRM_GOODS": OrderStatus.SHIPPED,
    "TRADE_BUYER_SIGNED": OrderStatus.DELIVERED,
    "TRADE_FINISHED": OrderStatus.COMPLETED,
    "TRADE_CLOSED": OrderStatus.REFUNDED,
    "TRADE_CLOSED_BY_TAOBAO": OrderStatus.CLOSED,
}

LINE_REFUND_MAP: Mapping[str, LineRefundStatus] = {
    "NO_REFUND": LineRefundStatus.NONE,
    "CLOSED": LineRefundStatus.NONE,  # the refund request was withdrawn or closed: nothing was refunded
    "WAIT_SELLER_AGREE": LineRefundStatus.REQUESTED,
    "WAIT_BUYER_RETURN_GOODS": LineRefundStatus.REQUESTED,
    "WAIT_SELLER_CONFIRM_GOODS": LineRefundStatus.REQUESTED,
    "SELLER_REFUSE_BUYER": LineRefundStatus.REFUSED,
    "SUCCESS": LineRefundStatus.REFUNDED,
}

#: Trade fields without which a trade cannot be normalised; if the increment API left one out, the adapter
#: fetches the trade with ``taobao.trade.fullinfo.get`` before giving up on it.
REQUIRED_FIELDS: tuple[str, ...] = ("status", "created", "modified", "payment", "buyer_open_uid", "orders")

# statuses in which the buyer has not paid (the amount in ``payment`` is what is due, not what was paid)
_STEP_FIELDS = ("step_trade_status", "step_paid_fee")
_UNPAID = frozenset({OrderStatus.CREATED, OrderStatus.CLOSED})
# where :func:`_paid_fen` reads the step fields (``None``: a status not known yet, so nothing is ruled out)
_STEP_READ = frozenset({*_UNPAID, None})
_MONEY = re.compile(r"^(\d{1,12})(?:\.(\d{1,2}))?$")


class TradeError(ValueError):
    """Why a trade cannot be normalised; becomes the quarantine reason."""


def yuan_to_fen(value: object, what: str = "amount") -> int:
    """Convert a TOP money value ("99.00" yuan) to integer fen, exactly.

    Accepts strings (the platform's form) and ``Decimal`` (a number parsed by :func:`client.parse_json`);
    refuses floats, negatives, more than two decimals and anything that is not a plain number.
    """
    if type(value) is str and len(value) > 3 and value[-3] == "." and value.isascii():
        # the platform's own form, "99.00": read without the pattern below, which cost a visible share of
        # normalising a page (issue #22); the same digits give the same fen, anything else takes the long way
        yuan, cents = value[:-3], value[-2:]
        if len(yuan) <= 12 and yuan.isdigit() and cents.isdigit():
            return int(yuan) * 100 + int(cents)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TradeError(f"{what}: not a finite amount: {value!r}")
        value = format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TradeError(f"{what}: expected a yuan string like '99.00', got {type(value).__name__} {value!r}")
    match = _MONEY.match(value.strip())
    if not match:
        raise TradeError(f"{what}: malformed yuan amount {value!r}")
    yuan, cents = match.group(1), (match.group(2) or "").ljust(2, "0")
    return int(yuan) * 100 + int(cents)


def _id(record: Mapping[str, Any], key: str) -> str:
    text = record.get(f"{key}_str")
    if isinstance(text, str) and text.strip():
        if not text.strip().isdigit():
            raise TradeError(f"{key}_str is not a decimal id: {text!r}")
        return text.strip()
    value = record.get(key)
    if isinstance(value, bool) or value is None:
        raise TradeError(f"missing {key}")
    if isinstance(value, int):
        if value <= 0:
            raise TradeError(f"{key} must be positive, got {value}")
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return value.strip()
    raise TradeError(
        f"{key} is not an exact integer (got {type(value).__name__} {value!r}); refusing a rounded id"
    )


def trade_id(trade: Mapping[str, Any]) -> str | None:
    """The trade's id as a string, or ``None`` when it has no usable one."""
    try:
        return _id(trade, "tid")
    except TradeError:
        return None


def missing_fields(trade: Mapping[str, Any]) -> list[str]:
    """Required fields the trade lacks (an empty ``orders`` wrapper counts as missing).

    A presale (``step``) trade in a status without payment also needs ``step_trade_status`` and
    ``step_paid_fee``: without them a paid deposit would look like an unpaid trade. In any other status they
    are never read (what was paid is ``payment``), so their absence costs no ``fullinfo`` request — one a
    presale trade, most of a Taobao sync's requests (issue #22).
    """
    missing = [name for name in REQUIRED_FIELDS if trade.get(name) in (None, "")]
    if "orders" not in missing and not _order_list(trade.get("orders")):
        missing.append("orders")
    if trade.get("type") == "step" and STATUS_MAP.get(str(trade.get("status"))) in _STEP_READ:
        missing.extend(name for name in _STEP_FIELDS if trade.get(name) in (None, ""))
    return missing


def _order_list(orders: object) -> list[Any]:
    # simplify=false wraps lists ({"order": [...]}); simplify=true does not. Accept both.
    if isinstance(orders, Mapping):
        orders = orders.get("order")
    return list(orders) if isinstance(orders, list) else []


def _time(trade: Mapping[str, Any], key: str, *, required: bool) -> datetime | None:
    value = trade.get(key)
    if value in (None, ""):
        if required:
            raise TradeError(f"missing {key}")
        return None
    try:
        return parse_top_time(value)
    except ValueError as exc:
        raise TradeError(f"{key}: {exc}") from None


def _money(record: Mapping[str, Any], key: str, what: str, *, default: int | None = None) -> int:
    value = record.get(key)
    if value in (None, ""):
        if default is None:
            raise TradeError(f"{what}: missing {key}")
        return default
    return yuan_to_fen(value, f"{what} {key}")


def _line(order: object, index: int) -> OrderLine:
    if not isinstance(order, Mapping):
        raise TradeError(f"order line {index} is not an object")
    oid = _id(order, "oid")
    what = f"line {oid}"
    num = order.get("num")
    if isinstance(num, bool) or not isinstance(num, int) or num <= 0:
        raise TradeError(f"{what}: num must be a positive integer, got {num!r}")
    unit = _money(order, "price", what)
    amount = _money(order, "divide_order_fee", what, default=-1)
    if amount < 0:
        amount = _money(order, "payment", what)
    raw_refund = order.get("refund_status") or "NO_REFUND"
    refund = LINE_REFUND_MAP.get(str(raw_refund))
    if refund is None:
        raise TradeError(f"{what}: unknown refund_status {raw_refund!r}")
    sku = order.get("outer_sku_id") or order.get("sku_id") or order.get("outer_iid")
    category = order.get("cid")
    try:
        return OrderLine(
            external_id=oid,
            title=str(order.get("title") or ""),
            quantity=num,
            unit_price_fen=unit,
            amount_fen=amount,
            sku=str(sku) if sku not in (None, "") else None,
            category=str(category) if category not in (None, "") else None,
            refund_status=refund,
            refunded_fen=amount if refund is LineRefundStatus.REFUNDED else 0,
        )
    except ValueError as exc:
        raise TradeError(str(exc)) from None


def _shipments(
    orders: list[Any], lines: tuple[OrderLine, ...], trade_consign: datetime | None
) -> tuple[Shipment, ...]:
    """Parcels from the lines' ``logistics_company``/``invoice_no`` (see the module docstring)."""
    parcels: dict[tuple[str | None, str], tuple[datetime | None, list[str]]] = {}
    for order, line in zip(orders, lines, strict=True):
        raw = order.get("invoice_no")
        number = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else _text(raw)
        if number is None:
            continue
        carrier = _text(order.get("logistics_company"))
        shipped = _time(order, "consign_time", required=False) or trade_consign
        seen = parcels.get((carrier, number))
        if seen is None:
            parcels[(carrier, number)] = (shipped, [line.external_id])
            continue
        earliest = min((t for t in (seen[0], shipped) if t is not None), default=None)
        parcels[(carrier, number)] = (earliest, [*seen[1], line.external_id])
    try:
        return tuple(
            Shipment(
                tracking_number=number,
                carrier_name=carrier,
                shipped_at=shipped,
                line_ids=tuple(line_ids),
            )
            for (carrier, number), (shipped, line_ids) in parcels.items()
        )
    except ValueError as exc:
        raise TradeError(f"invoice_no: {exc}") from None


def _claims(trade: Mapping[str, Any]) -> tuple[IdentityClaim, ...]:
    open_uid = trade.get("buyer_open_uid")
    if not isinstance(open_uid, str) or not open_uid.strip():
        raise TradeError("missing buyer_open_uid (the buyer key; oaid is never used as one)")
    claims = [IdentityClaim(KIND_OPEN_UID, open_uid.strip(), evidence="trade.buyer_open_uid")]
    for key, kind in (("ouid", KIND_OUID), ("omid", KIND_OMID)):
        value = trade.get(key)
        if isinstance(value, str) and value.strip():
            claims.append(IdentityClaim(kind, value.strip(), evidence=f"trade.{key}"))
    return tuple(claims)


def _paid_fen(trade: Mapping[str, Any], status: OrderStatus, payment: int) -> int:
    if status not in _UNPAID:
        return payment
    # a presale (step) trade waits for the balance while the deposit is already paid
    if trade.get("step_trade_status") in ("FRONT_PAID_FINAL_NOPAID", "FRONT_PAID_FINAL_PAID"):
        return _money(trade, "step_paid_fee", "presale", default=0)
    return 0


def normalise_trade(trade: Mapping[str, Any]) -> NormalisedOrder:
    """Normalise one trade or raise :class:`TradeError` saying what is wrong with it."""
    if not isinstance(trade, Mapping):
        raise TradeError("trade is not an object")
    tid = _id(trade, "tid")
    raw_status = trade.get("status")
    status = STATUS_MAP.get(str(raw_status))
    if status is None:
        raise TradeError(f"unknown trade status {raw_status!r}")
    created = _time(trade, "created", required=True)
    modified = _time(trade, "modified", required=True)
    assert created is not None
    assert modified is not None
    orders = _order_list(trade.get("orders"))
    if not orders:
        raise TradeError("trade has no order lines")
    lines = tuple(_line(order, index) for index, order in enumerate(orders))
    payment = _money(trade, "payment", "trade")
    completed = _time(trade, "end_time", required=False) if status is OrderStatus.COMPLETED else None
    consigned = _time(trade, "consign_time", required=False)
    shipments = _shipments(orders, lines, consigned)
    try:
        return NormalisedOrder(
            external_id=tid,
            status=status,
            created_at=created,
            modified_at=modified,
            total_fen=_money(trade, "total_fee", "trade"),
            paid_fen=_paid_fen(trade, status, payment),
            claims=_claims(trade),
            lines=lines,
            paid_at=_time(trade, "pay_time", required=False),
            shipped_at=consigned,
            completed_at=completed,
            post_fee_fen=_money(trade, "post_fee", "trade", default=0),
            discount_fen=_money(trade, "discount_fee", "trade", default=0),
            buyer=BuyerProfile(
                province=_text(trade.get("receiver_state")), city=_text(trade.get("receiver_city"))
            ),
            platform_status=str(raw_status),
            shipments=shipments,
        )
    except ValueError as exc:
        if isinstance(exc, TradeError):
            raise
        raise TradeError(str(exc)) from None


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def raw_json(record: object) -> str:
    """The record as JSON for quarantine: exact ids, Decimals as written, Chinese kept readable."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True, default=str)


def normalise_trades(trades: Iterable[object]) -> tuple[list[NormalisedOrder], list[QuarantinedRecord]]:
    """Normalise a page; every trade ends up either as an order or as a quarantined record."""
    orders: list[NormalisedOrder] = []
    quarantined: list[QuarantinedRecord] = []
    for trade in trades:
        try:
            if not isinstance(trade, Mapping):
                raise TradeError("trade is not an object")
            orders.append(normalise_trade(trade))
        except TradeError as exc:
            tid = trade_id(trade) if isinstance(trade, Mapping) else None
            quarantined.append(QuarantinedRecord(external_id=tid, reason=str(exc), payload=raw_json(trade)))
    return orders, quarantined
