"""Jobs and the outbox relay, on every database backend.

Runners get a controllable clock, so "after the delay" is a clock step rather than a sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.jobs import leases
from tongcrm.jobs.broker import BrokerSpec, create_broker, run_worker
from tongcrm.jobs.models import EventDelivery, Job, OutboxEvent
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.queue import enqueue
from tongcrm.jobs.runner import JobContext, JobRegistry, Runner
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import DomainEvent
from tongcrm.testing.broker import BrokerRunner, broker_reachable, broker_url_for_tests
from tongcrm.testing.database import TestDatabase


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 11, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeRunner = Callable[..., Awaitable[Any]]
RunnerFor = Callable[..., Awaitable[Any]]


@pytest.fixture
def runner_for(make_runner: MakeRunner, tongcrm_db: TestDatabase, clock: Clock) -> RunnerFor:
    """A runner of the test's kind (in-process or broker) on the test database with the test clock."""

    async def factory(registry: JobRegistry, host: PluginHost | None = None, **kw: Any) -> Any:
        kw.setdefault("retry_base", 1.0)
        sessions = kw.pop("sessions", tongcrm_db.sessions)
        return await make_runner(sessions, registry, host=host, clock=clock, **kw)

    return factory


async def test_delayed_job_runs_once_after_the_delay_with_two_competing_runners(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    runs: list[dict[str, Any]] = []
    registry = JobRegistry()

    @registry.job("greet")
    async def greet(ctx: JobContext, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)  # give the other runner a chance to race
        runs.append(payload)

    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "greet", {"who": "member-1"}, run_at=clock(), delay=timedelta(minutes=10))

    # two runners with their own connection pools, like two processes
    other_engine = create_engine(tongcrm_db.url)
    try:
        first = await runner_for(registry)
        second = await runner_for(registry, sessions=session_factory(other_engine))
        await asyncio.gather(first.run_once(), second.run_once())
        assert runs == []  # not before the delay
        clock.advance(minutes=10)
        await asyncio.gather(first.run_once(), second.run_once(), first.run_once(), second.run_once())
    finally:
        await other_engine.dispose()
    assert runs == [{"who": "member-1"}]
    async with tongcrm_db.sessions() as session:
        job = (await session.execute(sa.select(Job))).scalar_one()
    assert job.status == "done" and job.attempts == 1


async def test_the_enqueuing_requests_id_follows_the_job_into_its_log_context(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    seen: list[dict[str, Any]] = []
    registry = JobRegistry()

    @registry.job("traced")
    async def traced(ctx: JobContext, payload: dict[str, Any]) -> None:
        seen.append(dict(structlog.contextvars.get_contextvars()))

    with structlog.contextvars.bound_contextvars(request_id="req-0001"):
        async with tongcrm_db.sessions() as session, session.begin():
            await enqueue(session, "traced", run_at=clock())
    await (await runner_for(registry)).run_once()
    assert len(seen) == 1
    assert seen[0]["request_id"] == "req-0001" and isinstance(seen[0]["job_id"], int)


async def test_unique_key_schedules_once(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        assert await enqueue(session, "x", unique_key="k1") is True
        assert await enqueue(session, "x", unique_key="k1") is False
    async with tongcrm_db.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(Job))).scalar_one() == 1


async def test_failing_job_is_retried_with_backoff_then_parked(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    registry = JobRegistry()
    attempts: list[int] = []

    @registry.job("flaky")
    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("gateway down")

    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "flaky", run_at=clock(), max_attempts=3)
    runner = await runner_for(registry)
    await runner.run_once()
    assert attempts == [1]
    await runner.run_once()
    assert attempts == [1]  # backing off
    for _ in range(5):
        clock.advance(minutes=10)
        await runner.run_once()
    assert attempts == [1, 2, 3]
    async with tongcrm_db.sessions() as session:
        job = (await session.execute(sa.select(Job))).scalar_one()
    assert job.status == "parked"
    assert "gateway down" in (job.last_error or "")


async def test_job_of_a_dead_runner_is_claimed_again_after_its_lock_expires(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    registry = JobRegistry()
    runs: list[str] = []

    @registry.job("work")
    async def work(ctx: JobContext, payload: dict[str, Any]) -> None:
        runs.append(ctx.job_id and "ran")

    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "work", run_at=clock())
    dead = await runner_for(registry, lock_ttl=timedelta(minutes=1))
    assert await dead._claim_job() is not None  # claimed, then the runner "dies"
    alive = await runner_for(registry)
    await alive.run_once()
    assert runs == []
    clock.advance(minutes=2)
    await alive.run_once()
    assert runs == ["ran"]


@pytest.mark.parametrize("one_runner", [False, True], ids=["three-runners", "one-runner-three-slots"])
async def test_jobs_with_the_same_lock_key_never_overlap(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor, one_runner: bool
) -> None:
    """Across runners, and within one runner claiming several jobs at once (a broker worker's concurrency):
    the lock key is held per job, not per runner."""
    registry = JobRegistry()
    running = 0
    peak = 0

    @registry.job("sync")
    async def sync(ctx: JobContext, payload: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    async with tongcrm_db.sessions() as session, session.begin():
        for i in range(4):
            await enqueue(session, "sync", {"i": i}, run_at=clock(), lock_key="account:shop-1")
    runners = (
        [await runner_for(registry)] * 3 if one_runner else [await runner_for(registry) for _ in range(3)]
    )
    for _ in range(6):
        await asyncio.gather(*(r.run_next_job() for r in runners))
        clock.advance(seconds=2)
    async with tongcrm_db.sessions() as session:
        statuses = list((await session.execute(sa.select(Job.status))).scalars())
    assert statuses == ["done"] * 4
    assert peak == 1


async def test_periodic_job_gets_one_run_per_slot_across_runners(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    registry = JobRegistry()
    ticks: list[str] = []

    @registry.job("tick")
    async def tick(ctx: JobContext, payload: dict[str, Any]) -> None:
        ticks.append(ctx.clock().isoformat())

    registry.every("ticker", timedelta(minutes=5), "tick")
    runners = [await runner_for(registry) for _ in range(2)]
    for _ in range(3):
        await asyncio.gather(*(r.run_once() for r in runners))
    clock.advance(minutes=5)
    for _ in range(3):
        await asyncio.gather(*(r.run_once() for r in runners))
    assert len(ticks) == 2


async def test_leases_exclude_others_until_they_expire(tongcrm_db: TestDatabase, clock: Clock) -> None:
    ttl = timedelta(seconds=30)
    async with tongcrm_db.sessions() as session, session.begin():
        assert await leases.acquire(session, "cursor:shop", "w1", ttl, now=clock())
    async with tongcrm_db.sessions() as session, session.begin():
        assert not await leases.acquire(session, "cursor:shop", "w2", ttl, now=clock())
        assert await leases.acquire(session, "cursor:shop", "w1", ttl, now=clock())  # renew
    clock.advance(seconds=31)
    async with tongcrm_db.sessions() as session, session.begin():
        assert await leases.acquire(session, "cursor:shop", "w2", ttl, now=clock())
        assert await leases.holder_of(session, "cursor:shop", now=clock()) == "w2"


# --------------------------------------------------------------------------------------------------------------
# outbox relay


class Recorder:
    def __init__(self, fail_times: int = 0) -> None:
        self.seen: list[DomainEvent] = []
        self.fail_times = fail_times

    @hookimpl
    def member_created(self, event: DomainEvent, enqueue: Any) -> None:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("webhook endpoint unreachable")
        self.seen.append(event)
        enqueue("welcome", {"member_id": event.payload["member_id"]}, unique_key=f"welcome:{event.id}")


async def test_event_from_committed_transaction_is_delivered_and_may_enqueue(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    host = PluginHost(autoload=False)
    recorder = Recorder()
    host.register(recorder, "recorder")
    async with tongcrm_db.sessions() as session, session.begin():
        emit(session, "member_created", {"member_id": 7})
    runner = await runner_for(JobRegistry(), host=host)
    await runner.run_once()
    await runner.run_once()
    assert [e.payload for e in recorder.seen] == [{"member_id": 7}]
    async with tongcrm_db.sessions() as session:
        jobs = list((await session.execute(sa.select(Job.name, Job.payload))).all())
    assert [(j[0], j[1]) for j in jobs] == [("welcome", {"member_id": 7})]


async def test_event_written_in_a_rolled_back_transaction_is_never_delivered(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    host = PluginHost(autoload=False)
    recorder = Recorder()
    host.register(recorder, "recorder")

    async def failing_change() -> None:
        async with tongcrm_db.sessions() as session, session.begin():
            emit(session, "member_created", {"member_id": 1})
            await session.flush()
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    runner = await runner_for(JobRegistry(), host=host)
    await runner.run_once()
    assert recorder.seen == []
    async with tongcrm_db.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(OutboxEvent))).scalar_one() == 0


async def test_failing_event_handler_is_retried_then_parked_with_its_error(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    host = PluginHost(autoload=False)
    flaky = Recorder(fail_times=1)
    broken = Recorder(fail_times=99)
    host.register(flaky, "flaky")
    host.register(broken, "broken")
    async with tongcrm_db.sessions() as session, session.begin():
        emit(session, "member_created", {"member_id": 3})
    runner = await runner_for(JobRegistry(), host=host, delivery_attempts=3)
    for _ in range(6):
        await runner.run_once()
        clock.advance(minutes=10)
    assert len(flaky.seen) == 1  # delivered on its second attempt
    assert broken.seen == []
    async with tongcrm_db.sessions() as session:
        rows = {r.plugin: r for r in (await session.execute(sa.select(EventDelivery))).scalars()}
    assert rows["flaky"].status == "done" and rows["flaky"].attempts == 2
    assert rows["broken"].status == "parked" and rows["broken"].attempts == 3
    assert "webhook endpoint unreachable" in (rows["broken"].last_error or "")


async def test_events_are_delivered_once_per_plugin_with_competing_relays(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    host = PluginHost(autoload=False)
    recorder = Recorder()
    host.register(recorder, "recorder")
    async with tongcrm_db.sessions() as session, session.begin():
        for i in range(20):
            emit(session, "member_created", {"member_id": i})
    runners = [await runner_for(JobRegistry(), host=host) for _ in range(3)]
    for _ in range(3):
        await asyncio.gather(*(r.run_once() for r in runners))
    assert sorted(e.payload["member_id"] for e in recorder.seen) == list(range(20))


async def test_async_event_handler_is_awaited(
    tongcrm_db: TestDatabase, clock: Clock, runner_for: RunnerFor
) -> None:
    seen: list[int] = []

    async def points_changed(event: DomainEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event.payload["member_id"])

    host = PluginHost(autoload=False)
    host.register(SimpleNamespace(points_changed=hookimpl(points_changed)), "async_plugin")
    async with tongcrm_db.sessions() as session, session.begin():
        emit(session, "points_changed", {"member_id": 5})
    await (await runner_for(JobRegistry(), host=host)).run_once()
    assert seen == [5]


# --------------------------------------------------------------------------------------------------------------
# broker mode only: what the broker adds (duplicates, lost messages, one active scheduler)


@pytest.fixture
async def broker_runner_for(
    tongcrm_db: TestDatabase, clock: Clock
) -> AsyncIterator[Callable[..., Awaitable[BrokerRunner]]]:
    if (reason := await broker_reachable()) is not None:
        pytest.skip(reason)
    started: list[BrokerRunner] = []

    async def factory(registry: JobRegistry, **kw: Any) -> BrokerRunner:
        runner = Runner(tongcrm_db.sessions, PluginHost(autoload=False), registry, clock=clock, **kw)
        started.append(await BrokerRunner(runner).start())
        return started[-1]

    yield factory
    for broker_runner in started:
        await broker_runner.close()


def _counting_registry(runs: list[int]) -> JobRegistry:
    registry = JobRegistry()

    @registry.job("effect")
    async def effect(ctx: JobContext, payload: dict[str, Any]) -> None:
        runs.append(ctx.job_id)

    return registry


async def _one_job(db: TestDatabase, clock: Clock) -> int:
    async with db.sessions() as session, session.begin():
        await enqueue(session, "effect", run_at=clock())
        return (await session.execute(sa.select(Job.id))).scalar_one()


async def test_duplicate_and_redelivered_messages_make_no_second_effect(
    tongcrm_db: TestDatabase, clock: Clock, broker_runner_for: Callable[..., Awaitable[BrokerRunner]]
) -> None:
    runs: list[int] = []
    worker = await broker_runner_for(_counting_registry(runs))
    job_id = await _one_job(tongcrm_db, clock)
    await worker.run_once()
    await worker.publish("job", job_id)  # the broker redelivers it
    await worker.publish("job", job_id)
    await worker.publish("delivery", 999_999)  # a message naming a row that does not exist
    assert runs == [job_id]


async def test_a_lost_message_is_published_again(
    tongcrm_db: TestDatabase, clock: Clock, broker_runner_for: Callable[..., Awaitable[BrokerRunner]]
) -> None:
    runs: list[int] = []
    worker = await broker_runner_for(_counting_registry(runs))
    job_id = await _one_job(tongcrm_db, clock)
    marked = await worker.scheduler._mark(clock(), 10, republish=True)
    assert marked == [("job", job_id)]  # marked published, but the message was lost
    await worker.run_once()
    assert runs == []  # not yet: it may still be on its way
    clock.advance(seconds=31)
    await worker.run_once()
    assert runs == [job_id]


async def test_a_row_waiting_in_a_long_queue_is_not_published_again_but_a_dead_runners_job_is(
    tongcrm_db: TestDatabase, clock: Clock, broker_runner_for: Callable[..., Awaitable[BrokerRunner]]
) -> None:
    runs: list[int] = []
    worker = await broker_runner_for(_counting_registry(runs))
    depth = 5

    async def queue_depth() -> int | None:
        return depth

    worker.scheduler.queue_depth = queue_depth
    waiting = await _one_job(tongcrm_db, clock)
    assert await worker.scheduler._mark(clock(), 10, republish=True) == [("job", waiting)]  # in the queue
    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "effect", run_at=clock())
        second = (await session.execute(sa.select(sa.func.max(Job.id)))).scalar_one()
    dead = await worker.runner._claim_job(second)  # published, claimed, and its runner died
    assert dead is not None
    clock.advance(minutes=6)  # both stale, and the dead runner's lock has lapsed
    await worker.run_once()
    assert runs == [dead[0]]  # five messages still wait in the queue: the first row is on its way
    depth = 0  # the queue drained and the row never came: it was lost
    clock.advance(seconds=31)
    await worker.run_once()
    assert runs == [dead[0], waiting]


async def test_a_job_running_longer_than_its_lock_is_not_claimed_again_meanwhile(
    tongcrm_db: TestDatabase,
) -> None:
    registry = JobRegistry()
    runs: list[int] = []
    started = asyncio.Event()

    @registry.job("long")
    async def long(ctx: JobContext, payload: dict[str, Any]) -> None:
        runs.append(ctx.job_id)
        started.set()
        await asyncio.sleep(1.5)  # two and a half lock terms

    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "long", lock_key="account:shop-1")
    # the real clock: the running job's lock is extended while it runs, every third of its term
    ttl = timedelta(seconds=0.6)
    busy = Runner(tongcrm_db.sessions, PluginHost(autoload=False), registry, lock_ttl=ttl)
    other = Runner(tongcrm_db.sessions, PluginHost(autoload=False), registry, lock_ttl=ttl)
    running = asyncio.create_task(busy.run_next_job())
    await started.wait()
    claims = []
    while not running.done():
        claims.append(await other.run_next_job())
        claims.append(await busy.run_next_job())  # the same runner (a worker's other slots) neither
        await asyncio.sleep(0.05)
    assert await running
    assert len(runs) == 1 and not any(claims)
    async with tongcrm_db.sessions() as session:
        assert list((await session.execute(sa.select(Job.status))).scalars()) == ["done"]


async def test_a_stopping_worker_finishes_the_job_it_runs_before_it_disconnects(
    tongcrm_db: TestDatabase, clock: Clock
) -> None:
    if (reason := await broker_reachable()) is not None:
        pytest.skip(reason)
    registry = JobRegistry()
    started = asyncio.Event()

    @registry.job("slow")
    async def slow(ctx: JobContext, payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(0.5)

    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "slow", run_at=clock())
        job_id = (await session.execute(sa.select(Job.id))).scalar_one()
    runner = Runner(tongcrm_db.sessions, PluginHost(autoload=False), registry, clock=clock)
    spec = BrokerSpec(broker_url_for_tests(), queue=f"tongcrm.test.{uuid.uuid4().hex}", durable=False)
    publisher, task = create_broker(spec)
    await publisher.startup()
    stop = asyncio.Event()
    working = asyncio.create_task(run_worker(spec, runner, stop))
    try:
        await task.kiq("job", job_id)
        await asyncio.wait_for(started.wait(), 20)
        stop.set()  # SIGTERM mid-job, as a rolling upgrade does
        await asyncio.wait_for(working, 20)
    finally:
        await publisher.shutdown()
    async with tongcrm_db.sessions() as session:
        assert (await session.execute(sa.select(Job.status))).scalar_one() == "done"


async def test_only_one_scheduler_is_active_and_a_standby_takes_over(
    tongcrm_db: TestDatabase, clock: Clock, broker_runner_for: Callable[..., Awaitable[BrokerRunner]]
) -> None:
    runs: list[int] = []
    registry = _counting_registry(runs)
    registry.every("effects", timedelta(minutes=1), "effect")
    active = await broker_runner_for(registry)
    standby = await broker_runner_for(registry)
    assert await active.run_once() > 0
    assert await standby.scheduler.run_once() == 0  # standing by: schedules and publishes nothing
    assert len(runs) == 1
    clock.advance(seconds=61)  # the active scheduler died: its lease lapsed, the next slot is due
    assert await standby.run_once() > 0
    assert not await active.scheduler.hold_lease()
    assert len(runs) == 2
