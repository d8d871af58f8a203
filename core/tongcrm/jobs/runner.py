"""The in-process job runner and outbox relay.

Every step is a short transaction that claims work with a conditional ``UPDATE … RETURNING``, so any number
of runners (threads, processes, machines) can share one database: a job is claimed by exactly one of them, a
claimed job whose runner died is claimed again when its lock expires, and the lock key of a job is held
through a lease so two jobs with the same key never run at once.

Handlers must be idempotent: a handler whose effects committed but whose runner died before recording success
runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.db.base import utcnow
from tongcrm.errors import PluginError
from tongcrm.jobs import leases
from tongcrm.jobs.models import EventDelivery, Job, OutboxEvent
from tongcrm.jobs.queue import enqueue
from tongcrm.logging import get_logger
from tongcrm.metrics import DELIVERIES, JOB_FAILURES, JOB_SECONDS, JOB_WAIT_SECONDS
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.store import PluginStore
from tongcrm.plugin.types import DomainEvent, JobSpec, PluginJobContext
from tongcrm.privacy.redact import redact

log = get_logger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a job handler gets: a way to open units of work, the plugins, and the clock."""

    sessions: async_sessionmaker[AsyncSession]
    host: PluginHost
    clock: Clock
    job_id: int
    attempt: int
    services: Mapping[str, Any] = field(default_factory=dict)


JobHandler = Callable[[JobContext, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    name: str
    every: timedelta
    job: str
    payload: Mapping[str, Any] = field(default_factory=dict)


class JobRegistry:
    """Job handlers by name, and periodic schedules. Domain modules register here at import time."""

    def __init__(self) -> None:
        self.handlers: dict[str, JobHandler] = {}
        self.periodic: dict[str, PeriodicJob] = {}

    def job(self, name: str) -> Callable[[JobHandler], JobHandler]:
        def decorator(func: JobHandler) -> JobHandler:
            if name in self.handlers and self.handlers[name] is not func:
                raise ValueError(f"job {name!r} is registered twice")
            self.handlers[name] = func
            return func

        return decorator

    def every(self, name: str, every: timedelta, job: str, payload: Mapping[str, Any] | None = None) -> None:
        if every <= timedelta(0):
            raise ValueError("a periodic job needs a positive interval")
        self.periodic[name] = PeriodicJob(name, every, job, dict(payload or {}))


def job_due(now: datetime) -> sa.ColumnElement[bool]:
    """A job any runner may claim now: queued and due, or running under a lock its runner let expire (it died)."""
    return sa.or_(
        sa.and_(Job.status == "queued", Job.run_at <= now),
        sa.and_(Job.status == "running", Job.locked_until < now),
    )


def delivery_due(now: datetime) -> sa.ColumnElement[bool]:
    """A delivery any relay may attempt now (a claimed one is pushed into the future while it is worked on)."""
    return sa.and_(EventDelivery.status == "pending", EventDelivery.next_attempt_at <= now)


def _claim_target(row_id: int | None, next_due: sa.Select[Any]) -> sa.ColumnElement[Any] | int:
    """The row a claim updates: the one a broker message names, or else the next due one that no concurrent
    claim has locked."""
    if row_id is not None:
        return row_id
    return next_due.limit(1).with_for_update(skip_locked=True).scalar_subquery()


def backoff(attempt: int, *, base: float = 2.0, cap: float = 600.0) -> timedelta:
    """Exponential backoff with ±20 % jitter, so retries of many failures do not arrive together."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return timedelta(seconds=delay * random.uniform(0.8, 1.2))


class Runner:
    """Claims and runs due jobs, schedules periodic ones, and relays outbox events to plugin hooks."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        host: PluginHost,
        registry: JobRegistry,
        *,
        worker_id: str | None = None,
        clock: Clock | None = None,
        lock_ttl: timedelta = timedelta(minutes=5),
        delivery_attempts: int = 5,
        retry_base: float = 2.0,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.sessions = sessions
        self.host = host
        self.registry = registry
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.clock: Clock = clock or utcnow  # picklable: a sync's fetching child gets it
        self.lock_ttl = lock_ttl
        self.delivery_attempts = delivery_attempts
        self.retry_base = retry_base
        self.services = dict(services or {})
        self._periodic_slots: dict[str, datetime] = {}
        settings = self.services.get("settings")
        #: Plugins' jobs (the ``jobs`` hook) run with the store facade, never with the session factory.
        self.store = PluginStore(
            sessions, settings.vault() if settings is not None else None, clock=self.clock
        )
        self.plugin_jobs: dict[str, JobSpec] = host.jobs()
        for name in self.plugin_jobs:
            if name in registry.handlers:
                raise PluginError(f"plugin job {name!r} has the name of a core job")

    # ---------------------------------------------------------------------------------------------------------
    # the loop

    async def run_once(self) -> int:
        """One pass: schedule periodic slots, relay events, run due jobs. Returns how much work was done."""
        done = await self.schedule_periodic()
        done += await self.dispatch_events()
        done += await self.deliver_events()
        while await self.run_next_job():
            done += 1
        return done

    async def run_forever(self, stop: asyncio.Event, *, poll_seconds: float = 0.5) -> None:
        log.info("job runner started", worker=self.worker_id)
        while not stop.is_set():
            try:
                did = await self.run_once()
            except Exception:  # the loop must survive a bad pass (e.g. the database restarting)
                log.exception("job runner pass failed", worker=self.worker_id)
                did = 0
            if not did:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll_seconds)
        log.info("job runner stopped", worker=self.worker_id)

    # ---------------------------------------------------------------------------------------------------------
    # periodic jobs

    async def schedule_periodic(self) -> int:
        now = self.clock()
        scheduled = 0
        plugin_periodic = [
            PeriodicJob(f"plugin:{job.name}", job.every, job.name)
            for job in self.plugin_jobs.values()
            if job.every is not None
        ]
        for spec in [*self.registry.periodic.values(), *plugin_periodic]:
            seconds = spec.every.total_seconds()
            slot = datetime.fromtimestamp((now.timestamp() // seconds) * seconds, UTC)
            if self._periodic_slots.get(spec.name) == slot:
                continue
            async with self.sessions() as session, session.begin():
                key = f"periodic:{spec.name}:{slot.isoformat()}"
                plugin_job = self.plugin_jobs.get(spec.job)
                attempts = plugin_job.max_attempts if plugin_job is not None else 5
                if await enqueue(
                    session,
                    spec.job,
                    spec.payload,
                    run_at=slot,
                    unique_key=key,
                    lock_key=spec.name,
                    max_attempts=attempts,
                ):
                    scheduled += 1
            self._periodic_slots[spec.name] = slot
        return scheduled

    # ---------------------------------------------------------------------------------------------------------
    # jobs

    async def run_next_job(self) -> bool:
        return await self.run_job()

    async def run_job(self, job_id: int | None = None) -> bool:
        """Claim and run one due job: the next one, or ``job_id`` when a broker message names it.

        A message for a job that is not due (already done, running elsewhere, backing off) claims nothing and
        returns False: that is how a redelivered or duplicated message stays without effect.
        """
        job = await self._claim_job(job_id)
        if job is None:
            return False
        job_id, name, payload, attempts, max_attempts, lock_key, due_at, request_id = job
        with structlog.contextvars.bound_contextvars(
            job_id=job_id, **({"request_id": request_id} if request_id else {})
        ):
            return await self._run_claimed(job_id, name, payload, attempts, max_attempts, lock_key, due_at)

    async def _run_claimed(
        self,
        job_id: int,
        name: str,
        payload: dict[str, Any],
        attempts: int,
        max_attempts: int,
        lock_key: str | None,
        due_at: datetime,
    ) -> bool:
        JOB_WAIT_SECONDS.labels(name).observe(max(0.0, (self.clock() - due_at).total_seconds()))
        lock_name = f"job-lock:{lock_key}" if lock_key else None
        # the lock key is held per job, not per runner: a runner running several jobs at once (a broker worker's
        # concurrency) must not let two jobs of one key (two slots' syncs of one account) run side by side
        holder = f"{self.worker_id}:job-{job_id}"
        if lock_name is not None:
            async with self.sessions() as session, session.begin():
                got = await leases.acquire(session, lock_name, holder, self.lock_ttl, now=self.clock())
            if not got:
                await self._requeue(job_id, delay=timedelta(seconds=1), undo_attempt=True)
                return True
        handler = self.registry.handlers.get(name)
        plugin_job = self.plugin_jobs.get(name)
        bound = log.bind(job_id=job_id, job=name, attempt=attempts, worker=self.worker_id)
        started = time.perf_counter()
        outcome = "done"
        keeping = asyncio.create_task(self._keep_claim(job_id, lock_name, holder))
        try:
            if plugin_job is not None:
                plugin_ctx = PluginJobContext(self.store, self.clock, job_id, attempts)
                await plugin_job.handler(plugin_ctx, dict(payload))
            elif handler is None:
                raise LookupError(f"no handler registered for job {name!r}")
            else:
                ctx = JobContext(self.sessions, self.host, self.clock, job_id, attempts, self.services)
                await handler(ctx, dict(payload))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            JOB_FAILURES.labels(name).inc()
            outcome = "parked" if attempts >= max_attempts else "retry"
            if attempts >= max_attempts:
                bound.error("job parked after its last attempt", error=error)
                await self._finish(job_id, status="parked", error=traceback.format_exc())
            else:
                retry_in = backoff(attempts, base=self.retry_base)
                bound.warning("job failed; will retry", error=error, retry_in=retry_in.total_seconds())
                await self._requeue(job_id, delay=retry_in, error=traceback.format_exc())
        else:
            await self._finish(job_id, status="done")
        finally:
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
            JOB_SECONDS.labels(name, outcome).observe(time.perf_counter() - started)
            if lock_name is not None:
                async with self.sessions() as session, session.begin():
                    await leases.release(session, lock_name, holder)
        return True

    async def _keep_claim(self, job_id: int, lock_name: str | None, holder: str) -> None:
        """Extend a running job's lock (and its lock key's lease) every third of ``lock_ttl`` while its handler
        runs. Without it a job that runs longer than the lock (a long sync) looks like a dead runner's: another
        runner, or this one, claims it again and the two runs overlap. Only a runner that died (or whose loop
        stalled for a whole ``lock_ttl``) lets the lock lapse."""
        interval = self.lock_ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            try:
                async with self.sessions() as session, session.begin():
                    await session.execute(
                        sa.update(Job)
                        .where(Job.id == job_id, Job.status == "running", Job.locked_by == self.worker_id)
                        .values(locked_until=now + self.lock_ttl)
                    )
                    if lock_name is not None:
                        await leases.acquire(session, lock_name, holder, self.lock_ttl, now=now)
            except Exception:  # a database hiccup: try again next time; the lock still has two thirds left
                log.warning("could not extend a running job's lock", job_id=job_id, exc_info=True)

    async def _claim_job(
        self, job_id: int | None = None
    ) -> tuple[int, str, dict[str, Any], int, int, str | None, datetime, str | None] | None:
        now = self.clock()
        due = job_due(now)
        target = _claim_target(job_id, sa.select(Job.id).where(due).order_by(Job.run_at, Job.id))
        stmt = (
            sa.update(Job)
            .where(Job.id == target, due)
            .values(
                status="running",
                attempts=Job.attempts + 1,
                locked_by=self.worker_id,
                locked_until=now + self.lock_ttl,
            )
            .returning(
                Job.id,
                Job.name,
                Job.payload,
                Job.attempts,
                Job.max_attempts,
                Job.lock_key,
                Job.run_at,
                Job.request_id,
            )
        )
        async with self.sessions() as session, session.begin():
            row = (await session.execute(stmt)).first()
        if row is None:
            return None
        return (row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])

    async def _requeue(
        self, job_id: int, *, delay: timedelta, error: str | None = None, undo_attempt: bool = False
    ) -> None:
        values: dict[str, Any] = {
            "status": "queued",
            "run_at": self.clock() + delay,
            "locked_by": None,
            "locked_until": None,
            "published_at": None,  # broker mode: publish it again when it is due again
        }
        if error is not None:
            values["last_error"] = redact(error)
        if undo_attempt:
            values["attempts"] = Job.attempts - 1
        async with self.sessions() as session, session.begin():
            await session.execute(
                sa.update(Job).where(Job.id == job_id, Job.locked_by == self.worker_id).values(**values)
            )

    async def _finish(self, job_id: int, *, status: str, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": self.clock(), "locked_until": None}
        if error is not None:
            values["last_error"] = redact(error)
        async with self.sessions() as session, session.begin():
            await session.execute(
                sa.update(Job).where(Job.id == job_id, Job.locked_by == self.worker_id).values(**values)
            )

    # ---------------------------------------------------------------------------------------------------------
    # outbox relay

    async def dispatch_events(self, batch: int = 200) -> int:
        """Fan committed events out into one delivery per subscribing plugin (in one transaction per batch)."""
        now = self.clock()
        pick = (
            sa.select(OutboxEvent.id)
            .where(OutboxEvent.dispatched_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        async with self.sessions() as session, session.begin():
            ids = list((await session.execute(pick)).scalars())
            if not ids:
                return 0
            rows = (
                await session.execute(
                    sa.update(OutboxEvent)
                    .where(OutboxEvent.id.in_(ids), OutboxEvent.dispatched_at.is_(None))
                    .values(dispatched_at=now)
                    .returning(OutboxEvent.id, OutboxEvent.name)
                )
            ).all()
            deliveries = [
                {
                    "event_id": event_id,
                    "plugin": plugin,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for event_id, name in rows
                for plugin, _handler in self.host.event_handlers(name)
            ]
            if deliveries:
                await session.execute(sa.insert(EventDelivery), deliveries)
        return len(rows)

    async def deliver_events(self, batch: int = 100) -> int:
        delivered = 0
        for _ in range(batch):
            claimed = await self._claim_delivery()
            if claimed is None:
                break
            await self._deliver(*claimed)
            delivered += 1
        return delivered

    async def deliver_one(self, delivery_id: int) -> bool:
        """Deliver the event delivery a broker message names, if it is still due (see :meth:`run_job`)."""
        claimed = await self._claim_delivery(delivery_id)
        if claimed is None:
            return False
        await self._deliver(*claimed)
        return True

    async def _claim_delivery(
        self, delivery_id: int | None = None
    ) -> tuple[int, str, int, DomainEvent] | None:
        now = self.clock()
        due = delivery_due(now)
        target = _claim_target(
            delivery_id,
            sa.select(EventDelivery.id).where(due).order_by(EventDelivery.next_attempt_at, EventDelivery.id),
        )
        stmt = (
            sa.update(EventDelivery)
            .where(EventDelivery.id == target, due)
            # invisible to other relays while this one works on it; visible again if this one dies
            .values(attempts=EventDelivery.attempts + 1, next_attempt_at=now + self.lock_ttl)
            .returning(EventDelivery.id, EventDelivery.plugin, EventDelivery.attempts, EventDelivery.event_id)
        )
        async with self.sessions() as session, session.begin():
            row = (await session.execute(stmt)).first()
            if row is None:
                return None
            event_row = (
                await session.execute(
                    sa.select(
                        OutboxEvent.id, OutboxEvent.name, OutboxEvent.payload, OutboxEvent.occurred_at
                    ).where(OutboxEvent.id == row[3])
                )
            ).one()
        event = DomainEvent(
            id=event_row[0], name=event_row[1], payload=event_row[2], occurred_at=event_row[3]
        )
        return row[0], row[1], row[2], event

    async def _deliver(self, delivery_id: int, plugin: str, attempts: int, event: DomainEvent) -> None:
        requested: list[tuple[str, dict[str, Any], str | None, float]] = []

        def enqueue_job(
            name: str,
            payload: Mapping[str, Any] | None = None,
            *,
            unique_key: str | None = None,
            delay_seconds: float = 0,
        ) -> None:
            requested.append((name, dict(payload or {}), unique_key, delay_seconds))

        handlers = dict(self.host.event_handlers(event.name))
        bound = log.bind(event_id=event.id, event=event.name, plugin=plugin, attempt=attempts)
        try:
            handler = handlers.get(plugin)
            if handler is None:
                raise LookupError(
                    f"plugin {plugin!r} no longer handles {event.name!r} (uninstalled or blocked?)"
                )
            result = PluginHost.call_event_handler(handler, event, enqueue_job)
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:
            parked = attempts >= self.delivery_attempts
            DELIVERIES.labels(event.name, "parked" if parked else "retry").inc()
            values: dict[str, Any] = {"last_error": redact(f"{type(exc).__name__}: {exc}")}
            if parked:
                values["status"] = "parked"
                bound.error("event delivery parked after its last attempt", error=values["last_error"])
            else:
                values["next_attempt_at"] = self.clock() + backoff(attempts, base=self.retry_base)
                values["published_at"] = None
                bound.warning("event delivery failed; will retry", error=values["last_error"])
            async with self.sessions() as session, session.begin():
                await session.execute(
                    sa.update(EventDelivery).where(EventDelivery.id == delivery_id).values(**values)
                )
            return
        DELIVERIES.labels(event.name, "done").inc()
        now = self.clock()
        async with self.sessions() as session, session.begin():
            for name, payload, unique_key, delay_seconds in requested:
                plugin_job = self.plugin_jobs.get(name)
                await enqueue(
                    session,
                    name,
                    payload,
                    run_at=now + timedelta(seconds=delay_seconds),
                    unique_key=unique_key,
                    max_attempts=plugin_job.max_attempts if plugin_job is not None else 5,
                )
            await session.execute(
                sa.update(EventDelivery)
                .where(EventDelivery.id == delivery_id)
                .values(status="done", delivered_at=now, last_error=None)
            )
