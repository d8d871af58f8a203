"""Tables of the webhooks plugin, on the core's declarative base so migrations and ``db check`` see them.

An **endpoint** subscribes a URL to event types and signs with its **secrets** (more than one only while a
rotation's grace period runs). Each domain event becomes one **message** (its body, fixed once, so every
retry and replay sends the same bytes under the same ``webhook-id``), and one **delivery** per subscribed
endpoint: ``pending`` (due at ``next_attempt_at``), ``delivered``, or ``dead`` (out of attempts: the
dead-letter list, replayable). Every HTTP try is an **attempt** row: the delivery log.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column
from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class WebhookEndpoint(Base):
    __tablename__ = "webhooks_endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(sa.String(2000))
    description: Mapped[str] = mapped_column(sa.String(200), default="")
    #: event types (``member.created``…) this endpoint receives
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: the first failed attempt since the last success (None: the latest attempt succeeded, or none was made)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: why tongcrm disabled it (it failed for too long); None when enabled, or disabled by an admin
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(200))


class WebhookSecret(Base):
    """A signing secret, sealed with the installation's key. ``expires_at`` is set when a rotation replaced it:
    until then messages carry its signature next to the new one's."""

    __tablename__ = "webhooks_secrets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        sa.ForeignKey("webhooks_endpoints.id", ondelete="CASCADE"), index=True
    )
    secret_sealed: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookMessage(Base):
    __tablename__ = "webhooks_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: the core's outbox event: one message per event, however often the event is delivered to this plugin
    event_id: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    #: the exact JSON body sent (and signed) on every attempt
    body: Mapped[str] = mapped_column(sa.Text)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: when it was recorded: the retention sweep removes finished messages by it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WebhookDelivery(Base):
    __tablename__ = "webhooks_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("webhooks_messages.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(
        sa.ForeignKey("webhooks_endpoints.id", ondelete="CASCADE"), index=True
    )
    #: pending | delivered | dead
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: how often an operator replayed it from the dead-letter list
    replays: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("message_id", "endpoint_id"),
        sa.Index("ix_webhooks_deliveries_due", "status", "next_attempt_at"),
    )


class WebhookAttempt(Base):
    __tablename__ = "webhooks_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        sa.ForeignKey("webhooks_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.String(500))
    duration_ms: Mapped[int] = mapped_column(sa.Integer)


def table(model: type[Base]) -> sa.Table:
    return cast(sa.Table, model.__table__)


ENDPOINTS = table(WebhookEndpoint)
SECRETS = table(WebhookSecret)
MESSAGES = table(WebhookMessage)
DELIVERIES = table(WebhookDelivery)
ATTEMPTS = table(WebhookAttempt)
#: every table of the plugin: what its units of work may touch
TABLES: tuple[sa.Table, ...] = (ENDPOINTS, SECRETS, MESSAGES, DELIVERIES, ATTEMPTS)

__all__ = ["ATTEMPTS", "DELIVERIES", "ENDPOINTS", "MESSAGES", "SECRETS", "TABLES"]
