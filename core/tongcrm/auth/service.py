"""API keys: created with a role (and a store for POS terminals), shown once, stored as a hash, revocable.

A key looks like ``tck_<prefix>_<secret>``. The prefix finds the row; only SHA-256 of the whole key is stored.
The keys are long random strings, so a plain digest is enough (nothing to brute-force); comparison is
constant-time.

A revocation takes effect in every process from the next request on: it bumps a counter in the database
(:class:`~tongcrm.auth.models.ApiKeyRevocations`) in the same transaction, and :class:`KeyVerifier` reads that
counter on every request and forgets its cached keys when it moved.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.api.inputs import id_named
from tongcrm.auth.models import ApiKey, ApiKeyRevocations
from tongcrm.db.base import utcnow
from tongcrm.db.dialect import insert
from tongcrm.db.point_reads import KeyedQuery, PointQuery, PointReader
from tongcrm.errors import BadRequest, Conflict, NotFound

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


class CachedKey(NamedTuple):
    """A key's answer as :meth:`KeyVerifier.cached` found it: its principal, the revocation counter it was read
    under, and the key's digest (so that :meth:`KeyVerifier.confirm` need not hash the key again)."""

    principal: Principal
    generation: int
    digest: str


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


def key_matches(secret_hash: str, key: str) -> bool:
    """Whether ``key`` is the secret a key row stores the hash of (compared in constant time)."""
    return hmac.compare_digest(secret_hash, _digest(key))


def key_prefix(key: str) -> str | None:
    """The prefix a key is looked up by (``tck_<prefix>_<secret>``), or None for text that is no key."""
    parsed = _parse(key)
    return parsed[0] if parsed else None


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
        raise BadRequest(
            "a pos key must be scoped to one store: give --store CODE", code="apikey.pos_needs_store"
        )
    if role_ is not Role.POS and store_code:
        raise BadRequest("only pos keys are scoped to a store", code="apikey.store_not_pos")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32).replace('_', '-')}"
    row = ApiKey(
        prefix=prefix, secret_hash=_digest(key), role=role_.value, store_code=store_code, label=label
    )
    session.add(row)
    await session.flush()
    return CreatedKey(row.id, key, role_, store_code)


#: The one row of ``api_key_revocations``.
_REVOCATIONS_ROW = 1
_REVOCATIONS = ApiKeyRevocations.__table__
#: The revocation counter; requests arriving together on PostgreSQL share one statement.
_GENERATION = KeyedQuery(
    one=PointQuery(
        sa.select(_REVOCATIONS.c.generation).where(
            _REVOCATIONS.c.id.in_(sa.bindparam("ids", expanding=True))
        ),
        lists=("ids",),
    ),
    many=PointQuery(
        sa.select(_REVOCATIONS.c.id.label("found_by"), _REVOCATIONS.c.generation).where(
            _REVOCATIONS.c.id == sa.any_(sa.bindparam("ids", type_=sa.ARRAY(sa.Integer)))
        )
    ),
    keys="ids",
)


#: The revocation counter as a column a hot point read can carry (NULL, read as 0, before any revocation): the
#: member lookup reads it in its own statement instead of a second round trip (see :meth:`KeyVerifier.cached`).
GENERATION_COLUMN = (
    sa.select(_REVOCATIONS.c.generation)
    .where(_REVOCATIONS.c.id == _REVOCATIONS_ROW)
    .scalar_subquery()
    .label("key_generation")
)


#: A live key by its prefix, for :meth:`KeyVerifier.verify`: a point read, not an ORM session. Why: a key's
#: cached answer lapses every few seconds in every process, and an unknown key is never cached, so this read runs
#: often; through a read session it cost ~1.3 ms of CPU (on SQLite a connection and a thread of aiosqlite's each
#: time) against some twenty microseconds, and the requests arriving while it ran all missed the cache too.
_KEYS = ApiKey.__table__
_LIVE_KEY = PointQuery(
    sa.select(_KEYS.c.id, _KEYS.c.secret_hash, _KEYS.c.role, _KEYS.c.store_code, _KEYS.c.label).where(
        _KEYS.c.prefix == sa.bindparam("prefix"), _KEYS.c.revoked_at.is_(None)
    )
)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.prefix, row.role, row.store_code, row.label, row.created_at, row.revoked_at)


async def list_keys(session: AsyncSession) -> list[KeyInfo]:
    rows = (await session.execute(sa.select(ApiKey).order_by(ApiKey.id))).scalars()
    return [_info(r) for r in rows]


async def key_info(session: AsyncSession, key_id: int) -> KeyInfo:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id}")
    return _info(row)


@dataclass(frozen=True, slots=True)
class Revoked:
    key: KeyInfo
    #: False when the key was revoked already (nothing changed)
    changed: bool


async def revoke(session: AsyncSession, key_id: int, *, keep_an_admin: bool = False) -> Revoked:
    """Revoke the key with this id (idempotent: a revoked key stays revoked at its first time).

    ``keep_an_admin`` refuses to revoke the last live admin key: through the API or the console that would
    leave nobody able to manage keys except at the server's shell. The shell (``tongcrm apikey``) does not
    ask for it — whoever runs it can always mint a new admin key.
    """
    row = await session.get(ApiKey, key_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no API key {key_id}")
    if keep_an_admin and row.role == "admin" and row.revoked_at is None:
        # the live admin keys locked together, so two admins revoking each other cannot both pass this check
        others = (
            await session.execute(
                sa.select(ApiKey.id)
                .where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None), ApiKey.id != key_id)
                .with_for_update()
            )
        ).all()
        if not others:
            raise Conflict(
                f"API key {key_id} is the last live admin key: create another admin key before revoking it "
                "(or revoke it at the server with tongcrm apikey revoke)",
                code="apikey.last_admin",
                params={"key_id": key_id},
            )
    return await _revoke(session, row)


async def key_id_named(session: AsyncSession, key_id_or_prefix: str) -> int:
    """The id of the key named by id or prefix (the CLI's way of naming keys)."""
    cond = ApiKey.prefix == key_id_or_prefix
    key_id_given = id_named(key_id_or_prefix)
    if key_id_given is not None:
        cond = sa.or_(cond, ApiKey.id == key_id_given)
    key_id = (await session.execute(sa.select(ApiKey.id).where(cond))).scalar_one_or_none()
    if key_id is None:
        raise NotFound(f"no API key with id or prefix {key_id_or_prefix!r}")
    return int(key_id)


async def revoke_key(session: AsyncSession, key_id_or_prefix: str) -> KeyInfo:
    """Revoke a key named by id or prefix, without an audit record (``tongcrm.auth.audited`` writes one)."""
    return (await revoke(session, await key_id_named(session, key_id_or_prefix))).key


async def _revoke(session: AsyncSession, row: ApiKey) -> Revoked:
    if row.revoked_at is not None:
        return Revoked(_info(row), changed=False)
    row.revoked_at = utcnow()
    # in the revoking transaction: other processes see the key revoked and the counter moved together
    await session.execute(
        insert(session, _REVOCATIONS)
        .values(id=_REVOCATIONS_ROW, generation=1)
        .on_conflict_do_update(index_elements=["id"], set_={"generation": _REVOCATIONS.c.generation + 1})
    )
    await session.flush()
    return Revoked(_info(row), changed=True)


class KeyVerifier:
    """Checks bearer keys, caching answers for a few seconds so a busy till does not cost a key query per call.

    Every call reads the revocation counter (one point read by primary key through the app's
    :class:`~tongcrm.db.point_reads.PointReader`: microseconds inline on SQLite, a round trip shared by the
    requests that arrive together on PostgreSQL) and uses only answers cached under the same value, so a key
    revoked through any process is refused by this one from the next request on. Each answer is cached with
    the counter read *before* its key was read: an answer read while a revocation committed is never used
    under the counter that revocation set. A key missing from the cache is read through the same reader
    (:data:`_LIVE_KEY`), once for all the callers that find it missing under the same counter: a till's
    answer lapses for all its requests at once, and on PostgreSQL the 8 tills of the benchmark each read the
    key on a connection of its own every TTL, opening the reader's connections beyond those opened ahead
    (issue #22, branch tillpg17).
    """

    def __init__(self, reader: PointReader, *, ttl: float = 5.0) -> None:
        self._reader = reader
        self._ttl = ttl
        #: key digest -> (monotonic expiry, revocation generation it was read under, principal or None)
        self._cache: dict[str, tuple[float, int, Principal | None]] = {}
        #: key digest -> (revocation generation, the read of the key under way for it)
        self._reading: dict[str, tuple[int, asyncio.Task[Principal | None]]] = {}

    def forget(self) -> None:
        self._cache.clear()
        self._reading.clear()

    async def generation(self) -> int:
        """How many revocations the database has seen."""
        row = await self._reader.first_by_keys(_GENERATION, {}, (_REVOCATIONS_ROW,))
        return 0 if row is None else int(row.generation)

    def cached(self, key: str) -> CachedKey | None:
        """The principal of ``key`` cached within its TTL and the revocation counter it was read under, without
        reading the counter. Only for a handler that reads the counter later in the request's own statement
        (:data:`GENERATION_COLUMN`) and calls :meth:`confirm` with it before it answers."""
        parsed = _parse(key)
        if parsed is None:
            return None
        digest = _digest(key)
        cached = self._cache.get(digest)
        if cached is None or cached[2] is None or cached[0] <= time.monotonic():
            return None
        return CachedKey(cached[2], cached[1], digest)

    async def confirm(self, key: str, seen: CachedKey, now: int | None) -> Principal | None:
        """After :meth:`cached`: the principal still valid under the counter ``now`` read after the request
        arrived (``None``: read it here). Unchanged counter, same answer (while still cached within its TTL);
        moved, the key is verified afresh."""
        current = await self.generation() if now is None else now
        if current == seen.generation:
            # the digest :meth:`cached` computed for this key (hashing it again cost as much as the check)
            cached = self._cache.get(seen.digest)
            if cached is not None and cached[2] is not None and cached[0] > time.monotonic():
                return cached[2]
        return await self.verify(key)

    async def verify(self, key: str) -> Principal | None:
        parsed = _parse(key)
        if parsed is None:
            return None
        generation = await self.generation()
        digest = _digest(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now and cached[1] == generation:
            return cached[2]
        # the callers that find the key lapsed under the same counter share one read of it
        reading = self._reading.get(digest)
        if reading is None or reading[0] != generation:
            task = asyncio.get_running_loop().create_task(self._read(parsed[0], digest, generation))
            task.add_done_callback(_retrieved)
            reading = self._reading[digest] = (generation, task)
        return await asyncio.shield(reading[1])

    async def _read(self, prefix: str, digest: str, generation: int) -> Principal | None:
        started = time.monotonic()
        try:
            row = await self._reader.first(_LIVE_KEY, {"prefix": prefix})
        finally:
            if self._reading.get(digest, (None, None))[1] is asyncio.current_task():
                del self._reading[digest]
        principal = None
        if row is not None and hmac.compare_digest(row.secret_hash, digest):
            principal = Principal(row.id, Role(row.role), row.store_code, row.label)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (started + self._ttl, generation, principal)
        return principal


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A shared read whose callers were all cancelled: its failure is theirs, not the event loop's to report."""
    if not task.cancelled():
        task.exception()
