"""Hook implementations of the webhooks plugin; tongcrm loads this module through its entry point.

Every domain event hook does one thing: ask for a ``webhooks.record`` job, keyed by the event, with what the
endpoints will get. The rest happens in the plugin's jobs (:mod:`tongcrm_webhooks.service`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from tongcrm.plugin import hookimpl
from tongcrm.plugin.hookspecs import Enqueue
from tongcrm.plugin.types import (
    DomainEvent,
    JobSpec,
    MigrationLocation,
    PluginJobContext,
    RouteSpec,
    SealedColumn,
)

from tongcrm_webhooks import models as _models  # noqa: F401  (the tables must be on the metadata when loaded)
from tongcrm_webhooks import service

#: How often the delivery sweep runs (retries come due between event-driven runs).
SWEEP_EVERY = timedelta(seconds=5)
#: How often finished messages past their retention are removed.
PRUNE_EVERY = timedelta(hours=1)


def _record(event: DomainEvent, enqueue: Enqueue) -> None:
    payload = {
        "event_id": event.id,
        "type": service.EVENT_TYPES[event.name],
        "occurred_at": event.occurred_at.isoformat(),
        "data": dict(event.payload),
    }
    enqueue(service.RECORD_JOB, payload, unique_key=f"{service.RECORD_JOB}:{event.id}")


@hookimpl
def sealed_columns() -> Sequence[SealedColumn]:
    """Endpoint signing secrets are sealed per endpoint: `tongcrm keys rotate` must re-seal them."""
    return [service.SEALED_SECRETS]


@hookimpl
def member_created(event: DomainEvent, enqueue: Enqueue) -> None:
    _record(event, enqueue)


@hookimpl
def members_merged(event: DomainEvent, enqueue: Enqueue) -> None:
    _record(event, enqueue)


@hookimpl
def order_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    _record(event, enqueue)


@hookimpl
def points_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    _record(event, enqueue)


@hookimpl
def tier_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    _record(event, enqueue)


@hookimpl
def lifecycle_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    _record(event, enqueue)


@hookimpl
def message_status(event: DomainEvent, enqueue: Enqueue) -> None:
    _record(event, enqueue)


async def _record_job(ctx: PluginJobContext, payload: dict[str, Any]) -> None:
    await service.record(ctx.store, payload)


async def _deliver_job(ctx: PluginJobContext, payload: dict[str, Any]) -> None:
    await service.deliver_due(ctx.store)


async def _prune_job(ctx: PluginJobContext, payload: dict[str, Any]) -> None:
    await service.prune(ctx.store)


@hookimpl
def jobs() -> Sequence[JobSpec]:
    return [
        JobSpec(service.RECORD_JOB, _record_job, max_attempts=10),
        JobSpec(service.DELIVER_JOB, _deliver_job, every=SWEEP_EVERY),
        JobSpec(service.PRUNE_JOB, _prune_job, every=PRUNE_EVERY),
    ]


@hookimpl
def routes() -> Sequence[RouteSpec]:
    from tongcrm_webhooks.api import WebhooksController

    return [RouteSpec(handlers=(WebhooksController,))]


@hookimpl
def migration_locations() -> Sequence[MigrationLocation]:
    return [MigrationLocation(branch_label="webhooks", path=str(Path(__file__).parent / "revisions"))]
