"""Writing and reading the audit log.

Services call :func:`record` inside the unit of work of the change they describe, so an audit row exists
exactly when the change commits: the record is written, and hash-chained, as the unit of work commits
(:mod:`tongcrm.audit.chain`), so it cannot be read back in the transaction that records it. The request id comes
from the logging context the HTTP middleware binds, which keeps services free of HTTP.

:func:`redact` is the one change ever made to a written record: it removes the content of records (PIPL
erasure) and records that it did, so the chain still verifies and shows what was redacted, when and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import chain
from tongcrm.audit.models import AuditEntry
from tongcrm.auth.service import Principal
from tongcrm.db.base import utcnow


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does something: an API key (with its role) or the core itself."""

    name: str
    role: str
    key_id: int | None = None

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        return cls(f"key:{principal.key_id}", principal.role.value, principal.key_id)


SYSTEM = Actor("system", "system")


def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: object,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Append one audit entry. ``before``/``after`` must already be masked views."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    entry = AuditEntry(
        at=at or utcnow(),
        actor=actor.name,
        actor_key_id=actor.key_id,
        role=actor.role,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        before=dict(before) if before is not None else None,
        after=dict(after) if after is not None else None,
        request_id=str(request_id) if request_id else None,
    )
    chain.stage(session, entry)
    return entry


async def redact(
    session: AsyncSession,
    actor: Actor,
    which: sa.ColumnElement[bool],
    *,
    reason: str,
    object_type: str,
    object_id: object,
) -> list[int]:
    """Remove the ``before``/``after`` (and salt) of every committed audit record matching ``which``, set their
    ``redacted_at``, and append one ``audit.redact`` record about ``object_type``/``object_id`` naming them by
    ``seq`` with ``reason``. Returns those seqs (none: nothing is recorded).

    Records already redacted are left alone, and ``audit.redact`` records are never redacted: they hold only
    seqs and the reason, and they are what tells ``verify`` a redacted record was redacted by the application.
    Records staged in this unit of work are not in the table yet, so they are never redacted by it. The chain
    hash covers the content's digest, not the content, so it stays valid (:mod:`tongcrm.audit.chain`).
    """
    seqs = list(
        (
            await session.execute(
                sa.select(AuditEntry.seq)
                .where(which, AuditEntry.redacted_at.is_(None), AuditEntry.action != chain.REDACT_ACTION)
                .order_by(AuditEntry.seq)
            )
        ).scalars()
    )
    if not seqs:
        return []
    now = utcnow()
    for start in range(0, len(seqs), 1000):
        await session.execute(
            sa.update(AuditEntry)
            .where(AuditEntry.seq.in_(seqs[start : start + 1000]), AuditEntry.redacted_at.is_(None))
            .values(before=sa.null(), after=sa.null(), content_salt=None, redacted_at=now)
            .execution_options(synchronize_session=False)
        )
    record(
        session, actor, chain.REDACT_ACTION, object_type, object_id, after={"records": seqs, "reason": reason}
    )
    return seqs


@dataclass(frozen=True, slots=True)
class AuditQuery:
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    actor_key_id: int | None = None
    before_id: int | None = None  # keyset cursor: entries older than this id
    limit: int = 50


async def search(session: AsyncSession, query: AuditQuery) -> list[AuditEntry]:
    """Newest first, ``limit`` entries older than ``before_id``."""
    stmt = sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(query.limit)
    if query.action:
        stmt = stmt.where(AuditEntry.action == query.action)
    if query.object_type:
        stmt = stmt.where(AuditEntry.object_type == query.object_type)
    if query.object_id:
        stmt = stmt.where(AuditEntry.object_id == query.object_id)
    if query.actor_key_id is not None:
        stmt = stmt.where(AuditEntry.actor_key_id == query.actor_key_id)
    if query.before_id is not None:
        stmt = stmt.where(AuditEntry.id < query.before_id)
    return list((await session.execute(stmt)).scalars())
