"""The counter tests' order builder (shared by test_counter and test_counter_sale): a sale of one line per
amount, some of it given back, at a fixed time an hour before the tests' clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tongcrm.plugin.types import LineRefundStatus, NormalisedOrder, OrderLine, OrderStatus

NOW = datetime(2026, 5, 20, 6, 0, tzinfo=UTC)


def counter_order(
    key: str, amounts: tuple[int, ...], *, back: tuple[int, ...] = (), version: int = 0
) -> NormalisedOrder:
    """Order ``key`` with a line per amount in ``amounts`` (fen), ``back`` fen of each refunded (a full refund of
    every line makes it a refunded order); ``version`` moves its modification time on by that many µs."""
    back = back or (0,) * len(amounts)
    fully = all(b >= a for a, b in zip(amounts, back, strict=True))
    return NormalisedOrder(
        external_id=key,
        status=OrderStatus.REFUNDED if fully else OrderStatus.COMPLETED,
        created_at=NOW - timedelta(hours=1),
        modified_at=NOW - timedelta(hours=1) + timedelta(microseconds=version),
        paid_at=NOW - timedelta(hours=1),
        completed_at=NOW - timedelta(hours=1),
        total_fen=sum(amounts),
        paid_fen=sum(amounts),
        claims=(),
        lines=tuple(
            OrderLine(str(i), f"item {i}", 1, a, a, refunded_fen=b,
                      refund_status=LineRefundStatus.REFUNDED if b else LineRefundStatus.NONE)
            for i, (a, b) in enumerate(zip(amounts, back, strict=True), start=1)
        ),
    )  # fmt: skip
