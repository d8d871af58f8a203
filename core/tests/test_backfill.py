"""Windowed backfills on both databases and both job runners: windows split a period, workers take different
windows, a dead worker's window is resumed from its cursor, ``through`` advances only over finished windows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.channels.models import Backfill, BackfillWindow
from tongcrm.config import Settings
from tongcrm.errors import BadRequest
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.backfill import (
    WINDOW_JOB,
    backfill_views,
    create_backfill,
    split,
    window_lease,
    work_backfill,
    work_window,
)
from tongcrm.ingest.jobs import backfill_window
from tongcrm.jobs import leases
from tongcrm.jobs.models import Job
from tongcrm.jobs.runner import JobRegistry
from tongcrm.orders.models import Order
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import (
    ChannelCapability,
    ChannelContext,
    ChannelSpec,
    IdentityKindSpec,
    NormalisedOrder,
    OrderPage,
    SettingField,
)
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.memory import make_order

DAY = timedelta(days=1)
SINCE = datetime(2026, 10, 1, tzinfo=UTC)
UNTIL = SINCE + 6 * DAY


@dataclass
class Timeline:
    """A platform whose orders carry modification times: an adapter pages through ``[since, until)`` in order
    (``until`` defaulting to the present), the way a real adapter walks its time windows."""

    orders: list[NormalisedOrder]
    page_size: int = 7
    calls: list[tuple[datetime, datetime, str | None]] = field(default_factory=list)

    def page(self, ctx: ChannelContext, cursor: str | None) -> OrderPage:
        assert ctx.since is not None
        end = ctx.until or datetime.now(UTC)
        self.calls.append((ctx.since, end, cursor))
        inside = sorted(
            (o for o in self.orders if ctx.since <= o.modified_at < end), key=lambda o: o.modified_at
        )
        offset = json.loads(cursor)["offset"] if cursor else 0
        chunk = inside[offset : offset + self.page_size]
        return OrderPage(
            tuple(chunk),
            next_cursor=json.dumps({"offset": offset + len(chunk)}),
            has_more=offset + len(chunk) < len(inside),
        )

    def plugin(self, *, windowed: bool = True) -> Any:
        timeline = self

        class Adapter:
            def __init__(self, ctx: ChannelContext) -> None:
                self.ctx = ctx

            async def fetch_orders(self, cursor: str | None) -> OrderPage:
                return timeline.page(self.ctx, cursor)

            async def aclose(self) -> None:
                return None

        capabilities = {ChannelCapability.FETCH_ORDERS}
        if windowed:
            capabilities.add(ChannelCapability.BACKFILL_WINDOWS)
        spec = ChannelSpec(
            name="memory",
            display_name="Timeline",
            settings=(SettingField("shop", "shop id"),),
            factory=Adapter,
            identity_kinds=(IdentityKindSpec("memory.buyer", strong=True, description="buyer id"),),
            capabilities=frozenset(capabilities),
        )
        return SimpleNamespace(channels=hookimpl(lambda: [spec]))


def timeline_orders(count: int = 120) -> list[NormalisedOrder]:
    """``count`` orders spread evenly over the six days, a few of them before and after the period."""
    step = (UNTIL - SINCE + 2 * DAY) / count
    return [
        replace(make_order(f"o{i}", f"b{i % 40}"), modified_at=SINCE - DAY + step * i) for i in range(count)
    ]


def in_period(orders: list[NormalisedOrder]) -> set[str]:
    return {o.external_id for o in orders if SINCE <= o.modified_at < UNTIL}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def timeline() -> Timeline:
    return Timeline(timeline_orders())


@pytest.fixture
def host(timeline: Timeline) -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(timeline.plugin(), "timeline")
    return host


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctx(host: PluginHost, tongcrm_settings: Settings, clock: Clock) -> IngestContext:
    return IngestContext(
        host=host,
        vault=tongcrm_settings.vault(),
        clock=clock,
        tz=tongcrm_settings.tz,
        lease_ttl=timedelta(seconds=30),
    )


async def _backfill(db: TestDatabase, ctx: IngestContext, window: timedelta = DAY) -> int:
    async with db.sessions() as session, session.begin():
        await accounts.create_account(session, ctx.host, ctx.vault, "memory", "shop", {"shop": "S"})
        return await create_backfill(
            session, ctx.host, "shop", since=SINCE, until=UNTIL, window=window, actor=SYSTEM
        )


async def _stored(db: TestDatabase) -> set[str]:
    async with db.sessions() as session:
        return set((await session.execute(sa.select(Order.external_id))).scalars())


async def _windows(db: TestDatabase) -> list[BackfillWindow]:
    async with db.sessions() as session:
        return list((await session.execute(sa.select(BackfillWindow).order_by(BackfillWindow.seq))).scalars())


def test_a_period_splits_into_consecutive_windows_the_last_one_shorter() -> None:
    bounds = split(SINCE, SINCE + timedelta(hours=50), DAY)
    assert bounds == [
        (SINCE, SINCE + DAY),
        (SINCE + DAY, SINCE + 2 * DAY),
        (SINCE + 2 * DAY, SINCE + timedelta(hours=50)),
    ]
    with pytest.raises(BadRequest, match="since < until"):
        split(UNTIL, SINCE, DAY)
    with pytest.raises(BadRequest, match="too many"):
        split(SINCE, UNTIL, timedelta(seconds=1))


async def test_creating_a_backfill_queues_one_job_per_window(
    tongcrm_db: TestDatabase, ctx: IngestContext
) -> None:
    backfill_id = await _backfill(tongcrm_db, ctx)
    windows = await _windows(tongcrm_db)
    assert [(w.start, w.end) for w in windows] == split(SINCE, UNTIL, DAY)
    async with tongcrm_db.sessions() as session:
        jobs = (await session.execute(sa.select(Job.name, Job.payload, Job.unique_key))).all()
        (view,) = await backfill_views(session, backfill_id)
    assert sorted((name, payload["window"]) for name, payload, _ in jobs) == [
        (WINDOW_JOB, w.id) for w in windows
    ]
    assert {key for *_, key in jobs} == {window_lease(w.id) for w in windows}
    assert (view.status, view.through, view.windows) == (
        "running",
        SINCE,
        {"pending": 6, "running": 0, "done": 0},
    )


async def test_an_accounts_backfills_are_read_without_the_others(
    tongcrm_db: TestDatabase, ctx: IngestContext
) -> None:
    """The console's page of an account reads its backfills only (it read every account's and kept its own)."""
    first = await _backfill(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(session, ctx.host, ctx.vault, "memory", "shop-2", {"shop": "S2"})
        second = await create_backfill(
            session, ctx.host, "shop-2", since=SINCE, until=UNTIL, window=DAY, actor=SYSTEM
        )
        third = await create_backfill(
            session, ctx.host, "shop", since=SINCE, until=UNTIL, window=DAY, actor=SYSTEM
        )
    async with tongcrm_db.sessions() as session:
        assert [v.id for v in await backfill_views(session)] == [third, second, first]
        assert [(v.id, v.account) for v in await backfill_views(session, account="shop")] == [
            (third, "shop"),
            (first, "shop"),
        ]
        assert [v.id for v in await backfill_views(session, account="shop-2")] == [second]
        assert await backfill_views(session, account="nobody") == []


async def test_the_job_runner_syncs_every_window_once(
    tongcrm_db: TestDatabase,
    ctx: IngestContext,
    timeline: Timeline,
    tongcrm_settings: Settings,
    make_runner: Any,
) -> None:
    """The in-process runner and broker workers (``make_runner``'s two kinds) run the same window jobs."""
    backfill_id = await _backfill(tongcrm_db, ctx)
    registry = JobRegistry()
    registry.job(WINDOW_JOB)(backfill_window)
    runner = await make_runner(
        tongcrm_db.sessions, registry, host=ctx.host, services={"settings": tongcrm_settings}
    )
    assert await runner.run_once() >= 6
    assert await _stored(tongcrm_db) == in_period(timeline.orders)
    async with tongcrm_db.sessions() as session:
        (view,) = await backfill_views(session, backfill_id)
        statuses = set((await session.execute(sa.select(Job.status).where(Job.name == WINDOW_JOB))).scalars())
    assert (view.status, view.through, view.windows["done"]) == ("done", UNTIL, 6)
    assert view.orders == len(in_period(timeline.orders)) and view.retries == 0 and statuses == {"done"}
    # every window asked only for its own span
    assert {(since, end) for since, end, _ in timeline.calls} == set(split(SINCE, UNTIL, DAY))
    # a second pass (a redelivered message, a job run again) finds nothing to do
    calls = len(timeline.calls)
    for window in await _windows(tongcrm_db):
        report = await work_window(tongcrm_db.sessions, ctx, window.id, holder="late")
        assert report.finished_before
    assert len(timeline.calls) == calls


async def test_through_advances_only_over_finished_windows(
    tongcrm_db: TestDatabase, ctx: IngestContext
) -> None:
    backfill_id = await _backfill(tongcrm_db, ctx)
    ids = [w.id for w in await _windows(tongcrm_db)]

    async def through() -> datetime:
        async with tongcrm_db.sessions() as session:
            return (await backfill_views(session, backfill_id))[0].through

    for window_id in (ids[2], ids[3], ids[5]):
        assert (await work_window(tongcrm_db.sessions, ctx, window_id, holder="w")).caught_up
    assert await through() == SINCE  # window 0 is still open
    await work_window(tongcrm_db.sessions, ctx, ids[0], holder="w")
    assert await through() == SINCE + DAY  # window 1 is still open
    await work_window(tongcrm_db.sessions, ctx, ids[1], holder="w")
    assert await through() == SINCE + 4 * DAY  # 0..3 done, 4 open
    await work_window(tongcrm_db.sessions, ctx, ids[4], holder="w")
    async with tongcrm_db.sessions() as session:
        backfill = (await session.execute(sa.select(Backfill))).scalar_one()
    assert (backfill.through, backfill.status, backfill.finished_at) == (UNTIL, "done", ctx.clock())


async def test_a_dead_workers_window_is_taken_over_after_its_lease_and_resumed_from_its_cursor(
    tongcrm_db: TestDatabase,
    ctx: IngestContext,
    timeline: Timeline,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _backfill(tongcrm_db, ctx)
    window = (await _windows(tongcrm_db))[1]
    import tongcrm.ingest.service as engine

    real = engine.apply_orders_page
    pages = 0

    async def dies_after_two_pages(*args: Any, **kwargs: Any) -> Any:
        nonlocal pages
        pages += 1
        if pages == 3:
            raise Killed  # nothing after this line of the worker runs
        return await real(*args, **kwargs)

    monkeypatch.setattr(engine, "apply_orders_page", dies_after_two_pages)
    monkeypatch.setattr(leases, "release", _never_released)  # a killed worker releases nothing
    with pytest.raises(Killed):
        await work_window(tongcrm_db.sessions, ctx, window.id, holder="worker-a")
    monkeypatch.undo()
    (left,) = [w for w in await _windows(tongcrm_db) if w.id == window.id]
    assert (left.status, left.pages, left.cursor, left.worked_by) == (
        "running",
        2,
        '{"offset": 14}',
        "worker-a",
    )

    busy = await work_window(tongcrm_db.sessions, ctx, window.id, holder="worker-b")
    assert busy.busy and busy.pages == 0
    clock.now += ctx.lease_ttl + timedelta(seconds=1)  # worker-a's lease lapses
    resumed = await work_window(tongcrm_db.sessions, ctx, window.id, holder="worker-b")
    assert resumed.caught_up and resumed.error is None
    assert timeline.calls[-resumed.pages][2] == '{"offset": 14}'  # it went on from the committed cursor
    (done,) = [w for w in await _windows(tongcrm_db) if w.id == window.id]
    assert (done.status, done.attempts, done.worked_by) == ("done", 2, "worker-b")
    expected = {o.external_id for o in timeline.orders if window.start <= o.modified_at < window.end}
    assert await _stored(tongcrm_db) == expected and done.orders == len(expected)


class Killed(BaseException):
    """A SIGKILL, as far as the worker's code can tell: no ``except Exception`` sees it."""


async def _never_released(*args: Any, **kwargs: Any) -> None:
    return None


async def test_parallel_workers_take_different_windows_and_finish_the_backfill(
    tongcrm_db: TestDatabase, ctx: IngestContext, timeline: Timeline
) -> None:
    backfill_id = await _backfill(tongcrm_db, ctx, window=timedelta(hours=12))
    seen: list[tuple[int, str]] = []
    failed = await work_backfill(
        tongcrm_db.sessions,
        ctx,
        backfill_id,
        holder="cli",
        parallel=3,
        on_window=lambda report: seen.append((report.window_id, report.account)),
    )
    assert failed == []
    windows = await _windows(tongcrm_db)
    assert len(windows) == 12 and sorted(w for w, _ in seen) == sorted(w.id for w in windows)
    assert {w.worked_by for w in windows} == {"cli/0", "cli/1", "cli/2"}
    assert await _stored(tongcrm_db) == in_period(timeline.orders)
    async with tongcrm_db.sessions() as session:
        (view,) = await backfill_views(session, backfill_id)
    assert (view.status, view.through, view.windows["done"]) == ("done", UNTIL, 12)


async def test_a_channel_without_windowed_backfills_gets_one_window(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, timeline: Timeline
) -> None:
    host = PluginHost(autoload=False)
    host.register(timeline.plugin(windowed=False), "timeline")
    ctx = IngestContext(host=host, vault=tongcrm_settings.vault(), clock=Clock(), tz=tongcrm_settings.tz)
    await _backfill(tongcrm_db, ctx)
    assert [(w.start, w.end) for w in await _windows(tongcrm_db)] == [(SINCE, UNTIL)]


class _Deadlock(Exception):
    sqlstate = "40P01"


async def test_a_page_that_lost_a_deadlock_is_redone_from_the_committed_cursor(
    tongcrm_db: TestDatabase, ctx: IngestContext, timeline: Timeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows of one account apply pages at once; PostgreSQL may pick one of two pages sharing members as a
    deadlock victim. That page rolled back with its cursor and is redone, without failing the window."""
    await _backfill(tongcrm_db, ctx)
    window = (await _windows(tongcrm_db))[2]
    import tongcrm.ingest.service as engine

    real = engine.apply_orders_page
    calls = 0

    async def loses_the_second_page_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise sa.exc.DBAPIError("INSERT …", None, _Deadlock("deadlock detected"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(engine, "apply_orders_page", loses_the_second_page_once)
    report = await work_window(tongcrm_db.sessions, ctx, window.id, holder="w")
    assert report.caught_up and report.error is None and report.pages == 3
    assert [cursor for *_, cursor in timeline.calls].count(
        '{"offset": 7}'
    ) == 2  # the lost page, fetched again
    expected = {o.external_id for o in timeline.orders if window.start <= o.modified_at < window.end}
    assert await _stored(tongcrm_db) == expected
