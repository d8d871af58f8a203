from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from tongcrm.plugin.types import InboundReply
from tongcrm_sms_gateway.phones import provider_id
from tongcrm_sms_gateway.receipts import (
    ACK_BODY,
    OptOutMatcher,
    ack_bytes,
    parse_platform_time,
    parse_sms_reports,
    parse_sms_up,
)

REPORT = {
    "phone_number": "13900000001",
    "send_time": "2024-05-01 10:00:00",
    "report_time": "2024-05-01 10:00:05",
    "success": True,
    "err_code": "DELIVERED",
    "err_msg": "用户接收成功",
    "sms_size": "1",
    "biz_id": "100000000000001^0",
    "out_id": "msg-1",
}
UP = {
    "phone_number": "13900000001",
    "send_time": "2024-05-01 12:30:00",
    "content": "TD",
    "sign_name": "通通会员",
    "dest_code": "",
    "sequence_id": 1234567,
}


def test_ack_body() -> None:
    assert json.loads(ack_bytes()) == {"code": 0, "msg": "接收成功"}
    assert ACK_BODY["code"] == 0


def test_platform_time_is_beijing() -> None:
    assert parse_platform_time("2024-05-01 10:00:05") == datetime(2024, 5, 1, 2, 0, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="time"):
        parse_platform_time(12345)
    with pytest.raises(ValueError, match="does not match"):
        parse_platform_time("2024-05-01T10:00:05Z")


def test_report_parsing() -> None:
    failed = dict(REPORT, phone_number="13900000002", success=False, err_code="MK:0001", out_id="")
    outcome = parse_sms_reports(json.dumps([REPORT, failed]).encode())
    assert outcome.errors == ()
    ok, bad = outcome.records
    assert ok.receipt.message_id == "msg-1"
    assert ok.receipt.provider_id == provider_id("100000000000001^0", "13900000001")
    assert ok.receipt.delivered is True
    assert ok.receipt.code == "DELIVERED"
    assert ok.receipt.at == datetime(2024, 5, 1, 2, 0, 5, tzinfo=UTC)
    assert (bad.receipt.delivered, bad.receipt.code, bad.receipt.message_id) == (False, "MK:0001", None)
    assert ok.dedupe_key != bad.dedupe_key
    assert "13900000001" not in ok.dedupe_key  # keys are stored and logged; numbers are not


def test_retried_push_gives_the_same_keys() -> None:
    body = json.dumps([REPORT]).encode()
    first, second = parse_sms_reports(body), parse_sms_reports(body.decode())
    assert [r.dedupe_key for r in first.records] == [r.dedupe_key for r in second.records]
    later = parse_sms_reports([dict(REPORT, report_time="2024-05-01 10:00:09")])
    assert later.records[0].dedupe_key != first.records[0].dedupe_key


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({k: v for k, v in REPORT.items() if k != "biz_id"}, "missing biz_id"),
        (dict(REPORT, report_time="yesterday"), "does not match"),
        (dict(REPORT, success="maybe"), "success is not a boolean"),
        (dict(REPORT, phone_number="+14155550100"), "not a mainland"),
        (dict(REPORT, biz_id={"x": 1}), "biz_id is not text"),
        ("not an object", "not a JSON object"),
    ],
)
def test_malformed_reports_are_reported(entry: object, reason: str) -> None:
    outcome = parse_sms_reports([REPORT, entry, dict(REPORT, phone_number="13900000003")])
    assert len(outcome.records) == 2  # the good entries still come through
    [error] = outcome.errors
    assert error.index == 1
    assert reason in error.reason
    assert json.loads(error.payload) == entry


def test_success_as_text_is_tolerated() -> None:
    [parsed] = parse_sms_reports([dict(REPORT, success="false", err_code="")]).records
    assert parsed.receipt.delivered is False


@pytest.mark.parametrize(("body", "reason"), [(b"{not json", "not JSON"), (b'{"a": 1}', "not a JSON array")])
def test_bodies_that_are_not_arrays(body: bytes, reason: str) -> None:
    for parse in (parse_sms_reports, parse_sms_up):
        outcome = parse(body)
        assert outcome.records == ()
        [error] = outcome.errors
        assert error.index is None
        assert reason in error.reason
        assert error.payload == body.decode()


def test_reply_parsing_and_dedupe() -> None:
    outcome = parse_sms_up(
        json.dumps([UP, dict(UP, sequence_id=1234568, content="好的")], ensure_ascii=False)
    )
    assert outcome.errors == ()
    first, second = outcome.records
    assert first == InboundReply(
        mobile_e164="+8613900000001",
        signature="通通会员",
        content="TD",
        at=datetime(2024, 5, 1, 4, 30, tzinfo=UTC),
        dedupe_key="aliyun.up:1234567",
    )
    assert second.dedupe_key == "aliyun.up:1234568"
    # No sequence id: the key falls back to the entry's content, still stable across retries.
    bare = {k: v for k, v in UP.items() if k != "sequence_id"}
    once, twice = parse_sms_up([bare]).records[0], parse_sms_up([bare]).records[0]
    assert once.dedupe_key == twice.dedupe_key
    assert once.dedupe_key.startswith("aliyun.up:")


def test_malformed_replies_are_reported() -> None:
    outcome = parse_sms_up(
        [
            UP,
            {k: v for k, v in UP.items() if k != "sign_name"},
            dict(UP, phone_number="12"),
            dict(UP, send_time=None),
        ]
    )
    assert len(outcome.records) == 1
    assert [e.index for e in outcome.errors] == [1, 2, 3]


@pytest.mark.parametrize(
    "content",
    [
        "T",
        "t",
        " td ",
        "TD",
        "ＴＤ",
        "T D",
        "Ｒ",
        "r!",
        "退订",
        "退订。",
        "  退订  ",
        "请帮我退订",
        "【退订】",
        "TD\n",
    ],
)
def test_default_opt_out_keywords(content: str) -> None:
    assert OptOutMatcher().is_opt_out(content)


@pytest.mark.parametrize("content", ["Thanks", "TDD", "好的", "收到", "", "RT", "不要T恤"])
def test_ordinary_replies(content: str) -> None:
    assert not OptOutMatcher().is_opt_out(content)


def test_configured_keywords() -> None:
    matcher = OptOutMatcher(keywords=["STOP", "N"], phrases=["拒收"])
    assert matcher.is_opt_out(" stop ")
    assert matcher.is_opt_out("我拒收")
    assert not matcher.is_opt_out("T")
    assert not matcher.is_opt_out("退订")


def test_match_names_number_and_signature() -> None:
    [reply] = parse_sms_up([dict(UP, content="ｔｄ")]).records
    opt_out = OptOutMatcher().match(reply)
    assert opt_out is not None
    assert (opt_out.mobile_e164, opt_out.signature, opt_out.keyword) == ("+8613900000001", "通通会员", "TD")
    assert opt_out.dedupe_key == reply.dedupe_key
    [chat] = parse_sms_up([dict(UP, content="谢谢")]).records
    assert OptOutMatcher().match(chat) is None


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("sign_name", "通通\x00", "sign_name contains a NUL character"),
        ("sign_name", "\ud800", "sign_name is not valid Unicode text (a lone surrogate)"),
    ],
)
def test_text_no_database_can_keep_makes_its_entry_an_error_and_the_rest_parses(
    field: str, value: str, reason: str
) -> None:
    """Issue #18: one such entry made a whole push fail on PostgreSQL and lost the opt-out beside it."""
    good = {**UP, "sequence_id": 2, "content": "TD"}
    outcome = parse_sms_up(json.dumps([{**UP, field: value}, good]))
    assert [r.content for r in outcome.records] == ["TD"]
    assert [(e.index, e.reason) for e in outcome.errors] == [(0, reason)]


def test_a_reply_with_a_lone_surrogate_is_kept_readable() -> None:
    outcome = parse_sms_up(json.dumps([{**UP, "content": "T\ud800D", "sequence_id": None}]))
    assert not outcome.errors and outcome.records[0].content == "T?D"
