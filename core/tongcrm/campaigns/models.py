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
    #: The benefit: points granted to each treated member of a run (0: none). Never to the control group.
    benefit_points: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    #: Most points all runs together may grant (None: no limit); a run that would pass it is refused up front.
    budget_points: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: Most entitlement grants all runs together may make (None: no limit); refused up front like points.
    budget_entitlements: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: The entitlement benefit granted to each treated member of a run (None: none), checked by
    #: :func:`tongcrm.entitlements.service.check_benefit`: ``{"kind", "value", "validity_days", "cost_fen"}``.
    benefit_entitlement: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    #: ``{"kind": "once", "at": …}`` or a recurrence (:mod:`tongcrm.campaigns.schedule`); None while a draft.
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(sa.String(16), default="draft")
    #: When the scheduler starts the next run (UTC); None when no run is left.
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.Index("ix_campaigns_status_next_run", "status", "next_run_at"),)


#: The codes of a refused run's ``reason_code``: the audience was empty when the run started, a budget would
#: have been passed (the same codes as :func:`tongcrm.campaigns.service.schedule`'s refusal), or the run could not
#: start (the segment broke: ``reason_params`` holds that refusal's ``code``, ``params`` and English ``message``).
RUN_REASONS = (
    "campaign_run.empty_audience",
    "campaign.over_budget_messages",
    "campaign.over_budget_points",
    "campaign.over_budget_entitlements",
    "campaign_run.could_not_start",
)

#: Statuses of a run that sent: its messages are in the send log and count against the campaign's budgets.
RUN_SENT = ("queued", "finished")


class CampaignRun(Base):
    """One run of a campaign at one scheduled moment. Unique per (campaign, moment): a scheduler that restarts
    or runs twice finds the run there and starts nothing new.

    status: ``queued`` (its messages are in the send log, or being written there), ``finished`` (all its
    messages are written and its response window has closed: its figures are final but for in-doubt sends), or
    ``refused`` (``reason``: empty audience, budget exceeded; nothing was sent)."""

    __tablename__ = "campaign_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id"))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    segment_version: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.String(500), default="")
    #: What ``reason`` says, for a reader of another language (the console's Chinese page): a code of
    #: :data:`RUN_REASONS` and the figures it names. The API keeps the English ``reason``.
    reason_code: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    reason_params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    audience: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    control: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Points the run granted to its treated members (the points budget it used).
    points_granted: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    #: Entitlement grants made to the treated members (the campaign's entitlement benefit).
    entitlements_granted: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    #: Audience members whose message is written into the send log so far: the first page when the run
    #: starts, then a page at a time as the dispatcher drains them (:mod:`tongcrm.campaigns.feed`).
    enqueued: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    #: The highest member id of the audience whose message is written (the feed's cursor, in member id order).
    enqueued_through: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")

    __table_args__ = (sa.UniqueConstraint("campaign_id", "scheduled_for"),)


class CampaignAudience(Base):
    """A run's frozen audience: each member and its group (``treatment`` or ``control``), one narrow row per
    member, read in member id order by the feed that writes the run's messages page by page.

    Neither column carries a foreign key: the rows are written by one statement selecting them from
    ``members``, in the transaction that has just inserted their run, and neither members nor runs are ever
    deleted (merged or erased members keep their row). A million per-row checks would verify nothing and took
    about a third of the freeze (migration 0026 dropped both; measured in docs/campaigns.md)."""

    __tablename__ = "campaign_audience"

    run_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    member_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
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


class Journey(Base):
    """A triggered campaign: members enter on an event or a day (``trigger``), wait, then one condition
    branch picks the action (a message and/or points). status: ``active`` (members enter) or ``paused``.

    ``trigger``: ``{"kind": "lifecycle_changed", "to": stage}``, ``{"kind": "tier_changed", "direction":
    "up"|"down"|"any", "to": tier?}``, ``{"kind": "first_order"}``, ``{"kind": "days_after_last_order",
    "days": N}``, ``{"kind": "points_expiring", "days_before": N}``, ``{"kind": "birthday"}``.
    ``steps``: ``{"wait_hours": N, "condition": segment name or None, "then": action, "else": action}`` with an
    action ``{"template": name or None, "points": N}``; see :mod:`tongcrm.campaigns.journeys`."""

    __tablename__ = "journeys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    goal: Mapped[str] = mapped_column(sa.String(500), default="")
    trigger: Mapped[dict[str, Any]] = mapped_column(JSONType)
    steps: Mapped[dict[str, Any]] = mapped_column(JSONType)
    control_bp: Mapped[int] = mapped_column(sa.Integer, default=0)
    control_seed: Mapped[str] = mapped_column(sa.String(64), default="")
    response: Mapped[dict[str, Any]] = mapped_column(JSONType)
    budget_messages: Mapped[int | None] = mapped_column(sa.BigInteger)
    budget_points: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: Most entitlement grants all participants together may receive (None: no limit).
    budget_entitlements: Mapped[int | None] = mapped_column(sa.BigInteger)
    message_cost_fen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    #: The last local day the day-based triggers (birthday, expiry, days after the last order) were scanned.
    scanned_on: Mapped[date | None] = mapped_column(sa.Date)
    #: When the journey last became active (created or resumed): day triggers are scanned from the first local
    #: day starting at or after it, so a journey created mid-day does not enter that day's earlier occurrences.
    active_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JourneyParticipant(Base):
    """One member on one journey for one trigger occurrence, unique per (journey, member, occurrence): a
    replayed event or a second scan finds the row and adds nothing. The row is the member's state, so a
    restart resumes it: ``waiting`` until ``due_at``, then ``done`` (``branch`` taken, effects recorded) in the
    same transaction as its message and points.

    ``occurrence`` names the trigger occurrence: the event id, the birthday's year, the expiring day, the
    last order's id."""

    __tablename__ = "journey_participants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    journey_id: Mapped[int] = mapped_column(sa.ForeignKey("journeys.id"))
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    occurrence: Mapped[str] = mapped_column(sa.String(100))
    #: ``treatment`` or ``control`` (deterministic per journey and member).
    grp: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16), default="waiting")
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The end of the response window opened by the action (``acted_at`` + the response's days).
    respond_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: ``then`` or ``else`` once acted.
    branch: Mapped[str | None] = mapped_column(sa.String(8))
    messaged: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    points_granted: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Entitlements granted by the action (0 or 1; the journey's entitlement benefit, treated members only).
    entitlements_granted: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    #: Why an action was left out (a budget exhausted, a member merged away).
    reason: Mapped[str] = mapped_column(sa.String(500), default="")

    __table_args__ = (
        sa.UniqueConstraint("journey_id", "member_id", "occurrence"),
        sa.Index("ix_journey_participants_state_due", "state", "due_at"),
    )
