"""Shared fixtures: a receiver served on 127.0.0.1 that records what it gets and fails on demand, a movable
clock, the webhooks plugin on a hermetic host, and a job runner that knows only the plugin's jobs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import tongcrm_webhooks.plugin as webhooks_plugin
from litestar import Litestar, Request, Response, post
from tongcrm.config import Settings
from tongcrm.jobs.runner import JobRegistry, Runner
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.store import PluginStore
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the receiving end saw; ``fail_next`` requests are answered 500, each after ``delay`` seconds."""

    requests: list[Received] = field(default_factory=list)
    fail_next: int = 0
    fail_always: bool = False
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Litestar:
        @post("/hook", status_code=200)
        async def hook(request: Request[Any, Any, Any]) -> Response[str]:
            body = await request.body()
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow receiver holds the sender mid-request
            with self.lock:
                self.requests.append(Received(dict(request.headers), body))
                failing = self.fail_always or self.fail_next > 0
                if self.fail_next > 0:
                    self.fail_next -= 1
            return Response("no" if failing else "ok", status_code=500 if failing else 200)

        return Litestar(route_handlers=[hook], logging_config=None)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def receiver_url(receiver: Receiver) -> Iterator[str]:
    with serve_in_thread(receiver.app()) as url:
        yield f"{url}/hook"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def host() -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(webhooks_plugin, "webhooks")
    return host


@pytest.fixture
def store(tongcrm_db: TestDatabase, tongcrm_settings: Settings, clock: Clock) -> PluginStore:
    return PluginStore(tongcrm_db.sessions, tongcrm_settings.vault(), clock=clock)


@pytest.fixture
def runner(tongcrm_db: TestDatabase, tongcrm_settings: Settings, host: PluginHost, clock: Clock) -> Runner:
    """The core's runner with the plugin's jobs only (no core jobs), on the test clock."""
    return Runner(
        tongcrm_db.sessions, host, JobRegistry(), clock=clock, services={"settings": tongcrm_settings}
    )


async def drain(runner: Runner, rounds: int = 50) -> None:
    """Run relay and jobs until nothing is left to do now."""
    for _ in range(rounds):
        if not await runner.run_once():
            return
    raise AssertionError("the runner did not settle")
