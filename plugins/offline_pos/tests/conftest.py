"""Fixtures for the offline_pos tests: a controllable clock, the plugin on a hermetic host (with Taobao for the
cross-channel tests), a store with two tills, and receipt builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos import stores
from tongcrm_offline_pos.api import PosConfig
from tongcrm_offline_pos.models import TABLES
from tongcrm_offline_pos.plugin import OfflinePosPlugin

TZ = ZoneInfo("Asia/Shanghai")


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    # a fixed local afternoon, so business days and 30-second code steps are predictable
    return FakeClock(datetime(2025, 3, 14, 7, 0, 5, tzinfo=UTC))


def make_host(config: PosConfig) -> PluginHost:
    import tongcrm_taobao.plugin

    host = PluginHost(autoload=False)
    host.register(OfflinePosPlugin(config), "offline_pos")
    host.register(tongcrm_taobao.plugin, "taobao")
    return host


@pytest.fixture
def pos_host(clock: FakeClock) -> PluginHost:
    return make_host(PosConfig(clock=clock, rate_per_second=1000, burst=1000))


async def add_store(
    api: ApiClient,
    host: PluginHost,
    settings: Settings,
    code: str,
    tills: tuple[str, ...],
    **store_settings: str,
) -> None:
    async with api.db.sessions() as session, session.begin():
        await accounts.create_account(
            session, host, settings.vault(), "offline_pos", code, {"title": code, **store_settings}
        )
    counter = CounterService(api.db.sessions, api.db.read_sessions, host, settings)
    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        for till in tills:
            await stores.add_till(uow, code, till)


@pytest.fixture
async def pos(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    pos_host: PluginHost,
    tongcrm_settings: Settings,
) -> AsyncIterator[ApiClient]:
    """A POS client for store S1 (tills T01, T02)."""
    async with make_client(host=pos_host, role="pos", store_code="S1") as api:
        await add_store(api, pos_host, tongcrm_settings, "S1", ("T01", "T02"))
        yield api


class Receipts:
    """Builds receipt bodies with increasing sequence numbers, on the clock's business day."""

    def __init__(self, clock: FakeClock, store: str = "S1", till: str = "T01") -> None:
        self.clock = clock
        self.store = store
        self.till = till
        self.seq = 0

    @property
    def day(self) -> date:
        return self.clock().astimezone(TZ).date()

    def sale(
        self,
        amounts: tuple[int, ...] = (10_000,),
        *,
        member: dict[str, Any] | None = None,
        points: int = 0,
        points_fen: int = 0,
        seq: int | None = None,
        till: str | None = None,
        minutes_ago: float = 1,
    ) -> dict[str, Any]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        total = sum(amounts)
        payments: list[dict[str, Any]] = []
        if points:
            payments.append({"method": "points", "amount_fen": points_fen, "points": points})
        payments.append({"method": "wechat", "amount_fen": total - points_fen})
        body: dict[str, Any] = {
            "store": self.store,
            "till": till or self.till,
            "business_day": self.day.isoformat(),
            "sequence": seq,
            "occurred_at": (self.clock() - timedelta(minutes=minutes_ago)).isoformat(),
            "total_fen": total,
            "lines": [
                {
                    "line_no": i,
                    "sku": f"SKU-{i}",
                    "title": f"item {i}",
                    "quantity": 1,
                    "unit_price_fen": amount,
                    "amount_fen": amount,
                }
                for i, amount in enumerate(amounts, start=1)
            ],
            "payments": payments,
        }
        if member is not None:
            body["member"] = member
        return body

    def ret(
        self,
        original: dict[str, Any],
        lines: dict[int, int],
        *,
        seq: int | None = None,
        till: str | None = None,
        quantities: dict[int, int] | None = None,
    ) -> dict[str, Any]:
        """A return of ``lines`` ({line_no: fen}) of ``original`` (a sale of this or another store)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        by_no = {line["line_no"]: line for line in original["lines"]}
        ref = {
            "till": original["till"],
            "business_day": original["business_day"],
            "sequence": original["sequence"],
        }
        if original["store"] != self.store:
            ref["store"] = original["store"]
        return {
            "store": self.store,
            "till": till or self.till,
            "business_day": self.day.isoformat(),
            "sequence": seq,
            "occurred_at": (self.clock() - timedelta(seconds=30)).isoformat(),
            "kind": "return",
            "total_fen": sum(lines.values()),
            "original": ref,
            "return_lines": [
                {
                    "line_no": no,
                    "quantity": (quantities or {}).get(no, by_no[no]["quantity"]),
                    "amount_fen": fen,
                }
                for no, fen in lines.items()
            ],
        }


@pytest.fixture
def receipts(clock: FakeClock) -> Receipts:
    return Receipts(clock)


async def enrol(api: ApiClient, mobile: str, *, till: str = "T01") -> dict[str, Any]:
    response = await api.post(
        "/pos/v1/members",
        json={
            "till": till,
            "mobile": mobile,
            "name": "王小明",
            "consent": {"marketing": True, "proof": "screen"},
        },
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body
