"""The client against the fake gateway: signing accepted, every error class mapped, retries bounded."""

from __future__ import annotations

from collections import deque
from datetime import timedelta

import httpx
import pytest
import structlog
from tongcrm.plugin.errors import ChannelAuthError, ChannelRequestError, ChannelUnavailable
from tongcrm_taobao.client import RetryPolicy, parse_json
from tongcrm_taobao.errors import ErrorClass, TopErrorInfo, ban_seconds, classify
from tongcrm_taobao.fake_server import FaultPlan

from .conftest import SECRET, SESSION, Rig, RigFactory

WINDOW = {
    "fields": "tid,tid_str,status,modified,orders",
    "start_modified": "2024-06-17 00:00:00",
    "end_modified": "2024-06-17 23:00:00",
    "type": "fixed,step,guarantee_trade,tmall_i18n",
    "use_has_next": True,
    "page_size": 5,
}
INCREMENT = "taobao.trades.sold.increment.get"


@pytest.mark.parametrize("method", ["md5", "hmac", "hmac-sha256"])
async def test_every_sign_method_is_accepted(rig: Rig, method: str) -> None:
    body = await rig.client(sign_method=method).call(INCREMENT, WINDOW)
    trades = body["trades"]["trade"]
    assert len(trades) == 5
    assert body["has_next"] is True
    assert all(
        isinstance(t["tid"], int) and t["tid"] > 2**53 and str(t["tid"]) == t["tid_str"] for t in trades
    )


async def test_wrong_secret_is_an_invalid_signature_request_error(rig: Rig) -> None:
    with pytest.raises(ChannelRequestError) as caught:
        await rig.client(app_secret="not-the-secret").call(INCREMENT, WINDOW)
    assert caught.value.code == "25"
    assert rig.gateway.calls[INCREMENT] == 1  # not retried


async def test_clock_skew_is_an_invalid_timestamp(rig: Rig) -> None:
    skewed = rig.wall.now - timedelta(minutes=11)
    client = rig.client(wall_clock=lambda: skewed)
    with pytest.raises(ChannelRequestError) as caught:
        await client.call(INCREMENT, WINDOW)
    assert caught.value.code == "31"
    # nine minutes off is still inside the ten the platform allows
    near = rig.wall.now + timedelta(minutes=9)
    assert "trades" in await rig.client(wall_clock=lambda: near).call(INCREMENT, WINDOW)


async def test_missing_and_invalid_arguments(rig: Rig) -> None:
    client = rig.client()
    with pytest.raises(ChannelRequestError) as missing:
        await client.call(INCREMENT, {k: v for k, v in WINDOW.items() if k != "fields"})
    assert missing.value.code == "40"
    assert "fields" in missing.value.message
    with pytest.raises(ChannelRequestError) as invalid:
        await client.call(INCREMENT, {**WINDOW, "page_size": 101})
    assert invalid.value.code == "41"


async def test_invalid_session_raises_auth_error_without_retry(rig: Rig) -> None:
    with pytest.raises(ChannelAuthError) as caught:
        await rig.client(session="stolen").call(INCREMENT, WINDOW)
    assert caught.value.code == "27"
    assert caught.value.info.sub_code == "invalid-sessionkey"
    assert rig.gateway.calls[INCREMENT] == 1


async def test_expired_session_raises_auth_error(rig_factory: RigFactory) -> None:
    rig = rig_factory(faults=FaultPlan(schedule=deque(["invalid_session"])))
    with pytest.raises(ChannelAuthError) as caught:
        await rig.client().call(INCREMENT, WINDOW)
    assert caught.value.info.sub_code == "session-expired"
    assert rig.slept == []


async def test_call_limit_sleeps_the_ban_plus_one_then_succeeds(rig_factory: RigFactory) -> None:
    rig = rig_factory(faults=FaultPlan(ban_seconds=17, schedule=deque(["call_limit"])))
    body = await rig.client().call(INCREMENT, WINDOW)
    assert "trades" in body
    assert rig.slept == [18.0]  # "This ban will last for 17 more seconds" -> sleep 17 + 1
    assert rig.gateway.errors[7] == 1


async def test_a_ban_longer_than_the_policy_allows_is_handed_to_the_core(rig_factory: RigFactory) -> None:
    rig = rig_factory(faults=FaultPlan(ban_seconds=600, schedule=deque(["call_limit"])))
    with pytest.raises(ChannelUnavailable) as caught:
        await rig.client().call(INCREMENT, WINDOW)
    assert caught.value.retry_after == 601
    assert caught.value.code == "7"
    assert rig.slept == []


async def test_isp_errors_are_retried_with_growing_jittered_backoff(rig_factory: RigFactory) -> None:
    rig = rig_factory(faults=FaultPlan(schedule=deque(["isp", "isp", "isp"])))
    assert "trades" in await rig.client().call(INCREMENT, WINDOW)
    assert len(rig.slept) == 3
    for attempt, delay in enumerate(rig.slept, start=1):
        ceiling = min(8, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling


async def test_isp_errors_beyond_the_attempts_become_channel_unavailable(rig_factory: RigFactory) -> None:
    rig = rig_factory(faults=FaultPlan(isp=1.0))
    with pytest.raises(ChannelUnavailable) as caught:
        await rig.client(retry=RetryPolicy(max_attempts=3)).call(INCREMENT, WINDOW)
    assert caught.value.info is not None
    assert caught.value.info.sub_code.startswith("isp.")
    assert rig.gateway.calls[INCREMENT] == 3
    assert len(rig.slept) == 2


async def test_slow_answers_time_out_and_are_retried(rig_factory: RigFactory) -> None:
    rig = rig_factory(faults=FaultPlan(slow_seconds=0.3, schedule=deque(["slow"])))
    assert "trades" in await rig.client(timeout=0.05).call(INCREMENT, WINDOW)
    assert len(rig.slept) == 1
    assert rig.gateway.faults_fired["slow"] == 1


async def test_connection_errors_are_retried_then_channel_unavailable(rig: Rig) -> None:
    attempts = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("connection refused", request=request)

    client = rig.client(transport=httpx.MockTransport(refuse), retry=RetryPolicy(max_attempts=4))
    with pytest.raises(ChannelUnavailable, match="transport error"):
        await client.call(INCREMENT, WINDOW)
    assert attempts == 4


async def test_server_errors_and_garbage_bodies_are_transient(rig: Rig) -> None:
    answers = deque(
        [httpx.Response(502, text="<html>bad gateway</html>"), httpx.Response(200, text="{trunc")]
    )

    def flaky(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.popleft()
        return httpx.Response(200, json={"trades_sold_increment_get_response": {"has_next": False}})

    body = await rig.client(transport=httpx.MockTransport(flaky)).call(INCREMENT, WINDOW)
    assert body == {"has_next": False}
    assert len(rig.slept) == 2


async def test_requests_are_signed_form_posts_with_system_parameters(rig: Rig) -> None:
    seen: list[httpx.Request] = []

    def capture(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"trade_fullinfo_get_response": {"trade": {}}})

    await rig.client(transport=httpx.MockTransport(capture), sign_method="hmac").call(
        "taobao.trade.fullinfo.get", {"fields": "tid", "tid": 2**60, "flag": False, "skip": None}
    )
    request = seen[0]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded;charset=utf-8"
    assert SESSION not in str(request.url)
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form["format"] == "json"
    assert form["v"] == "2.0"
    assert form["sign_method"] == "hmac"
    assert form["tid"] == str(2**60)
    assert form["flag"] == "false"
    assert "skip" not in form
    assert form["timestamp"] == (rig.wall.now + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")


def test_big_ids_never_become_floats() -> None:
    body = parse_json(b'{"tid": 1900000000000123457, "price": 99.10, "tid_str": "1900000000000123457"}')
    assert body["tid"] == 1900000000000123457
    assert type(body["tid"]) is int
    assert str(body["price"]) == "99.10"


def test_classification_rules() -> None:
    assert classify(TopErrorInfo(7, "App Call Limited")) is ErrorClass.CALL_LIMITED
    assert classify(TopErrorInfo(27, "Invalid session", "session-expired")) is ErrorClass.AUTH
    assert (
        classify(TopErrorInfo(15, "Remote service error", "isp.remote-service-error")) is ErrorClass.TRANSIENT
    )
    assert classify(TopErrorInfo(15, "Remote service error", "isv.invalid-parameter")) is ErrorClass.REQUEST
    assert classify(TopErrorInfo(11, "Insufficient ISV permissions")) is ErrorClass.REQUEST
    info = TopErrorInfo(
        7,
        "App Call Limited",
        "accesscontrol.limited-by-api-access-count",
        "This ban will last for 42 more seconds",
    )
    assert ban_seconds(info) == 42
    assert ban_seconds(TopErrorInfo(7, "App Call Limited")) is None


async def test_secrets_are_never_logged(rig_factory: RigFactory) -> None:
    rig = rig_factory(faults=FaultPlan(schedule=deque(["isp", "call_limit"]), ban_seconds=1))
    client = rig.client()
    with structlog.testing.capture_logs() as logs:
        await client.call(INCREMENT, WINDOW)
        with pytest.raises(ChannelAuthError):
            await rig.client(session="other-session-value").call(INCREMENT, WINDOW)
    assert logs, "retries and the auth error should have been logged"
    text = repr(logs) + repr(client)
    for secret in (SECRET, SESSION, "other-session-value"):
        assert secret not in text


class RecordingGate:
    """A CallGate that records what the client asks of it; the core's database gate is tested in the core."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def acquire(self, key: str, *, rate: int, window: float = 1.0) -> RecordingGate.Grant:
        self.log.append(f"acquire {key} {rate}/{window:.2f}s")
        return RecordingGate.Grant(self)

    class Grant:
        def __init__(self, gate: RecordingGate) -> None:
            self.gate = gate

        async def release(self, *, in_doubt: bool = False) -> None:
            self.gate.log.append("release in doubt" if in_doubt else "release")


async def test_each_attempt_takes_a_grant_of_the_app_keys_shared_window(rig: Rig) -> None:
    gate = RecordingGate()
    rig.gateway.faults = FaultPlan(schedule=deque(["isp"]))  # one retried attempt, then success
    client = rig.client(call_gate=gate, calls_per_second=40)
    assert "trades" in await client.call(INCREMENT, WINDOW)
    key = f"acquire top:{client.app_key} 40/1.05s"
    assert gate.log == [key, "release", key, "release"]
    unlimited = RecordingGate()
    await rig.client(call_gate=unlimited, calls_per_second=0).call(INCREMENT, WINDOW)
    assert unlimited.log == []
