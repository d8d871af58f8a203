from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from tongcrm.plugin.types import LineRefundStatus, OrderStatus
from tongcrm_taobao.client import parse_json
from tongcrm_taobao.normalise import (
    IDENTITY_KINDS,
    STATUS_MAP,
    TradeError,
    missing_fields,
    normalise_trade,
    normalise_trades,
    yuan_to_fen,
)

TID = 1_900_000_000_000_123_457  # > 2**53: a float would round it


def trade(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tid": TID,
        "tid_str": str(TID),
        "type": "fixed",
        "status": "TRADE_FINISHED",
        "created": "2024-06-01 10:00:00",
        "modified": "2024-06-10 08:30:00",
        "pay_time": "2024-06-01 10:01:00",
        "consign_time": "2024-06-02 09:00:00",
        "end_time": "2024-06-10 08:30:00",
        "payment": "204.00",
        "total_fee": "210.00",
        "post_fee": "6.00",
        "discount_fee": "12.00",
        "buyer_open_uid": "AAF1234",
        "oaid": "1abcdef",
        "receiver_state": "浙江省",
        "receiver_city": "杭州市",
        "orders": {
            "order": [
                {"oid": TID + 1, "oid_str": str(TID + 1), "title": "面膜", "price": "99.00", "num": 1,
                 "payment": "99.00", "divide_order_fee": "94.00", "refund_status": "SUCCESS"},
                {"oid": TID + 2, "title": "洁面", "price": "55.50", "num": 2, "payment": "111.00",
                 "divide_order_fee": "104.00", "refund_status": "NO_REFUND", "outer_sku_id": "SKU-2"},
            ]
        },
    }  # fmt: skip
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("raw", "fen"),
    [
        ("99.00", 9900),
        ("0.01", 1),
        ("0", 0),
        ("12.5", 1250),
        ("1234567.89", 123456789),
        (Decimal("99.10"), 9910),
    ],
)
def test_money_is_exact_fen(raw: object, fen: int) -> None:
    assert yuan_to_fen(raw) == fen


@pytest.mark.parametrize(
    "raw", ["0.00", "99.00", "0.05", "12.3", "7", "007.10", " 1.00 ", "١٢.٥٠", "123456789012.99"]
)
def test_money_reads_the_digits_written(raw: str) -> None:
    # the platform's own form takes a short way (issue #22); every form gives the fen its digits say
    assert yuan_to_fen(raw) == int(Decimal(raw.strip()) * 100)


@pytest.mark.parametrize(
    "raw",
    [
        "99.005",
        "-1.00",
        "+1.00",
        "1.",
        ".50",
        "abc",
        "",
        "1e3",
        " ",
        "9.9.9",
        "1234567890123.00",
        99.0,
        None,
        True,
        "¥9.00",
    ],
)
def test_malformed_money_is_refused(raw: object) -> None:
    with pytest.raises(TradeError):
        yuan_to_fen(raw)


def test_a_finished_trade_with_a_partial_refund() -> None:
    order = normalise_trade(trade())
    assert order.external_id == str(TID)
    assert order.status is OrderStatus.COMPLETED
    assert order.platform_status == "TRADE_FINISHED"
    assert (order.total_fen, order.paid_fen, order.post_fee_fen, order.discount_fen) == (
        21000,
        20400,
        600,
        1200,
    )
    assert order.created_at == datetime(2024, 6, 1, 2, 0, tzinfo=UTC)  # 10:00 in Beijing is 02:00 UTC
    assert order.completed_at == datetime(2024, 6, 10, 0, 30, tzinfo=UTC)
    assert order.shipped_at == datetime(2024, 6, 2, 1, 0, tzinfo=UTC)
    refunded, kept = order.lines
    assert refunded.external_id == str(TID + 1)
    assert (refunded.refund_status, refunded.refunded_fen, refunded.amount_fen) == (
        LineRefundStatus.REFUNDED,
        9400,
        9400,
    )
    assert (kept.refund_status, kept.refunded_fen, kept.unit_price_fen, kept.quantity) == (
        LineRefundStatus.NONE,
        0,
        5550,
        2,
    )
    assert kept.sku == "SKU-2"
    assert order.buyer.province == "浙江省"


def test_claims_use_open_uid_ouid_omid_and_never_oaid() -> None:
    order = normalise_trade(trade(ouid="ou-1", omid="om-9"))
    assert [(c.kind, c.value) for c in order.claims] == [
        ("taobao.open_uid", "AAF1234"),
        ("taobao.ouid", "ou-1"),
        ("taobao.omid", "om-9"),
    ]
    assert all("1abcdef" not in c.value for c in order.claims)
    assert {k.name for k in IDENTITY_KINDS} == {"taobao.open_uid", "taobao.ouid", "taobao.omid"}
    assert all(k.strong for k in IDENTITY_KINDS)


def test_big_ids_survive_the_wire_as_numbers() -> None:
    body = json.dumps(trade(tid_str=None)).replace('"tid_str": null, ', "")
    parsed = parse_json(body)
    assert "tid_str" not in parsed
    assert normalise_trade(parsed).external_id == str(TID)
    assert normalise_trade(parsed).lines[1].external_id == str(TID + 2)


def test_an_id_that_went_through_a_float_is_quarantined() -> None:
    rounded = trade(tid=float(TID), tid_str=None)
    orders, quarantined = normalise_trades([rounded])
    assert orders == []
    assert "rounded" in quarantined[0].reason


@pytest.mark.parametrize(("platform", "status"), list(STATUS_MAP.items()))
def test_every_status_maps(platform: str, status: OrderStatus) -> None:
    assert normalise_trade(trade(status=platform)).status is status


def test_status_map_covers_the_documented_statuses() -> None:
    documented = {
        "TRADE_NO_CREATE_PAY", "WAIT_BUYER_PAY", "SELLER_CONSIGNED_PART", "WAIT_SELLER_SEND_GOODS",
        "WAIT_BUYER_CONFIRM_GOODS", "TRADE_BUYER_SIGNED", "TRADE_FINISHED", "TRADE_CLOSED", "TRADE_CLOSED_BY_TAOBAO",
        "PAY_PENDING", "WAIT_PRE_AUTH_CONFIRM", "PAID_FORBID_CONSIGN",
    }  # fmt: skip
    assert set(STATUS_MAP) == documented
    assert STATUS_MAP["TRADE_CLOSED"] is OrderStatus.REFUNDED
    assert STATUS_MAP["TRADE_CLOSED_BY_TAOBAO"] is OrderStatus.CLOSED


def test_unpaid_trades_have_paid_nothing_except_a_presale_deposit() -> None:
    unpaid = normalise_trade(trade(status="WAIT_BUYER_PAY", pay_time=None))
    assert unpaid.paid_fen == 0
    assert unpaid.paid_at is None
    assert unpaid.completed_at is None
    deposit = normalise_trade(
        trade(
            status="WAIT_BUYER_PAY",
            type="step",
            step_trade_status="FRONT_PAID_FINAL_NOPAID",
            step_paid_fee="40.80",
        )
    )
    assert deposit.paid_fen == 4080
    assert normalise_trade(trade(status="TRADE_CLOSED_BY_TAOBAO")).paid_fen == 0


@pytest.mark.parametrize(
    ("refund", "status", "fen"),
    [
        ("WAIT_SELLER_AGREE", LineRefundStatus.REQUESTED, 0),
        ("WAIT_BUYER_RETURN_GOODS", LineRefundStatus.REQUESTED, 0),
        ("WAIT_SELLER_CONFIRM_GOODS", LineRefundStatus.REQUESTED, 0),
        ("SELLER_REFUSE_BUYER", LineRefundStatus.REFUSED, 0),
        ("CLOSED", LineRefundStatus.NONE, 0),
        ("SUCCESS", LineRefundStatus.REFUNDED, 9400),
        (None, LineRefundStatus.NONE, 0),
    ],
)
def test_line_refund_statuses(refund: str | None, status: LineRefundStatus, fen: int) -> None:
    data = trade()
    data["orders"]["order"][0]["refund_status"] = refund
    line = normalise_trade(data).lines[0]
    assert (line.refund_status, line.refunded_fen) == (status, fen)


def test_line_amount_falls_back_to_payment_without_divide_order_fee() -> None:
    data = trade()
    del data["orders"]["order"][1]["divide_order_fee"]
    assert normalise_trade(data).lines[1].amount_fen == 11100


def _broken(mutate: Any) -> dict[str, Any]:
    data = trade()
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (_broken(lambda t: t.update(payment="12.345")), "malformed yuan"),
        (_broken(lambda t: t.update(status="SOMETHING_NEW")), "unknown trade status"),
        (_broken(lambda t: t.update(modified="2024/06/10")), "modified"),
        (_broken(lambda t: t.pop("buyer_open_uid")), "buyer_open_uid"),
        (_broken(lambda t: t.update(orders={"order": []})), "no order lines"),
        (_broken(lambda t: t["orders"]["order"][0].update(num=0)), "num"),
        (_broken(lambda t: t["orders"]["order"][0].update(refund_status="WEIRD")), "refund_status"),
        (_broken(lambda t: t["orders"]["order"][1].update(oid_str=None, oid=None)), "oid"),
        (_broken(lambda t: t.update(tid_str="12x")), "tid_str"),
    ],
)
def test_a_bad_trade_is_quarantined_with_its_reason_and_raw_json(case: dict[str, Any], reason: str) -> None:
    good = trade(tid=TID + 100, tid_str=str(TID + 100))
    orders, quarantined = normalise_trades([copy.deepcopy(case), good, "not a trade"])
    assert [o.external_id for o in orders] == [str(TID + 100)]
    assert len(quarantined) == 2
    assert reason in quarantined[0].reason
    assert json.loads(quarantined[0].payload)["created"] == "2024-06-01 10:00:00"
    assert quarantined[1].external_id is None
    if "tid_str" not in reason:
        assert quarantined[0].external_id == str(TID)


def test_missing_fields_drive_the_fullinfo_fallback() -> None:
    assert missing_fields(trade()) == []
    assert missing_fields(trade(orders={"order": []}, buyer_open_uid="")) == ["buyer_open_uid", "orders"]
    step = ["step_trade_status", "step_paid_fee"]
    assert missing_fields(trade(type="step", status="WAIT_BUYER_PAY")) == step
    assert missing_fields(trade(type="step", status="TRADE_CLOSED_BY_TAOBAO")) == step
    assert missing_fields(trade(type="step", status="NEW_STATUS")) == step
    # paid: what was paid is ``payment`` whatever the step fields say, so they are not worth a request
    assert missing_fields(trade(type="step")) == []
    assert missing_fields(trade(type="step", status="WAIT_SELLER_SEND_GOODS")) == []
