"""Merging two members into one, and undoing it.

A merge moves every row of every registered member reference (identities, tags, consent, orders, and whatever
other domains register, e.g. the points ledger) from the absorbed member to the survivor, and records the keys
of the rows it moved. The absorbed member stays as a tombstone (``status='merged'``, ``merged_into_id``).
An undo moves exactly the recorded rows back; rows that arrived on the survivor after the merge stay there.

Profile survivorship, per field: the most recent *verified* value wins, then the most recent value; a blank
never replaces a value. Acquisition source comes from whichever member was created first. Consent becomes the
stricter of the two (see :func:`tongcrm.consent.service.make_strictest`).

Merges undo last-in-first-out along a chain: a merge whose survivor was itself merged away later must wait
until that later merge is undone.

Activity on the survivor while merged. Rows created after the merge are the survivor's and stay with it; the
listeners of each domain settle what that activity did to the rows that go back. For the points ledger
(:func:`tongcrm.points.ledger.split_after_undo`) the rule is "draws follow the lot":

* every lot goes back as it is now: what the merged member redeemed, transferred out, clawed back or settled
  from the absorbed member's lots is the absorbed member's loss, and the survivor's lots likewise stay its own;
* an entry made while merged that is about a row going back (the expiry or refund reversal of a lot that goes
  back, the refund of a redemption that goes back) goes back with it;
* the undo then posts one pair of ``merge_split`` entries (summing to zero) that moves, from the member whose
  entries exceed its open lots to the other, exactly that excess, and moves owed points (clawback policy) the
  same way, so each member's balance equals its own open lots again and every total stays exact. Debt recorded
  while merged stays with the member whose entries recorded it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.config import PROGRAMME_TZ
from tongcrm.consent import service as consent
from tongcrm.consent.models import ConsentEvent
from tongcrm.db.base import metadata
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.identity.models import Identity, Merge
from tongcrm.jobs.outbox import emit
from tongcrm.logging import get_logger
from tongcrm.members.models import Member, MemberTag
from tongcrm.members.references import (
    MemberReference,
    MergeContext,
    notify,
    references,
    register_reference,
)

#: Core's own member-owned tables. Orders live in their own module but the member base moves them.
CORE_REFERENCES = (
    MemberReference(Identity.__tablename__),
    MemberReference(MemberTag.__tablename__),
    MemberReference(ConsentEvent.__tablename__),
    MemberReference("orders"),
)
for _ref in CORE_REFERENCES:
    register_reference(_ref)

#: Profile fields ruled by "most recent verified value wins".
PROFILE_FIELDS = ("name", "gender", "birthday", "province", "city", "mobile_enc")
#: not a profile field: written with ``mobile_enc`` (and recorded in ``profile_changes`` beside it)
MASKED_INDEX = "mobile_masked_index"
#: Acquisition fields, taken from the member created first.
ACQUISITION_FIELDS = ("source_channel", "source_store", "source_campaign", "referrer_id")
_CHUNK = 1000
log = get_logger(__name__)


def _key_of(ref: MemberReference) -> str:
    """The row key to record. A table whose declared key column does not exist (a registration that kept the
    default ``id`` on a table keyed otherwise) falls back to its single-column primary key."""
    table = metadata.tables.get(ref.table)
    if table is None or ref.key in table.c:
        return ref.key
    pk = list(table.primary_key.columns)
    if len(pk) != 1:
        raise ValueError(
            f"member reference {ref.table}: no column {ref.key!r} and no single-column primary key"
        )
    log.warning("member reference key column missing; using the primary key", table=ref.table, key=pk[0].name)
    return pk[0].name


def _table(ref: MemberReference) -> tuple[sa.TableClause, str]:
    key = _key_of(ref)
    return sa.table(ref.table, sa.column(ref.column), sa.column(key)), key


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _from_json(field: str, value: Any) -> Any:
    if field == "birthday" and isinstance(value, str):
        return date.fromisoformat(value)
    return value


def _provenance(member: Member, field: str) -> tuple[bool, str]:
    meta = (member.profile_meta or {}).get(field) or {}
    return bool(meta.get("verified", False)), str(meta.get("at") or member.created_at.isoformat())


async def _locked_members(session: AsyncSession, ids: tuple[int, ...]) -> dict[int, Member]:
    rows = await session.execute(
        sa.select(Member)
        .where(Member.id.in_(ids))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {m.id: m for m in rows.scalars()}


async def merge_members(
    session: AsyncSession,
    survivor_id: int,
    absorbed_id: int,
    *,
    actor: Actor,
    reason: str,
    evidence: list[dict[str, Any]] | None = None,
    at: datetime,
    audit_it: bool = True,
    tz: ZoneInfo | None = None,
) -> Merge:
    """Merge ``absorbed_id`` into ``survivor_id`` inside the caller's unit of work, and record it.

    Listeners are told ``at`` and ``tz`` (the programme's zone from settings; the default zone when the caller
    has none), so what they date follows the merge's own time, not the wall clock."""
    if survivor_id == absorbed_id:
        raise Unprocessable(f"cannot merge member {survivor_id} into itself")
    found = await _locked_members(session, (survivor_id, absorbed_id))
    for member_id in (survivor_id, absorbed_id):
        if member_id not in found:
            raise NotFound(f"no member {member_id}")
        if found[member_id].status != "active":
            raise Conflict(
                f"member {member_id} is a tombstone merged into member {found[member_id].merged_into_id}; "
                "merge the live member instead",
                extra={"member_id": member_id, "merged_into_id": found[member_id].merged_into_id},
            )
    survivor, absorbed = found[survivor_id], found[absorbed_id]
    record = Merge(
        survivor_id=survivor_id,
        absorbed_id=absorbed_id,
        actor=actor.name,
        reason=reason,
        evidence=list(evidence or []),
        created_at=at,
    )
    session.add(record)
    await session.flush()

    survivor_consents = set(
        (
            await session.execute(sa.select(ConsentEvent.id).where(ConsentEvent.member_id == survivor_id))
        ).scalars()
    )
    moved: dict[str, list[Any]] = {}
    for ref in references():
        t, key = _table(ref)
        keys = (
            await session.execute(
                sa.update(t)
                .where(t.c[ref.column] == absorbed_id)
                .values({ref.column: survivor_id})
                .returning(t.c[key])
            )
        ).scalars()
        moved[ref.table] = sorted(keys)
    created_consents = await consent.make_strictest(
        session,
        survivor_id,
        survivor_consents,
        set(moved.get(ConsentEvent.__tablename__, [])),
        merge_id=record.id,
        at=at,
    )

    before = _profile_snapshot(survivor)
    changes: dict[str, list[Any]] = {}
    meta = dict(survivor.profile_meta or {})
    for field in PROFILE_FIELDS:
        candidates = [
            (*_provenance(m, field), m is survivor, getattr(m, field))
            for m in (survivor, absorbed)
            if getattr(m, field) not in (None, "")
        ]
        if not candidates:
            continue
        winner = max(candidates, key=lambda c: (c[0], c[1], c[2]))
        if winner[3] != getattr(survivor, field):
            changes[field] = [_jsonable(getattr(survivor, field)), _jsonable(winner[3])]
            changes[f"meta.{field}"] = [meta.get(field), (absorbed.profile_meta or {}).get(field)]
            setattr(survivor, field, winner[3])
            if field == "mobile_enc":  # the masked-mobile index travels with the number it was made from
                changes[MASKED_INDEX] = [survivor.mobile_masked_index, absorbed.mobile_masked_index]
                survivor.mobile_masked_index = absorbed.mobile_masked_index
            meta[field] = (absorbed.profile_meta or {}).get(field) or {
                "at": at.isoformat(),
                "verified": False,
            }
    first, second = sorted((survivor, absorbed), key=lambda m: (m.created_at, m.id))
    for field in ACQUISITION_FIELDS:
        value = getattr(first, field) if getattr(first, field) is not None else getattr(second, field)
        if field == "referrer_id" and value in (survivor_id, absorbed_id):
            continue
        if value != getattr(survivor, field):
            changes[field] = [getattr(survivor, field), value]
            setattr(survivor, field, value)
    if survivor.lifecycle_stage == "prospect" and absorbed.lifecycle_stage != "prospect":
        changes["lifecycle_stage"] = [survivor.lifecycle_stage, absorbed.lifecycle_stage]
        survivor.lifecycle_stage = absorbed.lifecycle_stage
    survivor.profile_meta = meta
    survivor.updated_at = at
    absorbed.status = "merged"
    absorbed.merged_into_id = survivor_id
    absorbed.updated_at = at

    record.moved = moved
    record.created = {ConsentEvent.__tablename__: created_consents}
    record.profile_changes = changes
    await session.flush()
    await notify(session, survivor_id, (absorbed_id,), MergeContext(at, _zone(tz), record.id, False, actor))
    emit(
        session,
        "members_merged",
        {"merge_id": record.id, "survivor_id": survivor_id, "absorbed_id": absorbed_id, "undone": False},
    )
    if audit_it:
        audit.record(
            session,
            actor,
            "member.merge",
            "merge",
            record.id,
            before={"survivor": before, "absorbed_id": absorbed_id},
            after={"survivor": _profile_snapshot(survivor), "moved": {k: len(v) for k, v in moved.items()}},
        )
    return record


async def list_merges(session: AsyncSession, *, member_id: int | None = None, limit: int = 50) -> list[Merge]:
    """Merges newest first; with ``member_id``, those it survived or was absorbed in."""
    stmt = sa.select(Merge).order_by(Merge.id.desc()).limit(limit)
    if member_id is not None:
        stmt = stmt.where(sa.or_(Merge.survivor_id == member_id, Merge.absorbed_id == member_id))
    return list((await session.execute(stmt)).scalars())


async def undo_merge(
    session: AsyncSession, merge_id: int, *, actor: Actor, at: datetime, tz: ZoneInfo | None = None
) -> Merge:
    """Split a merge back: the absorbed member lives again and gets exactly the rows the merge moved.

    Listeners are told ``at`` and ``tz`` as for the merge, with ``undo`` set and the roles swapped."""
    record = (
        await session.execute(
            sa.select(Merge)
            .where(Merge.id == merge_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if record is None:
        raise NotFound(f"no merge {merge_id}")
    if record.status == "undone":
        raise Conflict(
            f"merge {merge_id} was already undone at {record.undone_at}", extra={"merge_id": merge_id}
        )
    found = await _locked_members(session, (record.survivor_id, record.absorbed_id))
    survivor, absorbed = found[record.survivor_id], found[record.absorbed_id]
    if survivor.status != "active":
        later = (
            await session.execute(
                sa.select(Merge.id).where(Merge.absorbed_id == survivor.id, Merge.status == "active").limit(1)
            )
        ).scalar_one_or_none()
        raise Conflict(
            f"member {survivor.id} was merged again later (merge {later}); undo that merge first",
            extra={"blocking_merge_id": later},
        )
    if absorbed.status != "merged" or absorbed.merged_into_id != survivor.id:
        raise Conflict(f"member {absorbed.id} is no longer a tombstone of member {survivor.id}")

    created = record.created or {}
    for table, keys in created.items():
        ref = next((r for r in references() if r.table == table), MemberReference(table))
        t, key = _table(ref)
        for start in range(0, len(keys), _CHUNK):
            await session.execute(sa.delete(t).where(t.c[key].in_(keys[start : start + _CHUNK])))
    by_table = {r.table: r for r in references()}
    for table, keys in (record.moved or {}).items():
        ref = by_table.get(table, MemberReference(table))
        t, key = _table(ref)
        for start in range(0, len(keys), _CHUNK):
            await session.execute(
                sa.update(t)
                .where(t.c[key].in_(keys[start : start + _CHUNK]), t.c[ref.column] == survivor.id)
                .values({ref.column: absorbed.id})
            )

    before = _profile_snapshot(survivor)
    meta = dict(survivor.profile_meta or {})
    for field, (old, new) in (record.profile_changes or {}).items():
        if field.startswith("meta.") or field == MASKED_INDEX:
            continue
        # Only put back what still is what the merge set: a later edit of the survivor wins over the undo.
        if _jsonable(getattr(survivor, field)) == new:
            setattr(survivor, field, _from_json(field, old))
            if field == "mobile_enc":
                # with the index it had (a merge recorded before the index existed: none, and
                # ``tongcrm member index-masked`` makes it again)
                survivor.mobile_masked_index = (record.profile_changes or {}).get(MASKED_INDEX, [None])[0]
            if field in PROFILE_FIELDS:
                old_meta = (record.profile_changes or {}).get(f"meta.{field}", [None])[0]
                if old_meta is None:
                    meta.pop(field, None)
                else:
                    meta[field] = old_meta
    survivor.profile_meta = meta
    survivor.updated_at = at
    absorbed.status = "active"
    absorbed.merged_into_id = None
    absorbed.updated_at = at
    record.status = "undone"
    record.undone_at = at
    record.undone_by = actor.name
    await session.flush()
    await notify(session, absorbed.id, (survivor.id,), MergeContext(at, _zone(tz), record.id, True, actor))
    emit(
        session,
        "members_merged",
        {"merge_id": record.id, "survivor_id": survivor.id, "absorbed_id": absorbed.id, "undone": True},
    )
    audit.record(
        session,
        actor,
        "member.merge_undo",
        "merge",
        record.id,
        before={"survivor": before},
        after={"survivor": _profile_snapshot(survivor), "restored_member_id": absorbed.id},
    )
    return record


def _zone(tz: ZoneInfo | None) -> ZoneInfo:
    return tz if tz is not None else ZoneInfo(PROGRAMME_TZ)


def _profile_snapshot(member: Member) -> dict[str, Any]:
    """A masked view of the profile for audit records (the mobile only as present/absent)."""
    return {
        "name": member.name,
        "gender": member.gender,
        "birthday": _jsonable(member.birthday),
        "province": member.province,
        "city": member.city,
        "mobile": "****" if member.mobile_enc else None,
        "lifecycle_stage": member.lifecycle_stage,
    }
