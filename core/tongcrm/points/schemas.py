"""Shapes of what the points service returns and the API speaks (msgspec structs; no HTTP here)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from tongcrm.api.inputs import BodyId
from tongcrm.db.lengths import fits
from tongcrm.orders.models import Order, OrderLine


class BalanceOut(msgspec.Struct):
    member_id: int
    available: int
    pending: int
    #: Points a refund took back after they were spent (``debt`` policy): ``available`` is ``-debt``.
    debt: int
    #: Points still to be clawed back from future earnings (``clawback`` policy).
    owed: int


class DrawOut(msgspec.Struct):
    lot_id: int
    amount: int
    kind: str


class EntryOut(msgspec.Struct):
    id: int
    kind: str
    amount: int
    occurred_at: datetime
    explanation: str
    idempotency_key: str
    shortfall: int = 0
    available_from: datetime | None = None
    expires_at: datetime | None = None
    rule_code: str | None = None
    rule_version: int | None = None
    rule: dict[str, Any] | None = None
    account_id: int | None = None
    order_id: int | None = None
    line_id: int | None = None
    reason: str | None = None
    actor: str = "system"
    ref_entry_id: int | None = None
    detail: dict[str, Any] | None = None
    lot: LotOut | None = None
    draws: list[DrawOut] = []


class LotOut(msgspec.Struct):
    id: int
    amount: int
    remaining: int
    reversed: int
    status: str
    release_on: str
    available_at: datetime | None
    expires_at: datetime | None


class StatementOut(msgspec.Struct):
    balance: BalanceOut
    entries: list[EntryOut]
    total_entries: int
    limit: int
    offset: int


class LedgerResult(msgspec.Struct):
    """The outcome of a redemption, adjustment or transfer (stored for idempotent replays)."""

    entry_id: int
    member_id: int
    kind: str
    points: int
    balance: BalanceOut
    draws: list[DrawOut] = []
    counterpart_entry_id: int | None = None
    counterpart_balance: BalanceOut | None = None


class RuleSetOut(msgspec.Struct):
    version: int
    status: str
    note: str
    created_by: str
    created_at: datetime
    activated_at: datetime | None
    document: dict[str, Any]


class PreviewLineIn(msgspec.Struct, forbid_unknown_fields=True):
    amount_fen: int
    external_id: Annotated[str, fits(OrderLine.external_id)] = ""
    sku: Annotated[str, fits(OrderLine.sku)] | None = None
    category: Annotated[str, fits(OrderLine.category)] | None = None


class PreviewOrderIn(msgspec.Struct, forbid_unknown_fields=True):
    channel: Annotated[str, fits(Order.channel)]
    lines: list[PreviewLineIn]
    store_code: Annotated[str, fits(Order.store_code)] | None = None
    #: whose tier prices the order; a member that does not exist is a 404 rather than a silent "no tier",
    #: so a typo never previews the base multiplier as if it were the member's
    member_id: BodyId | None = None


class PreviewRuleOut(msgspec.Struct):
    code: str
    points: int
    detail: dict[str, Any]


class PreviewLineOut(msgspec.Struct):
    external_id: str
    amount_fen: int
    points: int
    rules: list[PreviewRuleOut]


class PreviewOut(msgspec.Struct):
    rule_version: int | None
    draft: bool
    tier: str | None
    multiplier_pct: int
    total: int
    lines: list[PreviewLineOut]
    note: str = "points before per-member caps; nothing was written"


class BacktestGroup(msgspec.Struct):
    draft: int
    actual: int
    difference: int
    orders: int


class BacktestReport(msgspec.Struct):
    since: datetime
    orders: int
    lines: int
    draft_total: int
    actual_total: int
    difference: int
    by_channel: dict[str, BacktestGroup]
    by_tier: dict[str, BacktestGroup]
