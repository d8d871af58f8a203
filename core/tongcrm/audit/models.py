"""The audit log table and the head of its hash chain.

Rows are inserted, never deleted, and updated in one way only: a redaction (PIPL erasure,
:func:`tongcrm.audit.service.redact`) removes a row's ``before``/``after`` and its salt and sets ``redacted_at``.
Each row carries its place in the chain (``seq``), the hash of its predecessor and its own hash
(:mod:`tongcrm.audit.chain`); that hash covers a salted digest of the content rather than the content, so a
redacted row still verifies, while a row edited, inserted, removed or redacted behind the application's back is
found by ``tongcrm audit verify``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    #: ``key:<id>`` for an API key, ``system`` for the core itself.
    actor: Mapped[str] = mapped_column(sa.String(64))
    actor_key_id: Mapped[int | None] = mapped_column(BigId)
    role: Mapped[str] = mapped_column(sa.String(16))
    action: Mapped[str] = mapped_column(sa.String(64))
    object_type: Mapped[str] = mapped_column(sa.String(32))
    object_id: Mapped[str] = mapped_column(sa.String(64))
    #: Masked views (personal data never appears in the clear, not even a revealed number); both ``None`` once
    #: the record is redacted.
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    #: SHA-256 (hex) of ``content_salt`` with the canonical ``before``/``after``: what the chain hash covers in
    #: place of the content, so the content can be redacted and the record still verify.
    content_digest: Mapped[str] = mapped_column(sa.String(64))
    #: Random per record (hex), so the digest of a short value (a name) cannot be found by trying values; removed
    #: with the content, after which nobody can test a guess against the digest.
    content_salt: Mapped[str | None] = mapped_column(sa.String(32))
    #: When the content was redacted (by :func:`tongcrm.audit.service.redact`, which audits it); ``None`` before.
    redacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    request_id: Mapped[str | None] = mapped_column(sa.String(128))
    #: Position in the hash chain: 1, 2, 3… with no gaps, assigned under the chain head's lock at flush.
    seq: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    #: The predecessor's ``hash`` (64 zeros for the first record).
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    #: SHA-256 (hex) of the canonical encoding of this record's fields (its content as ``content_digest``) and
    #: ``prev_hash``.
    hash: Mapped[str] = mapped_column(sa.String(64))

    __table_args__ = (sa.Index("ix_audit_log_object", "object_type", "object_id"),)


class AuditChainHead(Base):
    """One row (``id = 1``): the newest record's ``seq`` and ``hash``.

    Appends lock this row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite writers are serialised by
    ``BEGIN IMMEDIATE``), so two transactions never chain onto the same predecessor. It also lets a verifier
    see that records were removed from, or appended to, the end of the log behind the application's back.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))
