"""Grants of entitlements to members and their use.

A grant exists once per ``grant_key`` (``monthly_coupon:2026-11:m42``), so the jobs that grant recurring benefits
can run any number of times. Standing benefits (multiplier, free shipping, member price…) are granted when a
member enters a tier and closed when they leave it (see :mod:`tongcrm.entitlements.standing`): while the tier
lasts their ``valid_until`` is NULL, since nobody knows when the tier will end.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow
from tongcrm.members.references import MemberReference, register_reference


class GrantStatus:
    #: waiting for a provider to fulfil it (retried with backoff)
    PENDING = "pending"
    #: a provider confirmed it (``reference`` holds the platform's id)
    FULFILLED = "fulfilled"
    #: nothing to fulfil on a platform: usable as soon as granted
    ACTIVE = "active"
    #: the provider refused it for good, or every attempt failed
    FAILED = "failed"


class EntitlementGrant(Base):
    __tablename__ = "entitlement_grants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    grant_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    tier_code: Mapped[str | None] = mapped_column(sa.String(32))
    ladder_version: Mapped[int | None] = mapped_column(sa.Integer)
    value: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime())
    #: NULL: open-ended (a standing grant while its tier lasts); closing it sets the moment it ended.
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(sa.String(16))
    provider: Mapped[str | None] = mapped_column(sa.String(100))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reference: Mapped[str | None] = mapped_column(sa.String(200))
    last_error: Mapped[str | None] = mapped_column(sa.String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    fulfilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (sa.Index("ix_entitlement_grants_due", "status", "next_attempt_at"),)


class EntitlementUsage(Base):
    """One use of a grant (a coupon redeemed on an order, free shipping on an order, gift packaging at a till).
    ``usage_key`` makes recording it idempotent; a recurring grant is used once, a standing one any number of
    times."""

    __tablename__ = "entitlement_usages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    grant_id: Mapped[int] = mapped_column(sa.ForeignKey("entitlement_grants.id"), index=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    usage_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    reference: Mapped[str] = mapped_column(sa.String(200), default="")
    actor: Mapped[str] = mapped_column(sa.String(100), default="system")
    used_at: Mapped[datetime] = mapped_column(UTCDateTime())


register_reference(MemberReference("entitlement_grants"))
register_reference(MemberReference("entitlement_usages"))
