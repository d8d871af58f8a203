"""``/api/programme-settings``: the settings in force (analysts and up), their history, and changes (admins,
with ``If-Match`` like members)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, put
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import MAX_INT32, PathInt32
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.config import Settings
from tongcrm.errors import BadRequest
from tongcrm.members.api import PreconditionRequired, etag
from tongcrm.programme import service
from tongcrm.programme.service import ProgrammeSettings, SettingsCache

Sessions = async_sessionmaker[AsyncSession]
_ETAG = re.compile(r'^(?:W/)?"?v?(\d+)"?$')


class ProgrammeSettingsOut(msgspec.Struct, frozen=True):
    """``version`` 0: nothing saved yet, the defaults apply. Times are ``HH:MM`` in ``timezone``."""

    version: int
    timezone: str
    marketing_window_start: str
    marketing_window_end: str
    daily_budget: int
    marketing_budget: int
    opt_out_keywords: list[str]
    changed_at: datetime | None
    changed_by: str | None


class ProgrammeSettingsIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fields left out keep their value. ``version`` may stand in for ``If-Match``.

    ``marketing_window_start``/``_end``: ``HH:MM`` in the programme time zone, start before end (marketing
    waits outside it); ``daily_budget``: messages a member a day, 1–100; ``marketing_budget``: the marketing
    share of it, 0–daily; ``opt_out_keywords``: replies that unsubscribe, at least one; ``timezone``: IANA."""

    timezone: Annotated[str, msgspec.Meta(max_length=64)] | msgspec.UnsetType = msgspec.UNSET
    marketing_window_start: Annotated[str, msgspec.Meta(max_length=5)] | msgspec.UnsetType = msgspec.UNSET
    marketing_window_end: Annotated[str, msgspec.Meta(max_length=5)] | msgspec.UnsetType = msgspec.UNSET
    daily_budget: int | msgspec.UnsetType = msgspec.UNSET
    marketing_budget: int | msgspec.UnsetType = msgspec.UNSET
    opt_out_keywords: (
        list[Annotated[str, msgspec.Meta(max_length=service.MAX_KEYWORD_LENGTH)]] | msgspec.UnsetType
    ) = msgspec.UNSET
    version: int | msgspec.UnsetType = msgspec.UNSET


class ProgrammeSettingsHistory(msgspec.Struct, frozen=True):
    items: list[ProgrammeSettingsOut]
    next_cursor: int | None


def settings_out(s: ProgrammeSettings) -> ProgrammeSettingsOut:
    doc = s.document()
    return ProgrammeSettingsOut(version=s.version, changed_at=s.changed_at, changed_by=s.changed_by, **doc)


def _expected_version(if_match: str | None, data: ProgrammeSettingsIn) -> int:
    if if_match is not None:
        found = _ETAG.match(if_match.strip())
        if found is None:
            raise BadRequest(f'If-Match {if_match!r} is not an ETag this API issued (like "v3")')
        version = int(found.group(1))
        if not isinstance(data.version, msgspec.UnsetType) and data.version != version:
            raise BadRequest("If-Match and the body's version disagree")
        return version
    if isinstance(data.version, msgspec.UnsetType):
        raise PreconditionRequired(
            "send If-Match with the settings' ETag (or a version field) so a stale change cannot overwrite a "
            "newer one"
        )
    return data.version


class ProgrammeSettingsController(Controller):
    path = "/api/programme-settings"
    tags = ["programme"]

    @get("/", opt=requires(*READ_ROLES), summary="The programme settings in force (version in ETag)")
    async def show(
        self, read_sessions: NamedDependency[Sessions], settings: NamedDependency[Settings]
    ) -> Response[ProgrammeSettingsOut]:
        async with read_sessions() as session, session.begin():
            current = await service.current(session, settings)
        return Response(settings_out(current), headers={"ETag": etag(current.version)})

    @put("/", opt=requires(Role.ADMIN), summary="Change programme settings (If-Match required; audited)")
    async def change(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ProgrammeSettingsIn],
        sessions: NamedDependency[Sessions],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
        if_match: Annotated[str | None, HeaderParameter(name="If-Match")] = None,
    ) -> Response[ProgrammeSettingsOut]:
        expected = _expected_version(if_match, data)
        changes = {
            name: getattr(data, name)
            for name in service.FIELDS
            if not isinstance(getattr(data, name), msgspec.UnsetType)
        }
        async with sessions() as session, session.begin():
            saved = await service.change(
                session, settings, changes, expected_version=expected, actor=Actor.of(principal)
            )
        cache: SettingsCache = request.app.state.programme_settings
        cache.invalidate()
        return Response(settings_out(saved), headers={"ETag": etag(saved.version)})

    @get("/history", opt=requires(*READ_ROLES), summary="Saved versions, newest first (keyset pagination)")
    async def history(
        self,
        read_sessions: NamedDependency[Sessions],
        before: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_INT32, description="next_cursor of the previous page")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> ProgrammeSettingsHistory:
        async with read_sessions() as session, session.begin():
            rows = await service.history(session, limit=limit, before=before)
        return ProgrammeSettingsHistory(
            [settings_out(r) for r in rows], rows[-1].version if len(rows) == limit else None
        )

    @get("/history/{version:int}", opt=requires(*READ_ROLES), summary="One saved version")
    async def one_version(
        self, version: PathInt32, read_sessions: NamedDependency[Sessions]
    ) -> ProgrammeSettingsOut:
        async with read_sessions() as session, session.begin():
            return settings_out(await service.version(session, version))
