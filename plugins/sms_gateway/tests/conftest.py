"""Shared fixtures: a movable clock, the fake gateway, messengers wired to it, and a loopback server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from tongcrm.plugin.types import OutboundMessage
from tongcrm_sms_gateway.aliyun import AliyunSmsClient
from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate
from tongcrm_sms_gateway.messenger import AliyunSmsMessenger

KEY_ID = "LTAI-test-key"
SECRET = "test-secret-Zz9"
SIGN = "通通会员"
NOTICE = "SMS_100001"  # notice with a {name} variable
PROMO = "SMS_100002"  # promotion, no variables
CODE = "SMS_100003"  # verification code with {code}


class Clock:
    """A wall clock tests move by hand; the fake and the client share it."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 2, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def mobile(n: int) -> str:
    return f"+86139{n:08d}"


def message(i: int, *, phone: str | None = None, template: str = NOTICE, **params: str) -> OutboundMessage:
    if template == NOTICE and not params:
        params = {"name": "王小明"}
    return OutboundMessage(
        message_id=f"msg-{i}",
        mobile_e164=phone or mobile(i),
        signature=SIGN,
        template_code=template,
        params=params,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_fake(clock: Clock, **overrides: Any) -> FakeAliyun:
    options: dict[str, Any] = {
        "access_keys": {KEY_ID: SECRET},
        "signatures": {SIGN},
        "templates": [
            FakeTemplate(NOTICE, frozenset({"name"}), "notice"),
            FakeTemplate(PROMO, frozenset(), "promotion"),
            FakeTemplate(CODE, frozenset({"code"}), "verification"),
        ],
        "clock": clock,
    }
    options.update(overrides)
    return FakeAliyun(**options)


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeAliyun]:
    gateway = make_fake(clock)
    yield gateway
    await gateway.aclose()


MessengerFactory = Callable[..., AliyunSmsMessenger]


@pytest.fixture
async def messenger_for(clock: Clock) -> AsyncIterator[MessengerFactory]:
    """Build messengers talking to a fake in-process (ASGI transport); closes what it built."""
    opened: list[httpx.AsyncClient] = []

    def build(
        gateway: FakeAliyun,
        *,
        key_id: str = KEY_ID,
        secret: str = SECRET,
        client_clock: Callable[[], datetime] | None = None,
        **options: Any,
    ) -> AliyunSmsMessenger:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app), base_url="http://fake")
        opened.append(http)
        client = AliyunSmsClient(
            access_key_id=key_id,
            access_key_secret=secret,
            endpoint="http://fake/",
            clock=client_clock or clock,
            http=http,
        )
        return AliyunSmsMessenger(client, **options)

    yield build
    for http in opened:
        await http.aclose()


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve(app: Callable[..., Awaitable[None]]) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port; yields its base URL."""
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("loopback server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
