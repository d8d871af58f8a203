"""Request and response bodies of the POS API (msgspec Structs: validated on the way in, documented in OpenAPI).

Money is integer fen and points are integers, as everywhere in tongcrm. Times are ISO 8601 with an offset (a
till that sends a naive time gets a 4xx: the server cannot guess its zone).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

#: The longest till code: with :data:`STORE_CODE_MAX`, a till's consent source ``pos:STORE:TILL`` (41 at
#: most) fits its 64 characters and a receipt key ``STORE:TILL:YYYYMMDD:SEQUENCE`` (57) an order's external id.
TILL_CODE_MAX = 16
#: The longest store code (the offline_pos account's name): a receipt carries it in ``store``, and a store is
#: made no longer (``ChannelSpec.max_account_name``), so a store that exists can take its tills' receipts and
#: enrolments.
STORE_CODE_MAX = 20
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=TILL_CODE_MAX, pattern=r"^[A-Za-z0-9_-]+$")]
StoreCode = Annotated[
    str, msgspec.Meta(min_length=1, max_length=STORE_CODE_MAX, pattern=r"^[A-Za-z0-9_.-]+$")
]
Fen = Annotated[int, msgspec.Meta(ge=0, le=10**11)]
Sequence_ = Annotated[int, msgspec.Meta(ge=1, le=10**9)]
#: A membership card number as read or typed (normalised by ``cards.normalise_card``).
CardNumber = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PaymentMethod = Literal["cash", "card", "wechat", "alipay", "points", "coupon", "stored_value", "other"]


class MemberRef(msgspec.Struct, forbid_unknown_fields=True):
    """Who bought: the ``member_id`` a lookup returned (online), or the mobile the cashier typed or the
    membership card they scanned (offline). Give one; of several, ``member_id`` wins, then ``mobile``."""

    member_id: int | None = None
    mobile: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    card: CardNumber | None = None


class LineIn(msgspec.Struct, forbid_unknown_fields=True):
    line_no: Annotated[int, msgspec.Meta(ge=1, le=9999)]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    unit_price_fen: Fen
    #: What the line costs after its discounts; points are earned on this (less any part paid with points).
    amount_fen: Fen
    sku: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    category: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class PaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    method: PaymentMethod
    amount_fen: Fen
    #: For ``method: points``: how many points pay ``amount_fen`` (a redemption in the same transaction).
    points: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 0


class ReceiptRef(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The key of the sale a return refers to. ``store`` is the store of the sale when that is another store of
    the brand (a cross-store return, if the returning store allows them); omitted, it is the returning store."""

    till: Code
    business_day: date
    sequence: Sequence_
    store: StoreCode | None = None


class ReturnLineIn(msgspec.Struct, forbid_unknown_fields=True):
    line_no: Annotated[int, msgspec.Meta(ge=1, le=9999)]
    #: Items taken back; 0 for a refund of money only (a price adjustment).
    quantity: Annotated[int, msgspec.Meta(ge=0, le=100_000)]
    amount_fen: Fen


class ReceiptIn(msgspec.Struct, forbid_unknown_fields=True):
    """A receipt. ``(store, till, business_day, sequence)`` is its key: sending it again changes nothing.

    A sale has ``lines`` and ``payments`` (their totals must equal ``total_fen``); a return has ``original``
    and ``return_lines`` (``total_fen`` is the amount refunded).
    """

    store: StoreCode
    till: Code
    business_day: date
    sequence: Sequence_
    occurred_at: datetime
    total_fen: Fen
    kind: Literal["sale", "return"] = "sale"
    member: MemberRef | None = None
    lines: list[LineIn] = []
    payments: list[PaymentIn] = []
    discount_fen: Fen = 0
    original: ReceiptRef | None = None
    return_lines: list[ReturnLineIn] = []
    #: The till's clock when it sent this receipt (lets the server measure clock skew).
    sent_at: datetime | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """Receipts a till queued while offline. They are applied in key order, each on its own; ``sent_at`` is
    the till's clock at upload time, for the skew."""

    receipts: list[ReceiptIn]
    sent_at: datetime | None = None


class ReceiptResult(msgspec.Struct):
    key: str
    store: str
    till: str
    business_day: date
    sequence: int
    kind: str
    #: applied | rejected | conflict (the key was used for a different receipt)
    status: str
    replayed: bool = False
    offline: bool = False
    member_id: int | None = None
    points_earned: int = 0
    points_redeemed: int = 0
    #: A return: earned points taken back.
    points_reversed: int = 0
    #: A return of goods paid partly with points: redeemed points given back.
    points_refunded: int = 0
    #: The member's available points after this receipt (at the time it was applied).
    points_available: int | None = None
    #: Machine-readable reason of a rejection, e.g. ``insufficient_points``, ``original_not_found``.
    reason: str | None = None
    detail: str | None = None
    clock_skew_seconds: int | None = None


class BatchResult(msgspec.Struct):
    applied: int
    replayed: int
    rejected: int
    results: list[ReceiptResult]


class ReceiptView(msgspec.Struct):
    result: ReceiptResult
    receipt: dict[str, object]
    received_at: datetime
    effective_at: datetime
    till_time: datetime
    original_key: str | None = None
    #: A sale: fen returned so far per line number.
    returned_fen: dict[str, int] = {}


class LookupIn(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of ``mobile``, ``code`` (the dynamic member code the member shows) or ``card`` (the number
    of their membership card)."""

    till: Code
    mobile: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    code: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    card: CardNumber | None = None


class PresentedMember(msgspec.Struct, forbid_unknown_fields=True):
    """The member standing at the till, named as a lookup names them: exactly one of ``mobile``, ``card`` or
    ``code`` (a fresh dynamic member code: a code is good for one request). Never a member id."""

    mobile: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    card: CardNumber | None = None
    code: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class EntitlementUseIn(msgspec.Struct, forbid_unknown_fields=True):
    """A use of an entitlement at the till: a grant the lookup listed (``grant_id``: a coupon, a birthday gift,
    a standing benefit) or the member's live standing benefit of ``kind`` (e.g. ``gift_packaging``) — exactly
    one. ``usage_key`` makes it idempotent (the receipt key, say): the same key again answers the recorded
    use."""

    till: Code
    member: PresentedMember
    usage_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    grant_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1024)] | None = None
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] | None = None
    reference: Annotated[str, msgspec.Meta(max_length=150)] = ""


class EntitlementUseOut(msgspec.Struct):
    usage_id: int
    grant_id: int
    kind: str
    name: str
    member_id: int
    usage_key: str
    #: ``pos:STORE:TILL`` and the till's own reference.
    reference: str
    used_at: datetime
    #: The usage key was seen before: this is the use recorded then.
    replayed: bool = False


class TierOut(msgspec.Struct):
    code: str
    name: str


class EntitlementOut(msgspec.Struct):
    kind: str
    name: str
    value: int
    #: A granted coupon or gift (use it by grant id); ``None`` for a standing benefit of the tier.
    grant_id: int | None = None
    valid_until: datetime | None = None


class MemberAtTill(msgspec.Struct):
    """What a cashier needs, and nothing more: names and mobiles stay masked.

    ``tier`` is ``null`` when the brand has no tier ladder (then ``entitlements`` is empty).
    """

    member_id: int
    name: str | None
    mobile: str | None
    tier: TierOut | None
    entitlements: list[EntitlementOut]
    points_available: int
    created: bool = False


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True):
    """What the customer said at the till; ``proof`` names the evidence (paper form number, screen tick…)."""

    marketing: bool
    service: bool = True
    proof: Annotated[str, msgspec.Meta(max_length=200)] = ""


class EnrolIn(msgspec.Struct, forbid_unknown_fields=True):
    """``card``: a membership card handed over now (refused with 409 when it already names another member)."""

    till: Code
    mobile: Annotated[str, msgspec.Meta(min_length=5, max_length=32)]
    consent: ConsentIn
    name: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    card: CardNumber | None = None


class CodeIn(msgspec.Struct, forbid_unknown_fields=True):
    member_id: Annotated[int, msgspec.Meta(ge=1)]


class CodeOut(msgspec.Struct):
    code: str
    member_id: int
    expires_at: datetime
