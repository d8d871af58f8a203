"""A sync fetching its pages in a child process (tongcrm.ingest.fetcher): the same stored result as in-process,
errors surfacing as they do in-process, no child outliving its sync, and the fallback — on both databases."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.channels import service as accounts
from tongcrm.channels.models import ChannelAccount, QuarantinedRecord, SyncState
from tongcrm.config import Settings
from tongcrm.crypto import Vault
from tongcrm.identity.models import Identity
from tongcrm.ingest import fetcher
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import LeaseLost, lease_key, sync_account
from tongcrm.jobs import leases
from tongcrm.jobs.models import Lease, OutboxEvent
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.errors import ChannelAuthError, ChannelUnavailable
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelContext, OrderStatus
from tongcrm.plugin.types import QuarantinedRecord as QuarantinedIn
from tongcrm.points.models import PointsBalance, PointsEntry
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.memory import MemoryChannel, PortableFactory, make_order

VAULT = Vault("ingest-test-secret-0123456789")
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)
#: picklable, as a fetching child needs its clock to be
CLOCK = functools.partial(datetime.fromtimestamp, NOW.timestamp(), UTC)
#: columns that differ between two runs of the same pages whatever fetched them (and sealed texts, with their
#: random nonces: their lookup hashes are compared)
VOLATILE = {"created_at", "updated_at", "last_page_at", "last_success_at", "last_error_at", "first_seen_at"}


def _ctx(host: PluginHost, *, child: bool) -> IngestContext:
    return IngestContext(
        host=host, vault=VAULT, clock=CLOCK, tz=ZoneInfo("Asia/Shanghai"), fetch_process=child
    )


@pytest.fixture
def portable_host(memory_channel: MemoryChannel) -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(memory_channel.plugin(portable=True), "memory")
    return host


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[fetcher.ChildPages]:
    """Every fetching child the test starts (with its pid, kept before it is closed); the child starts with the
    second page (a sync fetches a few in-process first, see ``test_a_sync_of_a_few_pages_starts_no_child``)."""
    monkeypatch.setattr(fetcher, "CHILD_AFTER_PAGES", 1)
    started: list[fetcher.ChildPages] = []
    real = fetcher.ChildPages.__init__

    def spy(self: fetcher.ChildPages, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        self.pid = self.process.pid  # type: ignore[attr-defined]
        started.append(self)

    monkeypatch.setattr(fetcher.ChildPages, "__init__", spy)
    return started


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def _fill(channel: MemoryChannel, pages: int = 6) -> None:
    for p in range(pages):
        orders = [
            make_order(
                f"o{p}-{i}",
                f"b{(p * 7 + i) % 9}",
                status=OrderStatus.COMPLETED if i % 3 else OrderStatus.PAID,
                lines=(("a", 1_000 + i), ("b", 2_500)),
                mobile=f"1380000{(p * 5 + i) % 7:04d}" if i % 2 else None,
            )
            for i in range(5)
        ]
        quarantined = (QuarantinedIn(f"bad-{p}", "no buyer", json.dumps({"tid": p})),) if p % 2 else ()
        channel.add_page(orders, quarantined)


async def _account(db: TestDatabase, host: PluginHost) -> ChannelAccount:
    async with db.sessions() as session, session.begin():
        return await accounts.create_account(
            session, host, VAULT, "memory", "shop-a", {"token": "s3cr3t-token", "shop": "A"}
        )


async def _stored(db: TestDatabase) -> dict[str, list[dict[str, Any]]]:
    """Every row a sync writes, without the columns a second run could not repeat."""
    found: dict[str, list[dict[str, Any]]] = {}
    async with db.sessions() as session:
        for model in (
            Order,
            OrderLine,
            Member,
            Identity,
            PointsEntry,
            PointsBalance,
            SyncState,
            QuarantinedRecord,
            OutboxEvent,
        ):
            table: Any = model.__table__
            rows = (await session.execute(sa.select(table).order_by(*table.primary_key.columns))).mappings()
            found[table.name] = [
                {k: v for k, v in row.items() if k not in VOLATILE and not k.endswith(("payload", "_enc"))}
                for row in rows
            ]
    return found


async def test_same_stored_result_with_and_without_the_child(
    tongcrm_db: TestDatabase,
    memory_channel: MemoryChannel,
    portable_host: PluginHost,
    children: list[fetcher.ChildPages],
) -> None:
    _fill(memory_channel)
    results = []
    for child in (False, True):
        await tongcrm_db.truncate()
        await _account(tongcrm_db, portable_host)
        report = await sync_account(tongcrm_db.sessions, _ctx(portable_host, child=child), "shop-a")
        assert report.caught_up and report.error is None
        assert (report.pages, report.applied, report.quarantined) == (6, 30, 3)
        results.append(await _stored(tongcrm_db))
        assert len(children) == int(child)  # the first page in-process, the five after it in one child
    assert results[0]["orders"] and results[0]["identities"]
    for name in results[0]:
        for a, b in zip(results[0][name], results[1][name], strict=True):
            assert a == b, name
    assert _wait_gone(children[0].pid)  # type: ignore[attr-defined]


async def test_a_sync_of_a_few_pages_starts_no_child(
    tongcrm_db: TestDatabase,
    memory_channel: MemoryChannel,
    portable_host: PluginHost,
    children: list[fetcher.ChildPages],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fetcher, "CHILD_AFTER_PAGES", 4)
    _fill(memory_channel, pages=4)
    await _account(tongcrm_db, portable_host)
    ctx = _ctx(portable_host, child=True)
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.caught_up and report.pages == 4 and children == []  # the fourth page was the last
    memory_channel.pages.clear()
    _fill(memory_channel, pages=6)
    await tongcrm_db.truncate()
    await _account(tongcrm_db, portable_host)
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.caught_up and report.pages == 6 and len(children) == 1  # the fifth and sixth from a child


@pytest.mark.parametrize("child", [False, True])
async def test_errors_in_the_child_surface_as_in_process(
    tongcrm_db: TestDatabase,
    memory_channel: MemoryChannel,
    portable_host: PluginHost,
    children: list[fetcher.ChildPages],
    child: bool,
) -> None:
    _fill(memory_channel)
    memory_channel.fail_at[3] = ChannelUnavailable("isp.top-remote-connection-timeout", code="isp")
    account = await _account(tongcrm_db, portable_host)
    ctx = _ctx(portable_host, child=child)
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.error == "ChannelUnavailable: isp.top-remote-connection-timeout"
    assert report.pages == 3 and not report.caught_up
    async with tongcrm_db.sessions() as session:
        state = await session.get(SyncState, account.id)
        assert state is not None
        assert state.cursor == json.dumps({"page": 3}) and state.last_error == report.error

    memory_channel.fail_at.clear()
    memory_channel.fail_at[4] = ChannelAuthError("Invalid session:session-expired", code="27")
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.needs_reauth and report.error is not None and "session-expired" in report.error
    assert report.pages == 1
    async with tongcrm_db.sessions() as session:
        listed = await accounts.list_accounts(session)
        state = await session.get(SyncState, account.id)
    assert listed[0].status == "needs_reauth" and "session-expired" in (listed[0].status_detail or "")
    assert state is not None and state.cursor == json.dumps({"page": 4})
    assert len(children) == (2 if child else 0)
    assert all(_wait_gone(c.pid) for c in children)  # type: ignore[attr-defined]


async def test_cancelling_the_sync_stops_its_child(
    tongcrm_db: TestDatabase,
    memory_channel: MemoryChannel,
    portable_host: PluginHost,
    children: list[fetcher.ChildPages],
) -> None:
    _fill(memory_channel)
    memory_channel.slow_at[3] = 600.0  # the child waits for the platform...
    account = await _account(tongcrm_db, portable_host)
    applied: list[int] = []
    sync = asyncio.create_task(
        sync_account(
            tongcrm_db.sessions,
            _ctx(portable_host, child=True),
            "shop-a",
            on_page=lambda report, page: applied.append(report.pages),
        )
    )
    for _ in range(600):
        if len(applied) == 3:
            break
        await asyncio.sleep(0.05)
    assert applied == [1, 2, 3] and len(children) == 1
    pid: int = children[0].pid  # type: ignore[attr-defined]
    assert not _gone(pid)
    sync.cancel()  # ...and the sync is cancelled (Ctrl-C, a job's shutdown)
    with pytest.raises(asyncio.CancelledError):
        await sync
    assert _wait_gone(pid, 2.0)
    async with tongcrm_db.sessions() as session:
        state = await session.get(SyncState, account.id)
        held = await leases.holder_of(session, lease_key(account.id), now=NOW)
    assert state is not None and state.cursor == json.dumps({"page": 3}) and held is None


async def test_a_lost_lease_stops_the_child(
    tongcrm_db: TestDatabase,
    memory_channel: MemoryChannel,
    portable_host: PluginHost,
    children: list[fetcher.ChildPages],
) -> None:
    _fill(memory_channel)
    memory_channel.slow_at[2] = 1.0  # the theft lands while the third page is on its way
    memory_channel.slow_at[4] = 600.0
    account = await _account(tongcrm_db, portable_host)

    def steal(report: Any, page: Any) -> None:
        if report.pages == 2:
            stolen.append(asyncio.ensure_future(_steal(tongcrm_db, account.id)))

    stolen: list[asyncio.Future[None]] = []
    with pytest.raises(LeaseLost):
        await sync_account(tongcrm_db.sessions, _ctx(portable_host, child=True), "shop-a", on_page=steal)
    assert len(children) == 1 and _wait_gone(children[0].pid, 2.0)  # type: ignore[attr-defined]
    async with tongcrm_db.sessions() as session:
        state = await session.get(SyncState, account.id)
    assert state is not None and state.cursor == json.dumps({"page": 2})


async def _steal(db: TestDatabase, account_id: int) -> None:
    async with db.sessions() as session, session.begin():
        await session.execute(
            sa.update(Lease).where(Lease.key == lease_key(account_id)).values(holder="other:1")
        )


async def test_a_channel_that_cannot_run_in_a_child_falls_back(
    tongcrm_db: TestDatabase,
    memory_channel: MemoryChannel,
    memory_host: PluginHost,
    children: list[fetcher.ChildPages],
) -> None:
    _fill(memory_channel)
    await _account(tongcrm_db, memory_host)
    report = await sync_account(tongcrm_db.sessions, _ctx(memory_host, child=True), "shop-a")
    assert report.caught_up and report.applied == 30 and children == []
    factory = memory_host.channel("memory").factory
    found, why = fetcher.recipe(factory, ChannelContext("shop-a", {}, clock=CLOCK))
    assert found is None and "cannot be sent to another process" in why
    found, why = fetcher.recipe(
        PortableFactory(memory_channel), ChannelContext("shop-a", {}, clock=lambda: NOW)
    )
    assert found is None and "cannot be sent" in why


async def test_a_child_that_cannot_build_the_adapter_falls_back(
    tongcrm_db: TestDatabase,
    memory_channel: MemoryChannel,
    children: list[fetcher.ChildPages],
) -> None:
    host = PluginHost(autoload=False)
    memory_channel.parent_only = os.getpid()
    host.register(memory_channel.plugin(portable=True), "memory")
    _fill(memory_channel)
    await _account(tongcrm_db, host)
    report = await sync_account(tongcrm_db.sessions, _ctx(host, child=True), "shop-a")
    assert report.caught_up and report.applied == 30 and report.error is None
    assert len(children) == 1


CRASH_SCRIPT = """
import functools, sys, time
from datetime import UTC, datetime
from tongcrm.ingest.fetcher import ChildPages, FetchRecipe
from tongcrm.plugin.types import ChannelContext
from tongcrm.testing.memory import MemoryChannel, PortableFactory, make_order

if __name__ == "__main__":
    channel = MemoryChannel(slow_at={1: 600.0})
    channel.add_page([make_order("o1")])
    channel.add_page([make_order("o2")])
    clock = functools.partial(datetime.fromtimestamp, 0, UTC)
    child = ChildPages(FetchRecipe(PortableFactory(channel), ChannelContext("a", {}, clock=clock), None), None, 9)
    print(child.process.pid, flush=True)
    time.sleep(600)
"""


def test_a_parent_that_dies_takes_its_child_with_it(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(CRASH_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        time.sleep(1.0)
        assert not _gone(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(pid, 5.0)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_pages_cross_in_the_lean_form_unchanged() -> None:
    orders = [
        make_order("o1", "b1", mobile="13800000001", refunded={"l1": 500}),
        make_order("o2", None, status=OrderStatus.CREATED, lines=(("a", 1), ("b", 2))),
    ]
    page = fetcher.OrderPage(
        tuple(orders),
        next_cursor="c2",
        has_more=True,
        quarantined=(QuarantinedIn("bad", "no buyer", "{}"),),
        watermark=NOW,
    )
    again = fetcher.loads(fetcher.dumps(page))
    assert again == page and again is not page
    assert type(again.orders[0].lines[0]) is type(page.orders[0].lines[0])
    assert again.orders[0].status is OrderStatus.PAID


def test_the_setting_turns_the_child_on(tmp_path: Path) -> None:
    env = {"TONGCRM_SECRET_KEY": "a-secret-of-sixteen-chars"}
    assert not Settings.from_env(env, workdir=tmp_path, create=True).sync_fetch_process
    on = Settings.from_env({**env, "TONGCRM_SYNC_FETCH_PROCESS": "1"}, workdir=tmp_path, create=True)
    assert on.sync_fetch_process
