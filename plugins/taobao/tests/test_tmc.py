from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from tongcrm_taobao.tmc import MessageError, TmcClient, parse_message, plan_refetch

from .conftest import Rig

TID = 1_900_000_000_000_555_001


def envelope(message_id: int, topic: str, content: object) -> dict[str, object]:
    return {
        "id": message_id,
        "topic": topic,
        "content": content if isinstance(content, str) else json.dumps(content),
        "pub_time": "2024-06-18 20:00:00",
        "pub_app_key": "12345678",
        "user_id": 2200000001,
        "user_nick": "店",
    }


def test_parse_message_keeps_big_ids_exact() -> None:
    message = parse_message(
        envelope(7_100_000_000_000_000_001, "taobao_trade_TradeBuyerPay", {"tid": TID, "status": "x"})
    )
    assert message.id == "7100000000000000001"
    assert message.tid == str(TID)
    assert message.pub_time == datetime(2024, 6, 18, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "bad",
    [
        {**envelope(1, "t", {}), "content": "{not json"},
        {**envelope(1, "t", {}), "content": None},
        {**envelope(1, "t", {}), "id": 1.5},
        {**envelope(1, "", {})},
        {**envelope(1, "t", "[1,2]")},
    ],
)
def test_unreadable_envelopes_raise(bad: dict[str, object]) -> None:
    with pytest.raises(MessageError):
        parse_message(bad)


def test_plan_refetch_dedupes_by_message_id_and_tid() -> None:
    messages = [
        parse_message(envelope(1, "taobao_trade_TradeBuyerPay", {"tid": TID})),
        parse_message(envelope(2, "taobao_refund_RefundSuccess", {"tid": TID, "refund_id": "9"})),
        parse_message(envelope(3, "taobao_trade_TradeSellerShip", {"tid": str(TID + 1)})),
        parse_message(envelope(4, "tmall_mei_PointChange", {"tid": TID + 2})),
        parse_message(envelope(5, "taobao_trade_TradeChanged", {"oid": 1})),
        parse_message(
            envelope(1, "taobao_trade_TradeBuyerPay", {"tid": TID})
        ),  # redelivered in the same batch
    ]
    seen: set[str] = set()
    plan = plan_refetch(messages, seen)
    assert plan.tids == (str(TID), str(TID + 1))
    assert plan.confirm == ("1", "2", "3", "4", "5")
    assert plan.ignored == ("4", "5")
    again = plan_refetch(
        [parse_message(envelope(3, "taobao_trade_TradeSellerShip", {"tid": str(TID + 1)}))], seen
    )
    assert again.tids == ()
    assert again.confirm == ("3",)


async def test_consume_confirm_and_redelivery_against_the_fake(rig: Rig) -> None:
    tmc = TmcClient(rig.client(session=None))
    unpaid = [t for t in rig.shop.tids() if rig.shop.trade(t)["status"] == "WAIT_BUYER_PAY"][:2]
    rig.shop.pay(unpaid[0])
    rig.shop.pay(unpaid[1])
    rig.shop.ship(unpaid[0])

    first = await tmc.consume(10)
    assert [m.topic for m in first.messages] == [
        "taobao_trade_TradeBuyerPay", "taobao_trade_TradeBuyerPay", "taobao_trade_TradeSellerShip",
    ]  # fmt: skip
    seen: set[str] = set()
    plan = plan_refetch(first.messages, seen)
    assert plan.tids == (str(unpaid[0]), str(unpaid[1]))

    assert (await tmc.consume(10)).messages == ()  # invisible while being worked on
    rig.business.advance(301)
    redelivered = await tmc.consume(10)
    assert [m.id for m in redelivered.messages] == [m.id for m in first.messages]  # at least once
    assert plan_refetch(redelivered.messages, seen).tids == ()

    await tmc.confirm(plan.confirm)
    rig.business.advance(301)
    assert (await tmc.consume(10)).messages == ()
    assert rig.shop.tmc.pending() == 0


async def test_refund_messages_carry_the_refund(rig: Rig) -> None:
    finished = next(
        t for t in rig.shop.tids()
        if rig.shop.trade(t)["status"] == "TRADE_FINISHED" and len(rig.shop.trade(t)["orders"]["order"]) > 1
        and all(o["refund_status"] == "NO_REFUND" for o in rig.shop.trade(t)["orders"]["order"])
    )  # fmt: skip
    rig.shop.refund_line(finished)
    result = await TmcClient(rig.client()).consume(10)
    refund, partly = result.messages
    assert refund.topic == "taobao_refund_RefundSuccess"
    assert refund.content["refund_phase"] == "aftersale"
    assert partly.topic == "taobao_trade_TradePartlyRefund"
    assert rig.shop.trade(finished)["status"] == "TRADE_FINISHED"
