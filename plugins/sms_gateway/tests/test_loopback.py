"""Tests over real sockets on 127.0.0.1: callback pushes with retry, timeouts, transport failures, send rate."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from litestar import Litestar, Request, Response, post
from tongcrm.plugin.types import SendOutcome
from tongcrm_sms_gateway.aliyun import AliyunSmsClient
from tongcrm_sms_gateway.messenger import AliyunSmsMessenger
from tongcrm_sms_gateway.receipts import OptOutMatcher, ack_bytes, parse_sms_reports, parse_sms_up

from .conftest import (
    KEY_ID,
    PROMO,
    SECRET,
    SIGN,
    Clock,
    MessengerFactory,
    free_socket,
    make_fake,
    message,
    serve,
)


class Callback:
    """A stand-in for tongcrm's future receipt routes: parse, store by dedupe key, then ack.

    ``failures`` makes the first N calls answer badly (alternating a 500 and a 200 with the wrong body) so
    the fake's retries are exercised.
    """

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, bytes]] = []
        self.receipts: dict[str, Any] = {}
        self.replies: dict[str, Any] = {}
        self.errors: list[Any] = []

        @post(["/sms/report", "/sms/up"], status_code=200)
        async def receive(request: Request[Any, Any, Any]) -> Response[bytes]:
            kind = request.url.path.rsplit("/", 1)[-1]
            body = await request.body()
            self.calls.append((kind, body))
            if self.failures > 0:
                self.failures -= 1
                if self.failures % 2:
                    return Response(b"busy", status_code=500)
                return Response(b'{"code":1,"msg":"later"}', media_type="application/json")
            if kind == "report":
                reports = parse_sms_reports(body)
                self.receipts.update({r.dedupe_key: r.receipt for r in reports.records})
                self.errors.extend(reports.errors)
            else:
                replies = parse_sms_up(body)
                self.replies.update({r.dedupe_key: r for r in replies.records})
                self.errors.extend(replies.errors)
            return Response(ack_bytes(), media_type="application/json")

        self.app = Litestar([receive], logging_config=None)


async def test_reports_are_pushed_and_retried_until_acked(
    clock: Clock, messenger_for: MessengerFactory
) -> None:
    callback = Callback(failures=3)
    async with serve(callback.app) as base:
        fake = make_fake(clock, report_url=f"{base}/sms/report", retry_delays=(0.01, 0.02, 0.03, 0.04))
        results = await messenger_for(fake).send(
            [message(1), message(2, template=PROMO), message(3, template=PROMO)]
        )
        await fake.drain()
        await fake.aclose()
    assert {r.outcome for r in results} == {SendOutcome.SENT}
    assert [(p.kind, p.acked) for p in fake.pushes] == [("report", True), ("report", True)]
    assert sum(p.attempts for p in fake.pushes) == 5  # three refusals, two acks
    assert len(callback.calls) == 5
    # Retried bodies are identical, so storage by dedupe key holds one receipt per recipient.
    assert len(callback.receipts) == 3
    assert callback.errors == []
    by_provider = {r.provider_id: r for r in callback.receipts.values()}
    for result in results:
        receipt = by_provider[result.provider_id]
        assert receipt.delivered
        # OutId carried the message id only where the request carried one message.
        assert receipt.message_id == (result.message_id if result.message_id == "msg-1" else None)


async def test_push_gives_up_after_the_schedule(clock: Clock) -> None:
    callback = Callback(failures=100)
    async with serve(callback.app) as base:
        fake = make_fake(clock, up_url=f"{base}/sms/up", retry_delays=(0.01, 0.01))
        fake.simulate_reply("+8613900000001", "TD", SIGN)
        await fake.drain()
        await fake.aclose()
    [push] = fake.pushes
    assert (push.attempts, push.acked, push.gave_up) == (3, False, True)


async def test_push_to_a_dead_callback_is_retried(clock: Clock) -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/sms/up"
    fake = make_fake(clock, up_url=url, retry_delays=(0.01,))
    fake.simulate_reply("13900000001", "T", SIGN)
    await fake.drain()
    await fake.aclose()
    sock.close()
    assert (fake.pushes[0].attempts, fake.pushes[0].gave_up) == (2, True)


async def test_member_replies_td_and_is_opted_out(clock: Clock) -> None:
    callback = Callback()
    async with serve(callback.app) as base:
        fake = make_fake(clock, up_url=f"{base}/sms/up", retry_delays=(0.01,))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fake.app), base_url="http://fake"
        ) as http:
            answer = await http.post(
                "/__fake__/reply", json={"phone_number": "13900000001", "content": "ＴＤ", "sign_name": SIGN}
            )
        assert answer.status_code == 200
        fake.simulate_reply("13900000002", "谢谢", SIGN)
        await fake.drain()
        await fake.aclose()
    assert len(callback.replies) == 2
    opt_outs = [o for r in callback.replies.values() if (o := OptOutMatcher().match(r)) is not None]
    assert [(o.mobile_e164, o.signature) for o in opt_outs] == [("+8613900000001", SIGN)]


class _Grants:
    """A shared send-rate gate that records how each grant was released."""

    def __init__(self) -> None:
        self.released: list[bool] = []

    async def acquire(self, permits: int, *, rate: int, window: float) -> _Grants:
        return self

    async def release(self, *, in_doubt: bool = False) -> None:
        self.released.append(in_doubt)


async def test_slow_gateway_times_out_in_doubt_and_is_not_sent_again(clock: Clock) -> None:
    fake = make_fake(clock)
    fake.inject_delay(0.6)
    grants = _Grants()
    async with serve(fake.app) as base:
        client = AliyunSmsClient(
            access_key_id=KEY_ID, access_key_secret=SECRET, endpoint=f"{base}/", clock=clock, timeout=0.2
        )
        messenger = AliyunSmsMessenger(client, max_rate=10, rate_gate=grants)
        [result] = await messenger.send([message(1)])
        assert (result.outcome, result.code) == (SendOutcome.IN_DOUBT, "tongcrm.TIMEOUT")
        await asyncio.sleep(0.6)  # the slow request lands after the client gave up
        [other] = await messenger.send([message(2)])
        await messenger.aclose()
    # The slow request was still accepted: a retry would have sent it twice, hence in doubt, not retry.
    assert other.outcome is SendOutcome.SENT
    assert len(fake.accepted) == 2
    # the timed-out request's grant keeps counting as in flight; the answered one is finished
    assert grants.released == [True, False]


async def test_nothing_listening_is_a_transport_error(clock: Clock) -> None:
    sock = free_socket()
    client = AliyunSmsClient(
        access_key_id=KEY_ID,
        access_key_secret=SECRET,
        endpoint=f"http://127.0.0.1:{sock.getsockname()[1]}/",
        clock=clock,
        timeout=1.0,
    )
    [result] = await AliyunSmsMessenger(client).send([message(1)])
    await client.aclose()
    sock.close()
    assert (result.outcome, result.code) == (SendOutcome.RETRY_LATER, "tongcrm.TRANSPORT_ERROR")


async def test_answers_without_a_dysmsapi_body(clock: Clock) -> None:
    def gateway(status: int, body: bytes) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(status, content=body))

    expectations = [
        (502, b"<html>bad gateway</html>", SendOutcome.RETRY_LATER, "tongcrm.HTTP_ERROR"),
        (429, b"slow down", SendOutcome.RETRY_LATER, "tongcrm.HTTP_ERROR"),
        (404, b"<html>not found</html>", SendOutcome.FAILED_ACCOUNT, "tongcrm.BAD_RESPONSE"),
        (
            200,
            json.dumps({"Code": "isp.RAM_PERMISSION_DENY"}).encode(),
            SendOutcome.RETRY_LATER,
            "isp.RAM_PERMISSION_DENY",
        ),
        (
            400,
            json.dumps({"Code": "isv.NEW_THING", "Message": "m"}).encode(),
            SendOutcome.FAILED_NUMBER,
            "isv.NEW_THING",
        ),
    ]
    for status, body, outcome, code in expectations:
        async with httpx.AsyncClient(transport=gateway(status, body)) as http:
            client = AliyunSmsClient(
                access_key_id=KEY_ID, access_key_secret=SECRET, endpoint="http://gw/", clock=clock, http=http
            )
            [result] = await AliyunSmsMessenger(client).send([message(1)])
        assert (result.outcome, result.code) == (outcome, code), status


async def test_configured_send_rate_is_never_exceeded(clock: Clock, messenger_for: MessengerFactory) -> None:
    fake = make_fake(clock)
    async with serve(fake.app) as base:
        client = AliyunSmsClient(
            access_key_id=KEY_ID, access_key_secret=SECRET, endpoint=f"{base}/", clock=clock
        )
        messenger = AliyunSmsMessenger(client, max_rate=40, concurrency=8)
        batch = [message(i, name=f"n{i}") for i in range(60)] + [
            message(100 + i, template=PROMO) for i in range(60)
        ]
        results = await messenger.send(batch)
        await messenger.aclose()
        async with httpx.AsyncClient(base_url=base) as http:
            stats = (await http.get("/__fake__/stats")).json()
    assert {r.outcome for r in results} == {SendOutcome.SENT}
    assert fake.meter.total == 120
    assert fake.meter.max_in_window(1.0) <= 40
    assert stats["max_per_second"] <= 40
    assert stats["accepted"] == 120
