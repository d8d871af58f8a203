"""The seam between points and tiers. Tiers (a later module) provide a resolver that names each member's tier
and its points multiplier; until one is installed every member earns at 100 % and has no tier.

The multiplier is an integer percentage (150 = ×1.5), so earning stays in integer arithmetic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class TierInfo:
    tier: str | None = None
    multiplier_pct: int = 100


NO_TIER = TierInfo()

#: ``resolver(session, member_ids, at)`` → the tier of each member at ``at`` (missing members: no tier).
TierResolver = Callable[[AsyncSession, Sequence[int], datetime], Awaitable[Mapping[int, TierInfo]]]

_resolver: TierResolver | None = None


def set_tier_resolver(resolver: TierResolver | None) -> None:
    """Install the tiers module's resolver (``None`` restores the default: no tier, ×1)."""
    global _resolver
    _resolver = resolver


async def resolve_tiers(
    session: AsyncSession, member_ids: Sequence[int], at: datetime
) -> dict[int, TierInfo]:
    if _resolver is None or not member_ids:
        return {}
    resolved = await _resolver(session, sorted(set(member_ids)), at)
    for info in resolved.values():
        if info.multiplier_pct < 0:
            raise ValueError("a tier multiplier cannot be negative")
    return dict(resolved)
