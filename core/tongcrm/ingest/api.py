"""The quarantine: platform records that could not be applied, for an operator to look at."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import QueryOffset
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal
from tongcrm.crypto import Vault
from tongcrm.ingest import quarantine
from tongcrm.ingest.quarantine import QuarantinePage


class QuarantineController(Controller):
    path = "/api/ingest/quarantine"
    tags = ["ingest"]
    opt = requires(*READ_ROLES)

    @get(
        "/",
        summary="Records quarantined by ingest, newest first",
        description="Each record's `payload_shape` (its keys, every value replaced by its type and length) is "
        "shown to every read role; the record itself (`payload`, the buyer's personal data as the platform sent "
        "it) only with `reveal=payload`, to admins, audited as `quarantine.reveal`.",
    )
    async def list_quarantine(
        self,
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
        account: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: QueryOffset = 0,
        reveal: Annotated[
            str | None, QueryParameter(description="`payload` (admins; audited)", max_length=20)
        ] = None,
    ) -> QuarantinePage:
        actor = Actor.of(principal)
        revealing = quarantine.check_reveal(reveal, actor)
        async with (sessions if revealing else read_sessions)() as session, session.begin():
            return await quarantine.list_quarantine(
                session, vault, account=account, limit=limit, offset=offset, actor=actor, reveal=revealing
            )
