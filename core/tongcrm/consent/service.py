"""Consent per purpose and sender signature, and the one question messaging asks: may we contact this member?

Consent is a log of events (opt-in or opt-out, with source and proof). The state for a purpose and signature
is the latest event (by insertion order) among those for that exact signature and those for every signature
(``*``). So an opt-out takes effect immediately and stays until a *new* opt-in is recorded.

With no event at all, ``service`` messages (shipping notices, payment reminders about the member's own order)
are allowed, because they serve an order the member placed; ``marketing`` needs an explicit opt-in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.service import SYSTEM, Actor
from tongcrm.consent.models import ConsentEvent
from tongcrm.db.base import utcnow
from tongcrm.db.lengths import check_fits
from tongcrm.errors import BadRequest, Unprocessable

ALL_SIGNATURES = "*"


class Purpose(enum.StrEnum):
    SERVICE = "service"
    MARKETING = "marketing"


class ConsentStatus(enum.StrEnum):
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"


#: What an absent statement means, per purpose (see the module docstring).
DEFAULT_ALLOWED: dict[Purpose, bool] = {Purpose.SERVICE: True, Purpose.MARKETING: False}


@dataclass(frozen=True, slots=True)
class ConsentState:
    purpose: str
    signature: str
    status: str
    source: str
    recorded_at: datetime


def parse_purpose(value: str) -> Purpose:
    try:
        return Purpose(value)
    except ValueError:
        raise Unprocessable(
            f"unknown consent purpose {value!r}; use one of {', '.join(p.value for p in Purpose)}"
        ) from None


def parse_status(value: str) -> ConsentStatus:
    try:
        return ConsentStatus(value)
    except ValueError:
        raise Unprocessable(
            f"unknown consent status {value!r}; use one of {', '.join(s.value for s in ConsentStatus)}"
        ) from None


def _signature(signature: str | None) -> str:
    sig = (signature or ALL_SIGNATURES).strip()
    if not sig or len(sig) > 64:
        raise Unprocessable("a sender signature is 1 to 64 characters (or '*' for every signature)")
    return sig


def effective(events: Iterable[ConsentEvent], purpose: str, signature: str) -> bool | None:
    """The explicit state for (purpose, signature) from ``events``: True, False, or None when nothing says.

    ``events`` may be in any order; the latest by id wins.
    """
    latest: ConsentEvent | None = None
    for event in events:
        if event.purpose != purpose or event.signature not in (signature, ALL_SIGNATURES):
            continue
        if latest is None or event.id > latest.id:
            latest = event
    if latest is None:
        return None
    return latest.status == ConsentStatus.OPT_IN


async def live_member_id(session: AsyncSession, member_id: int) -> int | None:
    from tongcrm.members.service import resolve_live_id

    return await resolve_live_id(session, member_id)


async def record_consent(
    session: AsyncSession,
    member_id: int,
    purpose: str,
    status: str,
    *,
    source: str,
    signature: str | None = None,
    proof: str = "",
    actor: Actor = SYSTEM,
    at: datetime | None = None,
) -> ConsentEvent:
    """Append a consent statement (an opt-out by SMS reply, an opt-in at the till…) for a member.

    A tombstone's id is followed to its survivor. Audited when an API key (not the system) makes the change.
    """
    from tongcrm.errors import NotFound

    purpose_ = parse_purpose(purpose)
    status_ = parse_status(status)
    sig = _signature(signature)
    if not source.strip():
        raise Unprocessable("a consent statement needs a source (where and how it was given)")
    # kept whole or refused: a cut source may name another place (pos:SH0012… for pos:SH00123:T01)
    check_fits(source.strip(), "source", ConsentEvent.source, refuse=BadRequest)
    live = await live_member_id(session, member_id)
    if live is None:
        raise NotFound(f"no member {member_id}")
    event = ConsentEvent(
        member_id=live,
        purpose=purpose_.value,
        signature=sig,
        status=status_.value,
        source=source.strip(),
        proof=proof,
        actor=actor.name,
        recorded_at=at or utcnow(),
    )
    session.add(event)
    await session.flush()
    if actor is not SYSTEM:
        audit.record(
            session,
            actor,
            f"consent.{status_.value}",
            "member",
            live,
            after={"purpose": purpose_.value, "signature": sig, "status": status_.value, "source": source},
        )
    return event


async def may_contact(session: AsyncSession, member_id: int, purpose: str, signature: str) -> bool:
    """Whether a message for ``purpose`` may be sent to the member under sender ``signature``.

    This is the consent half of the contact policy (quiet hours and fatigue live with messaging). Unknown
    members may not be contacted.
    """
    result = await may_contact_many(session, [member_id], purpose, signature)
    return result.get(member_id, False)


async def may_contact_many(
    session: AsyncSession, member_ids: Sequence[int], purpose: str, signature: str
) -> dict[int, bool]:
    """:func:`may_contact` for many members in one query (campaign audiences). Tombstones follow their
    survivor; ids that name no member are absent from the answer."""
    purpose_ = parse_purpose(purpose)
    sig = _signature(signature)
    from tongcrm.members.service import resolve_live_ids

    live = await resolve_live_ids(session, member_ids)
    targets = sorted(set(live.values()))
    by_member: dict[int, list[ConsentEvent]] = {m: [] for m in targets}
    for start in range(0, len(targets), 5000):
        chunk = targets[start : start + 5000]
        rows = await session.execute(
            sa.select(ConsentEvent).where(
                ConsentEvent.member_id.in_(chunk),
                ConsentEvent.purpose == purpose_.value,
                ConsentEvent.signature.in_((sig, ALL_SIGNATURES)),
            )
        )
        for event in rows.scalars():
            by_member[event.member_id].append(event)
    out: dict[int, bool] = {}
    for asked, target in live.items():
        state = effective(by_member[target], purpose_.value, sig)
        out[asked] = DEFAULT_ALLOWED[purpose_] if state is None else state
    return out


async def consent_states(session: AsyncSession, member_id: int) -> list[ConsentState]:
    """The latest statement per (purpose, signature) of one member."""
    rows = (
        await session.execute(
            sa.select(ConsentEvent).where(ConsentEvent.member_id == member_id).order_by(ConsentEvent.id)
        )
    ).scalars()
    latest: dict[tuple[str, str], ConsentEvent] = {}
    for event in rows:
        latest[(event.purpose, event.signature)] = event
    return [
        ConsentState(e.purpose, e.signature, e.status, e.source, e.recorded_at)
        for _, e in sorted(latest.items())
    ]


async def history(session: AsyncSession, member_id: int, limit: int = 100) -> list[ConsentEvent]:
    rows = await session.execute(
        sa.select(ConsentEvent)
        .where(ConsentEvent.member_id == member_id)
        .order_by(ConsentEvent.id.desc())
        .limit(limit)
    )
    return list(rows.scalars())


async def make_strictest(
    session: AsyncSession,
    survivor_id: int,
    survivor_event_ids: set[int],
    absorbed_event_ids: set[int],
    *,
    merge_id: int,
    at: datetime,
) -> list[int]:
    """After a merge moved the absorbed member's consent events to the survivor: wherever either member had
    opted out (for a purpose and signature) but the combined log would now allow contact, append an opt-out,
    so the merged member is never more contactable than the stricter of the two. Returns the new event ids
    (an undo deletes them)."""
    events = list(
        (
            await session.execute(sa.select(ConsentEvent).where(ConsentEvent.member_id == survivor_id))
        ).scalars()
    )
    mine = [e for e in events if e.id in survivor_event_ids]
    theirs = [e for e in events if e.id in absorbed_event_ids]
    created: list[int] = []
    keys = sorted(
        {(e.purpose, e.signature) for e in events}, key=lambda k: (k[0], k[1] != ALL_SIGNATURES, k[1])
    )
    for purpose, signature in keys:
        before = (effective(mine, purpose, signature), effective(theirs, purpose, signature))
        if False not in before or effective(events, purpose, signature) is False:
            continue
        event = ConsentEvent(
            member_id=survivor_id,
            purpose=purpose,
            signature=signature,
            status=ConsentStatus.OPT_OUT.value,
            source="merge",
            proof=f"merge {merge_id}: one of the merged members had opted out",
            actor="system",
            recorded_at=at,
        )
        session.add(event)
        await session.flush()
        events.append(event)
        created.append(event.id)
    return created
