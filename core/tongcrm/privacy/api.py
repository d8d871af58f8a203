"""``GET /api/members/{id}/export`` and ``POST /api/members/{id}/erasure``: a member's PIPL rights, admins only.

The work is :mod:`tongcrm.privacy.service`; this maps it to HTTP. Both are audited there.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId
from tongcrm.api.security import requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.crypto import Vault
from tongcrm.errors import Unprocessable
from tongcrm.members.models import ERASED
from tongcrm.privacy import service


class ErasureIn(msgspec.Struct, forbid_unknown_fields=True):
    """``reason``: why the member is erased (the request it answers), kept in the audit log."""

    reason: Annotated[str, msgspec.Meta(max_length=500)]


class ErasureOut(msgspec.Struct):
    member_id: int
    status: str
    #: the member was already erased: nothing changed
    already_erased: bool
    #: rows changed or removed, per kind
    erased: dict[str, int]


class PrivacyController(Controller):
    path = "/api/members"
    tags = ["members"]
    opt = requires(Role.ADMIN)

    @get(
        "/{member_id:int}/export",
        summary="Everything kept about a member, as JSON (PIPL art. 45)",
        description="Profile (mobile in full), identities, consents, tags, orders with lines, the points "
        "ledger and balance, tier, messages and replies. A merged member's id exports the member it was merged "
        "into. Admins only; audited as `member.export`.",
    )
    async def export(
        self,
        member_id: PathId,
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> dict[str, Any]:
        async with sessions() as session, session.begin():
            return await service.export_member(session, vault, member_id, Actor.of(principal))

    @post(
        "/{member_id:int}/erasure",
        status_code=200,
        summary="Erase a member's personal data (PIPL art. 47)",
        description="Removes profile, identities (so lookups find nothing), tags, consent proofs, message "
        "texts and variables, reply texts, shipments and the personal values of merges and audit entries; keeps "
        "the anonymous member record (`status: erased`), orders, the points ledger and tier history, so "
        "reports and `tongcrm verify` stay right. Final. A later order by the same buyer makes a new member. "
        "Admins only; audited as `member.erase` with the reason.",
    )
    async def erase(
        self,
        member_id: PathId,
        data: JSONBody[ErasureIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
    ) -> ErasureOut:
        reason = data.reason.strip()
        if not reason:
            raise Unprocessable("an erasure needs a reason (the request it answers), for the audit log")
        async with sessions() as session, session.begin():
            report = await service.erase_member(session, member_id, Actor.of(principal), reason=reason)
        return ErasureOut(report.member_id, ERASED, report.already_erased, report.counts())
