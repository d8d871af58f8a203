"""Segments HTTP API: the language catalogue, preview of a draft, saved segments with versions, live and daily
counts, the member list, CSV export and "why is this member in it". Thin: roles and shapes here, logic in
:mod:`tongcrm.segments.service`.

Analysts and up may read and preview; operators and up may save; an export reveals mobiles and names only for admins,
and every export is audited. Errors in a definition come back as a 422 problem whose ``pointer`` (and each of
``errors[].pointer``) is a JSON pointer into the definition document.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import MAX_ID, PathId, id_named
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal
from tongcrm.config import Settings
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.db.lengths import fits
from tongcrm.members.api import member_out
from tongcrm.members.schemas import MemberOut
from tongcrm.members.service import check_reveal
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import service
from tongcrm.segments.models import Segment, SegmentVersion
from tongcrm.segments.schema import catalogue

Sessions = async_sessionmaker[AsyncSession]


class PreviewIn(msgspec.Struct):
    definition: dict[str, Any]
    sample: int = 10


class WarningOut(msgspec.Struct):
    pointer: str
    detail: str


class PreviewOut(msgspec.Struct):
    count: int
    sample: list[MemberOut]
    #: Values that match no member (likely typos), with their JSON pointers.
    warnings: list[WarningOut]


class SegmentIn(msgspec.Struct):
    name: Annotated[str, fits(Segment.name)]
    definition: dict[str, Any]
    description: Annotated[str, fits(Segment.description)] = ""
    note: Annotated[str, fits(SegmentVersion.note)] = ""


class VersionIn(msgspec.Struct):
    definition: dict[str, Any]
    description: Annotated[str, fits(Segment.description)] | None = None
    note: Annotated[str, fits(SegmentVersion.note)] = ""


class VersionOut(msgspec.Struct):
    version: int
    definition: dict[str, Any]
    note: str
    created_by: str
    created_at: datetime


class SegmentOut(msgspec.Struct):
    id: int
    name: str
    description: str
    version: int
    definition: dict[str, Any]
    created_by: str
    created_at: datetime
    updated_at: datetime


class CountOut(msgspec.Struct):
    segment_id: int
    version: int
    members: int
    at: datetime


class DailyCountOut(msgspec.Struct):
    on: date
    version: int
    members: int
    computed_at: datetime


class SegmentMembersOut(msgspec.Struct):
    items: list[MemberOut]
    next_cursor: int | None


class WhyOut(msgspec.Struct):
    pointer: str
    node: str
    met: bool
    op: str | None = None
    value: Any = None
    params: dict[str, Any] = {}
    children: list[WhyOut] = []


class MemberWhyOut(msgspec.Struct):
    member_id: int
    segment_id: int
    version: int
    member: bool
    conditions: WhyOut


def _segment_out(segment: Segment, definition: dict[str, Any]) -> SegmentOut:
    return SegmentOut(
        segment.id, segment.name, segment.description, segment.version, definition, segment.created_by,
        segment.created_at, segment.updated_at,
    )  # fmt: skip


def _version_out(v: SegmentVersion) -> VersionOut:
    return VersionOut(v.version, v.definition, v.note, v.created_by, v.created_at)


def _why_out(e: service.Explained) -> WhyOut:
    return WhyOut(e.pointer, e.node, e.met, e.op, e.value, dict(e.params), [_why_out(c) for c in e.children])


def _ref(segment: str) -> int | str:
    """A path segment names a segment by id or by name (a number no id can be is a name: 404, not 500)."""
    found = id_named(segment)
    return segment if found is None else found


class SegmentController(Controller):
    path = "/api/segments"
    tags = ["segments"]

    @get(
        "/fields",
        opt=requires(*READ_ROLES),
        summary="The segment language: fields, types, operators, parameters",
    )
    async def fields(self) -> dict[str, Any]:
        cat = catalogue()
        return {"version": cat.version, "fields": cat.fields}

    @post(
        "/preview", opt=requires(*READ_ROLES), status_code=200, summary="Count and sample a draft (not saved)"
    )
    async def preview(
        self,
        data: JSONBody[PreviewIn],
        sessions: NamedDependency[Sessions],
        read_sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
    ) -> PreviewOut:
        await service.refresh_activity(sessions)
        async with read_sessions() as session:
            context = await service.load_context(session, host, utcnow())
            result = await service.preview(session, vault, context, data.definition, sample=data.sample)
        return PreviewOut(
            result.count,
            [member_out(s) for s in result.sample],
            [WarningOut(w.pointer, w.detail) for w in result.warnings],
        )

    @get("/", opt=requires(*READ_ROLES), summary="Saved segments, by name")
    async def list_segments(self, read_sessions: NamedDependency[Sessions]) -> list[SegmentOut]:
        async with read_sessions() as session:
            return [
                _segment_out(s, await service.current_definition(session, s))
                for s in await service.list_segments(session)
            ]

    @post("/", opt=requires(*WRITE_ROLES), status_code=201, summary="Save a new segment (version 1; audited)")
    async def create(
        self,
        data: JSONBody[SegmentIn],
        sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
        principal: NamedDependency[Principal],
    ) -> SegmentOut:
        async with sessions() as session, session.begin():
            context = await service.load_context(session, host, utcnow())
            segment = await service.save(
                session, context, data.name, data.definition, Actor.of(principal),
                description=data.description, note=data.note, create=True,
            )  # fmt: skip
            return _segment_out(segment, data.definition)

    @put("/{segment:str}", opt=requires(*WRITE_ROLES), summary="Save a new version of a segment (audited)")
    async def new_version(
        self,
        segment: FromPath[str],
        data: JSONBody[VersionIn],
        sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
        principal: NamedDependency[Principal],
    ) -> SegmentOut:
        async with sessions() as session, session.begin():
            found = await service.get_segment(session, _ref(segment))
            context = await service.load_context(session, host, utcnow())
            saved = await service.save(
                session, context, found.name, data.definition, Actor.of(principal),
                description=data.description, note=data.note, create=False,
            )  # fmt: skip
            return _segment_out(saved, data.definition)

    @get("/{segment:str}", opt=requires(*READ_ROLES), summary="A segment and its current definition")
    async def get_segment(
        self, segment: FromPath[str], read_sessions: NamedDependency[Sessions]
    ) -> SegmentOut:
        async with read_sessions() as session:
            found = await service.get_segment(session, _ref(segment))
            return _segment_out(found, await service.current_definition(session, found))

    @get("/{segment:str}/versions", opt=requires(*READ_ROLES), summary="Every version, newest first")
    async def list_versions(
        self, segment: FromPath[str], read_sessions: NamedDependency[Sessions]
    ) -> list[VersionOut]:
        async with read_sessions() as session:
            found = await service.get_segment(session, _ref(segment))
            return [_version_out(v) for v in await service.versions(session, found.id)]

    @get("/{segment:str}/count", opt=requires(*READ_ROLES), summary="How many members the segment has now")
    async def count(
        self,
        segment: FromPath[str],
        sessions: NamedDependency[Sessions],
        read_sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
    ) -> CountOut:
        now = utcnow()
        await service.refresh_activity(sessions)
        async with read_sessions() as session:
            found = await service.get_segment(session, _ref(segment))
            context = await service.load_context(session, host, now)
            members = await service.count(session, await service.prepared_segment(session, context, found))
        return CountOut(found.id, found.version, members, now)

    @get(
        "/{segment:str}/counts",
        opt=requires(*READ_ROLES),
        summary="Daily counts (the snapshot job), oldest first",
    )
    async def daily_counts(
        self,
        segment: FromPath[str],
        read_sessions: NamedDependency[Sessions],
        settings: NamedDependency[Settings],
        days: Annotated[int, QueryParameter(ge=1, le=3660)] = 90,
    ) -> list[DailyCountOut]:
        since = utcnow().astimezone(settings.tz).date() - timedelta(days=days - 1)
        async with read_sessions() as session:
            found = await service.get_segment(session, _ref(segment))
            rows = await service.counts(session, found.id, since=since)
        return [DailyCountOut(r.on, r.version, r.members, r.computed_at) for r in rows]

    @get(
        "/{segment:str}/members",
        opt=requires(*READ_ROLES),
        summary="The segment's members, masked (keyset pages)",
    )
    async def members(
        self,
        segment: FromPath[str],
        sessions: NamedDependency[Sessions],
        read_sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
        after: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="next_cursor of the previous page")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=service.MAX_PAGE)] = 50,
    ) -> SegmentMembersOut:
        await service.refresh_activity(sessions)
        async with read_sessions() as session:
            found = await service.get_segment(session, _ref(segment))
            context = await service.load_context(session, host, utcnow())
            prepared = await service.prepared_segment(session, context, found)
            items, cursor = await service.member_page(session, vault, prepared, after_id=after, limit=limit)
        return SegmentMembersOut([member_out(s) for s in items], cursor)

    @get(
        "/{segment:str}/members/{member_id:int}/why",
        opt=requires(*READ_ROLES),
        summary="Whether a member is in the segment, and which conditions they meet",
    )
    async def why(
        self,
        segment: FromPath[str],
        member_id: PathId,
        read_sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
    ) -> MemberWhyOut:
        async with read_sessions() as session:
            found = await service.get_segment(session, _ref(segment))
            context = await service.load_context(session, host, utcnow())
            prepared = await service.prepared_segment(session, context, found)
            explained = await service.why(session, context, prepared, member_id)
        return MemberWhyOut(member_id, found.id, found.version, explained.met, _why_out(explained))

    @get(
        "/{segment:str}/export",
        opt=requires(*READ_ROLES),
        summary="The segment's members as CSV, streamed (masked; `reveal=mobile,name` for admins; audited)",
        media_type="text/csv",
    )
    async def export(
        self,
        segment: FromPath[str],
        sessions: NamedDependency[Sessions],
        read_sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
        reveal: Annotated[
            str | None,
            QueryParameter(description="`mobile` or `name` (either reveals both: admins; audited)"),
        ] = None,
    ) -> Stream:
        actor = Actor.of(principal)
        revealing = check_reveal([f.strip() for f in (reveal or "").split(",") if f.strip()], actor)
        export = await service.start_export(
            sessions, read_sessions, host, vault, actor, _ref(segment), reveal=revealing
        )
        return Stream(
            export.body,
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{export.filename}"',
                "X-Total-Count": str(export.total),
            },
        )
