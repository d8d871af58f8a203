"""API keys over HTTP, for admins: create (the key is in the answer once and never again), list, revoke.

Creating and revoking are audited (``api_key.create``, ``api_key.revoke``) with the key's id, prefix, role and
store, never its secret. A revocation is refused by every tongcrm process from its next request on (see
:class:`tongcrm.auth.service.KeyVerifier`), so an admin who revokes a leaked key here need not restart anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId, problem_response, problems
from tongcrm.api.security import requires
from tongcrm.audit.service import Actor
from tongcrm.auth import audited, service
from tongcrm.auth.models import ApiKey
from tongcrm.auth.service import KeyInfo, Principal, Role
from tongcrm.db.lengths import fits
from tongcrm.plugin.host import PluginHost


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    #: admin | operator | analyst | pos
    role: Annotated[str, fits(ApiKey.role)]
    #: The one store a ``pos`` key may touch (required for pos keys, refused for the others).
    store_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""


class KeyOut(msgspec.Struct):
    id: int
    prefix: str
    role: str
    store_code: str | None
    label: str
    created_at: datetime
    revoked_at: datetime | None


class CreatedKeyOut(KeyOut, kw_only=True):
    #: The key itself: shown in this answer only (tongcrm keeps a hash).
    key: str


def _out(k: KeyInfo) -> KeyOut:
    return KeyOut(k.id, k.prefix, k.role, k.store_code, k.label, k.created_at, k.revoked_at)


class ApiKeyController(Controller):
    path = "/api/api-keys"
    tags = ["api keys"]
    opt = requires(Role.ADMIN)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a key; the answer holds it once (audited)",
        description="`role` is one of admin, operator, analyst, pos. A pos key names its one store in "
        "`store_code` (required for pos keys, refused for the others: 400); a store code that names no store "
        "is a 422 whose problem lists the stores there are (`pointer` `/store_code`).",
        responses={
            400: problem_response(
                "Bad request: an unknown role, a pos key without a store or another key with one, an unknown "
                "field, a label or store code past its bound (the problem names it)"
            ),
            422: problem_response(
                "Unprocessable: store_code names no store (the problem lists the known ones)"
            ),
        },
    )
    async def create(
        self,
        data: JSONBody[KeyIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
        host: NamedDependency[PluginHost],
    ) -> CreatedKeyOut:
        """A ``pos`` key's ``store_code`` must name a known store (422 listing them otherwise)."""
        async with sessions() as session, session.begin():
            created, info = await audited.create(
                session,
                Actor.of(principal),
                data.role,
                host=host,
                store_code=data.store_code,
                label=data.label,
            )
        return CreatedKeyOut(**msgspec.structs.asdict(_out(info)), key=created.key)

    @get("/", summary="Every key, revoked ones included (never their secrets)")
    async def list_keys(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> list[KeyOut]:
        async with read_sessions() as session:
            return [_out(k) for k in await service.list_keys(session)]

    @delete(
        "/{key_id:int}",
        status_code=HTTP_200_OK,
        summary="Revoke a key: refused by every process from the next request on (audited; idempotent)",
        description="The last live admin key is not revoked here (409): create another admin key first, or "
        "revoke it at the server with `tongcrm apikey revoke`.",
        opt=problems(409),
    )
    async def revoke(
        self,
        key_id: PathId,
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
    ) -> KeyOut:
        async with sessions() as session, session.begin():
            revoked = await audited.revoke(session, Actor.of(principal), key_id, keep_an_admin=True)
        return _out(revoked.key)
