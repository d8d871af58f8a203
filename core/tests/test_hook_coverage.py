"""Every hook of the contract is exercised: a recording plugin implements every hookspec, and one test drives
the core through the paths that call each of them (app build, CLI build, migrations, the job runner, identity
resolution, the outbox relay) and checks that every hook was called.

Why a recorder and not a map of hook → test: a map can name a test that no longer calls its hook; here the
check is the call itself. A hook added to ``tongcrm.plugin.hookspecs`` fails
``test_the_recorder_implements_every_hook`` until the recorder implements it and the drive below reaches it.
(``core/tests/test_docs.py`` checks the other half: every hook has a section in the plugin guide.)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
import sqlalchemy as sa
from tongcrm import rotation
from tongcrm.cli import build_cli
from tongcrm.config import Settings
from tongcrm.db.migrate import alembic_config
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve
from tongcrm.jobs.models import EventDelivery, Job
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.registry import load_job_modules
from tongcrm.jobs.runner import Runner
from tongcrm.plugin import hookimpl, hookspecs
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import (
    ChannelSpec,
    DomainEvent,
    EntitlementProviderSpec,
    IdentityClaim,
    IdentityKindSpec,
    JobSpec,
    MemberMatch,
    MessengerSpec,
    MigrationLocation,
    PluginJobContext,
    ResolutionDecision,
    RouteSpec,
    SealedColumn,
)
from tongcrm.testing.database import TestDatabase

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class Recorder:
    """Implements every hook; records each call. Registration hooks answer nothing (or one job), the policy
    defers, event handlers ask for the recorder's job, whose run is recorded too."""

    def __init__(self) -> None:
        self.calls: set[str] = set()
        self.job_runs: list[dict[str, Any]] = []

    async def _tick(self, ctx: PluginJobContext, payload: dict[str, Any]) -> None:
        assert ctx.clock() == NOW
        self.job_runs.append(payload)

    @hookimpl
    def channels(self) -> Sequence[ChannelSpec]:
        self.calls.add("channels")
        return []

    @hookimpl
    def identity_kinds(self) -> Sequence[IdentityKindSpec]:
        self.calls.add("identity_kinds")
        return []

    @hookimpl
    def messengers(self) -> Sequence[MessengerSpec]:
        self.calls.add("messengers")
        return []

    @hookimpl
    def entitlement_providers(self) -> Sequence[EntitlementProviderSpec]:
        self.calls.add("entitlement_providers")
        return []

    @hookimpl
    def routes(self) -> Sequence[RouteSpec]:
        self.calls.add("routes")
        return []

    @hookimpl
    def cli_commands(self) -> Sequence[click.Command]:
        self.calls.add("cli_commands")
        return []

    @hookimpl
    def migration_locations(self) -> Sequence[MigrationLocation]:
        self.calls.add("migration_locations")
        return []

    @hookimpl
    def jobs(self) -> Sequence[JobSpec]:
        self.calls.add("jobs")
        return [JobSpec("recorder.tick", self._tick)]

    @hookimpl
    def sealed_columns(self) -> Sequence[SealedColumn]:
        self.calls.add("sealed_columns")
        return []

    @hookimpl
    def resolve_member(
        self, claims: Sequence[IdentityClaim], matches: Sequence[MemberMatch]
    ) -> ResolutionDecision | None:
        self.calls.add("resolve_member")
        return None

    def _event(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self.calls.add(event.name)
        enqueue("recorder.tick", {"event": event.name}, unique_key=f"recorder:{event.id}")

    @hookimpl
    def member_created(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self._event(event, enqueue)

    @hookimpl
    def order_changed(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self._event(event, enqueue)

    @hookimpl
    def points_changed(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self._event(event, enqueue)

    @hookimpl
    def tier_changed(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self._event(event, enqueue)

    @hookimpl
    def lifecycle_changed(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self._event(event, enqueue)

    @hookimpl
    async def members_merged(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self._event(event, enqueue)  # an async handler: the relay awaits it

    @hookimpl
    def message_status(self, event: DomainEvent, enqueue: hookspecs.Enqueue) -> None:
        self._event(event, enqueue)


def _spec_names() -> set[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {n for n, f in vars(hookspecs).items() if inspect.isfunction(f) and hasattr(f, marker)}


def _recorder_hooks() -> set[str]:
    marker = f"{hookspecs.PROJECT}_impl"
    return {n for n in dir(Recorder) if hasattr(getattr(Recorder, n), marker)}


def test_the_recorder_implements_every_hook() -> None:
    missing = _spec_names() - _recorder_hooks()
    assert not missing, f"add {sorted(missing)} to the Recorder and drive them in test_every_hook_is_called"
    assert _recorder_hooks() <= _spec_names()


async def test_every_hook_is_called_by_the_core(tongcrm_db: TestDatabase, tongcrm_settings: Settings) -> None:
    recorder = Recorder()
    host = PluginHost(autoload=False)
    host.register(recorder, "recorder")

    # start-up paths: the app (routes), the CLI (commands, channels for `channel add`), migrations
    from tongcrm.app import create_app

    create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)
    build_cli(host)
    alembic_config(tongcrm_db.url, host)
    host.messengers()  # the messaging dispatcher's registry
    host.entitlement_providers()  # the entitlements.fulfil job's registry
    async with (
        tongcrm_db.sessions() as session
    ):  # `tongcrm keys status` (and `keys rotate`) read the plugins' sealed columns
        await rotation.key_usage(session, tongcrm_settings.vault(), host)

    # identity resolution (registered kinds, then the policy), which creates a member: member_created
    ctx = ResolutionContext(host, tongcrm_settings.vault(), lambda: NOW)
    async with tongcrm_db.sessions() as session, session.begin():
        outcome = await resolve(session, ctx, ClaimSet((IdentityClaim("mobile", "+8613900000001"),)))
        assert outcome.created
        for name in sorted(hookspecs.EVENT_NAMES - {"member_created"}):
            emit(session, name, {"member_id": outcome.member_id})

    # the runner: plugin jobs, the outbox relay to every event hook, and the jobs those handlers enqueued
    runner = Runner(tongcrm_db.sessions, host, load_job_modules(), clock=lambda: NOW)
    assert "recorder.tick" in runner.plugin_jobs
    for _ in range(5):
        await runner.dispatch_events()
        await runner.deliver_events()
        while await runner.run_next_job():
            pass

    assert recorder.calls == _spec_names(), sorted(_spec_names() - recorder.calls)
    assert sorted(run["event"] for run in recorder.job_runs) == sorted(hookspecs.EVENT_NAMES)
    async with tongcrm_db.sessions() as session:
        statuses = (
            await session.execute(sa.select(EventDelivery.status).where(EventDelivery.plugin == "recorder"))
        ).scalars()
        assert set(statuses) == {"done"}
        ticks = (await session.execute(sa.select(Job.status).where(Job.name == "recorder.tick"))).scalars()
        assert list(ticks) == ["done"] * len(hookspecs.EVENT_NAMES)
