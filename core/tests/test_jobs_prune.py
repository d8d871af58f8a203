"""The ``jobs.prune`` job, on every database backend: finished jobs go once they are older than the retention,
in bounded batches; work still to do never goes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import time_machine
from tongcrm.config import Settings
from tongcrm.errors import ConfigError
from tongcrm.jobs import prune
from tongcrm.jobs.models import Job
from tongcrm.jobs.runner import JobContext, JobRegistry, Runner
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase

T0 = datetime(2026, 11, 11, 3, 0, tzinfo=UTC)


async def _job(db: TestDatabase, name: str, status: str, finished_at: datetime | None) -> int:
    async with db.sessions() as session, session.begin():
        job = Job(
            name=name,
            payload={},
            status=status,
            run_at=T0 - timedelta(days=60),
            created_at=T0 - timedelta(days=60),
            finished_at=finished_at,
            locked_by="w" if status == "running" else None,
            locked_until=T0 + timedelta(minutes=5) if status == "running" else None,
        )
        session.add(job)
        await session.flush()
        return job.id


async def _names(db: TestDatabase) -> list[str]:
    async with db.sessions() as session:
        return sorted((await session.execute(sa.select(Job.name))).scalars())


async def test_only_finished_jobs_older_than_the_retention_go(tongcrm_db: TestDatabase) -> None:
    old = T0 - timedelta(days=15)
    await _job(tongcrm_db, "old-done", "done", old)
    await _job(tongcrm_db, "old-parked", "parked", old)
    await _job(tongcrm_db, "recent-done", "done", T0 - timedelta(days=13))
    await _job(tongcrm_db, "queued", "queued", None)
    await _job(tongcrm_db, "running", "running", None)
    # a retried job carries no finished time until it finishes; one that ran before keeps its row while queued
    await _job(tongcrm_db, "requeued", "queued", old)

    assert await prune.prune_finished(tongcrm_db.sessions, T0) == 2
    assert await _names(tongcrm_db) == ["queued", "recent-done", "requeued", "running"]
    assert await prune.prune_finished(tongcrm_db.sessions, T0) == 0


async def test_batches_are_bounded_and_a_run_stops_after_its_batches(tongcrm_db: TestDatabase) -> None:
    for n in range(5):
        await _job(tongcrm_db, f"done-{n}", "done", T0 - timedelta(days=20))
    assert await prune.prune_finished(tongcrm_db.sessions, T0, batch=2, max_batches=2) == 4
    assert len(await _names(tongcrm_db)) == 1  # the next run takes the rest
    assert await prune.prune_finished(tongcrm_db.sessions, T0, batch=2, max_batches=2) == 1
    assert await _names(tongcrm_db) == []


def _registry() -> JobRegistry:
    registry = JobRegistry()
    registry.job("jobs.prune")(prune.prune)
    registry.every("jobs.prune", timedelta(hours=1), "jobs.prune")

    @registry.job("work")
    async def work(ctx: JobContext, payload: dict[str, Any]) -> None:
        if payload.get("fail"):
            raise RuntimeError("cannot")

    return registry


async def _finished_by_the_runner(db: TestDatabase, settings: Settings | None) -> Runner:
    """At T0 one job succeeds, one fails its only attempt and one waits a month; returns the runner."""
    runner = Runner(
        db.sessions,
        PluginHost(autoload=False),
        _registry(),
        services={"settings": settings} if settings else {},
    )
    with time_machine.travel(T0, tick=False):
        async with db.sessions() as session, session.begin():
            session.add_all(
                [
                    Job(name="work", payload={}, run_at=T0, created_at=T0),
                    Job(name="work", payload={"fail": True}, run_at=T0, created_at=T0, max_attempts=1),
                    Job(name="work", payload={}, run_at=T0 + timedelta(days=30), created_at=T0),
                ]
            )
        await runner.run_once()
    async with db.sessions() as session:
        statuses = sorted((await session.execute(sa.select(Job.status))).scalars())
    assert statuses == ["done", "done", "parked", "queued"]  # the first prune run found nothing old
    return runner


async def test_the_hourly_job_prunes_what_finished_two_weeks_ago(tongcrm_db: TestDatabase) -> None:
    runner = await _finished_by_the_runner(tongcrm_db, None)
    with time_machine.travel(T0 + timedelta(days=14, hours=1), tick=False):
        await runner.run_once()
    async with tongcrm_db.sessions() as session:
        left = (await session.execute(sa.select(Job.name, Job.status).order_by(Job.id))).all()
    # the waiting job stays, and so does the prune run that just finished
    assert [tuple(row) for row in left] == [("work", "queued"), ("jobs.prune", "done")]


async def test_the_retention_setting_is_honoured_and_zero_keeps_everything(tongcrm_db: TestDatabase) -> None:
    settings = Settings(database_url=tongcrm_db.url, secret_key="x" * 32, jobs_retention_days=0)
    runner = await _finished_by_the_runner(tongcrm_db, settings)
    with time_machine.travel(T0 + timedelta(days=400), tick=False):
        await runner.run_once()
    assert len(await _names(tongcrm_db)) == 5


def test_the_retention_is_read_from_the_environment(tmp_path: Any) -> None:
    env = {"TONGCRM_SECRET_KEY": "s" * 32}
    assert Settings.from_env(env, workdir=tmp_path, create=True).jobs_retention_days == 14
    assert (
        Settings.from_env(
            {**env, "TONGCRM_JOBS_RETENTION_DAYS": "30"}, workdir=tmp_path, create=True
        ).jobs_retention_days
        == 30
    )
    for bad in ("-1", "two weeks"):
        with pytest.raises(ConfigError):
            Settings.from_env({**env, "TONGCRM_JOBS_RETENTION_DAYS": bad}, workdir=tmp_path, create=True)
