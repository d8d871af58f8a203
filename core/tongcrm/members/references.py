"""Who else stores a member id. A merge moves these rows to the survivor and an undo moves them back, without
the members module knowing every domain: each domain registers its member-owned tables and, if it caches
per-member state (balances, tier), a listener that recomputes it in the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class MemberReference:
    """Rows of ``table`` belong to the member named in ``column``; ``key`` identifies a row for undo."""

    table: str
    column: str = "member_id"
    key: str = "id"


#: ``listener(session, survivor_id, other_ids)`` after rows moved (merge, or undo with the roles swapped).
MergeListener = Callable[[AsyncSession, int, tuple[int, ...]], Awaitable[None]]

_references: dict[str, MemberReference] = {}
_listeners: list[MergeListener] = []


def register_reference(reference: MemberReference) -> None:
    _references[reference.table] = reference


def register_listener(listener: MergeListener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def references() -> list[MemberReference]:
    return list(_references.values())


def listeners() -> list[MergeListener]:
    return list(_listeners)
