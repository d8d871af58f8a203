"""Creating and revoking API keys with their audit records, one unit of work each: the HTTP API, the console and
the CLI all come through here, so a key made in either leaves the same trail (``api_key.create``, ``api_key.revoke``:
the key's id, prefix, role and store, never its secret)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.auth import service
from tongcrm.auth.service import CreatedKey, KeyInfo, Revoked, Role
from tongcrm.channels import service as channels
from tongcrm.errors import Unprocessable, listed, shown
from tongcrm.plugin.host import PluginHost


def _audited(k: KeyInfo) -> dict[str, object]:
    return {"prefix": k.prefix, "role": k.role, "store_code": k.store_code, "label": k.label}


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


async def create(
    session: AsyncSession,
    actor: Actor,
    role: str,
    *,
    host: PluginHost,
    store_code: str | None = None,
    label: str = "",
) -> tuple[CreatedKey, KeyInfo]:
    """A new key (its secret in the first value, once) and what may be shown of it afterwards.

    A ``pos`` key's store must be one tongcrm knows (:func:`known_store`): a key for a store that does not exist
    was accepted, and its till then only ever heard "no store"."""
    if role == Role.POS.value and store_code:
        await known_store(session, host, store_code)
    created = await service.create_key(session, role, store_code=store_code, label=label)
    info = await service.key_info(session, created.id)
    audit.record(session, actor, "api_key.create", "api_key", info.id, after=_audited(info))
    return created, info


async def known_store(session: AsyncSession, host: PluginHost, store_code: str) -> None:
    """Refuse (422, pointing at ``/store_code``) a store code that names no account of an installed store
    channel, listing the known ones. Stores are created before their keys: a store is a channel account, added
    at any time with ``tongcrm channel add CHANNEL`` or ``POST /api/channel-accounts``, and a key for a store
    that is not there yet would be refused at every till until it is; so there is nothing to allow ahead."""
    known = await channels.store_codes(session, host)
    if store_code in known:
        return
    kinds = channels.store_channels(host)
    if not kinds:
        detail = "no installed channel has stores (install the store plugin)"
    else:
        stores = listed([repr(code) for code in known]) if known else "none yet"
        detail = (
            f"the stores are the accounts of the {', '.join(kinds)} channel(s): {stores}; add the store first "
            f"(tongcrm channel add {kinds[0]} …)"
        )
    raise Unprocessable(
        f"store_code: no store {shown(store_code)}: {detail}",
        extra={"pointer": "/store_code"},
        code="apikey.unknown_store",
        params={
            "store": store_code[:40].replace("\x00", "\u2400"),
            "known": "、".join(known) if known else "（还没有）",
        },
    )


async def revoke(session: AsyncSession, actor: Actor, key_id: int, *, keep_an_admin: bool = False) -> Revoked:
    """Revoke a key (idempotent: audited only when it changed anything); ``keep_an_admin`` as
    :func:`tongcrm.auth.service.revoke` says."""
    revoked = await service.revoke(session, key_id, keep_an_admin=keep_an_admin)
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
