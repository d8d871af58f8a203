"""Tables of messaging: messenger accounts, templates, the send log, budgets, opt-outs and inbound records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class MessengerAccount(Base):
    """One account on one messenger (an Aliyun SMS account). Secret settings live encrypted in ``secrets``.

    ``status`` is ``active`` or ``paused``: a messenger answering ``failed_account`` (balance exhausted,
    signature not approved…) pauses the account until an operator resumes it; its messages wait, queued.
    """

    __tablename__ = "messenger_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    messenger: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    secrets: Mapped[str | None] = mapped_column(sa.Text)
    secret_names: Mapped[list[str]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    status_code: Mapped[str] = mapped_column(sa.String(100), default="")
    status_detail: Mapped[str] = mapped_column(sa.Text, default="")
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class SendGrant(Base):
    """Messages released to one messenger account at one moment: the account's send-rate window, kept in the
    database so that it holds across dispatcher runs and processes (:mod:`tongcrm.messaging.ratewindow`).
    Rows older than the window are deleted as new ones are written."""

    __tablename__ = "messenger_send_grants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("messenger_accounts.id", ondelete="CASCADE"))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    permits: Mapped[int] = mapped_column(sa.Integer)

    __table_args__ = (sa.Index("ix_messenger_send_grants_account_granted", "account_id", "granted_at"),)


class MessageTemplate(Base):
    """A provider template (code + approved signature) with the text it renders and the variables it takes."""

    __tablename__ = "message_templates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("messenger_accounts.id"))
    #: service | marketing
    purpose: Mapped[str] = mapped_column(sa.String(16))
    signature: Mapped[str] = mapped_column(sa.String(64))
    template_code: Mapped[str] = mapped_column(sa.String(100))
    #: The approved text, ``${variable}`` placeholders included (checked for the opt-out wording).
    text: Mapped[str] = mapped_column(sa.Text)
    variables: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: Fixed values for some variables (a short link, a shop name).
    defaults: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Message(Base):
    """The send log: one row per (flow or campaign, member, order), whatever became of it.

    status: ``queued`` (waiting for its first attempt or a retry at ``next_attempt_at``), ``sending`` (claimed
    by a dispatcher until ``locked_until``), ``sent``, ``in_doubt`` (sent with no answer: it may have been
    accepted, so it is never sent again; a delivery report settles it), ``delivered``, ``failed`` (the gateway or
    the handset said no; ``code``), ``refused`` (the contact policy said no; ``reason``).
    """

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: ``<flow or campaign>:<member id>:<order id or ->``. Unique: the same message is never logged twice.
    dedupe_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    #: ``flow.payment_reminder``, ``campaign.618``…
    flow: Mapped[str] = mapped_column(sa.String(100))
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    template_id: Mapped[int] = mapped_column(sa.ForeignKey("message_templates.id"))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("messenger_accounts.id"))
    purpose: Mapped[str] = mapped_column(sa.String(16))
    #: 0 = service, 1 = marketing: the dispatcher sends lower first.
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    reason: Mapped[str] = mapped_column(sa.String(200), default="")
    code: Mapped[str] = mapped_column(sa.String(100), default="")
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    provider_id: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(sa.String(100))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Campaigns: the member is in the campaign's hold-out (control) group (:mod:`tongcrm.messaging.holdout`).
    #: The message goes through the policy and, where it would be sent, is refused with reason ``hold-out``.
    held_out: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    #: The programme day whose fatigue budget this message used (charged once, on its first real attempt).
    budget_day: Mapped[str | None] = mapped_column(sa.String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.Index("ix_messages_due", "status", "next_attempt_at"),
        sa.Index("ix_messages_flow_status", "flow", "status"),
    )


class ContactBudget(Base):
    """Messages a member was sent on one programme day (in the programme time zone), across every flow and
    campaign (the fatigue budget)."""

    __tablename__ = "contact_budgets"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    day: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    used: Mapped[int] = mapped_column(sa.Integer, default=0)


class SmsOptOut(Base):
    """A number that replied an unsubscribe keyword to a signature, kept by the number's blind index so that
    it also binds numbers that belong to no member yet."""

    __tablename__ = "sms_opt_outs"

    mobile_index: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    signature: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    #: The number, encrypted: what a key rotation re-indexes from (NULL on opt-outs recorded before 0004).
    mobile_enc: Mapped[str | None] = mapped_column(sa.Text)
    keyword: Mapped[str] = mapped_column(sa.String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class InboundRecord(Base):
    """Every receipt and reply a gateway pushed, once (``dedupe_key`` is stable across the gateway's retries),
    and every entry it pushed that could not be parsed (``kind`` ``error``)."""

    __tablename__ = "message_inbound"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("messenger_accounts.id"))
    #: receipt | reply | error
    kind: Mapped[str] = mapped_column(sa.String(16))
    dedupe_key: Mapped[str] = mapped_column(sa.String(200))
    message_id: Mapped[int | None] = mapped_column(BigId)
    #: Receipts: the gateway's per-recipient id, so a report that arrives before the send result is
    #: recorded is matched once it is.
    provider_id: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    member_id: Mapped[int | None] = mapped_column(BigId)
    #: What the record said or did: the delivery code, ``opt_out:<keyword>``, or the parse error.
    outcome: Mapped[str] = mapped_column(sa.Text, default="")
    #: Replies: the member's text; errors: the raw entry. Never a phone number.
    payload: Mapped[str] = mapped_column(sa.Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.UniqueConstraint("account_id", "dedupe_key"),)


class CareFlowConfig(Base):
    """How a care flow runs, for one channel account (``account_id``) or as the default (``None``)."""

    __tablename__ = "care_flow_configs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    flow: Mapped[str] = mapped_column(sa.String(64))
    channel_account_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("channel_accounts.id", ondelete="CASCADE")
    )
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    delay_seconds: Mapped[int] = mapped_column(sa.Integer, default=0)
    template_id: Mapped[int] = mapped_column(sa.ForeignKey("message_templates.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (sa.UniqueConstraint("flow", "channel_account_id"),)
