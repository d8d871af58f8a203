"""The member base: create, read (the 360 view), update with optimistic concurrency, search, tag, look up.

Services take a session inside the caller's unit of work and raise :mod:`tongcrm.errors`; they know nothing of
HTTP. Every change made by an API key is audited here, in the same transaction as the change. Phone numbers
leave this module masked unless the caller may and asks to reveal them, and every reveal is audited.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, cast

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.auth.service import GENERATION_COLUMN
from tongcrm.consent import service as consent
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.db.lengths import column_length
from tongcrm.db.point_reads import KeyedQuery, PointQuery, PointReader
from tongcrm.errors import BadRequest, Conflict, Forbidden, NotFound, PreconditionFailed, Unprocessable, shown
from tongcrm.identity.models import Identity
from tongcrm.jobs.outbox import emit
from tongcrm.members.masked import looks_masked, mask_name, masked_index, masked_lookup, mobile_columns
from tongcrm.members.models import ERASED, Member, MemberTag
from tongcrm.members.phone import (
    MOBILE_CONTEXT,
    MOBILE_INDEX_PURPOSE,
    InvalidMobile,
    mask_mobile,
    mobile_lookup,
    normalise_mobile,
)
from tongcrm.members.tag_history import TagHistory
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost

GENDERS = frozenset({"male", "female", "unknown"})
LIFECYCLE_STAGES = ("prospect", "new", "repeat", "dormant", "churned")
#: The masking rule (docs/architecture.md, "Personal data"): a member's name and mobile leave the service
#: masked — lists, lookups, the 360 view, previews, exports, the console — unless a role in ``REVEAL_ROLES``
#: asks to reveal them, and every reveal is audited. Asking for either field reveals both: a reveal is of the
#: member's personal data, and its audit record lists ``REVEALED_FIELDS``.
REVEALABLE = frozenset({"mobile", "name"})
REVEALED_FIELDS = ("mobile", "name")
REVEAL_ROLES = frozenset({"admin"})
MAX_PAGE = 200
MAX_TAGS = 50
_TAG = re.compile(r"^[^\s,][^,]{0,63}$")
_MAX_HOPS = 32

#: ``section(session, member_id) -> dict``: other domains (points, tiers…) add their block to the 360 view.
ViewSection = Callable[[AsyncSession, int], Awaitable[dict[str, Any] | None]]
_sections: dict[str, ViewSection] = {}


def register_view_section(name: str, section: ViewSection) -> None:
    """Add a named block (e.g. ``points``: balances, ``tier``) to every member's 360 view."""
    _sections[name] = section


# -------------------------------------------------------------------------------------------------------------
# views


class MemberSummary(msgspec.Struct, frozen=True):
    """A member as lists and lookups show it. A struct rather than a frozen dataclass: one is built for every
    lookup, and a frozen dataclass with this many fields took longer to build than the mobile took to
    decrypt."""

    id: int
    status: str
    merged_into_id: int | None
    version: int
    name: str | None
    gender: str | None
    birthday: date | None
    province: str | None
    city: str | None
    mobile: str | None
    source_channel: str | None
    source_store: str | None
    source_campaign: str | None
    referrer_id: int | None
    lifecycle_stage: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class IdentityView:
    id: int
    kind: str
    value: str
    account_id: int | None
    first_seen_at: datetime
    last_seen_at: datetime
    evidence: str


@dataclass(frozen=True, slots=True)
class OrderView:
    id: int
    account_id: int
    external_id: str
    channel: str
    status: str
    store_code: str | None
    paid_fen: int
    refunded_fen: int
    placed_at: datetime


@dataclass(frozen=True, slots=True)
class MemberView:
    member: MemberSummary
    identities: list[IdentityView]
    consents: list[consent.ConsentState]
    recent_orders: list[OrderView]
    sections: dict[str, Any]
    #: Set when the id asked for is a tombstone: the view is of the member it was merged into.
    redirected_from: int | None = None


def _mobile_out(vault: Vault, token: str | None, reveal: bool) -> str | None:
    if not token:
        return None
    e164 = vault.decrypt(token, context=MOBILE_CONTEXT)
    return e164 if reveal else mask_mobile(e164)


def summary(member: Member, tags: Sequence[str], vault: Vault, *, reveal: bool = False) -> MemberSummary:
    # positional, in MemberSummary's field order (test_a_summary_holds_each_field_of_its_member holds each to
    # its name): by keyword its 18 fields took four times as long to build, ~1.5 us of every lookup
    return MemberSummary(
        member.id,
        member.status,
        member.merged_into_id,
        member.version,
        member.name if reveal else mask_name(member.name),
        member.gender,
        member.birthday,
        member.province,
        member.city,
        _mobile_out(vault, member.mobile_enc, reveal),
        member.source_channel,
        member.source_store,
        member.source_campaign,
        member.referrer_id,
        member.lifecycle_stage,
        sorted(set(tags)),
        member.created_at,
        member.updated_at,
    )


def _audit_view(member: Member, tags: Sequence[str], vault: Vault) -> dict[str, Any]:
    """What audit records hold of a member: the mobile masked, JSON-ready. The name stays in clear: the audit
    log is admins' reading, and an erasure redacts these entries."""
    s = summary(member, tags, vault)
    return {
        "name": member.name,
        "gender": s.gender,
        "birthday": s.birthday.isoformat() if s.birthday else None,
        "province": s.province,
        "city": s.city,
        "mobile": s.mobile,
        "source_channel": s.source_channel,
        "source_store": s.source_store,
        "source_campaign": s.source_campaign,
        "referrer_id": s.referrer_id,
        "lifecycle_stage": s.lifecycle_stage,
        "tags": s.tags,
    }


# -------------------------------------------------------------------------------------------------------------
# tombstones


async def resolve_live_ids(session: AsyncSession, member_ids: Sequence[int]) -> dict[int, int]:
    """Map each id to the live member it is (itself, or the survivor at the end of its merge chain).

    Ids that name no member are left out. One query per hop of the longest chain (chains are short).
    """
    out: dict[int, int] = {}
    pending: dict[int, list[int]] = {}
    for mid in set(member_ids):
        pending.setdefault(mid, []).append(mid)
    for _ in range(_MAX_HOPS):
        if not pending:
            break
        ids = sorted(pending)
        rows: list[Any] = []
        for start in range(0, len(ids), 5000):
            rows.extend(
                (
                    await session.execute(
                        sa.select(Member.id, Member.status, Member.merged_into_id).where(
                            Member.id.in_(ids[start : start + 5000])
                        )
                    )
                ).all()
            )
        nxt: dict[int, list[int]] = {}
        for row in rows:
            asked = pending[row.id]
            if row.status == "merged" and row.merged_into_id is not None:
                nxt.setdefault(row.merged_into_id, []).extend(asked)
            else:
                for a in asked:
                    out[a] = row.id
        pending = nxt
    return out


async def resolve_live_id(session: AsyncSession, member_id: int) -> int | None:
    return (await resolve_live_ids(session, [member_id])).get(member_id)


# -------------------------------------------------------------------------------------------------------------
# validation


def _text(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unprocessable(f"{name} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise Unprocessable(f"{name} is longer than {limit} characters")
    return value or None


def normalise_tag(tag: str) -> str:
    tag = tag.strip()
    if not _TAG.match(tag):
        raise Unprocessable(f"tag {tag!r} is invalid: 1 to 64 characters, no commas, not blank")
    return tag


@dataclass
class ProfileChanges:
    """Validated profile values; only keys present in ``values`` are changed."""

    values: dict[str, Any] = field(default_factory=dict)
    mobile: str | None = None  # E.164, when a new mobile was given
    #: columns written with ``values`` that are not profile fields (no provenance): the masked-mobile index
    derived: dict[str, Any] = field(default_factory=dict)


async def _validate(
    session: AsyncSession, vault: Vault, raw: Mapping[str, Any], member_id: int | None
) -> ProfileChanges:
    out = ProfileChanges()
    for name in ("name", "province", "city", "source_channel", "source_store", "source_campaign"):
        if name in raw:  # the API refuses a longer text (400); this guards the other callers (the console)
            out.values[name] = _text(raw[name], name, column_length(getattr(Member, name)))
    if "gender" in raw:
        gender = raw["gender"]
        if gender is not None and gender not in GENDERS:
            raise Unprocessable(f"gender must be one of {', '.join(sorted(GENDERS))}")
        out.values["gender"] = gender
    if "birthday" in raw:
        birthday = raw["birthday"]
        if birthday is not None and (birthday > date.today() or birthday.year < 1900):
            raise Unprocessable("birthday must be between 1900 and today")
        out.values["birthday"] = birthday
    if "lifecycle_stage" in raw:
        stage = raw["lifecycle_stage"]
        if stage not in LIFECYCLE_STAGES:
            raise Unprocessable(f"lifecycle_stage must be one of {', '.join(LIFECYCLE_STAGES)}")
        out.values["lifecycle_stage"] = stage
    if "referrer_id" in raw and raw["referrer_id"] is not None:
        referrer = await resolve_live_id(session, int(raw["referrer_id"]))
        if referrer is None:
            raise Unprocessable(f"referrer member {raw['referrer_id']} does not exist")
        if referrer == member_id:
            raise Unprocessable("a member cannot refer themselves")
        out.values["referrer_id"] = referrer
    elif "referrer_id" in raw:
        out.values["referrer_id"] = None
    if "mobile" in raw:
        out.mobile = None if raw["mobile"] is None else normalise_mobile(str(raw["mobile"]))
        columns = mobile_columns(vault, out.mobile)
        out.values["mobile_enc"] = columns.pop("mobile_enc")
        out.derived.update(columns)
    return out


async def _claim_mobile(session: AsyncSession, vault: Vault, member_id: int, e164: str, actor: Actor) -> None:
    """Attach a mobile identity to a member an operator edits; refuse one that belongs to someone else."""
    indexes = vault.blind_indexes(e164, purpose=MOBILE_INDEX_PURPOSE)
    owner = (
        await session.execute(
            sa.select(Identity.member_id).where(Identity.kind == "mobile", Identity.value.in_(indexes))
        )
    ).scalar_one_or_none()
    if owner is not None and owner != member_id:
        raise Conflict(
            f"mobile {mask_mobile(e164)} already belongs to member {owner}; merge the two members instead",
            extra={"member_id": owner},
        )
    if owner is None:
        now = utcnow()
        session.add(
            Identity(
                kind="mobile",
                value=vault.blind_index(e164, purpose=MOBILE_INDEX_PURPOSE),
                member_id=member_id,
                value_enc=vault.encrypt(e164, context=MOBILE_CONTEXT),
                masked_index=masked_index(vault, e164),
                account_id=None,
                evidence=f"entered by {actor.name}",
                first_seen_at=now,
                last_seen_at=now,
            )
        )


def _stamp(meta: Mapping[str, Any], fields: Sequence[str], now: datetime) -> dict[str, Any]:
    """An operator's edit counts as verified."""
    out = dict(meta)
    for name in fields:
        out[name] = {"at": now.isoformat(), "verified": True}
    return out


# -------------------------------------------------------------------------------------------------------------
# commands


async def create_member(
    session: AsyncSession, vault: Vault, raw: Mapping[str, Any], tags: Sequence[str], actor: Actor
) -> Member:
    now = utcnow()
    changes = await _validate(session, vault, raw, None)
    clean_tags = sorted({normalise_tag(t) for t in tags})
    if len(clean_tags) > MAX_TAGS:
        raise Unprocessable(f"at most {MAX_TAGS} tags")
    profile_fields = [k for k, v in changes.values.items() if v is not None]
    member = Member(
        status="active",
        created_at=now,
        updated_at=now,
        profile_meta=_stamp({}, profile_fields, now),
        **{"lifecycle_stage": "prospect", **changes.values, **changes.derived},
    )
    session.add(member)
    await session.flush()
    if changes.mobile:
        await _claim_mobile(session, vault, member.id, changes.mobile, actor)
    for tag in clean_tags:
        session.add(MemberTag(member_id=member.id, tag=tag, created_at=now))
    await session.flush()
    emit(session, "member_created", {"member_id": member.id, "source": member.source_channel or "admin"})
    audit.record(
        session, actor, "member.create", "member", member.id, after=_audit_view(member, clean_tags, vault)
    )
    return member


async def _tags_of(session: AsyncSession, member_ids: Sequence[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {m: [] for m in member_ids}
    if not member_ids:
        return out
    rows = await session.execute(
        sa.select(MemberTag.member_id, MemberTag.tag).where(MemberTag.member_id.in_(member_ids))
    )
    for row in rows:
        out[row.member_id].append(row.tag)
    return out


async def _live_member(session: AsyncSession, member_id: int, *, lock: bool = False) -> Member:
    stmt = sa.select(Member).where(Member.id == member_id).execution_options(populate_existing=True)
    if lock:
        stmt = stmt.with_for_update()
    member = (await session.execute(stmt)).scalar_one_or_none()
    if member is None:
        raise NotFound(f"no member {member_id}")
    if member.status == ERASED:
        raise Conflict(f"member {member_id} was erased: nothing about them can change any more")
    if member.status != "active":
        raise Conflict(
            f"member {member_id} was merged into member {member.merged_into_id}; change that member instead",
            extra={"merged_into_id": member.merged_into_id},
        )
    return member


#: First-touch acquisition: where and through whom the member came. Set once, never rewritten.
ACQUISITION_FIELDS = ("source_channel", "source_store", "source_campaign", "referrer_id")


def _keep_acquisition(member: Member, changes: ProfileChanges) -> None:
    """Refuse a change to acquisition data already recorded: it is first-touch attribution (campaign reports,
    referral rewards and segments count on it), so an edit may fill a blank field or repeat its value, never
    replace or clear it. A wrong value stays visible in the audit trail rather than silently rewritten."""
    for name in ACQUISITION_FIELDS:
        if name not in changes.values:
            continue
        current, wanted = getattr(member, name), changes.values[name]
        if current is not None and wanted != current:
            raise Conflict(
                f"{name} is first-touch acquisition data and is set once: member {member.id} already has "
                f"{name} {current!r}, so it cannot be changed to {wanted!r}",
                extra={"field": name, "current": current},
            )


async def update_member(
    session: AsyncSession,
    vault: Vault,
    member_id: int,
    expected_version: int,
    raw: Mapping[str, Any],
    actor: Actor,
) -> Member:
    """Apply a profile change made from ``expected_version``; a stale version is refused (412), never merged."""
    member = await _live_member(session, member_id, lock=True)
    if member.version != expected_version:
        raise PreconditionFailed(
            f"member {member_id} is at version {member.version} but the change was made from version "
            f"{expected_version}; reload the member and apply the change again",
            extra={"current_version": member.version},
        )
    tags = (await _tags_of(session, [member_id]))[member_id]
    before = _audit_view(member, tags, vault)
    changes = await _validate(session, vault, raw, member_id)
    _keep_acquisition(member, changes)
    if changes.mobile:
        await _claim_mobile(session, vault, member_id, changes.mobile, actor)
    now = utcnow()
    for name, value in {**changes.values, **changes.derived}.items():
        setattr(member, name, value)
    member.profile_meta = _stamp(member.profile_meta or {}, [k for k in changes.values], now)
    member.updated_at = now
    try:
        await session.flush()
    except StaleDataError:
        raise PreconditionFailed(
            f"member {member_id} changed while this update ran; reload and retry"
        ) from None
    audit.record(
        session,
        actor,
        "member.update",
        "member",
        member_id,
        before=before,
        after=_audit_view(member, tags, vault),
    )
    return member


async def tag_member(
    session: AsyncSession, vault: Vault, member_id: int, tags: Sequence[str], actor: Actor
) -> list[str]:
    member = await _live_member(session, member_id, lock=True)
    clean = sorted({normalise_tag(t) for t in tags})
    if not clean:
        raise Unprocessable("give at least one tag")
    current = set((await _tags_of(session, [member_id]))[member_id])
    if len(current | set(clean)) > MAX_TAGS:
        raise Unprocessable(f"a member carries at most {MAX_TAGS} tags")
    now = utcnow()
    added = [t for t in clean if t not in current]
    for tag in added:
        session.add(MemberTag(member_id=member_id, tag=tag, created_at=now))
        session.add(TagHistory(member_id=member_id, tag=tag, action="tagged", at=now, actor=actor.name))
    if added:
        member.updated_at = now
        await session.flush()
        audit.record(
            session, actor, "member.tag", "member", member_id, before={"tags": sorted(current)},
            after={"tags": sorted(current | set(added))},
        )  # fmt: skip
    return sorted(current | set(added))


async def untag_member(session: AsyncSession, member_id: int, tag: str, actor: Actor) -> list[str]:
    member = await _live_member(session, member_id, lock=True)
    current = set((await _tags_of(session, [member_id]))[member_id])
    if tag not in current:
        raise NotFound(f"member {member_id} has no tag {tag!r}")
    await session.execute(sa.delete(MemberTag).where(MemberTag.member_id == member_id, MemberTag.tag == tag))
    member.updated_at = utcnow()
    session.add(
        TagHistory(member_id=member_id, tag=tag, action="untagged", at=member.updated_at, actor=actor.name)
    )
    await session.flush()
    audit.record(
        session, actor, "member.untag", "member", member_id, before={"tags": sorted(current)},
        after={"tags": sorted(current - {tag})},
    )  # fmt: skip
    return sorted(current - {tag})


# -------------------------------------------------------------------------------------------------------------
# queries


def check_reveal(reveal: Sequence[str], actor: Actor, *, revealable: frozenset[str] = REVEALABLE) -> bool:
    """Whether the call reveals personal data; refuses fields that cannot be revealed (a member's, unless
    ``revealable`` names others) and roles that may not (the one rule: ``REVEAL_ROLES``)."""
    unknown = set(reveal) - revealable
    if unknown:
        raise BadRequest(
            f"cannot reveal {', '.join(sorted(unknown))}; revealable: {', '.join(sorted(revealable))}"
        )
    if reveal and actor.role not in REVEAL_ROLES:
        raise Forbidden(f"role {actor.role!r} may not reveal personal data")
    return bool(reveal)


async def member_view(
    session: AsyncSession, vault: Vault, member_id: int, actor: Actor, *, reveal: bool = False
) -> MemberView:
    """The 360 view: profile, identities, consent, recent orders and every registered section.

    A tombstone's id shows its survivor. A reveal writes an audit record (the caller's session must be able to
    write then).
    """
    live = await resolve_live_id(session, member_id)
    if live is None:
        raise NotFound(f"no member {member_id}")
    member = (await session.execute(sa.select(Member).where(Member.id == live))).scalar_one()
    tags = (await _tags_of(session, [live]))[live]
    identities = [
        IdentityView(
            i.id,
            i.kind,
            _mobile_out(vault, i.value_enc, reveal) or i.value if i.value_enc else i.value,
            i.account_id,
            i.first_seen_at,
            i.last_seen_at,
            i.evidence,
        )
        for i in (
            await session.execute(sa.select(Identity).where(Identity.member_id == live).order_by(Identity.id))
        ).scalars()
    ]
    orders = [
        OrderView(
            o.id,
            o.account_id,
            o.external_id,
            o.channel,
            o.status,
            o.store_code,
            o.paid_fen,
            o.refunded_fen,
            o.placed_at,
        )
        for o in (
            await session.execute(
                sa.select(Order).where(Order.member_id == live).order_by(Order.placed_at.desc()).limit(10)
            )
        ).scalars()
    ]
    sections: dict[str, Any] = {}
    for name, section in sorted(_sections.items()):
        value = await section(session, live)
        if value is not None:
            sections[name] = value
    if reveal:
        audit.record(session, actor, "member.reveal", "member", live, after={"fields": list(REVEALED_FIELDS)})
    return MemberView(
        member=summary(member, tags, vault, reveal=reveal),
        identities=identities,
        consents=await consent.consent_states(session, live),
        recent_orders=orders,
        sections=sections,
        redirected_from=member_id if live != member_id else None,
    )


@dataclass(frozen=True, slots=True)
class MemberQuery:
    status: str | None = "active"
    tag: str | None = None
    lifecycle_stage: str | None = None
    source_channel: str | None = None
    source_store: str | None = None
    source_campaign: str | None = None
    referrer_id: int | None = None  # members this one referred
    city: str | None = None
    province: str | None = None
    name: str | None = None  # prefix
    #: a whole number (matched exactly through the mobile identities) or a masked one, ``138****8000``
    #: (matched through the masked-mobile indexes of the members' profiles and mobile identities; many
    #: members may share one)
    mobile: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    after_id: int | None = None
    limit: int = 50


async def list_members(
    session: AsyncSession, vault: Vault, query: MemberQuery, actor: Actor, *, reveal: bool = False
) -> tuple[list[MemberSummary], int | None]:
    """A page of members in id order, and the cursor of the next page (None on the last page)."""
    if not 1 <= query.limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    stmt = sa.select(Member).order_by(Member.id).limit(query.limit + 1)
    if query.status:
        stmt = stmt.where(Member.status == query.status)
    for column, value in (
        (Member.lifecycle_stage, query.lifecycle_stage),
        (Member.source_channel, query.source_channel),
        (Member.source_store, query.source_store),
        (Member.source_campaign, query.source_campaign),
        (Member.referrer_id, query.referrer_id),
        (Member.city, query.city),
        (Member.province, query.province),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.name:
        escaped = query.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Member.name.like(escaped + "%", escape="\\"))
    if query.tag:
        stmt = stmt.where(sa.exists().where(MemberTag.member_id == Member.id, MemberTag.tag == query.tag))
    if query.mobile and looks_masked(query.mobile):
        hashes = masked_lookup(vault, query.mobile)
        # the profile's mobile or any mobile identity (a second number, one a merge brought): two indexed
        # reads joined by UNION, not an OR, which SQLite answered by scanning the members
        stmt = stmt.where(
            Member.id.in_(
                sa.union(
                    sa.select(Member.id).where(Member.mobile_masked_index.in_(hashes)),
                    sa.select(Identity.member_id).where(Identity.masked_index.in_(hashes)),
                )
            )
        )
    elif query.mobile:
        indexes = vault.blind_indexes(normalise_mobile(query.mobile), purpose=MOBILE_INDEX_PURPOSE)
        # ``id IN (the identities' members)``, not a correlated EXISTS: SQLite ran the EXISTS once per member in
        # id order (381 ms a search at 100,000 members) where the identity index answers at once
        stmt = stmt.where(
            Member.id.in_(
                sa.select(Identity.member_id).where(Identity.kind == "mobile", Identity.value.in_(indexes))
            )
        )
    if query.created_from:
        stmt = stmt.where(Member.created_at >= query.created_from)
    if query.created_to:
        stmt = stmt.where(Member.created_at < query.created_to)
    if query.after_id is not None:
        stmt = stmt.where(Member.id > query.after_id)
    members = list((await session.execute(stmt)).scalars())
    more = len(members) > query.limit
    members = members[: query.limit]
    tags = await _tags_of(session, [m.id for m in members])
    if reveal and members:
        audit.record(
            session, actor, "member.reveal", "member", ",".join(str(m.id) for m in members)[:64],
            after={"fields": list(REVEALED_FIELDS), "member_ids": [m.id for m in members]},
        )  # fmt: skip
    return [summary(m, tags[m.id], vault, reveal=reveal) for m in members], members[-1].id if more else None


async def lookup(
    session: AsyncSession,
    vault: Vault,
    host: PluginHost,
    *,
    mobile: str | None = None,
    identity: str | None = None,
) -> Member:
    """The live member a mobile number or a ``kind:value`` identity names (404 when none)."""
    kind, values = _lookup_key(vault, host, mobile=mobile, identity=identity)
    member = (await session.execute(_LOOKUP_MEMBER, {"kind": kind, "values": values})).scalar_one_or_none()
    if member is None:
        raise _not_found(kind)
    if member.status != "active":  # pragma: no cover - identities always point at live members
        live = await resolve_live_id(session, member.id)
        member = (await session.execute(sa.select(Member).where(Member.id == live))).scalar_one()
    return member


async def lookup_summary(
    reader: PointReader,
    vault: Vault,
    host: PluginHost,
    *,
    mobile: str | None = None,
    identity: str | None = None,
    reveal: bool = False,
) -> MemberSummary:
    """:func:`lookup`'s member as a summary, in one point read (the member and its tags).

    Lookups are the hottest read (the service desk, tills, platform callbacks): they run a statement compiled
    once, on the point reader, and read plain rows.
    """
    found, _ = await lookup_summary_stamped(
        reader, vault, host, mobile=mobile, identity=identity, reveal=reveal
    )
    return found


async def lookup_summary_stamped(
    reader: PointReader,
    vault: Vault,
    host: PluginHost,
    *,
    mobile: str | None = None,
    identity: str | None = None,
    reveal: bool = False,
) -> tuple[MemberSummary, int]:
    """:func:`lookup_summary` and the API keys' revocation counter, read in the same statement: the HTTP lookup
    confirms its caller's cached key with it, so the hottest read stays one round trip (see
    :meth:`tongcrm.auth.service.KeyVerifier.cached`)."""
    kind, values = _lookup_key(vault, host, mobile=mobile, identity=identity)
    row = await reader.first_by_keys(_LOOKUP, {"kind": kind}, values)
    if row is None:
        raise _not_found(kind)
    generation = int(row.key_generation or 0)
    for _ in range(MAX_TOMBSTONE_HOPS):
        if row is None or row.status == "active" or row.merged_into_id is None:
            break
        # a merge committed between resolving the identity and reading the member: follow the tombstone
        row = await reader.first(_MEMBER_BY_ID, {"id": row.merged_into_id})
    if row is None or row.status != "active":
        raise _not_found(kind)
    return summary(
        cast(Member, row), row.tags.split(",") if row.tags else [], vault, reveal=reveal
    ), generation


def lookup_key(
    vault: Vault, host: PluginHost, *, mobile: str | None = None, identity: str | None = None
) -> tuple[str, list[str]]:
    """The identity kind and the stored values :func:`lookup` looks for (400, 404 or ``InvalidMobile`` as it
    answers), for a caller that reads the member with other rows in one statement (a till's lookup)."""
    return _lookup_key(vault, host, mobile=mobile, identity=identity)


def _lookup_key(
    vault: Vault, host: PluginHost, *, mobile: str | None, identity: str | None
) -> tuple[str, list[str]]:
    """The identity kind and the stored values (blind indexes, one per key id, for a mobile) to look for."""
    if (mobile is None) == (identity is None):
        raise BadRequest("look up by exactly one of mobile= or identity=kind:value")
    if identity is not None:
        kind, sep, value = identity.partition(":")
        if not sep or not kind or not value:
            raise BadRequest("identity must look like kind:value, e.g. taobao.open_uid:AAE…")
        kinds = host.identity_kinds()
        if kind not in kinds:
            # imported here only: an import statement runs on every call, which the lookup by mobile need not pay
            from tongcrm.identity.service import UnknownIdentityKind

            raise UnknownIdentityKind(
                f"unknown identity kind {kind!r} (known kinds: {', '.join(sorted(kinds))})",
                params={"kind": kind[:40], "known": "、".join(sorted(kinds))},
            )
        if kind != "mobile":
            return kind, [value]
        mobile = value
    assert mobile is not None
    try:
        number = normalise_mobile(mobile)
    except InvalidMobile:
        if looks_masked(mobile):  # asked only of a refused number: the lookup's happy path pays nothing
            raise _masked_refused(mobile) from None
        raise
    return "mobile", list(mobile_lookup(vault, number))


def _masked_refused(mobile: str) -> BadRequest:
    """A lookup given a masked mobile (``138****8000``): it is not a number but a pattern several members may
    fit, and a lookup names one member. It was refused as a phone number of 7 digits (422), which read as a typo;
    the search lists every member a pattern fits."""
    message = (
        f"{shown(mobile)} is a masked mobile, not a mobile: a lookup needs the whole number; "
        "GET /api/members?mobile=<masked> lists every member the pattern fits"
    )
    return BadRequest(f"mobile: {message}", extra={"errors": [{"key": "mobile", "message": message}]})


def _not_found(kind: str) -> NotFound:
    return NotFound("no member has this identity" if kind != "mobile" else "no member has this mobile number")


_MEMBERS = cast(sa.Table, Member.__table__)
_IDENTITIES = cast(sa.Table, Identity.__table__)
_TAGS = cast(sa.Table, MemberTag.__table__)
#: The member columns a summary does not show: the profile's extra fields, and the masked mobile's blind index
#: (searches use it; a lookup would decode its 73 characters into a string it never reads).
_NOT_SUMMARISED = frozenset({"profile_meta", "mobile_masked_index"})
#: What a summary shows of a member, and its tags comma-joined (tags never contain commas, see
#: ``normalise_tag``).
_SUMMARY_COLUMNS = (
    *(c for c in _MEMBERS.c if c.key not in _NOT_SUMMARISED),
    sa.select(sa.func.aggregate_strings(_TAGS.c.tag, ","))
    .where(_TAGS.c.member_id == _MEMBERS.c.id)
    .correlate(_MEMBERS)
    .scalar_subquery()
    .label("tags"),
)


def _by_identity(*columns: Any) -> sa.Select[Any]:
    """``columns`` of the members whose identities of kind ``:kind`` are looked for."""
    return (
        sa.select(*columns)
        .select_from(_MEMBERS)
        .join(_IDENTITIES, _IDENTITIES.c.member_id == _MEMBERS.c.id)
        .where(_IDENTITIES.c.kind == sa.bindparam("kind"))
    )


#: The member a (kind, any of values) identity names; lookups arriving together may share one statement.
_LOOKUP = KeyedQuery(
    one=PointQuery(
        _by_identity(*_SUMMARY_COLUMNS, GENERATION_COLUMN)
        .where(_IDENTITIES.c.value.in_(sa.bindparam("values", expanding=True)))
        .limit(1),
        lists=("values",),
    ),
    many=PointQuery(
        # one array parameter: one prepared statement for any number of callers (PostgreSQL only)
        _by_identity(_IDENTITIES.c.value.label("found_by"), *_SUMMARY_COLUMNS, GENERATION_COLUMN).where(
            _IDENTITIES.c.value == sa.any_(sa.bindparam("values", type_=sa.ARRAY(sa.String)))
        )
    ),
    keys="values",
    # the same as a list (SQLite): lookups served in one turn of the event loop read in one statement
    listed=PointQuery(
        _by_identity(_IDENTITIES.c.value.label("found_by"), *_SUMMARY_COLUMNS, GENERATION_COLUMN).where(
            _IDENTITIES.c.value.in_(sa.bindparam("values", expanding=True))
        ),
        lists=("values",),
    ),
)
#: :func:`lookup`'s statement, built once rather than per call (the till's, the console's and membership's
#: lookups go through the ORM session of their unit of work).
_LOOKUP_MEMBER = (
    sa.select(Member)
    .join(Identity, Identity.member_id == Member.id)
    .where(Identity.kind == sa.bindparam("kind"), Identity.value.in_(sa.bindparam("values", expanding=True)))
    .limit(1)
)
_MEMBER_BY_ID = PointQuery(sa.select(*_SUMMARY_COLUMNS).where(_MEMBERS.c.id == sa.bindparam("id")))
#: Merges chain (a survivor may itself be absorbed later); a lookup follows at most this many.
MAX_TOMBSTONE_HOPS = 8


async def summaries(
    session: AsyncSession, vault: Vault, members: Sequence[Member], *, reveal: bool = False
) -> list[MemberSummary]:
    tags = await _tags_of(session, [m.id for m in members])
    return [summary(m, tags[m.id], vault, reveal=reveal) for m in members]
