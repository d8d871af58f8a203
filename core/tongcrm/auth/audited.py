"""Creating and revoking API keys with their audit records, one unit of work each: the HTTP API, the console and
the CLI all come through here, so a key made in either leaves the same trail (``api_key.create``, ``api_key.revoke``:
the key's id, prefix, role and store, never its secret)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.auth import service
from tongcrm.auth.service import CreatedKey, KeyInfo, Revoked


def _audited(k: KeyInfo) -> dict[str, object]:
    return {"prefix": k.prefix, "role": k.role, "store_code": k.store_code, "label": k.label}


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


async def create(
    session: AsyncSession, actor: Actor, role: str, *, store_code: str | None = None, label: str = ""
) -> tuple[CreatedKey, KeyInfo]:
    """A new key (its secret in the first value, once) and what may be shown of it afterwards."""
    created = await service.create_key(session, role, store_code=store_code, label=label)
    info = await service.key_info(session, created.id)
    audit.record(session, actor, "api_key.create", "api_key", info.id, after=_audited(info))
    return created, info


async def revoke(session: AsyncSession, actor: Actor, key_id: int) -> Revoked:
    """Revoke a key (idempotent: audited only when it changed anything)."""
    revoked = await service.revoke(session, key_id)
    if revoked.changed:
        audit.record(
            session,
            actor,
            "api_key.revoke",
            "api_key",
            key_id,
            before={**_audited(revoked.key), "revoked_at": None},
            after={**_audited(revoked.key), "revoked_at": _iso(revoked.key.revoked_at)},
        )
    return revoked


async def revoke_named(session: AsyncSession, actor: Actor, key_id_or_prefix: str) -> KeyInfo:
    """Revoke a key named by id or prefix (the CLI's way), audited like :func:`revoke`."""
    return (await revoke(session, actor, await service.key_id_named(session, key_id_or_prefix))).key
