"""A broker-mode runner for tests: a scheduler and a taskiq worker on a RabbitMQ queue of their own.

:class:`BrokerRunner` steps like :class:`tongcrm.jobs.runner.Runner` (``run_once``, ``run_next_job``), so one
job-runner test suite runs on both kinds. Each step publishes through the real broker and returns only after
the worker side has handled every message it published; the worker goes through taskiq's own receiver
(message decoding, dependency injection, acks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.acks import AcknowledgeType
from taskiq.receiver import Receiver

from tongcrm.jobs.broker import BrokerSpec, Scheduler, create_broker
from tongcrm.jobs.runner import Runner

DEFAULT_TEST_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


def broker_url_for_tests() -> str:
    return os.environ.get("TONGCRM_TEST_BROKER_URL", DEFAULT_TEST_BROKER_URL)


async def broker_reachable(url: str | None = None, *, wait_seconds: float = 2.0) -> str | None:
    """None when RabbitMQ answers at ``url``; otherwise why not (the reason a broker test is skipped with)."""
    import aio_pika

    url = url or broker_url_for_tests()
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), timeout=wait_seconds)
    except Exception as exc:
        return f"RabbitMQ at {url} is unreachable: {type(exc).__name__}: {exc}"
    await connection.close()
    return None


class _Failures(TaskiqMiddleware):
    """A task that raised is a bug in the worker path (job failures are recorded by the runner itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def on_error(self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException) -> None:
        self.errors.append(exception)


class BrokerRunner:
    def __init__(self, runner: Runner, url: str | None = None) -> None:
        self.runner = runner
        self.spec = BrokerSpec(
            url or broker_url_for_tests(), queue=f"tongcrm.test.{uuid.uuid4().hex}", durable=False
        )
        self.broker, task = create_broker(self.spec)
        self.failures = _Failures()
        self.broker.add_middlewares(self.failures)
        self.scheduler = Scheduler(runner, task)
        self.handled = 0
        self._progress = asyncio.Condition()
        self._pump: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1)

    @property
    def worker_id(self) -> str:
        return self.runner.worker_id

    async def start(self) -> BrokerRunner:
        self.broker.is_worker_process = True
        self.broker.state.runner = self.runner
        await self.broker.startup()
        self.receiver = Receiver(
            self.broker,
            executor=self._executor,
            max_async_tasks=16,
            run_startup=False,
            ack_type=AcknowledgeType.WHEN_EXECUTED,
        )
        self._pump = asyncio.create_task(self._consume())
        return self

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self.broker.shutdown()
        self._executor.shutdown(wait=False)

    async def _consume(self) -> None:
        async for message in self.broker.listen():
            task = asyncio.create_task(self._handle(message))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _handle(self, message: Any) -> None:
        try:
            await self.receiver.callback(message, raise_err=True)
        finally:
            async with self._progress:
                self.handled += 1
                self._progress.notify_all()

    async def _settle(self, *, wait_seconds: float = 20.0) -> None:
        """Wait until the worker side has handled every message this runner's scheduler published."""
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: self.handled >= self.scheduler.published), wait_seconds
            )
        if self.failures.errors:
            raise self.failures.errors[0]

    async def run_once(self) -> int:
        """A scheduler pass and every message it published handled, until a pass finds nothing to publish
        (work a delivery enqueued is published by the next pass, as the in-process runner runs it)."""
        done = 0
        while True:
            did = await self.scheduler.run_once()
            await self._settle()
            done += did
            if not did:
                return done

    async def run_next_job(self) -> bool:
        """Publish at most one due row and wait for it, like one claim of the in-process runner."""
        published = await self.scheduler.publish_due(limit=1)
        await self._settle()
        return bool(published)

    async def publish(self, kind: str, item_id: int) -> None:
        """Publish a message by hand (a duplicate, a redelivery) and wait until the worker handled it."""
        await self.scheduler.task.kiq(kind, item_id)
        self.scheduler.published += 1
        await self._settle()

    async def _claim_job(self, job_id: int | None = None) -> Any:
        return await self.runner._claim_job(job_id)
