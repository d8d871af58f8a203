"""An imported historical order as the reading thread parses it: what the set-based writer
(:func:`tongcrm.bulk.staged.write_orders`) stores, with no core type built per row (#22).

A :class:`tongcrm.plugin.types.NormalisedOrder` with its ``OrderLine``, ``IdentityClaim`` and ``BuyerProfile``
was two thirds of the reading thread's time on an orders file: four frozen dataclasses a row, each assigning its
fields through ``object.__setattr__`` and validating what the import's parsing had already checked (whole
numbers not negative, aware times, a known status). The parser (:func:`tongcrm.bulk.service._order`) checks all
of that itself, so an :class:`ImportedOrder` only holds it. The claims' evidence ("imported from …, line N") is
a string per claim per row that only a stored identity or a policy reads: it is made from the record's line
when asked. :meth:`ImportedOrder.normalised` builds the core type (validated as any channel's) for the orders the
writer leaves to ingest.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from tongcrm.plugin.types import (
    BuyerProfile,
    IdentityClaim,
    LineRefundStatus,
    NormalisedOrder,
    OrderLine,
    OrderStatus,
    Shipment,
)


class ImportedLine(NamedTuple):
    """An order line, read as :class:`tongcrm.plugin.types.OrderLine` is (same attribute names)."""

    external_id: str
    title: str
    quantity: int
    unit_price_fen: int
    amount_fen: int
    sku: str | None
    category: str | None
    refunded_fen: int
    refund_status: LineRefundStatus = LineRefundStatus.NONE


def evidence(source: str, line: int) -> str:
    """What an imported claim says of where it came from."""
    return f"imported from {source}, line {line}"


class ImportedOrder:
    """One order of an import file, checked as :class:`NormalisedOrder` checks its values; attributes named as
    that type's, so the writers read either. ``claims`` are ``(kind, value)`` pairs, not blank."""

    __slots__ = (
        "claims", "completed_at", "created_at", "discount_fen", "external_id", "lines", "modified_at", "name",
        "paid_at", "paid_fen", "post_fee_fen", "record_line", "source", "status", "store_code", "total_fen",
    )  # fmt: skip

    #: What an imported order never has (the attributes of :class:`NormalisedOrder` the writers read).
    platform_status = ""
    shipped_at: datetime | None = None
    shipments: tuple[Shipment, ...] = ()

    def __init__(
        self,
        source: str,
        record_line: int,
        external_id: str,
        status: OrderStatus,
        created_at: datetime,
        modified_at: datetime,
        paid_at: datetime | None,
        completed_at: datetime | None,
        total_fen: int,
        paid_fen: int,
        post_fee_fen: int,
        discount_fen: int,
        store_code: str | None,
        lines: tuple[ImportedLine, ...],
        claims: tuple[tuple[str, str], ...],
        name: str | None,
    ) -> None:
        self.source = source
        self.record_line = record_line
        self.external_id = external_id
        self.status = status
        self.created_at = created_at
        self.modified_at = modified_at
        self.paid_at = paid_at
        self.completed_at = completed_at
        self.total_fen = total_fen
        self.paid_fen = paid_fen
        self.post_fee_fen = post_fee_fen
        self.discount_fen = discount_fen
        self.store_code = store_code
        self.lines = lines
        self.claims = claims
        #: The buyer's name, when the row gives one (a profile to fill: resolution's work, not the writer's).
        self.name = name

    @property
    def evidence(self) -> str:
        return evidence(self.source, self.record_line)

    def identity_claims(self) -> tuple[IdentityClaim, ...]:
        """The claims as the core takes them, with their evidence."""
        said = self.evidence
        return tuple(IdentityClaim(kind, value, said) for kind, value in self.claims)

    def normalised(self) -> NormalisedOrder:
        """The core's order (for ingest), validated as every channel's is."""
        return NormalisedOrder(
            external_id=self.external_id,
            status=self.status,
            created_at=self.created_at,
            modified_at=self.modified_at,
            total_fen=self.total_fen,
            paid_fen=self.paid_fen,
            claims=self.identity_claims(),
            lines=tuple(OrderLine(**line._asdict()) for line in self.lines),
            paid_at=self.paid_at,
            completed_at=self.completed_at,
            post_fee_fen=self.post_fee_fen,
            discount_fen=self.discount_fen,
            store_code=self.store_code,
            buyer=BuyerProfile(name=self.name),
        )


class ImportedClaim:
    """A claim of an imported order made ready to store (:func:`tongcrm.identity.service.claim_value`), read as
    the identity service's prepared claims are; its evidence is its order's, made when asked."""

    __slots__ = ("e164", "kind", "lookup", "order", "strong", "value", "value_enc")

    def __init__(
        self,
        order: ImportedOrder,
        kind: str,
        strong: bool,
        value: str,
        lookup: tuple[str, ...],
        value_enc: str | None,
        e164: str | None,
    ) -> None:
        self.order = order
        self.kind = kind
        self.strong = strong
        self.value = value
        self.lookup = lookup
        self.value_enc = value_enc
        self.e164 = e164

    @property
    def evidence(self) -> str:
        return self.order.evidence
