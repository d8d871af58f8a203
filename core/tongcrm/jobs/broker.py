"""Broker mode: the same jobs and event deliveries, carried to taskiq workers over RabbitMQ.

The database stays the source of truth. A broker message only says "job 42 may be due" or "delivery 7 may be
due"; the worker that receives it claims that row with the same conditional ``UPDATE … RETURNING`` as the
in-process runner, so:

- a message the broker redelivers (or a duplicate the scheduler published) claims nothing and is acked;
- a worker SIGKILLed mid-job leaves its row ``running`` under a lock that expires; the scheduler then publishes
  the row again and another worker claims it (the handler is idempotent, as for the in-process runner);
- a message lost on the way (broker restarted before it was stored, a publish that failed) is published again
  once its ``published_at`` is older than ``republish_after``.

The scheduler (``tongcrm jobs scheduler``) is the only process that looks for work: it holds the
``jobs:scheduler`` lease, so of any number of schedulers exactly one schedules periodic slots, fans committed
outbox events out into deliveries and publishes due rows; the others wait as hot standbys and take over when
the holder's lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from pamqp.common import FieldTable
from taskiq import AsyncTaskiqDecoratedTask, Context, TaskiqDepends
from taskiq.acks import AcknowledgeType
from taskiq.api import run_receiver_task
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue
from taskiq_aio_pika.queue import QueueType

from tongcrm.jobs import leases
from tongcrm.jobs.models import EventDelivery, Job
from tongcrm.jobs.runner import Runner, delivery_due, job_due
from tongcrm.logging import get_logger

log = get_logger(__name__)

#: The one taskiq task: every job and delivery travels as ``(kind, row id)``.
WORK_TASK = "tongcrm.work"
DEFAULT_QUEUE = "tongcrm.jobs"
SCHEDULER_LEASE = "jobs:scheduler"
KINDS = ("job", "delivery")

#: Outbox events fanned out per transaction.
DISPATCH_BATCH = 200

#: Seconds between scheduler passes while work trickles in (a job waits at most this much longer to go out).
BUSY_PAUSE = 0.1

#: Seconds a stopping worker gives the jobs it runs to finish (within the usual 30 s of a process manager).
STOP_GRACE = 25.0

#: How many messages wait in the work queue (ready, not yet delivered to a worker); None when unknown.
QueueDepth = Callable[[], Awaitable[int | None]]

#: The context parameter is injected by the worker, so publishers call ``kiq(kind, item_id)`` only.
WorkTask = AsyncTaskiqDecoratedTask[Any, Any]


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """Where the work goes. Tests give each broker a queue of its own that disappears with it."""

    url: str
    queue: str = DEFAULT_QUEUE
    exchange: str = "tongcrm"
    #: Production queues are durable quorum queues: a message survives a RabbitMQ restart.
    durable: bool = True
    prefetch: int = 8


def create_broker(spec: BrokerSpec) -> tuple[AioPikaBroker, WorkTask]:
    """The taskiq broker and its work task. Workers find their :class:`Runner` on ``broker.state.runner``."""
    if spec.durable:
        queue = Queue(name=spec.queue, routing_key=spec.queue)
        dead = Queue(name=f"{spec.queue}.dead")
    else:
        # throw-away queues (tests): RabbitMQ drops them a minute after their last use, the dead-letter one
        # (which never has a consumer, so auto-delete would never fire) included
        expiring: FieldTable = {"x-expires": 60_000}
        queue = Queue(
            name=spec.queue,
            routing_key=spec.queue,
            type=QueueType.CLASSIC,
            durable=False,
            auto_delete=True,
            arguments=expiring,
        )
        dead = Queue(
            name=f"{spec.queue}.dead",
            type=QueueType.CLASSIC,
            durable=False,
            auto_delete=True,
            arguments=expiring,
        )
    broker = AioPikaBroker(
        spec.url,
        exchange=Exchange(name=spec.exchange),
        task_queues=[queue],
        dead_letter_queue=dead,
        qos=spec.prefetch,
    )
    task: WorkTask = broker.register_task(work, task_name=WORK_TASK)
    return broker, task


#: taskiq injects the message's context (and with it the worker's state) into a parameter defaulting to this.
INJECT_CONTEXT: Any = TaskiqDepends()


async def work(kind: str, item_id: int, context: Context = INJECT_CONTEXT) -> bool:
    """Claim and run the row a message names; False when it was not due (a duplicate or a redelivery)."""
    runner: Runner = context.state.runner
    running: set[asyncio.Task[Any]] | None = context.state.get("running")
    this = asyncio.current_task()
    if running is not None and this is not None:  # the whole callback, the ack after this function included
        running.add(this)
        this.add_done_callback(running.discard)
    with structlog.contextvars.bound_contextvars(
        task_id=context.message.task_id,
        **({"job_id": item_id} if kind == "job" else {"delivery_id": item_id}),
    ):
        if kind == "job":
            return await runner.run_job(item_id)
        if kind == "delivery":
            return await runner.deliver_one(item_id)
    log.warning("broker message of an unknown kind ignored", kind=kind, item_id=item_id)
    return False


class Scheduler:
    """The broker mode's only poller: periodic slots, outbox fan-out and publishing due rows.

    It stays cheap when the cluster is busy: the lease is renewed once a third of its term (not every pass), a
    pass's unpublished rows of both kinds are marked in one transaction, and a row published earlier is
    published again only when it is likely lost: the queue has no ready message left (everything published
    reached a worker) or the row's runner died (its lock lapsed). Republishing every row that merely waits in a
    long queue would multiply the queue by itself and make each worker claim the same rows again and again.
    """

    def __init__(
        self,
        runner: Runner,
        task: WorkTask,
        *,
        lease_ttl: timedelta = timedelta(seconds=30),
        republish_after: timedelta = timedelta(seconds=30),
        batch: int = 500,
        queue_depth: QueueDepth | None = None,
    ) -> None:
        self.runner = runner
        self.task = task
        self.lease_ttl = lease_ttl
        self.republish_after = republish_after
        self.batch = batch
        #: ready messages in the work queue, None when unknown (then stale rows are always published again)
        self.queue_depth = queue_depth
        #: Messages published by this scheduler since it started (tests wait for as many to be handled).
        self.published = 0
        self._renew_at: datetime | None = None
        self._drained = True
        self._drained_at: datetime | None = None

    async def hold_lease(self) -> bool:
        now = self.runner.clock()
        if self._renew_at is not None and now < self._renew_at:
            return True  # renewed less than a third of the term ago: two thirds of it are left
        async with self.runner.sessions() as session, session.begin():
            held = await leases.acquire(
                session, SCHEDULER_LEASE, self.runner.worker_id, self.lease_ttl, now=now
            )
        self._renew_at = now + self.lease_ttl / 3 if held else None
        return held

    async def run_once(self) -> int:
        """One pass if this scheduler holds the lease; 0 (and nothing done) on a standby."""
        if not await self.hold_lease():
            return 0
        done = await self.runner.schedule_periodic()
        while True:
            dispatched = await self.runner.dispatch_events(DISPATCH_BATCH)
            done += dispatched
            if dispatched < DISPATCH_BATCH:  # a short batch took every committed event there was
                break
        return done + await self.publish_due()

    async def publish_due(self, limit: int | None = None) -> int:
        """Mark due, unpublished rows as published and publish them. Safe to run concurrently: rows are
        marked by a conditional update, so two publishers never publish the same row in the same window."""
        now = self.runner.clock()
        marked = await self._mark(
            now, limit if limit is not None else self.batch, republish=await self._queue_drained(now)
        )
        published = 0
        for position, (kind, item_id) in enumerate(marked):
            try:
                await self.task.kiq(kind, item_id)
            except Exception:
                # the broker is away (restarting): the rest go out on a later pass, not after republish_after
                await self._unmark(marked[position:], now)
                raise
            self.published += 1
            published += 1
        return published

    async def _queue_drained(self, now: datetime) -> bool:
        """Whether rows published earlier may be published again (see the class). The queue is asked at most
        every sixth of ``republish_after``: a row becomes stale no faster than that."""
        if self.queue_depth is None:
            return True
        if self._drained_at is None or now - self._drained_at >= self.republish_after / 6:
            self._drained = await self.queue_depth() == 0
            self._drained_at = now
        return self._drained

    async def _mark(self, now: datetime, limit: int, *, republish: bool) -> list[tuple[str, int]]:
        marked: list[tuple[str, int]] = []
        async with self.runner.sessions() as session, session.begin():
            for kind in KINDS:
                if len(marked) >= limit:
                    break
                table: type[Job] | type[EventDelivery]
                if kind == "job":
                    table, due, order = Job, job_due(now), (Job.run_at, Job.id)
                    # a job whose runner died is due again however long the queue is
                    lost = sa.and_(Job.status == "running", Job.locked_until < now)
                else:
                    table, due = EventDelivery, delivery_due(now)
                    order = (EventDelivery.next_attempt_at, EventDelivery.id)
                    # claimed, still pending and due again with its old publication: its relay died (a failed
                    # attempt clears published_at)
                    lost = EventDelivery.attempts > 0
                stale = table.published_at < now - self.republish_after
                publishable = sa.or_(
                    table.published_at.is_(None), stale if republish else sa.and_(stale, lost)
                )
                pick = (
                    sa.select(table.id)
                    .where(due, publishable)
                    .order_by(*order)
                    .limit(limit - len(marked))
                    .with_for_update(skip_locked=True)
                )
                ids = list((await session.execute(pick)).scalars())
                if not ids:
                    continue
                rows = await session.execute(
                    sa.update(table)
                    .where(table.id.in_(ids), publishable)
                    .values(published_at=now)
                    .returning(table.id)
                    .execution_options(synchronize_session=False)
                )
                marked.extend((kind, item_id) for item_id in sorted(rows.scalars()))
        return marked

    async def _unmark(self, items: list[tuple[str, int]], marked_at: datetime) -> None:
        async with self.runner.sessions() as session, session.begin():
            for kind in KINDS:
                table: type[Job] | type[EventDelivery] = Job if kind == "job" else EventDelivery
                ids = [item_id for item_kind, item_id in items if item_kind == kind]
                if ids:
                    await session.execute(
                        sa.update(table)
                        .where(table.id.in_(ids), table.published_at == marked_at)
                        .values(published_at=None)
                        .execution_options(synchronize_session=False)
                    )

    async def run_forever(
        self, stop: asyncio.Event, *, poll_seconds: float = 0.5, busy_pause: float = BUSY_PAUSE
    ) -> None:
        """Pass after pass: ``poll_seconds`` apart when a pass found nothing, ``busy_pause`` apart when it found
        less than a full batch (while workers keep adding rows, a pass right after the last one would find one
        or two and pay a pass's fixed round trips for each), at once after a full batch."""
        log.info("job scheduler started", worker=self.runner.worker_id)
        passes = 0
        while not stop.is_set():
            try:
                did = await self.run_once()
            except Exception:  # the loop must survive a bad pass (the database or the broker restarting)
                log.exception("job scheduler pass failed", worker=self.runner.worker_id)
                did = 0
            passes += 1
            pause = poll_seconds if not did else busy_pause if did < self.batch else 0.0
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=pause)
        async with self.runner.sessions() as session, session.begin():
            await leases.release(session, SCHEDULER_LEASE, self.runner.worker_id)
        log.info(
            "job scheduler stopped", worker=self.runner.worker_id, passes=passes, published=self.published
        )


async def run_worker(
    spec: BrokerSpec,
    runner: Runner,
    stop: asyncio.Event,
    *,
    concurrency: int = 4,
    stop_grace: float = STOP_GRACE,
) -> None:
    """Consume work messages until ``stop`` is set. Messages are acked after the row's work has run, so a
    message a dead worker held goes back to the queue (and, being a duplicate by then, claims nothing).

    On ``stop`` the worker takes no more messages and lets the jobs it runs finish and be acked (up to
    ``stop_grace`` seconds) before it closes its connection: a worker stopped for an upgrade would otherwise
    abandon them mid-run, and they would wait for their locks to lapse (five minutes) before another worker
    took them."""
    broker, _task = create_broker(spec)
    # taskiq logs every message at INFO; our own lines carry the task, job and request ids
    logging.getLogger("taskiq").setLevel(logging.WARNING)
    broker.is_worker_process = True
    broker.state.runner = runner
    running: set[asyncio.Task[Any]] = set()
    broker.state.running = running
    await broker.startup()
    log.info("job worker started", worker=runner.worker_id, queue=spec.queue, concurrency=concurrency)
    receiving = asyncio.create_task(
        run_receiver_task(
            broker,
            max_async_tasks=concurrency,
            ack_time=AcknowledgeType.WHEN_EXECUTED,
            run_startup=False,
        )
    )
    try:
        await stop.wait()
    finally:
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        if running:
            log.info("job worker finishing what it runs", worker=runner.worker_id, running=len(running))
            await asyncio.wait(set(running), timeout=stop_grace)
        await broker.shutdown()
        log.info("job worker stopped", worker=runner.worker_id)


async def run_scheduler(
    spec: BrokerSpec,
    runner: Runner,
    stop: asyncio.Event,
    *,
    poll_seconds: float = 0.5,
    republish_after: timedelta = timedelta(seconds=30),
) -> None:
    broker, task = create_broker(spec)
    await broker.startup()

    async def queue_depth() -> int | None:
        """Ready messages in the work queue, from a passive declare on a channel of its own (a failed one,
        the broker restarting, closes only that channel)."""
        if broker.write_conn is None:
            return None
        try:
            async with broker.write_conn.channel() as channel:
                queue = await channel.declare_queue(spec.queue, passive=True)
                count = queue.declaration_result.message_count
                return int(count) if count is not None else None
        except Exception:
            return None

    try:
        scheduler = Scheduler(runner, task, republish_after=republish_after, queue_depth=queue_depth)
        await scheduler.run_forever(stop, poll_seconds=poll_seconds)
    finally:
        await broker.shutdown()
