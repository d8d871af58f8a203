"""The JOS client against the fake gateway: envelopes, every error class, retries and what never leaks."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
import structlog
from tongcrm.plugin.errors import ChannelAuthError, ChannelRequestError, ChannelUnavailable
from tongcrm_jd.client import JosClient, RetryPolicy
from tongcrm_jd.errors import JosAuthError, JosBusinessError, JosRequestError, JosUnavailable
from tongcrm_jd.fake_server import FakeJosGateway, create_app
from tongcrm_jd.signing import sign
from tongcrm_jd.testing import ManualClock as Clock
from tongcrm_jd.testing import RecordingSleep as Sleeps
from tongcrm_jd.timeutil import format_timestamp

GATEWAY_URL = "http://jos.test/routerjson"

SEARCH = "jingdong.pop.order.search"
BUSINESS = {
    "start_date": "2024-05-30 00:00:00",
    "end_date": "2024-05-31 00:00:00",
    "order_state": "FINISHED_L,TRADE_CANCELED,WAIT_GOODS_RECEIVE_CONFIRM",
    "optional_fields": "orderId,modified,orderState",
    "page": "1",
    "page_size": "10",
}

ClientFactory = Callable[..., JosClient]


class Recorder(httpx.AsyncBaseTransport):
    """Wraps a transport and keeps every request it forwards."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


async def test_success_envelope_and_request_shape(
    make_client: ClientFactory, transport: httpx.ASGITransport, clock: Clock
) -> None:
    recorder = Recorder(transport)
    client = make_client(transport=recorder)
    payload = await client.call(SEARCH, BUSINESS)
    await client.aclose()
    result = payload["searchorderinfo_result"]
    assert result["apiResult"]["success"] is True
    assert result["orderTotal"] > 0
    assert len(result["orderInfoList"]) == min(10, result["orderTotal"])
    assert set(result["orderInfoList"][0]) == {"orderId", "modified", "orderState"}
    (request,) = recorder.requests
    assert request.method == "POST"
    assert request.content == b""
    query = dict(request.url.params)
    assert set(query) == {"method", "app_key", "access_token", "timestamp", "v", "360buy_param_json", "sign"}
    assert query["v"] == "2.0"
    assert query["timestamp"] == format_timestamp(clock())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\+0800", query["timestamp"])
    assert query["sign"] == sign(query, "fake-app-secret")


async def test_call_limit_is_retried_with_jittered_backoff(
    make_client: ClientFactory, gateway: FakeJosGateway, sleeps: Sleeps
) -> None:
    gateway.faults.call_limited = 2
    client = make_client(retry=RetryPolicy(attempts=4, base_delay=1.0, max_delay=8.0))
    payload = await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert "searchorderinfo_result" in payload
    assert [c.outcome for c in gateway.calls] == ["error_2", "error_2", "ok"]
    assert len(sleeps.delays) == 2
    assert 0.5 <= sleeps.delays[0] <= 1.0
    assert 1.0 <= sleeps.delays[1] <= 2.0


async def test_call_limit_that_persists_becomes_channel_unavailable(
    make_client: ClientFactory, gateway: FakeJosGateway, sleeps: Sleeps
) -> None:
    gateway.faults.call_limited = 10
    client = make_client(retry=RetryPolicy(attempts=3, base_delay=1.0))
    with pytest.raises(JosUnavailable) as caught:
        await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert isinstance(caught.value, ChannelUnavailable)
    assert caught.value.code == "2"
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert len(gateway.calls) == 3
    assert len(sleeps.delays) == 2


async def test_invalid_token_is_an_auth_error_without_retry(
    make_client: ClientFactory, gateway: FakeJosGateway, sleeps: Sleeps
) -> None:
    gateway.revoke("fake-access-token")
    client = make_client()
    with pytest.raises(JosAuthError) as caught:
        await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert isinstance(caught.value, ChannelAuthError)
    assert caught.value.code == "19"
    assert caught.value.en_desc == "Invalid access_token"
    assert caught.value.zh_desc == "无效access_token"
    assert len(gateway.calls) == 1
    assert sleeps.delays == []


async def test_business_failure_carries_both_messages(
    make_client: ClientFactory, gateway: FakeJosGateway, sleeps: Sleeps
) -> None:
    gateway.faults.business_failures = 1
    client = make_client()
    with pytest.raises(JosBusinessError) as caught:
        await client.call(SEARCH, BUSINESS)
    await client.aclose()
    error = caught.value
    assert isinstance(error, ChannelRequestError)
    assert error.chinese_message == "系统繁忙,请稍后重试"
    assert error.english_message == "system busy"
    assert "系统繁忙" in str(error) and "system busy" in str(error)
    assert error.code == "10100099"
    assert len(gateway.calls) == 1 and sleeps.delays == []


async def test_parameter_mistakes_are_business_failures(make_client: ClientFactory) -> None:
    client = make_client()
    with pytest.raises(JosBusinessError) as caught:
        await client.call(SEARCH, {**BUSINESS, "page_size": "101"})
    with pytest.raises(JosBusinessError):
        await client.call(SEARCH, {k: v for k, v in BUSINESS.items() if k != "optional_fields"})
    await client.aclose()
    assert caught.value.english_message == "invalid page_size"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"app_secret": "wrong-secret"}, "12"),
        ({"app_key": "other-app"}, "10"),
        ({"access_token": "stolen-token"}, "19"),
    ],
)
async def test_gateway_rejections(
    make_client: ClientFactory, gateway: FakeJosGateway, change: dict[str, str], code: str
) -> None:
    client = make_client(**change)
    expected = JosAuthError if code == "19" else JosRequestError
    with pytest.raises(expected) as caught:
        await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert caught.value.code == code
    assert len(gateway.calls) == 1


async def test_skewed_clock_is_an_invalid_timestamp(make_client: ClientFactory, clock: Clock) -> None:
    skewed = Clock(clock.now)
    skewed.advance(minutes=7)
    client = make_client(clock=skewed)
    with pytest.raises(JosRequestError) as caught:
        await client.call(SEARCH, BUSINESS)
    assert caught.value.code == "8"
    assert caught.value.en_desc == "Invalid Timestamp"
    skewed.now = clock.now
    skewed.advance(minutes=5)  # within JD's six minutes
    assert "searchorderinfo_result" in await client.call(SEARCH, BUSINESS)
    await client.aclose()


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda p: p.pop("sign"), "11"),
        (lambda p: p.pop("timestamp"), "7"),
        (lambda p: p.update(timestamp="yesterday"), "8"),
        (lambda p: p.pop("method"), "14"),
        (lambda p: p.update(method="jingdong.no.such.api"), "15"),
        (lambda p: p.pop("v"), "4"),
        (lambda p: p.update(v="3.0"), "5"),
    ],
)
async def test_hand_built_requests_get_real_error_shapes(
    make_client: ClientFactory,
    transport: httpx.ASGITransport,
    mutate: Callable[[dict[str, str]], object],
    code: str,
) -> None:
    client = make_client()
    params = client.signed_params(SEARCH, BUSINESS)
    await client.aclose()
    mutate(params)
    if "sign" in params and code not in ("4", "5", "7", "8", "14"):
        params["sign"] = sign(params, "fake-app-secret")
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.post(GATEWAY_URL, params=params)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"error_response"}
    error = body["error_response"]
    assert error["code"] == code and isinstance(error["code"], str)
    assert error["zh_desc"] and error["en_desc"]


async def test_form_body_requests_are_accepted_too(
    make_client: ClientFactory, transport: httpx.ASGITransport
) -> None:
    client = make_client()
    params = client.signed_params(SEARCH, BUSINESS)
    await client.aclose()
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.post(GATEWAY_URL, data=params)
    assert "jingdong_pop_order_search_responce" in response.json()


async def test_slow_gateway_times_out_and_is_retried(
    make_client: ClientFactory, gateway: FakeJosGateway, sleeps: Sleeps
) -> None:
    gateway.faults.slow = 1
    gateway.faults.slow_seconds = 5.0
    client = make_client(deadline=0.05)
    payload = await client.call(SEARCH, BUSINESS)
    assert "searchorderinfo_result" in payload
    assert len(sleeps.delays) == 1
    gateway.faults.slow = 10
    with pytest.raises(JosUnavailable, match="timed out"):
        await client.call(SEARCH, BUSINESS)
    await client.aclose()


class Grants:
    """A CallGate noting how each grant was released; the core's database gate is tested in the core."""

    def __init__(self) -> None:
        self.released: list[bool] = []

    async def acquire(self, key: str, *, rate: int, window: float = 1.0) -> Grants:
        return self

    async def release(self, *, in_doubt: bool = False) -> None:
        self.released.append(in_doubt)


async def test_a_timed_out_call_keeps_its_grant_in_doubt_and_a_refused_connection_does_not(
    make_client: ClientFactory, gateway: FakeJosGateway, sleeps: Sleeps, clock: Clock
) -> None:
    """A request that timed out may still reach the gateway and be counted there after the client gave up, so
    its grant must keep counting; one whose connection was refused never left."""
    grants = Grants()
    gateway.faults.slow, gateway.faults.slow_seconds = 1, 5.0
    client = make_client(deadline=0.05, call_gate=grants, calls_per_second=5)
    assert "searchorderinfo_result" in await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert grants.released == [True, False]  # the timed-out attempt, then the answered retry

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    refused = Grants()
    client = make_client(
        call_gate=refused,
        calls_per_second=5,
        transport=httpx.MockTransport(refuse),
        retry=RetryPolicy(attempts=2),
    )
    with pytest.raises(JosUnavailable):
        await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert refused.released == [False, False]


async def test_5xx_html_is_retried(
    make_client: ClientFactory, gateway: FakeJosGateway, sleeps: Sleeps
) -> None:
    gateway.faults.server_errors = 2
    client = make_client()
    assert "searchorderinfo_result" in await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert [c.outcome for c in gateway.calls] == ["http_502", "http_502", "ok"]
    assert len(sleeps.delays) == 2


async def test_connection_errors_are_retried_then_unavailable_without_leaking(
    sleeps: Sleeps, clock: Clock
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"connection refused to {request.url}", request=request)

    client = JosClient(
        app_key="k",
        app_secret="top-secret-value",
        access_token="token-value-123",
        gateway_url=GATEWAY_URL,
        clock=clock,
        sleep=sleeps,
        retry=RetryPolicy(attempts=3),
        transport=httpx.MockTransport(refuse),
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(JosUnavailable) as caught:
        await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert len(sleeps.delays) == 2
    text = repr(caught.value) + str(caught.value) + repr(logs) + repr(client)
    assert "ConnectError" in text
    assert "token-value-123" not in text and "top-secret-value" not in text
    assert len(logs) == 3 and all(entry["log_level"] == "warning" for entry in logs)


async def test_big_ids_and_decimals_are_exact(clock: Clock, sleeps: Sleeps) -> None:
    body = b'{"jingdong_x_get_responce":{"code":"0","id":123456789012345678901,"price":12.30,"small":0.1}}'
    client = JosClient(
        app_key="k",
        app_secret="s",
        access_token="t",
        gateway_url=GATEWAY_URL,
        clock=clock,
        sleep=sleeps,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body)),
    )
    payload = await client.call("jingdong.x.get", {})
    await client.aclose()
    assert payload["id"] == 123456789012345678901
    assert payload["price"] == Decimal("12.30") and payload["small"] == Decimal("0.1")


async def test_unknown_error_codes_and_wrapper_codes_are_request_errors(clock: Clock, sleeps: Sleeps) -> None:
    bodies = iter(
        [
            b'{"error_response":{"code":"66","zh_desc":"\xe6\x9c\x8d\xe5\x8a\xa1\xe5\xbc\x82\xe5\xb8\xb8","en_desc":""}}',
            b'{"jingdong_x_get_responce":{"code":"19","en_desc":"Token expired"}}',
            b"[1, 2]",
            b'{"jingdong_x_get_responce":{"code":"0"}}',
        ]
    )
    client = JosClient(
        app_key="k",
        app_secret="s",
        access_token="t",
        gateway_url=GATEWAY_URL,
        clock=clock,
        sleep=sleeps,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=next(bodies))),
    )
    with pytest.raises(JosRequestError) as caught:
        await client.call("jingdong.x.get", {})
    assert caught.value.code == "66" and caught.value.zh_desc == "服务异常"
    with pytest.raises(ChannelAuthError):
        await client.call("jingdong.x.get", {})
    assert await client.call("jingdong.x.get", {}) == {"code": "0"}  # the JSON array was retried
    await client.aclose()


async def test_real_socket_round_trip(gateway: FakeJosGateway, clock: Clock, sleeps: Sleeps) -> None:
    """One trip over a real loopback socket (uvicorn), to prove the fake is a real HTTP server too."""
    import asyncio
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)
        client = JosClient(
            app_key=gateway.app_key,
            app_secret=gateway.app_secret,
            access_token="fake-access-token",
            gateway_url=f"http://127.0.0.1:{port}/routerjson",
            clock=clock,
            sleep=sleeps,
        )
        payload = await client.call(SEARCH, BUSINESS)
        await client.aclose()
        assert payload["searchorderinfo_result"]["orderTotal"] > 0
    finally:
        server.should_exit = True
        await task


async def test_no_log_record_carries_the_token(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs request URLs at INFO and JOS puts the token in the URL; the client must bypass that."""
    import logging

    caplog.set_level(logging.DEBUG)
    client = make_client()
    with structlog.testing.capture_logs() as logs:
        await client.call(SEARCH, BUSINESS)
    await client.aclose()
    assert "fake-access-token" not in caplog.text and "fake-access-token" not in repr(logs)
