"""API keys: created with a role (and a store for POS terminals), shown once, stored as a hash, revocable.

A key looks like ``tck_<prefix>_<secret>``. The prefix finds the row; only SHA-256 of the whole key is stored.
The keys are long random strings, so a plain digest is enough (nothing to brute-force); comparison is
constant-time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.auth.models import ApiKey
from tongcrm.db.base import utcnow
from tongcrm.errors import BadRequest, NotFound

KEY_PREFIX = "tck"


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    ANALYST = "analyst"
    POS = "pos"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, role and (for POS terminals) the one store it may touch."""

    key_id: int
    role: Role
    store_code: str | None
    label: str


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: int
    key: str
    role: Role
    store_code: str | None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    prefix: str
    role: str
    store_code: str | None
    label: str
    created_at: datetime
    revoked_at: datetime | None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse(key: str) -> tuple[str, str] | None:
    parts = key.split("_")
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_key(
    session: AsyncSession, role: str, *, store_code: str | None = None, label: str = ""
) -> CreatedKey:
    try:
        role_ = Role(role)
    except ValueError:
        raise BadRequest(f"unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}") from None
    if role_ is Role.POS and not store_code:
        raise BadRequest("a pos key must be scoped to one store: give --store CODE")
    if role_ is not Role.POS and store_code:
        raise BadRequest("only pos keys are scoped to a store")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32).replace('_', '-')}"
    row = ApiKey(
        prefix=prefix, secret_hash=_digest(key), role=role_.value, store_code=store_code, label=label
    )
    session.add(row)
    await session.flush()
    return CreatedKey(row.id, key, role_, store_code)


async def list_keys(session: AsyncSession) -> list[KeyInfo]:
    rows = (await session.execute(sa.select(ApiKey).order_by(ApiKey.id))).scalars()
    return [KeyInfo(r.id, r.prefix, r.role, r.store_code, r.label, r.created_at, r.revoked_at) for r in rows]


async def revoke_key(session: AsyncSession, key_id_or_prefix: str) -> KeyInfo:
    cond = ApiKey.prefix == key_id_or_prefix
    if key_id_or_prefix.isdigit():
        cond = sa.or_(cond, ApiKey.id == int(key_id_or_prefix))
    row = (await session.execute(sa.select(ApiKey).where(cond))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no API key with id or prefix {key_id_or_prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return KeyInfo(row.id, row.prefix, row.role, row.store_code, row.label, row.created_at, row.revoked_at)


class KeyVerifier:
    """Checks bearer keys, caching good answers for a few seconds so a busy till does not cost a query per call.

    A key revoked through this process takes effect at once; one revoked elsewhere within ``ttl`` seconds.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl: float = 5.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def verify(self, key: str) -> Principal | None:
        parsed = _parse(key)
        if parsed is None:
            return None
        digest = _digest(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._sessions() as session:
            row = (
                await session.execute(
                    sa.select(
                        ApiKey.id, ApiKey.secret_hash, ApiKey.role, ApiKey.store_code, ApiKey.label
                    ).where(ApiKey.prefix == parsed[0], ApiKey.revoked_at.is_(None))
                )
            ).first()
        principal = None
        if row is not None and hmac.compare_digest(row.secret_hash, digest):
            principal = Principal(row.id, Role(row.role), row.store_code, row.label)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, principal)
        return principal
