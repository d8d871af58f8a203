"""Referral codes (one per member) and referral rewards (one per referred member)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, UTCDateTime, utcnow


class ReferralCode(Base):
    """A member's code to hand to friends; a new member who brings it gets the member as referrer."""

    __tablename__ = "referral_codes"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(16), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReferralReward(Base):
    """The referral rule fired for a referred member: at most once per referred member (the primary key),
    credited to the live referrer of that moment; ``reversed_at`` set when the order that fired it was
    refunded in full."""

    __tablename__ = "referral_rewards"

    referred_member_id: Mapped[int] = mapped_column(
        sa.ForeignKey("members.id"), primary_key=True, autoincrement=False
    )
    #: The member credited (the referrer, or the member it had been merged into).
    referrer_member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    #: Indexed: every ingest page and till receipt asks whether an awarded reward hangs on its orders.
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    points: Mapped[int] = mapped_column(sa.Integer)
    #: awarded | reversed (its order refunded in full) | unbound (the referrer was removed as a mistake)
    status: Mapped[str] = mapped_column(sa.String(16), default="awarded")
    awarded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Points the reversal or unbinding took back (never below a zero balance, like an adjustment).
    reversed_points: Mapped[int] = mapped_column(sa.Integer, default=0)
