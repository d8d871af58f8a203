"""Writing domain events. Call :func:`emit` inside the unit of work whose change the event describes; the event
exists exactly when that transaction commits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.errors import PluginError
from tongcrm.jobs.models import OutboxEvent
from tongcrm.plugin.hookspecs import EVENT_NAMES


def emit(session: AsyncSession, name: str, payload: Mapping[str, Any]) -> OutboxEvent:
    if name not in EVENT_NAMES:
        raise PluginError(f"unknown domain event {name!r}")
    event = OutboxEvent(name=name, payload=dict(payload))
    session.add(event)
    return event
