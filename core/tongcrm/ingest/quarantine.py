"""The quarantine, read: records ingest could not apply, newest first, for ``GET /api/ingest/quarantine`` and
the console's quarantine page alike, so both show the same records to the same roles.

A record is the platform's raw payload: receivers' names, mobiles and addresses. It follows the masking rule
of every other output (``tongcrm.members.service.REVEAL_ROLES``): by default a record is shown as its *shape*
(:func:`shape`: the keys and, for each value, only its type and length: enough to see a missing or malformed
field), and only a role that may reveal personal data gets the record itself, on asking, audited as
``quarantine.reveal`` with the ids of the records shown.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.channels.models import ChannelAccount, QuarantinedRecord
from tongcrm.crypto import Vault
from tongcrm.members import service as members
from tongcrm.privacy.sealed import QUARANTINE_PAYLOAD, unseal


def _payload(vault: Vault, stored: str) -> str:
    try:
        return unseal(vault, stored, context=QUARANTINE_PAYLOAD)
    except ValueError as exc:  # its key is no longer configured
        return f"(sealed record not readable: {exc})"


#: what ``reveal=`` may name on the quarantine
REVEALABLE = frozenset({"payload"})


def check_reveal(reveal: str | None, actor: Actor) -> bool:
    """Whether the caller asked to see the records themselves; refuses other fields and roles that may not."""
    fields = [f.strip() for f in (reveal or "").split(",") if f.strip()]
    return members.check_reveal(fields, actor, revealable=REVEALABLE)


def _shape_of(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _shape_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape_of(v) for v in value[:3]] + ([f"<{len(value) - 3} more>"] if len(value) > 3 else [])
    if isinstance(value, str):
        return f"<text {len(value)}>" if value else ""
    if isinstance(value, bool) or value is None:
        return value
    return "<number>"


def shape(payload: str) -> str:
    """A record with every value replaced by its type and length (``{"receiver_mobile": "<text 11>"}``):
    the keys and the structure stay, so a missing or wrongly typed field shows; no value does."""
    try:
        parsed = json.loads(payload)
    except ValueError:
        return f"<not JSON: {len(payload)} characters>"
    return json.dumps(_shape_of(parsed), ensure_ascii=False, indent=1)


class QuarantinedOut(msgspec.Struct):
    id: int
    account: str
    external_id: str | None
    reason: str
    #: the platform's record as it came (kept sealed at rest): only when revealed (admins, audited)
    payload: str | None
    #: the record's keys and structure, each value replaced by its type and length (always given)
    payload_shape: str
    created_at: datetime


class QuarantinePage(msgspec.Struct):
    items: list[QuarantinedOut]
    total: int
    limit: int
    offset: int
    #: whether ``payload`` holds the records themselves (a reveal, audited as ``quarantine.reveal``)
    revealed: bool = False


async def list_quarantine(
    session: AsyncSession,
    vault: Vault,
    *,
    account: str | None,
    limit: int,
    offset: int,
    actor: Actor,
    reveal: bool = False,
) -> QuarantinePage:
    """One page of quarantined records (of one channel account when ``account`` names it). ``reveal`` must
    have passed :func:`check_reveal` for ``actor``; it is audited, so the session must be able to write."""
    base = sa.select(QuarantinedRecord, ChannelAccount.name).join(
        ChannelAccount, ChannelAccount.id == QuarantinedRecord.account_id
    )
    if account:
        base = base.where(ChannelAccount.name == account)
    total = (await session.execute(sa.select(sa.func.count()).select_from(base.subquery()))).scalar_one()
    rows = (
        await session.execute(base.order_by(QuarantinedRecord.id.desc()).limit(limit).offset(offset))
    ).all()
    items = []
    for r, name in rows:
        payload = _payload(vault, r.payload)
        items.append(
            QuarantinedOut(
                r.id, name, r.external_id, r.reason, payload if reveal else None, shape(payload), r.created_at
            )
        )
    if reveal and items:
        ids = [item.id for item in items]
        audit.record(
            session, actor, "quarantine.reveal", "quarantined_record", ",".join(map(str, ids))[:64],
            after={"fields": ["payload"], "record_ids": ids},
        )  # fmt: skip
    return QuarantinePage(items=items, total=total, limit=limit, offset=offset, revealed=reveal)


async def counts_by_account(session: AsyncSession) -> list[tuple[str, int]]:
    """Every channel account with how many records it has in quarantine, by name."""
    rows = await session.execute(
        sa.select(ChannelAccount.name, sa.func.count(QuarantinedRecord.id))
        .outerjoin(QuarantinedRecord, QuarantinedRecord.account_id == ChannelAccount.id)
        .group_by(ChannelAccount.name)
        .order_by(ChannelAccount.name)
    )
    return [(str(name), int(n)) for name, n in rows]
