"""The messenger and client against the fake gateway, in process (ASGI transport)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import httpx
from tongcrm.plugin.types import Messenger, SendOutcome
from tongcrm_sms_gateway.aliyun import AliyunSmsClient
from tongcrm_sms_gateway.aliyun_signing import signed_body
from tongcrm_sms_gateway.fake_server import FakeAliyun
from tongcrm_sms_gateway.phones import provider_id

from .conftest import (
    CODE,
    KEY_ID,
    NOTICE,
    PROMO,
    SECRET,
    SIGN,
    Clock,
    MessengerFactory,
    make_fake,
    message,
    mobile,
)


async def test_single_message(fake: FakeAliyun, messenger_for: MessengerFactory) -> None:
    messenger = messenger_for(fake)
    assert isinstance(messenger, Messenger)
    [result] = await messenger.send([message(1)])
    assert result.outcome is SendOutcome.SENT
    assert result.code == "OK"
    [accepted] = fake.accepted
    assert accepted.phone == "13900000001"
    assert accepted.out_id == "msg-1"
    assert accepted.params == {"name": "王小明"}
    assert accepted.sign_name == SIGN
    assert result.provider_id == provider_id(accepted.biz_id, "13900000001")


async def test_shared_params_go_out_in_one_send_sms(
    fake: FakeAliyun, messenger_for: MessengerFactory
) -> None:
    batch = [message(i, template=PROMO) for i in range(250)]
    results = await messenger_for(fake).send(batch)
    assert [r.message_id for r in results] == [m.message_id for m in batch]
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert {a.action for a in fake.accepted} == {"SendSms"}
    assert len({a.biz_id for a in fake.accepted}) == 1  # one request
    assert {a.out_id for a in fake.accepted} == {""}  # no OutId when a request carries many messages
    assert len({r.provider_id for r in results}) == 250


async def test_personal_params_go_out_in_send_batch_sms_of_100(
    fake: FakeAliyun, messenger_for: MessengerFactory
) -> None:
    batch = [message(i, name=f"会员{i}") for i in range(150)]
    results = await messenger_for(fake).send(batch)
    assert all(r.outcome is SendOutcome.SENT for r in results)
    sizes = Counter(a.biz_id for a in fake.accepted)
    assert sorted(sizes.values()) == [50, 100]
    assert {a.action for a in fake.accepted} == {"SendBatchSms"}
    by_phone = {a.phone: a for a in fake.accepted}
    for i, result in enumerate(results):
        accepted = by_phone[mobile(i)[3:]]
        assert accepted.params == {"name": f"会员{i}"}
        assert result.provider_id == provider_id(accepted.biz_id, accepted.phone)


async def test_a_number_twice_in_a_batch_goes_in_separate_requests(
    fake: FakeAliyun, messenger_for: MessengerFactory
) -> None:
    phone = mobile(7)
    results = await messenger_for(fake).send([message(1, phone=phone), message(2, phone=phone)])
    assert [r.outcome for r in results] == [SendOutcome.SENT, SendOutcome.SENT]
    assert len({a.biz_id for a in fake.accepted}) == 2
    assert sorted(a.out_id for a in fake.accepted) == ["msg-1", "msg-2"]


async def test_non_mainland_numbers_fail_without_a_call(
    fake: FakeAliyun, messenger_for: MessengerFactory
) -> None:
    batch = [message(1, phone="+14155550100"), message(2, phone="13900000002"), message(3)]
    results = await messenger_for(fake).send(batch)
    assert [r.outcome for r in results] == [
        SendOutcome.FAILED_NUMBER,
        SendOutcome.FAILED_NUMBER,
        SendOutcome.SENT,
    ]
    assert results[0].code == "tongcrm.NOT_CN_MOBILE"
    assert len(fake.accepted) == 1


async def test_notice_flow_control_50_per_day(
    fake: FakeAliyun, messenger_for: MessengerFactory, clock: Clock
) -> None:
    messenger = messenger_for(fake)
    phone = mobile(1)
    results = await messenger.send([message(i, phone=phone) for i in range(51)])
    outcomes = Counter(r.outcome for r in results)
    assert outcomes == {SendOutcome.SENT: 50, SendOutcome.RETRY_LATER: 1}
    assert results[-1].code == "isv.BUSINESS_LIMIT_CONTROL" or any(
        r.code == "isv.BUSINESS_LIMIT_CONTROL" for r in results
    )
    # Another template to the same number has its own quota; the window is a rolling 24 h.
    [other] = await messenger.send([message(99, phone=phone, template=PROMO)])
    assert other.outcome is SendOutcome.SENT
    clock.advance(hours=23, minutes=59)
    [still] = await messenger.send([message(100, phone=phone)])
    assert still.outcome is SendOutcome.RETRY_LATER
    clock.advance(minutes=2)
    [later] = await messenger.send([message(101, phone=phone)])
    assert later.outcome is SendOutcome.SENT


async def test_verification_flow_control(
    fake: FakeAliyun, messenger_for: MessengerFactory, clock: Clock
) -> None:
    messenger = messenger_for(fake)
    phone = mobile(2)

    async def send_code() -> SendOutcome:
        [result] = await messenger.send([message(0, phone=phone, template=CODE, code="123456")])
        return result.outcome

    assert await send_code() is SendOutcome.SENT
    assert await send_code() is SendOutcome.RETRY_LATER  # 1 per minute
    sent_in_hour = 1
    for _ in range(8):
        clock.advance(minutes=1, seconds=1)
        sent_in_hour += await send_code() is SendOutcome.SENT
    assert sent_in_hour == 5  # 5 per hour
    sent = sum(1 for a in fake.accepted if a.template_code == CODE)
    for _ in range(12):
        clock.advance(hours=1, minutes=1)
        await send_code()
    assert sum(1 for a in fake.accepted if a.template_code == CODE) - sent == 5  # 10 per day in all
    assert fake.refusals.count("isv.BUSINESS_LIMIT_CONTROL") >= 4


async def test_flow_control_in_a_shared_request_fails_only_that_number(
    fake: FakeAliyun, messenger_for: MessengerFactory, clock: Clock
) -> None:
    messenger = messenger_for(fake)
    busy = mobile(3)
    await messenger.send([message(i, phone=busy, template=PROMO) for i in range(50)])
    batch = [
        message(100, template=PROMO),
        message(101, phone=busy, template=PROMO),
        message(102, template=PROMO),
    ]
    results = await messenger.send(batch)
    assert [r.outcome for r in results] == [SendOutcome.SENT, SendOutcome.RETRY_LATER, SendOutcome.SENT]
    assert results[1].code == "isv.BUSINESS_LIMIT_CONTROL"


async def test_balance_exhaustion(clock: Clock, messenger_for: MessengerFactory) -> None:
    fake = make_fake(clock, balance=3)
    messenger = messenger_for(fake)
    results = await messenger.send([message(i, template=PROMO) for i in range(5)])
    assert {r.outcome for r in results} == {SendOutcome.FAILED_ACCOUNT}
    assert {r.code for r in results} == {"isv.AMOUNT_NOT_ENOUGH"}
    assert fake.accepted == []
    results = await messenger.send([message(i, template=PROMO) for i in range(3)])
    assert {r.outcome for r in results} == {SendOutcome.SENT}
    assert fake.balance == 0
    [last] = await messenger.send([message(9)])
    assert last.outcome is SendOutcome.FAILED_ACCOUNT
    await fake.aclose()


async def test_daily_cap_is_retry_later(clock: Clock, messenger_for: MessengerFactory) -> None:
    fake = make_fake(clock, daily_cap=2)
    messenger = messenger_for(fake)
    results = await messenger.send([message(i) for i in range(3)])
    assert {r.outcome for r in results} == {SendOutcome.RETRY_LATER}
    assert {r.code for r in results} == {"isv.DAY_LIMIT_CONTROL"}
    await fake.aclose()


async def test_out_of_service(fake: FakeAliyun, messenger_for: MessengerFactory) -> None:
    fake.out_of_service = True
    [result] = await messenger_for(fake).send([message(1)])
    assert (result.outcome, result.code) == (SendOutcome.FAILED_ACCOUNT, "isv.OUT_OF_SERVICE")


async def test_bad_signature(fake: FakeAliyun, messenger_for: MessengerFactory) -> None:
    [result] = await messenger_for(fake, secret="wrong-secret").send([message(1)])
    assert (result.outcome, result.code) == (SendOutcome.FAILED_ACCOUNT, "SignatureDoesNotMatch")
    assert fake.accepted == []


async def test_unknown_access_key(fake: FakeAliyun, messenger_for: MessengerFactory) -> None:
    [result] = await messenger_for(fake, key_id="LTAI-nobody").send([message(1)])
    assert (result.outcome, result.code) == (SendOutcome.FAILED_ACCOUNT, "InvalidAccessKeyId.NotFound")


async def test_timestamp_skew(fake: FakeAliyun, messenger_for: MessengerFactory, clock: Clock) -> None:
    slow = messenger_for(fake, client_clock=lambda: clock() - timedelta(minutes=16))
    [result] = await slow.send([message(1)])
    assert (result.outcome, result.code) == (SendOutcome.FAILED_ACCOUNT, "InvalidTimeStamp.Expired")
    almost = messenger_for(fake, client_clock=lambda: clock() - timedelta(minutes=14))
    [result] = await almost.send([message(2)])
    assert result.outcome is SendOutcome.SENT


async def test_nonce_replay(fake: FakeAliyun, clock: Clock) -> None:
    params = {
        "AccessKeyId": KEY_ID,
        "Action": "SendSms",
        "Format": "JSON",
        "PhoneNumbers": "13900000001",
        "RegionId": "cn-hangzhou",
        "SignName": SIGN,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "nonce-1",
        "SignatureVersion": "1.0",
        "TemplateCode": PROMO,
        "TemplateParam": "{}",
        "Timestamp": clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Version": "2017-05-25",
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://fake") as http:
        first = await http.get("/?" + signed_body(params, SECRET, "GET"))
        again = await http.get("/?" + signed_body(params, SECRET, "GET"))
        forged = await http.get("/?" + signed_body(dict(params, SignatureNonce="nonce-2"), "nope", "GET"))
        after_forgery = await http.get(
            "/?" + signed_body(dict(params, SignatureNonce="nonce-2"), SECRET, "GET")
        )
    assert first.json()["Code"] == "OK"
    assert again.json()["Code"] == "SignatureNonceUsed"
    assert forged.json()["Code"] == "SignatureDoesNotMatch"
    assert after_forgery.json()["Code"] == "OK"  # a forged request cannot burn a nonce
    assert len(fake.accepted) == 2


async def test_client_uses_a_fresh_nonce_each_call(fake: FakeAliyun, messenger_for: MessengerFactory) -> None:
    messenger = messenger_for(fake)
    for i in range(5):
        [result] = await messenger.send([message(i)])
        assert result.outcome is SendOutcome.SENT
    assert "SignatureNonceUsed" not in fake.refusals


async def test_unapproved_template_and_signature(fake: FakeAliyun, messenger_for: MessengerFactory) -> None:
    messenger = messenger_for(fake)
    [bad_template] = await messenger.send([message(1, template="SMS_999", name="x")])
    assert (bad_template.outcome, bad_template.code) == (
        SendOutcome.FAILED_ACCOUNT,
        "isv.SMS_TEMPLATE_ILLEGAL",
    )
    fake.signatures.clear()
    [bad_sign] = await messenger.send([message(2)])
    assert (bad_sign.outcome, bad_sign.code) == (SendOutcome.FAILED_ACCOUNT, "isv.SMS_SIGNATURE_ILLEGAL")


async def test_missing_variable_fails_only_that_message(
    fake: FakeAliyun, messenger_for: MessengerFactory
) -> None:
    batch = [message(1, name="甲"), message(2, nickname="乙"), message(3, name="丙")]
    results = await messenger_for(fake).send(batch)
    assert [r.outcome for r in results] == [SendOutcome.SENT, SendOutcome.FAILED_NUMBER, SendOutcome.SENT]
    assert results[1].code == "isv.TEMPLATE_MISSING_PARAMETERS"


async def test_content_checks(fake: FakeAliyun, messenger_for: MessengerFactory) -> None:
    fake.banned_words = ("发票",)
    messenger = messenger_for(fake)
    results = await messenger.send(
        [message(1, name="x" * 21), message(2, name="https://t.cn/x"), message(3, name="代开发票")]
    )
    assert [r.code for r in results] == [
        "isv.PARAM_LENGTH_LIMIT",
        "isv.PARAM_NOT_SUPPORT_URL",
        "isv.BLACK_KEY_CONTROL_LIMIT",
    ]
    assert {r.outcome for r in results} == {SendOutcome.FAILED_NUMBER}


async def test_injected_system_error_is_retry_later(
    fake: FakeAliyun, messenger_for: MessengerFactory
) -> None:
    fake.inject_system_errors(1)
    messenger = messenger_for(fake)
    [first] = await messenger.send([message(1)])
    assert (first.outcome, first.code) == (SendOutcome.RETRY_LATER, "isp.SYSTEM_ERROR")
    [second] = await messenger.send([message(1)])
    assert second.outcome is SendOutcome.SENT


async def test_client_raw_errors(fake: FakeAliyun, clock: Clock) -> None:
    """Codes the messenger never provokes, seen through the bare client."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://fake") as http:
        client = AliyunSmsClient(
            access_key_id=KEY_ID, access_key_secret=SECRET, endpoint="http://fake/", clock=clock, http=http
        )
        bad_number = await client.send_sms(
            ["12345"], sign_name=SIGN, template_code=PROMO, template_param="{}"
        )
        bad_json = await client.send_sms(
            ["13900000001"], sign_name=SIGN, template_code=NOTICE, template_param="{name:"
        )
    assert bad_number.code == "isv.MOBILE_NUMBER_ILLEGAL"
    assert bad_json.code == "isv.INVALID_JSON_PARAM"
    assert bad_number.request_id is not None
