"""Enqueueing jobs. The only interface the rest of tongcrm uses to ask for later work, so that the same jobs can
run in-process or on broker-backed workers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db.base import utcnow
from tongcrm.db.dialect import insert
from tongcrm.jobs.models import Job


async def enqueue(
    session: AsyncSession,
    name: str,
    payload: Mapping[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    delay: timedelta | None = None,
    unique_key: str | None = None,
    lock_key: str | None = None,
    max_attempts: int = 5,
) -> bool:
    """Schedule ``name`` in the caller's transaction. Returns False when ``unique_key`` was already scheduled."""
    when = run_at or utcnow()
    if delay is not None:
        when = when + delay
    stmt = insert(session, Job.__table__).values(
        name=name,
        payload=dict(payload or {}),
        run_at=when,
        unique_key=unique_key,
        lock_key=lock_key,
        max_attempts=max_attempts,
        status="queued",
        attempts=0,
        created_at=utcnow(),
        # the request that asked for the work, so the worker's log lines carry its id
        request_id=structlog.contextvars.get_contextvars().get("request_id"),
    )
    if unique_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["unique_key"])
    result = cast(CursorResult[Any], await session.execute(stmt))
    return bool(result.rowcount)
