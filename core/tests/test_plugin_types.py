"""The channel-neutral records' own checks that the core leans on when it stores them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.orders.models import Order
from tongcrm.orders.models import OrderLine as OrderLineRow
from tongcrm.plugin.types import (
    LINE_TEXT_LIMITS,
    ORDER_TEXT_LIMITS,
    NormalisedOrder,
    OrderLine,
    OrderStatus,
)


@pytest.mark.parametrize(
    ("limits", "table"),
    [(ORDER_TEXT_LIMITS, Order.__table__), (LINE_TEXT_LIMITS, OrderLineRow.__table__)],
)
def test_text_limits_are_the_stored_columns_lengths(limits: dict[str, int], table: Any) -> None:
    """A limit that drifted from its column would again let PostgreSQL refuse a whole page for one record."""
    for name, limit in limits.items():
        column_type = table.c[name].type
        assert isinstance(column_type, sa.String) and column_type.length == limit, name


def _line(**changes: Any) -> OrderLine:
    values: dict[str, Any] = {
        "external_id": "L1",
        "title": "T",
        "quantity": 1,
        "unit_price_fen": 100,
        "amount_fen": 100,
    }
    return OrderLine(**(values | changes))


def _order(**changes: Any) -> NormalisedOrder:
    at = datetime(2026, 12, 7, tzinfo=UTC)
    values: dict[str, Any] = {
        "external_id": "O1",
        "status": OrderStatus.PAID,
        "created_at": at,
        "modified_at": at,
        "total_fen": 100,
        "paid_fen": 100,
        "claims": (),
        "lines": (_line(),),
    }
    return NormalisedOrder(**(values | changes))


@pytest.mark.parametrize(("name", "limit"), sorted(LINE_TEXT_LIMITS.items()))
def test_a_line_text_longer_than_stored_is_refused_and_one_at_the_limit_kept(name: str, limit: int) -> None:
    assert getattr(_line(**{name: "字" * limit}), name) == "字" * limit
    with pytest.raises(
        ValueError, match=f"{name} is {limit + 1} characters long, more than the {limit} stored"
    ):
        _line(**{name: "字" * (limit + 1)})


@pytest.mark.parametrize(("name", "limit"), sorted(ORDER_TEXT_LIMITS.items()))
def test_an_order_text_longer_than_stored_is_refused_and_one_at_the_limit_kept(name: str, limit: int) -> None:
    assert getattr(_order(**{name: "9" * limit}), name) == "9" * limit
    with pytest.raises(ValueError, match=f"{name} is {limit + 1} characters long"):
        _order(**{name: "9" * (limit + 1)})


# Each record is checked in one expression first and rule by rule only when that fails (issue #22): a refusal
# must still name the first rule broken, in the rules' order, with its message.


@pytest.mark.parametrize("name", ["quantity", "unit_price_fen", "amount_fen", "refunded_fen"])
def test_a_line_amount_not_an_int_or_negative_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"^line L1: {name} must be an int, got float$"):
        _line(**{name: 1.0})
    with pytest.raises(ValueError, match=f"^line L1: {name} must not be negative$"):
        _line(**{name: -1})


def test_a_line_refused_names_the_first_rule_it_breaks() -> None:
    with pytest.raises(ValueError, match=r"^line L1: quantity must not be negative$"):
        _line(quantity=-1, title="字" * 301, refunded_fen=500)
    with pytest.raises(ValueError, match="title is 301 characters long"):
        _line(title="字" * 301, refunded_fen=500)
    with pytest.raises(ValueError, match=r"^line L1: refunded 500 exceeds paid 100$"):
        _line(refunded_fen=500)
    kept = _line(refunded_fen=100, sku=None, category=None)
    assert (kept.refunded_fen, kept.sku, kept.category) == (100, None, None)


@pytest.mark.parametrize("name", ["total_fen", "paid_fen", "post_fee_fen", "discount_fen"])
def test_an_order_amount_not_an_int_or_negative_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"^order O1: {name} must be an int, got float$"):
        _order(**{name: 1.0})
    with pytest.raises(ValueError, match=f"^order O1: {name} must not be negative$"):
        _order(**{name: -1})


def test_an_order_refused_names_the_first_rule_it_breaks() -> None:
    naive = datetime(2026, 12, 7)
    with pytest.raises(ValueError, match=r"^order has no external id$"):
        _order(external_id="", total_fen=-1)
    with pytest.raises(ValueError, match=r"^order O1: total_fen must not be negative$"):
        _order(total_fen=-1, paid_at=naive)
    with pytest.raises(ValueError, match="order O1: paid_at must be a timezone-aware datetime"):
        _order(paid_at=naive, completed_at=naive, store_code="9" * 65)
    with pytest.raises(ValueError, match="order O1: completed_at must be a timezone-aware datetime"):
        _order(completed_at=naive)
    with pytest.raises(ValueError, match="store_code is 65 characters long"):
        _order(store_code="9" * 65, status="paid")
    with pytest.raises(ValueError, match=r"^order O1: unknown status 'paid'$"):
        _order(status="paid", lines=(_line(), _line()))
    with pytest.raises(ValueError, match=r"^order O1: duplicate line ids$"):
        _order(lines=(_line(), _line()))
    kept = _order(store_code=None, lines=(_line(), _line(external_id="L2")))
    assert (kept.store_code, len(kept.lines)) == (None, 2)


def test_the_counters_order_with_a_claim_is_the_order_replaced() -> None:
    """The counter adds the buyer's claim to a sale's order without making it anew (``counter._with_claim``,
    tillcpu17): the same order ``dataclasses.replace`` makes, the original untouched."""
    import dataclasses

    from tongcrm.counter import _with_claim
    from tongcrm.plugin.types import IdentityClaim, NormalisedOrder, OrderLine, OrderStatus

    now = datetime.now(UTC)
    order = NormalisedOrder(
        external_id="S1:T01:20261207:1", status=next(iter(OrderStatus)), created_at=now, modified_at=now,
        total_fen=100, paid_fen=100, claims=(IdentityClaim("pos.card", "C1", ""),),
        lines=(OrderLine("1", "tea", 1, 100, 100),), store_code="S1",
    )  # fmt: skip
    claim = IdentityClaim("mobile", "+8613800138000", "till")
    made = _with_claim(order, claim)
    assert made == dataclasses.replace(order, claims=(claim, *order.claims)) and made is not order
    assert made.claims == (claim, IdentityClaim("pos.card", "C1", "")) and order.claims[0].kind == "pos.card"
    assert {f.name: getattr(made, f.name) for f in dataclasses.fields(order) if f.name != "claims"} == {
        f.name: getattr(order, f.name) for f in dataclasses.fields(order) if f.name != "claims"
    }
