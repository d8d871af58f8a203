"""Who else stores a member id. A merge moves these rows to the survivor and an undo moves them back, without
the members module knowing every domain: each domain registers its member-owned tables and, if it caches
per-member state (balances, tier), a listener that recomputes it in the same transaction.

Listeners that date what they write (a tier history row, a grant that starts or ends) register with
:func:`register_context_listener` and receive a :class:`MergeContext`: the moment of the merge or undo and the
programme's time zone, so they never read the wall clock and a test with a controllable clock is exact.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from tongcrm.audit.service import Actor


@dataclass(frozen=True, slots=True)
class MemberReference:
    """Rows of ``table`` belong to the member named in ``column``; ``key`` identifies a row for undo."""

    table: str
    column: str = "member_id"
    key: str = "id"


@dataclass(frozen=True, slots=True)
class MergeContext:
    """What a listener may need to know about the merge it follows, whatever channel caused it.

    ``at`` is the merge's (or undo's) own time, aware; ``tz`` the programme's time zone for business days;
    ``merge_id`` the :class:`~tongcrm.identity.models.Merge` record; ``undo`` whether rows just moved back."""

    at: datetime
    tz: ZoneInfo
    merge_id: int
    undo: bool
    actor: Actor


#: ``listener(session, survivor_id, other_ids)`` after rows moved (merge, or undo with the roles swapped).
MergeListener = Callable[[AsyncSession, int, tuple[int, ...]], Awaitable[None]]
#: ``listener(session, survivor_id, other_ids, context)``: the same, told when and where it happens.
ContextMergeListener = Callable[[AsyncSession, int, tuple[int, ...], MergeContext], Awaitable[None]]

_references: dict[str, MemberReference] = {}
_listeners: list[MergeListener] = []
#: Every listener in registration order, as (what was registered, how to call it with a context).
_calls: list[tuple[object, ContextMergeListener]] = []


def register_reference(reference: MemberReference) -> None:
    _references[reference.table] = reference


def register_listener(listener: MergeListener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)

        async def call(
            session: AsyncSession, survivor_id: int, other_ids: tuple[int, ...], context: MergeContext
        ) -> None:
            await listener(session, survivor_id, other_ids)

        _calls.append((listener, call))


def register_context_listener(listener: ContextMergeListener) -> None:
    if all(registered is not listener for registered, _ in _calls):
        _calls.append((listener, listener))


def references() -> list[MemberReference]:
    return list(_references.values())


def listeners() -> list[MergeListener]:
    """The listeners registered without a context (see :func:`notify` for calling every listener)."""
    return list(_listeners)


async def notify(
    session: AsyncSession, survivor_id: int, other_ids: tuple[int, ...], context: MergeContext
) -> None:
    """Call every listener, in registration order, after a merge or an undo moved rows."""
    for _, call in list(_calls):
        await call(session, survivor_id, other_ids, context)
