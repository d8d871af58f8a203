"""Real tongcrm processes for broker-mode tests: a scheduler, job workers and an API process as subprocesses on
a queue of the test's own, their logs in a folder, stopped (and the queue deleted) when the test ends."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tongcrm.plugin.host import PluginHost
from tongcrm.testing.broker import broker_url_for_tests
from tongcrm.testing.database import TestDatabase


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cluster_env(db: TestDatabase, secret: str, **extra: str) -> dict[str, str]:
    """The environment every process of a test cluster shares: short locks and leases, so a killed worker's
    work is taken over within seconds, and a queue no other test uses."""
    return {
        **os.environ,
        "TONGCRM_DATABASE_URL": db.url,
        "TONGCRM_SECRET_KEY": secret,
        "TONGCRM_LOG_JSON": "1",
        "TONGCRM_DISABLE_PLUGINS": "",
        "TONGCRM_JOBS_BROKER_URL": broker_url_for_tests(),
        "TONGCRM_JOBS_QUEUE": f"tongcrm.cluster-test.{os.getpid()}.{time.monotonic_ns()}",
        "TONGCRM_JOB_LOCK_SECONDS": "6",
        "TONGCRM_SYNC_LEASE_SECONDS": "4",
        "TONGCRM_JOBS_REPUBLISH_SECONDS": "5",
        "TONGCRM_IN_PROCESS_JOBS": "0",
        **extra,
    }


def noon_zone(now: datetime) -> str:
    """A fixed-offset zone in which it is about noon at ``now`` (UTC): for ``TONGCRM_TIMEZONE`` in tests that
    send marketing messages from worker processes, whose clock the test cannot move into the marketing window."""
    offset = 12 - now.hour
    return f"Etc/GMT{-offset:+d}"


async def stamp_heads(db: TestDatabase, host: PluginHost) -> None:
    """The test fixture builds the schema from the models; the processes check it is at the migrations' heads."""
    from alembic import command

    from tongcrm.db import migrate

    cfg = migrate.alembic_config(db.url, host)

    def stamp(connection: sa.Connection) -> None:
        cfg.attributes["connection"] = connection
        command.stamp(cfg, "heads")

    async with db.engine.begin() as conn:
        await conn.run_sync(stamp)


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline: float) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` once ``deadline`` (monotonic) has passed."""
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(  # noqa: S603 - this interpreter running tongcrm
            [sys.executable, "-m", "tongcrm", *args], env=self.env, stdout=log, stderr=log
        )
        return self.processes[name]

    def worker(self, name: str, *, concurrency: int = 4) -> int:
        """Start a job worker with a health port; returns the port."""
        port = free_port()
        self.start(name, "jobs", "worker", "--concurrency", str(concurrency), "--health-port", str(port))
        return port

    def wait_healthy(self, ports: list[int], deadline: float) -> None:
        for port in ports:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                        answer.read()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"no healthy process on port {port}: see {self.logs}"
                    time.sleep(0.2)

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        """A process's JSON log lines (others skipped)."""
        lines = []
        for raw in (self.logs / f"{name}.log").read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return [line for line in lines if isinstance(line, dict)]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    async def delete_queues(self) -> None:
        """The durable queues the processes declared outlive them otherwise."""
        import aio_pika

        queue = self.env["TONGCRM_JOBS_QUEUE"]
        connection = await aio_pika.connect(self.env["TONGCRM_JOBS_BROKER_URL"])
        try:
            for name in (queue, f"{queue}.dead"):
                channel = await connection.channel()
                try:
                    await channel.queue_delete(name)
                except Exception:  # noqa: S112 - a queue never declared is gone already
                    continue
        finally:
            await connection.close()


@contextmanager
def cluster(env: dict[str, str], logs: Path) -> Iterator[Cluster]:
    running = Cluster(env, logs)
    try:
        yield running
    finally:
        running.stop()
