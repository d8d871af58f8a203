"""``OrderSearchInfo`` (``jingdong.pop.order.search``) → :class:`~tongcrm.plugin.types.NormalisedOrder`.

Decisions, each made once here:

Status (``orderState`` → :class:`OrderStatus`):

=============================  ==========================================================================
``WAIT_SELLER_STOCK_OUT``      ``paid`` (awaiting outbound); ``created`` if not yet paid (cash on delivery)
``WAIT_SELLER_DELIVERY``       same as above (the cross-border equivalent)
``WAIT_GOODS_RECEIVE_CONFIRM`` ``shipped``
``FINISHED_L``                 ``completed`` (``completed_at`` = ``orderEndTime``)
``TRADE_CANCELED``             ``refunded`` if it had been paid (``paymentConfirmTime`` set; every line fully
                               refunded), else ``closed``
``LOCKED``, ``PAUSE``,         hold states say nothing about progress, so the status is the furthest one the
``POP_ORDER_PAUSE``            record itself proves: ``shipped`` if it carries a waybill, else ``paid`` if
                               it has a payment time, else ``created``. The core applies updates by
                               ``modified`` time, so a hold must not invent regress or progress.
anything else                  quarantined (an unknown state is a platform change we must look at)
=============================  ==========================================================================

Money: ``total_fen`` = ``orderTotalPrice`` (goods at list price), ``paid_fen`` = ``orderPayment`` (what the
buyer paid) once the order is paid, and 0 while it is ``created`` or when it was ``closed`` without ever being
paid: ``orderPayment`` is then only what was due, and the 360 view, tiers and care flows read ``paid_fen`` as
money received (the Taobao plugin and the core's own channels store 0 too). ``post_fee_fen`` = ``freightPrice``,
``discount_fen`` = ``sellerDiscount``. ``balanceUsed`` is not added: whether ``orderPayment`` already counts
the JD balance is not documented, and counting it twice would inflate points.

Lines: one per ``itemInfoList`` entry; ``quantity`` = ``itemTotal``, ``unit_price_fen`` = ``jdPrice``.
``amount_fen`` is the line's share of ``orderPayment``, split in proportion to ``jdPrice × itemTotal`` by the
largest-remainder method (:func:`tongcrm_jd.money.allocate`), so lines sum to ``orderPayment`` exactly (to
``paid_fen`` once paid) and freight and discounts are spread the same way. A repeated ``skuId`` gets ``#2``, ``#3``... line ids.

Shipments: ``waybill`` is the tracking number and ``logisticsId`` the platform's id of the carrier, which
becomes ``carrier_code`` (JD gives no carrier name here). A waybill listing several parcels separated by
commas or semicolons (whether JD does this is unconfirmed; no single waybill contains one) becomes one
shipment per number. JD's search gives no shipping time, so ``shipped_at`` stays unknown.

Buyer: claim ``jd.open_id`` from ``open_id_buyer``; only when that is absent, ``jd.pin`` from ``pin``
(unless masked). ``consigneeInfo`` is the receiver's personal data: it never becomes a claim and is never
logged. Its mobile goes into :class:`BuyerProfile` only if it is a plain mainland mobile number (masked or
encrypted values are ignored); province and city go there too when they are plain text. Names never do:
the receiver is often not the buyer.
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
    LineRefundStatus,
    NormalisedOrder,
    OrderLine,
    OrderStatus,
    QuarantinedRecord,
    Shipment,
)

from tongcrm_jd.identity import JD_OPEN_ID, JD_PIN
from tongcrm_jd.money import allocate, to_fen
from tongcrm_jd.timeutil import parse_jd_time

#: Every ``order_state`` of protocols.md §2.3; the adapter asks for all of them.
ORDER_STATES: tuple[str, ...] = (
    "WAIT_SELLER_STOCK_OUT",
    "WAIT_GOODS_RECEIVE_CONFIRM",
    "WAIT_SELLER_DELIVERY",
    "PAUSE",
    "FINISHED_L",
    "TRADE_CANCELED",
    "LOCKED",
    "POP_ORDER_PAUSE",
)
HOLD_STATES = frozenset({"LOCKED", "PAUSE", "POP_ORDER_PAUSE"})
#: Statuses of an order nobody has paid for (yet, or ever): its ``paid_fen`` is 0.
UNPAID = frozenset({OrderStatus.CREATED, OrderStatus.CLOSED})
_AWAITING_SHIPMENT = frozenset({"WAIT_SELLER_STOCK_OUT", "WAIT_SELLER_DELIVERY"})

#: The ``optional_fields`` the adapter requests: what this module reads, and nothing else.
OPTIONAL_FIELDS: tuple[str, ...] = (
    "orderId",
    "venderId",
    "orderType",
    "payType",
    "orderState",
    "orderTotalPrice",
    "orderSellerPrice",
    "orderPayment",
    "freightPrice",
    "sellerDiscount",
    "orderStartTime",
    "orderEndTime",
    "paymentConfirmTime",
    "modified",
    "pin",
    "open_id_buyer",
    "consigneeInfo",
    "itemInfoList",
    "waybill",
    "logisticsId",
    "storeId",
)

_WAYBILL_SPLIT = re.compile(r"[,;，；]")
_MOBILE = re.compile(r"^(?:\+?86[- ]?)?(1[3-9]\d{9})$")
_QUANTITY = re.compile(r"^\d+$")
_ID = re.compile(r"^[0-9A-Za-z_-]+$")
#: an id with nothing to strip: ``fullmatch`` without the ``$`` that also takes a final newline
_ID_EXACT = re.compile(r"[0-9A-Za-z_-]+").fullmatch


class NormaliseError(ValueError):
    """Why one record cannot be normalised. Messages name fields, never personal data."""


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _id(value: Any, field: str, at: int | None = None) -> str:
    """An id as text; ``field`` names it in the error (with ``at`` in its ``{}``: a line's position, formatted
    only for an error, not for every line)."""
    if type(value) is str and _ID_EXACT(value):  # what JD sends, checked as the long way below would
        return value
    if isinstance(value, bool) or _blank(value):
        raise NormaliseError(f"{field.format(at)} is missing")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and _ID.match(value.strip()):
        return value.strip()
    raise NormaliseError(f"{field.format(at)} is not an id: {value!r}")


def _time(record: Mapping[str, Any], field: str) -> datetime | None:
    """An optional time; blanks and JD's ``0000-00-00`` placeholders mean "not yet"."""
    value = record.get(field)
    if _blank(value) or (isinstance(value, str) and value.startswith("0000-00-00")):
        return None
    if not isinstance(value, str):
        raise NormaliseError(f"{field} is not a time string")
    try:
        return parse_jd_time(value)
    except ValueError:
        raise NormaliseError(f"{field} is not a JD time: {value!r}") from None


def _required_time(record: Mapping[str, Any], field: str) -> datetime:
    value = _time(record, field)
    if value is None:
        raise NormaliseError(f"{field} is missing")
    return value


def _money(record: Mapping[str, Any], field: str, *, required: bool) -> int:
    value = record.get(field)
    if _blank(value):
        if required:
            raise NormaliseError(f"{field} is missing")
        return 0
    try:
        return to_fen(value, field)
    except ValueError as exc:
        raise NormaliseError(str(exc)) from None


def map_status(state: str, *, paid: bool, shipped: bool) -> OrderStatus:
    """The status table of the module docstring; ``paid``/``shipped`` are what the record itself proves."""
    if state in _AWAITING_SHIPMENT:
        return OrderStatus.PAID if paid else OrderStatus.CREATED
    if state == "WAIT_GOODS_RECEIVE_CONFIRM":
        return OrderStatus.SHIPPED
    if state == "FINISHED_L":
        return OrderStatus.COMPLETED
    if state == "TRADE_CANCELED":
        return OrderStatus.REFUNDED if paid else OrderStatus.CLOSED
    if state in HOLD_STATES:
        if shipped:
            return OrderStatus.SHIPPED
        return OrderStatus.PAID if paid else OrderStatus.CREATED
    raise NormaliseError(f"unknown orderState {state!r}")


def _lines(record: Mapping[str, Any], payment_fen: int, refunded: bool) -> tuple[OrderLine, ...]:
    items = record.get("itemInfoList")
    if not isinstance(items, list) or not items:
        raise NormaliseError("itemInfoList is missing or empty")
    parsed: list[tuple[str, str, int, int, str | None]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise NormaliseError(f"itemInfoList[{index}] is not an object")
        sku_id = _id(item.get("skuId"), "itemInfoList[{}].skuId", index)
        quantity_raw = item.get("itemTotal")
        quantity_text = str(quantity_raw).strip() if isinstance(quantity_raw, str | int) else ""
        if isinstance(quantity_raw, bool) or not _QUANTITY.match(quantity_text) or int(quantity_text) < 1:
            raise NormaliseError(f"itemInfoList[{index}].itemTotal is not a positive count: {quantity_raw!r}")
        unit = _money(item, "jdPrice", required=True)
        seen[sku_id] = seen.get(sku_id, 0) + 1
        line_id = sku_id if seen[sku_id] == 1 else f"{sku_id}#{seen[sku_id]}"
        title = item.get("skuName")
        outer = item.get("outerSkuId")
        sku = outer.strip() if isinstance(outer, str) and outer.strip() else sku_id
        parsed.append((line_id, title if isinstance(title, str) else "", int(quantity_text), unit, sku))
    shares = allocate(payment_fen, [unit * quantity for _, _, quantity, unit, _ in parsed])
    return tuple(
        OrderLine(
            external_id=line_id,
            title=title,
            quantity=quantity,
            unit_price_fen=unit,
            amount_fen=share,
            sku=sku,
            refund_status=LineRefundStatus.REFUNDED if refunded else LineRefundStatus.NONE,
            refunded_fen=share if refunded else 0,
        )
        for (line_id, title, quantity, unit, sku), share in zip(parsed, shares, strict=True)
    )


def _shipments(record: Mapping[str, Any]) -> tuple[Shipment, ...]:
    """Parcels from ``waybill`` and ``logisticsId`` (see the module docstring); ``"0"`` means none."""
    waybill = record.get("waybill")
    if _blank(waybill):
        return ()
    if not isinstance(waybill, str | int) or isinstance(waybill, bool):
        raise NormaliseError("waybill is not a string")
    carrier = record.get("logisticsId")
    if not _blank(carrier) and (not isinstance(carrier, str | int) or isinstance(carrier, bool)):
        raise NormaliseError("logisticsId is not an id")
    code = None if _blank(carrier) or str(carrier).strip() == "0" else str(carrier).strip()
    numbers = [n.strip() for n in _WAYBILL_SPLIT.split(str(waybill)) if n.strip() not in ("", "0")]
    try:
        return tuple(Shipment(tracking_number=n, carrier_code=code) for n in dict.fromkeys(numbers))
    except ValueError as exc:
        raise NormaliseError(f"waybill: {exc}") from None


def _claims(record: Mapping[str, Any], order_id: str) -> tuple[IdentityClaim, ...]:
    evidence = f"jd order {order_id}"
    open_id = record.get("open_id_buyer")
    if isinstance(open_id, str) and open_id.strip():
        return (IdentityClaim(JD_OPEN_ID.name, open_id.strip(), evidence),)
    pin = record.get("pin")
    if isinstance(pin, str) and pin.strip() and "*" not in pin:
        return (IdentityClaim(JD_PIN.name, pin.strip(), evidence),)
    return ()


def _plain_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or "*" in text or len(text) > 32:
        return None
    return text


def plain_mobile(value: Any) -> str | None:
    """A mainland mobile as E.164, or ``None`` for anything masked, encrypted or otherwise not a number."""
    if not isinstance(value, str):
        return None
    match = _MOBILE.match(value.strip())
    return f"+86{match.group(1)}" if match else None


def _buyer(record: Mapping[str, Any]) -> BuyerProfile:
    consignee = record.get("consigneeInfo")
    if not isinstance(consignee, Mapping):
        return BuyerProfile()
    return BuyerProfile(
        mobile=plain_mobile(consignee.get("mobile")),
        province=_plain_text(consignee.get("province")),
        city=_plain_text(consignee.get("city")),
    )


def normalise_order(record: Mapping[str, Any]) -> NormalisedOrder:
    """Normalise one record or raise :class:`NormaliseError` saying what is wrong with it."""
    order_id = _id(record.get("orderId"), "orderId")
    state = record.get("orderState")
    if not isinstance(state, str) or not state:
        raise NormaliseError("orderState is missing")
    created_at = _required_time(record, "orderStartTime")
    modified_at = _required_time(record, "modified")
    paid_at = _time(record, "paymentConfirmTime")
    end_at = _time(record, "orderEndTime")
    shipments = _shipments(record)
    shipped = bool(shipments)
    status = map_status(state, paid=paid_at is not None, shipped=shipped)
    payment_fen = _money(record, "orderPayment", required=True)
    paid_fen = 0 if status in UNPAID else payment_fen
    store = record.get("storeId")
    try:
        return NormalisedOrder(
            external_id=order_id,
            status=status,
            created_at=created_at,
            modified_at=modified_at,
            total_fen=_money(record, "orderTotalPrice", required=True),
            paid_fen=paid_fen,
            claims=_claims(record, order_id),
            lines=_lines(record, payment_fen, refunded=status is OrderStatus.REFUNDED),
            paid_at=paid_at,
            completed_at=end_at if status is OrderStatus.COMPLETED else None,
            post_fee_fen=_money(record, "freightPrice", required=False),
            discount_fen=_money(record, "sellerDiscount", required=False),
            store_code=str(store).strip() if not _blank(store) and str(store).strip() != "0" else None,
            buyer=_buyer(record),
            platform_status=state,
            shipments=shipments,
        )
    except NormaliseError:
        raise
    except ValueError as exc:  # the core's own validation (negative amounts, naive datetimes...)
        raise NormaliseError(str(exc)) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def raw_json(record: Any) -> str:
    """The record as JSON text for quarantine (exact decimals are kept as their digit strings)."""
    return json.dumps(record, ensure_ascii=False, default=_json_default)


def normalise_records(
    records: Iterable[Any],
) -> tuple[list[NormalisedOrder], list[QuarantinedRecord]]:
    """Normalise a page; a bad record is quarantined with its raw JSON and never stops the others."""
    orders: list[NormalisedOrder] = []
    quarantined: list[QuarantinedRecord] = []
    for record in records:
        if not isinstance(record, Mapping):
            quarantined.append(QuarantinedRecord(None, "order record is not a JSON object", raw_json(record)))
            continue
        try:
            orders.append(normalise_order(record))
        except NormaliseError as exc:
            raw_id = record.get("orderId")
            external_id = (
                str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
            )
            quarantined.append(QuarantinedRecord(external_id or None, str(exc), raw_json(record)))
    return orders, quarantined
