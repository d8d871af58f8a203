"""Segments as a service: preview a draft, save versions, count, list members, export, explain, and the daily
count snapshot. No HTTP here; the API and the CLI call these inside their own units of work.

Every member read goes through one compiled SQL condition (:mod:`tongcrm.segments.compiler`); lists page by
member id (keyset), so a page costs the same at the millionth member as at the first. Member data leaves
masked (the member service's summaries) unless an admin reveals it, and every export is audited.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.channels.models import ChannelAccount
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.db.dialect import dialect_name, insert
from tongcrm.errors import BadRequest, Conflict, NotFound, Unprocessable
from tongcrm.logging import get_logger
from tongcrm.members import service as members_service
from tongcrm.members.models import Member, MemberTag
from tongcrm.members.service import MemberSummary
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import activity
from tongcrm.segments.compiler import Compiler, Condition, Context, member_filter, members
from tongcrm.segments.models import Segment, SegmentCount, SegmentVersion
from tongcrm.segments.schema import All, AnyOf, InvalidSegment, Leaf, Node, Not, Problem, leaves, parse
from tongcrm.tiers.service import active_ladder

log = get_logger(__name__)

MAX_PAGE = 200
MAX_SAMPLE = 50
#: Not digits only: the API takes a segment by id or by name in one path segment.
_NAME = re.compile(r"^(?![0-9]+$)[a-z0-9][a-z0-9_-]{0,63}$")


# -------------------------------------------------------------------------------------------------------------
# context and compilation


async def refresh_activity(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Bring the activity summary up to date in a unit of work of its own, when it is behind: what the API, the
    CLI and the jobs do before loading a context, so their counts can use it. (A context loaded while the
    summary is behind reads the orders instead: slower, equally exact.)"""
    async with sessions() as session:
        if await activity.is_current(session):
            return
    async with sessions() as session, session.begin():
        await activity.refresh(session)


async def load_context(session: AsyncSession, host: PluginHost, now: datetime) -> Context:
    """The programme's names a tree is checked against, read once per call: channels (installed ones and those
    of connected accounts), the identity kinds each channel declares, the ladder's tier codes and every saved
    segment's latest definition; and whether the activity summary is current, so compiled conditions may read
    it (exact as of this call: a change after it is seen by the next context)."""
    specs = host.channels()
    accounts = (await session.execute(sa.select(ChannelAccount.channel).distinct())).scalars()
    ladder = await active_ladder(session)
    latest = await session.execute(
        sa.select(Segment.name, SegmentVersion.definition).join(
            SegmentVersion,
            sa.and_(SegmentVersion.segment_id == Segment.id, SegmentVersion.version == Segment.version),
        )
    )
    return Context(
        now=now,
        channels=frozenset(specs) | frozenset(accounts),
        identity_kinds={name: tuple(k.name for k in spec.identity_kinds) for name, spec in specs.items()},
        tiers=tuple(t.code for t in ladder.tiers) if ladder is not None else None,
        segments={row.name: row.definition for row in latest},
        activity=await activity.is_current(session),
    )


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked tree and its SQL condition over live members."""

    definition: Mapping[str, Any]
    tree: Node
    condition: Condition


def prepare(context: Context, definition: Any, *, name: str | None = None) -> Prepared:
    """Parse, check and compile a document; raises :class:`InvalidSegment` with the pointer of each bad node."""
    tree = parse(definition)
    condition = Compiler(context).compile(tree, name=name)
    return Prepared(definition, tree, member_filter(condition))


async def _without_jit(session: AsyncSession) -> None:
    """Plans the rest of the transaction without PostgreSQL's JIT compilation.

    A segment count looks large to the planner (its sets span hundreds of thousands of index entries), so
    PostgreSQL compiles it to machine code first; on the benchmark base that took 90-170 ms of a count that
    then runs no faster (its time is in index reads and hashing, not expression evaluation). ``SET LOCAL``
    ends with the transaction, so nothing else the session does later is affected."""
    if dialect_name(session) == "postgresql":
        await session.execute(sa.text("SET LOCAL jit = off"))


async def count(session: AsyncSession, prepared: Prepared) -> int:
    await _without_jit(session)
    return int(
        (
            await session.execute(sa.select(sa.func.count()).select_from(members).where(prepared.condition))
        ).scalar_one()
    )


async def member_ids(
    session: AsyncSession, prepared: Prepared, *, after_id: int | None, limit: int
) -> list[int]:
    """Ids of members in the segment, in id order, after ``after_id``."""
    stmt = sa.select(members.c.id).where(prepared.condition).order_by(members.c.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(members.c.id > after_id)
    await _without_jit(session)
    return list((await session.execute(stmt)).scalars())


async def _summaries(
    session: AsyncSession, vault: Vault, ids: Sequence[int], *, reveal: bool
) -> list[MemberSummary]:
    if not ids:
        return []
    rows = list(
        (await session.execute(sa.select(Member).where(Member.id.in_(ids)).order_by(Member.id))).scalars()
    )
    return await members_service.summaries(session, vault, rows, reveal=reveal)


# -------------------------------------------------------------------------------------------------------------
# preview


@dataclass(frozen=True, slots=True)
class Preview:
    count: int
    sample: list[MemberSummary]
    #: Values that match no member at all (likely typos): the draft is valid, but is it what was meant?
    warnings: list[Problem] = field(default_factory=list)


async def preview(
    session: AsyncSession, vault: Vault, context: Context, definition: Any, *, sample: int = 10
) -> Preview:
    """How many members a draft selects and the first few of them (masked), without saving anything."""
    if not 0 <= sample <= MAX_SAMPLE:
        raise BadRequest(f"sample must be between 0 and {MAX_SAMPLE}")
    prepared = prepare(context, definition)
    ids = await member_ids(session, prepared, after_id=None, limit=sample) if sample else []
    return Preview(
        await count(session, prepared),
        await _summaries(session, vault, ids, reveal=False),
        await unmatched_values(session, prepared.tree),
    )


#: Fields whose values are free text an operator types, with the indexed column that holds them.
_TYPED_VALUES: Mapping[str, InstrumentedAttribute[Any]] = {
    "tags": MemberTag.tag,
    "profile.city": Member.city,
    "profile.source_channel": Member.source_channel,
}


async def unmatched_values(session: AsyncSession, tree: Node) -> list[Problem]:
    """Tags, cities and source channels in the tree that no member has: each costs one indexed lookup. A
    segment is never silently empty because of a typo, and a preview says which value matched nothing."""
    out: list[Problem] = []
    for leaf in leaves(tree):
        column = _TYPED_VALUES.get(leaf.field.name)
        if column is None or leaf.op == "is_set":
            continue
        values = leaf.value if isinstance(leaf.value, tuple) else (leaf.value,)
        for i, value in enumerate(values):
            found = (await session.execute(sa.select(sa.literal(1)).where(column == value).limit(1))).first()
            if found is None:
                at = f"{leaf.pointer}/value" + (f"/{i}" if isinstance(leaf.value, tuple) else "")
                out.append(
                    Problem(
                        at,
                        f"no member has {leaf.field.name} {value!r}",
                        "segment.no_match",
                        {"name": leaf.field.name, "value": value},
                    )
                )
    return out


# -------------------------------------------------------------------------------------------------------------
# saved segments


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise Unprocessable(
            f"segment name {name!r} is invalid: 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
            " and not digits only",
            extra={"pointer": "/name"},
            code="segment.name_invalid",
            params={"name": name},
        )
    return name


async def get_segment(session: AsyncSession, ref: int | str) -> Segment:
    """A segment by id or by name."""
    stmt = sa.select(Segment).where(Segment.id == ref if isinstance(ref, int) else Segment.name == ref)
    found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no segment {ref!r}", extra={"segment": ref})
    return found


async def list_segments(session: AsyncSession) -> list[Segment]:
    return list((await session.execute(sa.select(Segment).order_by(Segment.name))).scalars())


async def versions(session: AsyncSession, segment_id: int) -> list[SegmentVersion]:
    stmt = (
        sa.select(SegmentVersion)
        .where(SegmentVersion.segment_id == segment_id)
        .order_by(SegmentVersion.version.desc())
    )
    return list((await session.execute(stmt)).scalars())


async def current_definition(session: AsyncSession, segment: Segment) -> dict[str, Any]:
    row = await session.get(SegmentVersion, (segment.id, segment.version))
    assert row is not None, "a segment always has its current version"
    return row.definition


def _with(context: Context, name: str, definition: Any) -> Context:
    """The context as it will be once ``name`` has this definition (so a cycle through it is seen now)."""
    return Context(
        now=context.now,
        channels=context.channels,
        identity_kinds=context.identity_kinds,
        tiers=context.tiers,
        segments={**context.segments, name: definition},
    )


async def save(
    session: AsyncSession,
    context: Context,
    name: str,
    definition: Any,
    actor: Actor,
    *,
    description: str | None = None,
    note: str = "",
    create: bool | None = None,
) -> Segment:
    """Save a segment: a new one at version 1, or a new version of an existing one. ``create`` True refuses an
    existing name (409), False a missing one (404); None accepts either. The definition is checked against the
    programme first, with segments that use this one, so saving can never leave a cycle or a broken reference.
    """
    _check_name(name)
    if description is not None and len(description) > 500:
        raise Unprocessable(
            "description is longer than 500 characters",
            extra={"pointer": "/description"},
            code="segment.too_long",
            params={"field": "description", "max": 500},
        )
    if len(note) > 500:
        raise Unprocessable(
            "note is longer than 500 characters",
            extra={"pointer": "/note"},
            code="segment.too_long",
            params={"field": "note", "max": 500},
        )
    after = _with(context, name, definition)
    prepare(after, definition, name=name)
    existing = (
        await session.execute(sa.select(Segment).where(Segment.name == name).with_for_update())
    ).scalar()
    if existing is not None and create is True:
        raise Conflict(
            f"segment {name!r} exists; save a new version of it instead",
            extra={"segment": name},
            code="segment.exists",
            params={"name": name},
        )
    if existing is None and create is False:
        raise NotFound(f"no segment {name!r}", extra={"segment": name})
    if existing is not None:
        # segments that use this one must still compile with its new definition (one already broken for
        # another reason, e.g. a tier taken out of the ladder, is not this save's business)
        for other, doc in context.segments.items():
            if other == name:
                continue
            try:
                prepare(context, doc, name=other)
            except InvalidSegment:
                continue
            try:
                prepare(after, doc, name=other)
            except InvalidSegment as exc:
                raise Unprocessable(
                    f"segment {other!r} uses {name!r} and would break: {exc.message}",
                    extra={"pointer": "/definition", "segment": other, "errors": exc.extra.get("errors", [])},
                    code="segment.breaks",
                    params={"other": other, "name": name, "reason": exc.message},
                ) from exc
    now = utcnow()
    if existing is None:
        segment = Segment(
            name=name,
            description=description or "",
            version=1,
            created_by=actor.name,
            created_at=now,
            updated_at=now,
        )
        session.add(segment)
        try:
            async with session.begin_nested():
                await session.flush()
        except IntegrityError as exc:  # another caller created the same name a moment ago
            raise Conflict(
                f"segment {name!r} exists; save a new version of it instead",
                extra={"segment": name},
                code="segment.exists",
                params={"name": name},
            ) from exc
    else:
        segment = existing
        segment.version += 1
        segment.updated_at = now
        if description is not None:
            segment.description = description
    session.add(
        SegmentVersion(
            segment_id=segment.id,
            version=segment.version,
            definition=dict(definition),
            note=note,
            created_by=actor.name,
            created_at=now,
        )
    )
    audit.record(
        session, actor, "segment.save", "segment", segment.id,
        after={"name": name, "version": segment.version, "definition": definition},
    )  # fmt: skip
    await session.flush()
    return segment


async def prepared_segment(session: AsyncSession, context: Context, segment: Segment) -> Prepared:
    return prepare(context, await current_definition(session, segment), name=segment.name)


async def member_page(
    session: AsyncSession,
    vault: Vault,
    prepared: Prepared,
    *,
    after_id: int | None = None,
    limit: int = 50,
) -> tuple[list[MemberSummary], int | None]:
    """A page of the segment's members (masked), and the cursor of the next page (None on the last)."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    ids = await member_ids(session, prepared, after_id=after_id, limit=limit + 1)
    more = len(ids) > limit
    ids = ids[:limit]
    return await _summaries(session, vault, ids, reveal=False), ids[-1] if more else None


# -------------------------------------------------------------------------------------------------------------
# export

CSV_COLUMNS = (
    "id", "name", "gender", "birthday", "province", "city", "mobile", "source_channel", "source_store",
    "source_campaign", "referrer_id", "tags", "joined_at",
)  # fmt: skip


_PLAIN_NUMBER = re.compile(r"^[+-]?\d+$")


def _cell(value: Any) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection): text starting with ``=``,
    ``@``, a tab or a return, or with ``+``/``-`` unless it is a plain number (an E.164 mobile), gets a ``'``."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, date | datetime) else str(value)
    risky = text[:1] in ("=", "@", "\t", "\r") or (text[:1] in ("+", "-") and not _PLAIN_NUMBER.match(text))
    return "'" + text if risky else text


def csv_rows(rows: Iterable[MemberSummary], *, header: bool = False) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for s in rows:
        writer.writerow(
            _cell(v)
            for v in (
                s.id, s.name, s.gender, s.birthday, s.province, s.city, s.mobile, s.source_channel, s.source_store,
                s.source_campaign, s.referrer_id, ";".join(s.tags), s.created_at,
            )
        )  # fmt: skip
    return out.getvalue()


def record_export(
    session: AsyncSession, actor: Actor, segment: Segment, *, reveal: bool, members_count: int
) -> None:
    """The audit record of an export, written before the first row leaves."""
    audit.record(
        session, actor, "segment.export", "segment", segment.id,
        after={"name": segment.name, "version": segment.version, "members": members_count,
               "revealed": list(members_service.REVEALED_FIELDS) if reveal else []},
    )  # fmt: skip


async def export_pages(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    prepared: Prepared,
    *,
    reveal: bool,
    page: int = 1000,
) -> AsyncIterator[list[MemberSummary]]:
    """The segment's members page by page, each page in its own short read (an export of a million members
    holds no transaction open while the client downloads)."""
    after: int | None = None
    while True:
        async with sessions() as session:
            ids = await member_ids(session, prepared, after_id=after, limit=page)
            rows = await _summaries(session, vault, ids, reveal=reveal)
        if not rows:
            return
        yield rows
        if len(ids) < page:
            return
        after = ids[-1]


@dataclass(frozen=True, slots=True)
class Export:
    segment: Segment
    total: int
    #: The CSV text, header first, read page by page as the client downloads.
    body: AsyncIterator[str]

    @property
    def filename(self) -> str:
        return f"segment-{self.segment.name}-v{self.segment.version}.csv"


async def start_export(
    sessions: async_sessionmaker[AsyncSession],
    read_sessions: async_sessionmaker[AsyncSession],
    host: PluginHost,
    vault: Vault,
    actor: Actor,
    ref: int | str,
    *,
    reveal: bool,
) -> Export:
    """An export as the API and the console answer it: the audit record commits in its own unit of work before
    the first row leaves, then the rows stream from short reads. ``reveal`` must have passed
    :func:`tongcrm.members.service.check_reveal` for ``actor``."""
    await refresh_activity(sessions)
    async with sessions() as session, session.begin():
        found = await get_segment(session, ref)
        context = await load_context(session, host, utcnow())
        prepared = await prepared_segment(session, context, found)
        total = await count(session, prepared)
        record_export(session, actor, found, reveal=reveal, members_count=total)

    async def body() -> AsyncIterator[str]:
        yield csv_rows([], header=True)
        async for rows in export_pages(read_sessions, vault, prepared, reveal=reveal):
            yield csv_rows(rows)

    return Export(found, total, body())


# -------------------------------------------------------------------------------------------------------------
# why


@dataclass(frozen=True, slots=True)
class Explained:
    """One node of the tree with whether the member meets it."""

    pointer: str
    node: str  # all | any | not | a field name
    met: bool
    op: str | None = None
    value: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    children: list[Explained] = field(default_factory=list)


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


async def why(session: AsyncSession, context: Context, prepared: Prepared, member_id: int) -> Explained:
    """Which conditions of the tree the member meets: every condition is evaluated in SQL for this one member
    (one query), then the groups are folded."""
    live = await members_service.resolve_live_id(session, member_id)
    if live is None:
        raise NotFound(f"no member {member_id}", extra={"member_id": member_id})
    compiler = Compiler(context)
    conditions: dict[str, Condition] = {}

    def collect(node: Node) -> None:
        if isinstance(node, Leaf):
            conditions[node.pointer] = compiler.leaf(node, 1)
        elif isinstance(node, Not):
            collect(node.child)
        else:
            for child in node.children:
                collect(child)

    collect(prepared.tree)
    if compiler.problems:
        raise InvalidSegment(compiler.problems)
    pointers = list(conditions)
    columns = [sa.case((conditions[p], 1), else_=0).label(f"c{i}") for i, p in enumerate(pointers)]
    row = (
        await session.execute(
            sa.select(members.c.status, *columns).select_from(members).where(members.c.id == live)
        )
    ).one()
    met = {p: bool(row[i + 1]) for i, p in enumerate(pointers)}
    active = row[0] == "active"

    def fold(node: Node) -> Explained:
        if isinstance(node, Leaf):
            return Explained(
                node.pointer,
                node.field.name,
                met[node.pointer],
                node.op,
                _json_value(node.value),
                dict(node.params),
            )
        if isinstance(node, Not):
            inner = fold(node.child)
            return Explained(node.pointer, "not", not inner.met, children=[inner])
        kids = [fold(c) for c in node.children]
        holds = all(k.met for k in kids) if isinstance(node, All) else any(k.met for k in kids)
        return Explained(node.pointer, "all" if isinstance(node, All) else "any", holds, children=kids)

    assert isinstance(prepared.tree, Leaf | All | AnyOf | Not)
    explained = fold(prepared.tree)
    if not active:  # a tombstone is in no segment, whatever its conditions say
        return Explained(explained.pointer, explained.node, False, explained.op, explained.value,
                         explained.params, explained.children)  # fmt: skip
    return explained


# -------------------------------------------------------------------------------------------------------------
# counts over time


async def snapshot(
    sessions: async_sessionmaker[AsyncSession], host: PluginHost, now: datetime, today: date
) -> int:
    """Count every saved segment once for ``today`` (a run later the same day changes nothing). Each segment is
    its own unit of work; one that no longer compiles (its tier was removed from the ladder) is logged and
    skipped, the others are still counted. Returns how many counts were written."""
    await refresh_activity(sessions)
    async with sessions() as session:
        context = await load_context(session, host, now)
        done = set(
            (
                await session.execute(sa.select(SegmentCount.segment_id).where(SegmentCount.on == today))
            ).scalars()
        )
        todo = [s for s in await list_segments(session) if s.id not in done]
    written = 0
    for segment in todo:
        async with sessions() as session, session.begin():
            try:
                prepared = await prepared_segment(session, context, segment)
            except InvalidSegment as exc:
                log.warning(
                    "segment not counted: it no longer compiles", segment=segment.name, error=exc.message
                )
                continue
            members_count = await count(session, prepared)
            stmt = (
                insert(session, SegmentCount)
                .values(
                    segment_id=segment.id,
                    on=today,
                    version=segment.version,
                    members=members_count,
                    computed_at=utcnow(),
                )
                .on_conflict_do_nothing()
            )
            await session.execute(stmt)
            written += 1
    return written


async def counts(session: AsyncSession, segment_id: int, *, since: date | None = None) -> list[SegmentCount]:
    stmt = sa.select(SegmentCount).where(SegmentCount.segment_id == segment_id).order_by(SegmentCount.on)
    if since is not None:
        stmt = stmt.where(SegmentCount.on >= since)
    return list((await session.execute(stmt)).scalars())
