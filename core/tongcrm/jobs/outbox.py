"""Writing domain events. Call :func:`emit` inside the unit of work whose change the event describes; the event
exists exactly when that transaction commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.errors import PluginError
from tongcrm.jobs.models import OutboxEvent
from tongcrm.plugin.hookspecs import EVENT_NAMES

#: The outbox table, for bulk paths that build events in SQL.
EVENTS = cast(sa.Table, OutboxEvent.__table__)


def emit(session: AsyncSession, name: str, payload: Mapping[str, Any]) -> OutboxEvent:
    if name not in EVENT_NAMES:
        raise PluginError(f"unknown domain event {name!r}")
    event = OutboxEvent(name=name, payload=dict(payload))
    session.add(event)
    return event


async def emit_many(
    session: AsyncSession, events: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
) -> None:
    """Many events in one statement, for bulk paths (an ingest page, a batch of awards).

    It writes the same rows as :func:`emit`, through the table rather than the ORM's bulk path, which spent
    more time building the rows than the database spent storing them.
    """
    if not events:
        return
    for name, _ in events:
        if name not in EVENT_NAMES:
            raise PluginError(f"unknown domain event {name!r}")
    await session.execute(
        sa.insert(EVENTS),
        [{"name": name, "payload": dict(payload), "occurred_at": now} for name, payload in events],
    )
