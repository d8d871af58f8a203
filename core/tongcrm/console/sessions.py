"""Console sign-in sessions, kept in the database.

The operator signs in with an API key once; the browser then holds only a random session token in an HttpOnly
cookie, never the key. The database keeps SHA-256 of the token, the key's id and the session's CSRF token.
Every request reads the session joined to its key, so a key revoked anywhere ends its sessions at the next
request, and a session ends when idle for :data:`IDLE` or older than :data:`ABSOLUTE`, whichever comes first.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.auth.models import ApiKey
from tongcrm.auth.service import KeyVerifier, Principal, Role
from tongcrm.console.models import ConsoleSession
from tongcrm.db.base import utcnow
from tongcrm.errors import Forbidden, Unauthorized

#: A session unused for this long ends (the operator signs in again).
IDLE = timedelta(minutes=30)
#: A session ends this long after sign-in however busy it is, so a stolen cookie is not good forever.
ABSOLUTE = timedelta(hours=12)
#: ``last_seen_at`` is written at most this often: a page view is a read, not a write, most of the time.
_TOUCH_EVERY = timedelta(seconds=60)
#: Roles that may sign in: till keys work through their channel's till API only (as on the HTTP API).
CONSOLE_ROLES = frozenset({Role.ADMIN, Role.OPERATOR, Role.ANALYST})


@dataclass(frozen=True, slots=True)
class OpenedSession:
    token: str
    csrf_token: str
    principal: Principal


@dataclass(frozen=True, slots=True)
class ActiveSession:
    id: int
    principal: Principal
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def sign_in(
    sessions: async_sessionmaker[AsyncSession],
    verifier: KeyVerifier,
    key: str,
    *,
    now: datetime | None = None,
) -> OpenedSession:
    """Open a session for a valid API key of a console role (401 for an unknown or revoked key, 403 for a
    till key). Expired sessions are swept here, so the table holds only live ones plus the recently idle."""
    principal = await verifier.verify(key.strip())
    if principal is None:
        raise Unauthorized("unknown or revoked API key")
    if principal.role not in CONSOLE_ROLES:
        raise Forbidden(f"role {principal.role.value!r} may not use the console")
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    async with sessions() as session, session.begin():
        await session.execute(
            sa.delete(ConsoleSession).where(
                sa.or_(ConsoleSession.last_seen_at < now - IDLE, ConsoleSession.created_at < now - ABSOLUTE)
            )
        )
        session.add(
            ConsoleSession(
                token_hash=_digest(token),
                key_id=principal.key_id,
                csrf_token=csrf,
                created_at=now,
                last_seen_at=now,
            )
        )
    return OpenedSession(token, csrf, principal)


async def resume(
    sessions: async_sessionmaker[AsyncSession], token: str, *, now: datetime | None = None
) -> ActiveSession | None:
    """The live session of a cookie's token, or None (unknown, expired, or its key revoked)."""
    if not token or len(token) > 128:
        return None
    now = now or utcnow()
    async with sessions() as session, session.begin():
        row = (
            await session.execute(
                sa.select(
                    ConsoleSession.id,
                    ConsoleSession.csrf_token,
                    ConsoleSession.created_at,
                    ConsoleSession.last_seen_at,
                    ApiKey.id.label("key_id"),
                    ApiKey.role,
                    ApiKey.store_code,
                    ApiKey.label,
                    ApiKey.revoked_at,
                )
                .join(ApiKey, ApiKey.id == ConsoleSession.key_id)
                .where(ConsoleSession.token_hash == _digest(token))
            )
        ).first()
        if row is None:
            return None
        expired = row.last_seen_at < now - IDLE or row.created_at < now - ABSOLUTE
        if expired or row.revoked_at is not None or Role(row.role) not in CONSOLE_ROLES:
            await session.execute(sa.delete(ConsoleSession).where(ConsoleSession.id == row.id))
            return None
        if now - row.last_seen_at >= _TOUCH_EVERY:
            await session.execute(
                sa.update(ConsoleSession).where(ConsoleSession.id == row.id).values(last_seen_at=now)
            )
    principal = Principal(row.key_id, Role(row.role), row.store_code, row.label)
    return ActiveSession(row.id, principal, row.csrf_token)


async def sign_out(sessions: async_sessionmaker[AsyncSession], token: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(sa.delete(ConsoleSession).where(ConsoleSession.token_hash == _digest(token)))


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
