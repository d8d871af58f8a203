from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class ChannelAccount(Base):
    """A shop or store. Secret settings live only in ``secrets`` (encrypted); ``settings`` holds the rest."""

    __tablename__ = "channel_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: The secret settings as one ciphertext of a JSON object (see :class:`tongcrm.crypto.Vault`).
    secrets: Mapped[str | None] = mapped_column(sa.Text)
    #: Which secret settings are set (names only), so operators can see what is configured.
    secret_names: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: active | needs_reauth | disabled
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    status_detail: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class SyncState(Base):
    """Where an account's sync stands. Written in the same transaction as each page's effects."""

    __tablename__ = "sync_states"

    account_id: Mapped[int] = mapped_column(
        sa.ForeignKey("channel_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    cursor: Mapped[str | None] = mapped_column(sa.Text)
    #: Everything the platform modified before this moment has been applied (when the adapter reports it).
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pages: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    orders: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_page_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: What ``last_error`` (English, for the API and the logs) is, as a code the console words in its language:
    #: ``sync.*`` of :data:`tongcrm.ingest.service.SYNC_ERROR_CODES`, from the plugin contract's error classes.
    last_error_code: Mapped[str | None] = mapped_column(sa.String(64))


class QuarantinedRecord(Base):
    """A platform record that could not be applied: kept whole, reported, never silently dropped."""

    __tablename__ = "ingest_quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("channel_accounts.id", ondelete="CASCADE"))
    external_id: Mapped[str | None] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[str] = mapped_column(sa.Text)
    #: sha256 of (external id, payload): a replayed page does not quarantine the same record twice.
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (sa.UniqueConstraint("account_id", "fingerprint"),)


class PushMessage(Base):
    """Platform message ids already applied, per account: what was pushed, and when."""

    __tablename__ = "push_messages"

    account_id: Mapped[int] = mapped_column(
        sa.ForeignKey("channel_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    message_id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Backfill(Base):
    """A long replay of one account (``tongcrm sync --since … --window-hours …``), cut into windows that any
    number of workers take at once. ``through`` only advances over a contiguous run of finished windows, so it
    always means "everything the platform changed before this moment has been applied"."""

    __tablename__ = "backfills"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("channel_accounts.id", ondelete="CASCADE"))
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    until: Mapped[datetime] = mapped_column(UTCDateTime())
    #: running | done
    status: Mapped[str] = mapped_column(sa.String(16), default="running")
    through: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BackfillWindow(Base):
    """One window ``[start, end)`` of a backfill. Its ``cursor`` is written in the same transaction as each of
    its pages, so a worker that dies mid-window leaves it resumable by whoever takes its lease next."""

    __tablename__ = "backfill_windows"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    backfill_id: Mapped[int] = mapped_column(sa.ForeignKey("backfills.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(sa.Integer)
    start: Mapped[datetime] = mapped_column(UTCDateTime())
    end: Mapped[datetime] = mapped_column(UTCDateTime())
    #: pending | running | done
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    cursor: Mapped[str | None] = mapped_column(sa.Text)
    pages: Mapped[int] = mapped_column(sa.Integer, default=0)
    orders: Mapped[int] = mapped_column(sa.Integer, default=0)
    quarantined: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: How many times a worker took the window (more than one: a worker died or a platform call failed).
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    worked_by: Mapped[str | None] = mapped_column(sa.String(100))
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (sa.UniqueConstraint("backfill_id", "seq"),)
