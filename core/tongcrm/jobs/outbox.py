"""Writing domain events. Call :func:`emit` inside the unit of work whose change the event describes; the event
exists exactly when that transaction commits."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db import direct
from tongcrm.db.dialect import dialect_name, insert_rows, rows_params, values_size
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
    step = emit_step(dialect_name(session), events, now=now)
    if step is not None:
        await direct.rows(session, *step)


def emit_step(
    dialect: str, events: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
) -> tuple[Any, Mapping[str, Any]] | None:
    """:func:`emit_many`'s insert and its parameters (None for no events), for a caller that runs it with
    other statements in one hand-off (:func:`tongcrm.db.direct.batch`)."""
    if not events:
        return None
    size = values_size(dialect, _COLUMNS, len(events))
    return _insert_events(dialect, size), events_params(dialect, events, now=now, size=size)


def events_params(
    dialect: str, events: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime, size: int | None = None
) -> Any:
    """The parameters of :func:`emit_many`'s insert for ``events`` (refusing an unknown name), for a caller
    that runs the insert inside a statement of its own (:func:`events_cte`, PostgreSQL; ``size`` as
    :func:`tongcrm.db.dialect.values_size` gave for SQLite's VALUES form)."""
    for name, _ in events:
        if name not in EVENT_NAMES:
            raise PluginError(f"unknown domain event {name!r}")
    rows = [{"name": name, "payload": dict(payload), "occurred_at": now} for name, payload in events]
    return rows_params(dialect, EVENTS, _COLUMNS, rows, size=size)


def steps_ahead(dialect: str, count: int = 1) -> list[tuple[Any, Mapping[str, Any]]]:
    """The statement :func:`emit_many` runs for ``count`` events on ``dialect`` and the parameters its plan is
    kept under (its lengths), for a start-up step that compiles it ahead (:mod:`tongcrm.warmup`; issue #22,
    branch till15). Nothing is run."""
    return [(_insert_events(dialect, values_size(dialect, _COLUMNS, count)), {})]


@functools.cache
def events_cte() -> Any:
    """PostgreSQL: :func:`emit_many`'s insert as a data-modifying CTE (named ``events``) to add to another
    statement, bound with :func:`events_params`: the events ride in that statement's round trip."""
    return _insert_events("postgresql").cte("events")


_COLUMNS = ("name", "payload", "occurred_at")


@functools.cache
def _insert_events(dialect: str, size: int | None = None) -> Any:
    """One fixed text whatever the number of events (:func:`tongcrm.db.dialect.insert_rows`; on SQLite one per
    ``size``)."""
    return insert_rows(dialect, EVENTS, _COLUMNS, size=size)
