"""The JOS app's call limit holds across workers: three workers sync three shops of one app at once, each with
its own connection pool like a process of its own, and the gateway never sees more calls in a second than the
configured limit (the window is the core's, in the database)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.ingest import service
from tongcrm.ingest.apply import IngestContext
from tongcrm.limits.gate import CallGrantHandle, DatabaseCallGate
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread
from tongcrm_jd.fake_server import FakeJosGateway, create_app
from tongcrm_jd.fake_shop import generate_shop

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
LIMIT = 12
SHOPS = 3


def clock() -> datetime:
    return NOW + timedelta(minutes=10)


class Meter:
    """Arrival times at the gateway, and the most calls that arrived within any one second."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def __call__(self, _n: int) -> None:
        self.arrivals.append(time.monotonic())

    def densest(self, window: float = 1.0) -> list[float]:
        """The arrivals of the busiest ``window`` (half-open, as the gateway counts)."""
        times, best, start = sorted(self.arrivals), (0, 0), 0
        for end, at in enumerate(times):
            while at - times[start] >= window:
                start += 1
            if end - start + 1 > best[1] - best[0]:
                best = (start, end + 1)
        return times[best[0] : best[1]]

    def peak(self, window: float = 1.0) -> int:
        return len(self.densest(window))


class GrantLog(DatabaseCallGate):
    """The core's gate, noting when each grant was given and released (the test's clock, the meter's)."""

    grants: ClassVar[dict[int, list[float]]] = {}

    async def acquire(self, key: str, *, rate: int, window: float = 1.0) -> CallGrantHandle:
        handle = await super().acquire(key, rate=rate, window=window)
        self.grants[handle.grant_id] = [time.monotonic()]
        return handle

    async def _finish(self, key: str, grant_id: int, *, in_doubt: bool = False) -> None:
        self.grants[grant_id].append(time.monotonic())
        await super()._finish(key, grant_id, in_doubt=in_doubt)


def timeline(meter: Meter, start: float) -> str:
    """The busiest second's arrivals and the grants around it, in seconds since the syncs started."""
    busiest = meter.densest()
    first, last = busiest[0], busiest[-1]
    near = sorted(
        (times[0], times[1] if len(times) > 1 else None)
        for times in GrantLog.grants.values()
        if times[0] <= last and (len(times) == 1 or times[1] >= first - 1.1)
    )
    arrivals = ", ".join(f"{at - start:.3f}" for at in busiest)
    grants = ", ".join(
        f"{granted - start:.3f}→{'never' if released is None else f'{released - start:.3f}'}"
        for granted, released in near
    )
    return f"arrivals {arrivals}; grants given→released around them: {grants}"


@pytest.fixture
def gateway() -> Iterator[tuple[str, Meter]]:
    meter = Meter()
    shop = generate_shop(seed=11, orders=40, buyers=20, start=NOW - timedelta(days=2), end=NOW)
    fake = FakeJosGateway(shop=shop, clock=clock, on_call=meter)
    with serve_in_thread(create_app(fake)) as url:
        yield f"{url}/routerjson", meter


@pytest.mark.parametrize("child", [False, True], ids=["in-process", "fetching-child"])
async def test_three_workers_never_exceed_the_app_call_limit(
    tongcrm_db: TestDatabase,
    tongcrm_settings: Settings,
    gateway: tuple[str, Meter],
    monkeypatch: pytest.MonkeyPatch,
    child: bool,
) -> None:
    """With ``child``, each sync fetches in a child process (tongcrm.ingest.fetcher) that opens the call gate on
    its own engine: the limit still holds across the six processes."""
    url, meter = gateway
    host = PluginHost(autoload=True, disabled=set())
    async with tongcrm_db.sessions() as session, session.begin():
        for i in range(SHOPS):
            await accounts.create_account(
                session,
                host,
                tongcrm_settings.vault(),
                "jd",
                f"jd-shop-{i}",
                {
                    "app_key": "fake-app-key",
                    "app_secret": "fake-app-secret",
                    "access_token": "fake-access-token",
                    "gateway_url": url,
                    "initial_sync_days": "3",
                    "page_size": "4",
                    "calls_per_second": str(LIMIT),
                },
            )
    ctx = IngestContext(
        host=host, vault=tongcrm_settings.vault(), clock=clock, tz=tongcrm_settings.tz, fetch_process=child
    )
    engines = [create_engine(tongcrm_db.url) for _ in range(SHOPS)]  # three workers, three pools
    monkeypatch.setattr(service, "DatabaseCallGate", GrantLog)
    monkeypatch.setattr(GrantLog, "grants", {})
    start = time.monotonic()
    try:
        reports = await asyncio.gather(
            *(
                service.sync_account(session_factory(engine), ctx, f"jd-shop-{i}", holder=f"worker-{i}")
                for i, engine in enumerate(engines)
            )
        )
    finally:
        for engine in engines:
            await engine.dispose()
    summary = [(r.account, r.pages, r.applied, r.caught_up, r.error) for r in reports]
    assert [r.error for r in reports] == [None] * SHOPS, f"a sync failed: {summary}"
    assert all(r.applied > 0 and r.caught_up for r in reports), f"a sync stopped short: {summary}"
    # enough calls that an unshared limit bursts past it (49 in 1 s)
    assert len(meter.arrivals) >= 4 * LIMIT, f"only {len(meter.arrivals)} calls reached the gateway"
    assert meter.peak() <= LIMIT, (
        f"{meter.peak()} calls arrived within one second (limit {LIMIT}): {timeline(meter, start)}"
    )
    # (a child's grants are its own DatabaseCallGate's, not logged here)
    assert all(len(times) == 2 for times in GrantLog.grants.values()), "a grant was never released"
