"""Tables of the offline_pos plugin, on the core's declarative base so migrations and ``db check`` see them.

A store is a core channel account (channel ``offline_pos``, account name = store code); this plugin adds its
tills, the receipts tills sent, and the dynamic member codes issued (by hash). Receipts are also written as core orders
(external id = the receipt key) through the ingest engine; the rows here keep what only a till knows: the key's
parts, whether the receipt came in offline, the till's clock, the cumulative returns against a sale, and the
answer the till was given, so that an upload can be replayed and get the same answer.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column
from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow
from tongcrm.members.references import MemberReference, register_reference


class PosTill(Base):
    """A till (workstation) of a store. Receipts from unregistered or disabled tills are refused."""

    __tablename__ = "pos_tills"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("channel_accounts.id", ondelete="CASCADE"))
    till_code: Mapped[str] = mapped_column(sa.String(32))
    label: Mapped[str] = mapped_column(sa.String(100), default="")
    #: active | disabled
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.UniqueConstraint("account_id", "till_code"),)


class PosReceipt(Base):
    """One receipt a till sent, keyed as ARTS POSLog keys a transaction: store, till, business day, sequence.

    ``status`` is ``applied`` (final: the same key again returns ``result`` unchanged) or ``rejected`` (nothing
    was applied; ``reason`` says why, and a later upload of the same key is tried again).
    """

    __tablename__ = "pos_receipts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("channel_accounts.id", ondelete="CASCADE"))
    till_code: Mapped[str] = mapped_column(sa.String(32))
    business_day: Mapped[date] = mapped_column(sa.Date)
    sequence: Mapped[int] = mapped_column(sa.BigInteger)
    #: ``STORE:TILL:YYYYMMDD:SEQ`` — also the core order's external id for a sale.
    receipt_key: Mapped[str] = mapped_column(sa.String(64))
    #: sale | return
    kind: Mapped[str] = mapped_column(sa.String(8))
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.String(64))
    detail: Mapped[str | None] = mapped_column(sa.Text)
    offline: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: sha256 of the receipt as sent: the same key with other content is refused, not silently merged.
    body_hash: Mapped[str] = mapped_column(sa.String(64))
    #: The till's clock at the sale, as sent.
    till_time: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The till's clock when it sent the upload (batches), if given.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: ``till_time`` corrected by the measured skew and never later than ``received_at``: what orders and
    #: points use as the time of the sale.
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: server clock − till clock, in whole seconds (positive: the till is behind); null when not measurable.
    clock_skew_seconds: Mapped[int | None] = mapped_column(sa.Integer)
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"), index=True)
    #: The core order the receipt wrote (a return: the original sale's order).
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"))
    #: A return: the key of the sale it returns goods from.
    original_key: Mapped[str | None] = mapped_column(sa.String(64))
    #: A sale: fen returned so far per line number, and how many returns were applied (the order version).
    refunds: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    returns_applied: Mapped[int] = mapped_column(sa.Integer, default=0)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("account_id", "till_code", "business_day", "sequence"),
        sa.Index("ix_pos_receipts_account_key", "account_id", "receipt_key"),
        # Partial: only a return names its sale; every sale's NULL was an index entry for nothing.
        sa.Index(
            "ix_pos_receipts_account_original",
            "account_id",
            "original_key",
            sqlite_where=sa.text("original_key IS NOT NULL"),
            postgresql_where=sa.text("original_key IS NOT NULL"),
        ),
    )


class PosMemberCode(Base):
    """A dynamic member code that was issued (see :mod:`tongcrm_offline_pos.codes`).

    The code is random and only its SHA-256 is kept: the row, not the code, names the member. ``used_at`` is
    set by the one lookup that used it, with the store and till that did.
    """

    __tablename__ = "pos_member_codes"

    code_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Accepted until then (exclusive); expired rows are deleted an hour later, as codes are issued.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("channel_accounts.id", ondelete="CASCADE"))
    till_code: Mapped[str | None] = mapped_column(sa.String(32))


#: The plugin's own tables: what it may read and write through the counter's unit of work (``uow.rows``).
TABLES: tuple[sa.Table, ...] = (
    cast(sa.Table, PosTill.__table__),
    cast(sa.Table, PosReceipt.__table__),
    cast(sa.Table, PosMemberCode.__table__),
)

#: A merge moves the absorbed member's receipts to the survivor, and an undo moves exactly those back. Codes
#: stay where they are: a lookup follows the merge from the member a code was made for, within its 30-60 s.
register_reference(MemberReference(PosReceipt.__tablename__))
