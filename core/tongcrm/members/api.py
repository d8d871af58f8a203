"""Admin API of the member base: members, lookups, tags, consent and merges. Thin: parse, call the service in
one unit of work, shape the answer."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.types import Receive, Scope
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.hot import HotAnswer, HotTarget, only_query
from tongcrm.api.inputs import MAX_ID, MAX_INT32, PathId, QueryId, problems
from tongcrm.api.responses import EncodedJSON
from tongcrm.api.security import (
    READ_ROLES,
    WRITE_ROLES,
    confirm_key,
    confirms_key_itself,
    principal_of,
    requires,
)
from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal
from tongcrm.config import Settings
from tongcrm.consent import service as consent
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.errors import BadRequest, TongcrmError
from tongcrm.identity.models import Merge
from tongcrm.members import merge as merging
from tongcrm.members import service
from tongcrm.members.schemas import (
    ConsentEventOut,
    ConsentIn,
    ConsentOut,
    ConsentStateOut,
    ContactCheckOut,
    MemberCreate,
    MemberOut,
    MemberPage,
    MemberPatch,
    MemberViewOut,
    MergeIn,
    MergeOut,
    TagsIn,
    TagsOut,
)

Sessions = async_sessionmaker[AsyncSession]
_JSON = msgspec.json.Encoder()
_ETAG = re.compile(r'^(?:W/)?"?v?(\d+)"?$')


class PreconditionRequired(TongcrmError):
    status_code = 428
    title = "Precondition required"


def etag(version: int) -> str:
    return f'"v{version}"'


#: what ``reveal=`` says in the API document
REVEAL_HELP = "`mobile` or `name` (either reveals both: admins; audited). Without it both are masked."


def _reveal(reveal: str | None, principal: Principal) -> bool:
    if not reveal:
        return False
    fields = [f.strip() for f in (reveal or "").split(",") if f.strip()]
    return service.check_reveal(fields, Actor.of(principal))


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone (e.g. 2026-01-01T00:00:00+08:00)")
    return value


def member_out(s: service.MemberSummary) -> MemberOut:
    return msgspec.convert(s, MemberOut, from_attributes=True)


def merge_out(m: Merge) -> MergeOut:
    return MergeOut(
        id=m.id,
        survivor_id=m.survivor_id,
        absorbed_id=m.absorbed_id,
        status=m.status,
        actor=m.actor,
        reason=m.reason,
        evidence=list(m.evidence or []),
        moved={table: len(keys) for table, keys in (m.moved or {}).items()},
        created_at=m.created_at,
        undone_at=m.undone_at,
        undone_by=m.undone_by,
    )


def _once(request: Request[Any, Any, Any], *names: str) -> None:
    """400 when one of the query parameters ``names`` is given more than once (litestar would take the last)."""
    query = request.query_params
    for name in names:
        if len(query.getall(name, [])) > 1:
            raise BadRequest(f"{name} given twice")


def _lookup_answer(out: service.MemberSummary) -> EncodedJSON:
    # MemberSummary has MemberOut's fields, in its order and of its types (a test holds them equal), so it
    # encodes to the same JSON without the copy member_out() makes
    return EncodedJSON(_JSON.encode(out), (b"etag", etag(out.version).encode()))


#: The lookup's query parameters the hot answer takes (one of them, alone: ``reveal`` is audited, so litestar's)
_HOT_LOOKUP_QUERY = frozenset({"mobile", "identity"})


def hot_lookup(target: HotTarget) -> HotAnswer:
    """``GET /api/members/lookup`` answered before litestar (see :mod:`tongcrm.api.hot`) when its caller's key
    is cached with one of the roles the route admits, the query is ``mobile=`` or ``identity=`` alone and a
    member is found: the member masked, as :meth:`MemberController.lookup` answers it. Anything else — no key, a
    key not cached or of another role, ``reveal``, other parameters, no member, a key revoked meanwhile — is
    left to the route, which refuses or answers it (the read done here has no effect to undo)."""
    state = target.app.state
    reader, vault, host = state.point_reader, state.vault, state.host

    async def answer(scope: Scope, receive: Receive) -> EncodedJSON | None:
        caller = await target.caller(scope)
        if caller is None:
            return None
        query = only_query(scope, _HOT_LOOKUP_QUERY)
        if query is None:
            return None
        name, value = query
        try:
            out, generation = await service.lookup_summary_stamped(
                reader,
                vault,
                host,
                mobile=value if name == "mobile" else None,
                identity=value if name == "identity" else None,
            )
            # the key was trusted from the cache: confirmed under the revocation counter the read carried
            principal = await caller.verifier.confirm(caller.key, caller.cached, generation)
        except Exception:  # refused or failed: the route reads again and answers with the problem
            return None
        if principal is None or principal.role not in target.roles:
            return None
        return _lookup_answer(out)

    return answer


class MemberController(Controller):
    path = "/api/members"
    tags = ["members"]

    @post("/", opt=requires(*WRITE_ROLES), summary="Create a member")
    async def create(
        self,
        data: JSONBody[MemberCreate],
        sessions: NamedDependency[Sessions],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> Response[MemberOut]:
        raw = {f: getattr(data, f) for f in data.__struct_fields__ if f != "tags"}
        async with sessions() as session, session.begin():
            member = await service.create_member(session, vault, raw, data.tags, Actor.of(principal))
            out = (await service.summaries(session, vault, [member]))[0]
        return Response(member_out(out), status_code=201, headers={"ETag": etag(out.version)})

    @get("/", opt=requires(*READ_ROLES), summary="List and search members (keyset pagination)")
    async def list_members(
        self,
        read_sessions: NamedDependency[Sessions],
        sessions: NamedDependency[Sessions],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
        status: FromQuery[str | None] = "active",
        tag: FromQuery[str | None] = None,
        lifecycle_stage: FromQuery[str | None] = None,
        source_channel: FromQuery[str | None] = None,
        source_store: FromQuery[str | None] = None,
        source_campaign: FromQuery[str | None] = None,
        referrer_id: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="members this member referred")
        ] = None,
        city: FromQuery[str | None] = None,
        province: FromQuery[str | None] = None,
        name: Annotated[str | None, QueryParameter(description="name prefix")] = None,
        mobile: Annotated[
            str | None,
            QueryParameter(
                description="a whole mobile number (matched exactly) or the masked form a platform shows, "
                "`138****8000` (spaces and full-width asterisks allowed; every member it fits)"
            ),
        ] = None,
        created_from: FromQuery[datetime | None] = None,
        created_to: FromQuery[datetime | None] = None,
        after: Annotated[
            int | None, QueryParameter(ge=0, le=MAX_ID, description="next_cursor of the previous page")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=service.MAX_PAGE)] = 50,
        reveal: Annotated[str | None, QueryParameter(description=REVEAL_HELP)] = None,
    ) -> MemberPage:
        revealing = _reveal(reveal, principal)
        query = service.MemberQuery(
            status=None if status == "all" else status,
            tag=tag,
            lifecycle_stage=lifecycle_stage,
            source_channel=source_channel,
            source_store=source_store,
            source_campaign=source_campaign,
            referrer_id=referrer_id,
            city=city,
            province=province,
            name=name,
            mobile=mobile,
            created_from=_aware(created_from, "created_from"),
            created_to=_aware(created_to, "created_to"),
            after_id=after,
            limit=limit,
        )
        factory = sessions if revealing else read_sessions
        async with factory() as session, session.begin():
            items, cursor = await service.list_members(
                session, vault, query, Actor.of(principal), reveal=revealing
            )
        return MemberPage([member_out(i) for i in items], cursor)

    @get(
        "/lookup",
        opt={**requires(*READ_ROLES), **problems(404), **confirms_key_itself()},
        summary="Find the member a mobile number or an identity (kind:value) names",
        responses={200: ResponseSpec(MemberOut, description="The member (its version in ETag)")},
    )
    async def lookup(
        self,
        request: Request[Any, Any, Any],
        mobile: FromQuery[str | None] = None,
        identity: Annotated[str | None, QueryParameter(description="kind:value")] = None,
        reveal: FromQuery[str | None] = None,
    ) -> EncodedJSON:
        # The app's services come from its state rather than named dependencies: litestar resolves two or
        # more dependencies in a task group, which cost a lookup more than its database read. (A ``state``
        # parameter would be a copy of that state made for every request.)
        state = request.app.state
        principal = principal_of(request)
        # the caller's key was trusted from the cache: the revocation counter comes with the member's row and
        # confirms it before anything is answered, a refusal included (one round trip for the hottest read)
        try:
            _once(request, "mobile", "identity")
            revealing = _reveal(reveal, principal)
            out, generation = await service.lookup_summary_stamped(
                state.point_reader,
                state.vault,
                state.host,
                mobile=mobile,
                identity=identity,
                reveal=revealing,
            )
        except Exception:
            await confirm_key(request, None)
            raise
        await confirm_key(request, generation)
        if revealing:
            async with state.sessions() as session, session.begin():
                audit.record(
                    session,
                    Actor.of(principal),
                    "member.reveal",
                    "member",
                    out.id,
                    after={"fields": list(service.REVEALED_FIELDS)},
                )
        return _lookup_answer(out)

    @get("/{member_id:int}", opt=requires(*READ_ROLES), summary="The 360 view of a member")
    async def get_member(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[Sessions],
        sessions: NamedDependency[Sessions],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
        reveal: Annotated[str | None, QueryParameter(description=REVEAL_HELP)] = None,
    ) -> Response[MemberViewOut]:
        revealing = _reveal(reveal, principal)
        async with (sessions if revealing else read_sessions)() as session, session.begin():
            view = await service.member_view(session, vault, member_id, Actor.of(principal), reveal=revealing)
        out = msgspec.convert(view, MemberViewOut, from_attributes=True)
        return Response(out, headers={"ETag": etag(view.member.version)})

    @patch("/{member_id:int}", opt=requires(*WRITE_ROLES), summary="Change a member's profile")
    async def update(
        self,
        member_id: PathId,
        data: JSONBody[MemberPatch],
        sessions: NamedDependency[Sessions],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
        if_match: Annotated[str | None, HeaderParameter(name="If-Match")] = None,
    ) -> Response[MemberOut]:
        version = _expected_version(if_match, data)
        async with sessions() as session, session.begin():
            member = await service.update_member(
                session, vault, member_id, version, data.changes(), Actor.of(principal)
            )
            out = (await service.summaries(session, vault, [member]))[0]
        return Response(member_out(out), headers={"ETag": etag(out.version)})

    @post("/{member_id:int}/tags", opt=requires(*WRITE_ROLES), status_code=200, summary="Tag a member")
    async def tag(
        self,
        member_id: PathId,
        data: JSONBody[TagsIn],
        sessions: NamedDependency[Sessions],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> TagsOut:
        async with sessions() as session, session.begin():
            tags = await service.tag_member(session, vault, member_id, data.tags, Actor.of(principal))
        return TagsOut(member_id, tags)

    @delete(
        "/{member_id:int}/tags/{tag:str}",
        opt={**requires(*WRITE_ROLES), **problems(409)},  # a member merged away or erased
        summary="Remove a tag",
    )
    async def untag(
        self,
        member_id: PathId,
        tag: FromPath[str],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> None:
        async with sessions() as session, session.begin():
            await service.untag_member(session, member_id, tag, Actor.of(principal))

    @get("/{member_id:int}/consents", opt=requires(*READ_ROLES), summary="Consent states and history")
    async def consents(self, member_id: PathId, read_sessions: NamedDependency[Sessions]) -> ConsentOut:
        async with read_sessions() as session, session.begin():
            live = await service.resolve_live_id(session, member_id)
            if live is None:
                from tongcrm.errors import NotFound

                raise NotFound(f"no member {member_id}")
            states = await consent.consent_states(session, live)
            events = await consent.history(session, live)
        return ConsentOut(
            live,
            [msgspec.convert(s, ConsentStateOut, from_attributes=True) for s in states],
            [msgspec.convert(e, ConsentEventOut, from_attributes=True) for e in events],
        )

    @post("/{member_id:int}/consents", opt=requires(*WRITE_ROLES), summary="Record an opt-in or opt-out")
    async def record_consent(
        self,
        member_id: PathId,
        data: JSONBody[ConsentIn],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> Response[ConsentEventOut]:
        _aware(data.at, "at")
        async with sessions() as session, session.begin():
            event = await consent.record_consent(
                session,
                member_id,
                data.purpose,
                data.status,
                source=data.source,
                signature=data.signature,
                proof=data.proof,
                actor=Actor.of(principal),
                at=data.at,
            )
        return Response(msgspec.convert(event, ConsentEventOut, from_attributes=True), status_code=201)

    @get(
        "/{member_id:int}/contact-check",
        opt=requires(*READ_ROLES),
        summary="Whether consent allows contacting the member for a purpose under a signature",
    )
    async def contact_check(
        self,
        member_id: PathId,
        purpose: FromQuery[str],
        read_sessions: NamedDependency[Sessions],
        signature: FromQuery[str] = "*",
    ) -> ContactCheckOut:
        async with read_sessions() as session, session.begin():
            live = await service.resolve_live_id(session, member_id)
            if live is None:
                from tongcrm.errors import NotFound

                raise NotFound(f"no member {member_id}")
            allowed = await consent.may_contact(session, live, purpose, signature)
        return ContactCheckOut(live, purpose, signature, allowed)


def _expected_version(if_match: str | None, data: MemberPatch) -> int:
    if if_match is not None:
        found = _ETAG.match(if_match.strip())
        if found is None:
            raise BadRequest(f'If-Match {if_match!r} is not an ETag this API issued (like "v3")')
        version = int(found.group(1))
        if version > MAX_INT32:  # member versions are a 32-bit column
            raise BadRequest(f'If-Match {if_match!r} is not an ETag this API issued (like "v3")')
        if not isinstance(data.version, msgspec.UnsetType) and data.version != version:
            raise BadRequest("If-Match and the body's version disagree")
        return version
    if isinstance(data.version, msgspec.UnsetType):
        raise PreconditionRequired(
            "send If-Match with the member's ETag (or a version field) so a stale change cannot overwrite a newer one"
        )
    return data.version


class MergeController(Controller):
    path = "/api/merges"
    tags = ["members"]

    @post("/", opt=requires(*WRITE_ROLES), summary="Merge one member into another")
    async def merge(
        self,
        data: JSONBody[MergeIn],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
        settings: NamedDependency[Settings],
    ) -> Response[MergeOut]:
        if not data.reason.strip():
            raise BadRequest("say why the members are merged (reason)")
        async with sessions() as session, session.begin():
            record = await merging.merge_members(
                session,
                data.survivor_id,
                data.absorbed_id,
                actor=Actor.of(principal),
                reason=data.reason.strip(),
                evidence=[{"kind": "operator", "value": data.reason.strip()[:200]}],
                at=utcnow(),
                tz=settings.tz,
            )
        return Response(merge_out(record), status_code=201)

    @get("/", opt=requires(*READ_ROLES), summary="Merges a member took part in, newest first")
    async def list_merges(
        self,
        read_sessions: NamedDependency[Sessions],
        member_id: QueryId = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> list[MergeOut]:
        async with read_sessions() as session, session.begin():
            rows = await merging.list_merges(session, member_id=member_id, limit=limit)
        return [merge_out(r) for r in rows]

    @get("/{merge_id:int}", opt=requires(*READ_ROLES), summary="One merge: who, what, why")
    async def get_merge(self, merge_id: PathId, read_sessions: NamedDependency[Sessions]) -> MergeOut:
        async with read_sessions() as session, session.begin():
            record = await session.get(Merge, merge_id)
            if record is None:
                from tongcrm.errors import NotFound

                raise NotFound(f"no merge {merge_id}")
            return merge_out(record)

    @post("/{merge_id:int}/undo", opt=requires(*WRITE_ROLES), status_code=200, summary="Undo a merge")
    async def undo(
        self,
        merge_id: PathId,
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
        settings: NamedDependency[Settings],
    ) -> MergeOut:
        async with sessions() as session, session.begin():
            record = await merging.undo_merge(
                session, merge_id, actor=Actor.of(principal), at=utcnow(), tz=settings.tz
            )
        return merge_out(record)
