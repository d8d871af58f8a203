"""Tables of campaigns: the campaign, each of its runs, and each run's frozen audience.

A run's audience is written once, when the run starts (one set-based ``INSERT … SELECT`` from the segment's
compiled SQL), with each member's group; everything the report says about a run is measured against it, so a
segment that changes later does not rewrite what a past run was sent to.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class Campaign(Base):
    """status: ``draft`` → ``scheduled`` → ``running`` (a run started) → ``finished`` (no run left and the last
    response window closed), or ``cancelled`` from any state before ``finished``. Every change is audited."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    goal: Mapped[str] = mapped_column(sa.String(500), default="")
    segment_id: Mapped[int] = mapped_column(sa.ForeignKey("segments.id"))
    template_id: Mapped[int] = mapped_column(sa.ForeignKey("message_templates.id"))
    #: The control group's share in basis points (0–5000) and the seed of its assignment.
    control_bp: Mapped[int] = mapped_column(sa.Integer, default=0)
    control_seed: Mapped[str] = mapped_column(sa.String(64), default="")
    #: ``{"kind": "order"|"store_visit"|"redemption", "within_days": N, "min_paid_fen": …, "sku": …}``
    response: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: Most messages all runs together may queue to the treatment group (None: no limit).
    budget_messages: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: What one sent message costs, for cost per incremental order.
    message_cost_fen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: ``{"kind": "once", "at": …}`` or a recurrence (:mod:`tongcrm.campaigns.schedule`); None while a draft.
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(sa.String(16), default="draft")
    #: When the scheduler starts the next run (UTC); None when no run is left.
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.Index("ix_campaigns_status_next_run", "status", "next_run_at"),)


class CampaignRun(Base):
    """One run of a campaign at one scheduled moment. Unique per (campaign, moment): a scheduler that restarts
    or runs twice finds the run there and starts nothing new.

    status: ``queued`` (its messages are in the send log) or ``refused`` (``reason``: empty audience, budget
    exceeded; nothing was sent)."""

    __tablename__ = "campaign_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id"))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    segment_version: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.String(500), default="")
    audience: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    control: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    __table_args__ = (sa.UniqueConstraint("campaign_id", "scheduled_for"),)


class CampaignAudience(Base):
    """A run's frozen audience: each member and its group (``treatment`` or ``control``)."""

    __tablename__ = "campaign_audience"

    run_id: Mapped[int] = mapped_column(
        sa.ForeignKey("campaign_runs.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    grp: Mapped[str] = mapped_column(sa.String(16))


class CalendarMark(Base):
    """A day the brand marks on its calendar (Double 11, 618, 会员日), shown among the campaign runs."""

    __tablename__ = "calendar_marks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    on: Mapped[date] = mapped_column(sa.Date)
    name: Mapped[str] = mapped_column(sa.String(100))
    #: festival | platform_event | member_day | other
    kind: Mapped[str] = mapped_column(sa.String(16))
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.UniqueConstraint("on", "name"),)
