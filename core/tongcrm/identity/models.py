"""Identity claims and the record of every merge.

An identity is a namespaced ``(kind, value)`` that points at exactly one live member. For ``mobile`` the value
is the keyed blind index of the E.164 number (``<kid>.<hmac>``) and the number itself is kept only as a
ciphertext, so the table can be searched without holding phone numbers in the clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, not_null_index, utcnow

#: ``identities``' PostgreSQL fillfactor (revision 0039): room on each page for HOT updates of ``last_seen_at``.
FILLFACTOR_IDENTITIES = 80


class Identity(Base):
    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    value: Mapped[str] = mapped_column(sa.String(200))
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    #: Encrypted original value for kinds whose ``value`` is a blind index (mobile).
    value_enc: Mapped[str | None] = mapped_column(sa.Text)
    #: Blind index of a mobile's masked form (``138****8000``, :mod:`tongcrm.members.masked`), so a masked
    #: search finds a member by every mobile it holds, not only its profile's; None for other kinds.
    masked_index: Mapped[str | None] = mapped_column(sa.String(80))
    #: The channel account the claim first came from (None: entered by an operator).
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("channel_accounts.id"))
    evidence: Mapped[str] = mapped_column(sa.Text, default="")
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Since when the platform reports this identity bound to the brand's membership on that platform (e.g.
    #: Tmall 会员通); None: not bound, or unbound since. Plugins set it only through the membership facade
    #: (:class:`tongcrm.membership.MembershipService`); it moves with the identity when members merge.
    bound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        sa.UniqueConstraint("kind", "value"),
        # set for mobile identities only: the others are not in the index (issue #22, ingestpg14)
        not_null_index("ix_identities_masked_index", "masked_index"),
        # a claim seen again rewrites ``last_seen_at``, which no index holds: room on each page keeps that
        # update HOT on PostgreSQL (no new entry in the table's indexes; issue #22, branch ingestpg14)
        {"postgresql_with": {"fillfactor": FILLFACTOR_IDENTITIES}},
    )


class Merge(Base):
    """Who merged which member into which, why, and exactly which rows moved, so an undo can move them back."""

    __tablename__ = "member_merges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    survivor_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    absorbed_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    #: active | undone
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    actor: Mapped[str] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    #: The claims that matched both members (mobile values are blind indexes).
    evidence: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    #: ``{table: [row keys]}`` moved from the absorbed member to the survivor.
    moved: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: ``{table: [row keys]}`` the merge itself created (e.g. the opt-out that makes consent strictest).
    created: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: ``{field: [before, after]}`` of the survivor's profile.
    profile_changes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    undone_by: Mapped[str | None] = mapped_column(sa.String(64))
