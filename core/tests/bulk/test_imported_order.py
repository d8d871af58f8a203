"""The orders reader's :class:`ImportedOrder` (#22): it skips the core type's validation, so the parser must refuse
what ``NormalisedOrder`` would, and an order it accepts must make the same ``NormalisedOrder`` as before. No
database: these parse records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from tongcrm.bulk import service
from tongcrm.bulk.mapping import Record
from tongcrm.plugin.types import BuyerProfile, IdentityClaim, NormalisedOrder, OrderLine, OrderStatus

TZ = ZoneInfo("Asia/Shanghai")


def order(line: int = 7, **values: str) -> NormalisedOrder:
    record = Record(line, {"order_id": "O1", "placed_at": "2025-03-01 10:00", "total_fen": "100", **values})
    return service._order(record, "legacy", TZ).normalised()


def test_an_accepted_order_is_the_core_order_with_its_evidence() -> None:
    placed = datetime(2025, 3, 1, 2, tzinfo=UTC)
    got = order(member_id="M1", mobile="13800138000", sku="S", completed_at="2025-03-02 10:00", name="张三")
    said = "imported from legacy, line 7"
    assert got == NormalisedOrder(
        external_id="O1",
        status=OrderStatus.COMPLETED,
        created_at=placed,
        modified_at=datetime(2025, 3, 2, 2, tzinfo=UTC),
        total_fen=100,
        paid_fen=100,
        claims=(
            IdentityClaim("import.member_id", "legacy/M1", said),
            IdentityClaim("mobile", "13800138000", said),
        ),
        lines=(OrderLine("1", "order imported from legacy", 1, 100, 100, sku="S"),),
        paid_at=placed,
        completed_at=datetime(2025, 3, 2, 2, tzinfo=UTC),
        buyer=BuyerProfile(name="张三"),
    )


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"total_fen": "-1"}, "total_fen must be at least 0"),
        ({"post_fee_fen": "-5"}, "post_fee_fen must be at least 0"),
        ({"paid_fen": "１２"}, None),  # full-width digits: int() reads them, as parse_int always did
        ({"discount_fen": "²"}, "discount_fen '²' is not a whole number"),
        ({"lines": json.dumps([{"line_id": "a", "amount_fen": -1}])}, "must not be negative"),
        (
            {"lines": json.dumps([{"line_id": "a", "amount_fen": 1}, {"line_id": "a", "amount_fen": 2}])},
            "duplicate",
        ),
        ({"lines": json.dumps([{"amount_fen": 1, "refunded_fen": 2}])}, "refunded 2 exceeds paid 1"),
        # longer than the core stores
        ({"order_id": "9" * 65}, "order_id is 65 characters long, more than the 64 stored"),
        ({"store_code": "S" * 65}, "store_code is 65 characters long"),
    ],
)
def test_the_parser_refuses_what_the_core_type_would(values: dict[str, str], reason: str | None) -> None:
    if reason is None:
        assert order(**values).paid_fen == 12
        return
    with pytest.raises(ValueError, match=reason):
        order(**values)


def test_descriptive_texts_are_cut_to_what_is_stored_on_both_line_forms() -> None:
    """An identifier too long is the row's error (above); a title, SKU or category is cut to its column, for a
    one-line order as for JSON lines, so PostgreSQL's ``COPY`` never meets a text longer than its column."""
    one = order(sku="K" * 101, category="类" * 101, title="长" * 301).lines[0]
    assert (len(one.sku or ""), len(one.category or ""), len(one.title)) == (100, 100, 300)
    lines = json.dumps([{"line_id": "a", "amount_fen": 1, "title": "长" * 301, "sku": "K" * 101}])
    many = order(lines=lines).lines[0]
    assert (len(many.sku or ""), len(many.title)) == (100, 300)
