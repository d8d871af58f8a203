"""Tables behind jobs and events. Correctness lives here (unique keys, leases); the runner only moves work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class OutboxEvent(Base):
    """A domain event, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Set when the relay has fanned the event out into one delivery per subscribing plugin.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class EventDelivery(Base):
    """One event to one plugin's handler; retried with backoff, parked with its error after the last attempt."""

    __tablename__ = "event_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("outbox_events.id", ondelete="CASCADE"))
    plugin: Mapped[str] = mapped_column(sa.String(100))
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")  # pending | done | parked
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Broker mode: when the scheduler last published this delivery; a message lost on the way is published
    #: again once this is old enough (see ``tongcrm.jobs.broker``).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        sa.UniqueConstraint("event_id", "plugin"),
        sa.Index("ix_event_deliveries_due", "status", "next_attempt_at"),
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: queued | running | done | parked
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    run_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=5)
    #: Scheduling the same unique key twice is a no-op: how periodic slots and retried effects stay single.
    unique_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    #: At most one job with the same lock key runs at a time (see ``leases``).
    lock_key: Mapped[str | None] = mapped_column(sa.String(200))
    locked_by: Mapped[str | None] = mapped_column(sa.String(100))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The request (``X-Request-ID``) that enqueued the job, if any: the job's log lines carry it, so one id
    #: follows the work from the API process to whichever worker runs it.
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    #: Broker mode: when the scheduler last published this job (see ``EventDelivery.published_at``).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (sa.Index("ix_jobs_due", "status", "run_at"),)


class Lease(Base):
    """A named lease with an expiry: a worker that dies loses it when it expires."""

    __tablename__ = "leases"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(100))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
