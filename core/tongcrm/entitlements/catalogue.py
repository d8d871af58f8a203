"""The catalogue of entitlement kinds (权益): what each kind means, how two values of it compare, and whether
it is a standing benefit of the tier or a recurring grant.

Tiers attach entitlements by kind (see :mod:`tongcrm.tiers.ladder`); the fairness check compares a higher
tier's entitlement with the same kind on the tier below it using ``better``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Direction(enum.StrEnum):
    HIGHER = "higher"  # a larger value is better for the member (multiplier, gift points, coupon value)
    LOWER = "lower"  # a smaller value is better (member price as a percentage of list price)
    PRESENCE = "presence"  # the value does not matter, having it does


class Recurrence(enum.StrEnum):
    STANDING = "standing"  # granted on entering the tier, closed on leaving it; usable any number of times
    MONTHLY = "monthly"  # one grant per member per month (programme time zone)
    BIRTHDAY = "birthday"  # one grant per member per year, in the birthday month


@dataclass(frozen=True, slots=True)
class EntitlementKind:
    code: str
    name: str
    unit: str
    direction: Direction
    recurrence: Recurrence
    min_value: int = 0
    max_value: int | None = None
    #: Days a recurring grant stays usable when the tier's entitlement names no ``validity_days``.
    default_validity_days: int = 31

    def better_or_equal(self, higher: int, lower: int) -> bool:
        """Whether ``higher`` (the value on the higher tier) is at least as good as ``lower``."""
        if self.direction is Direction.HIGHER:
            return higher >= lower
        if self.direction is Direction.LOWER:
            return higher <= lower
        return True


CATALOGUE: dict[str, EntitlementKind] = {
    k.code: k
    for k in (
        EntitlementKind(
            "points_multiplier",
            "积分倍率 points multiplier",
            "percent (100 = 1×)",
            Direction.HIGHER,
            Recurrence.STANDING,
            min_value=100,
            max_value=1000,
        ),
        EntitlementKind(
            "birthday_points",
            "生日礼积分 birthday gift points",
            "points",
            Direction.HIGHER,
            Recurrence.BIRTHDAY,
            min_value=1,
            default_validity_days=365,
        ),
        EntitlementKind(
            "birthday_coupon",
            "生日礼券 birthday coupon",
            "fen",
            Direction.HIGHER,
            Recurrence.BIRTHDAY,
            min_value=1,
        ),
        EntitlementKind("free_shipping", "包邮 free shipping", "-", Direction.PRESENCE, Recurrence.STANDING),
        EntitlementKind(
            "monthly_coupon",
            "每月专享券 monthly exclusive coupon",
            "fen",
            Direction.HIGHER,
            Recurrence.MONTHLY,
            min_value=1,
        ),
        EntitlementKind(
            "priority_service",
            "专属客服 priority customer service",
            "-",
            Direction.PRESENCE,
            Recurrence.STANDING,
        ),
        EntitlementKind(
            "gift_packaging", "礼品包装 gift packaging", "-", Direction.PRESENCE, Recurrence.STANDING
        ),
        EntitlementKind(
            "member_price",
            "会员价 member price",
            "percent of list price",
            Direction.LOWER,
            Recurrence.STANDING,
            min_value=1,
            max_value=100,  # a member price above list would price a member above a newcomer
        ),
    )
}


def kind(code: str) -> EntitlementKind:
    from tongcrm.errors import Unprocessable

    found = CATALOGUE.get(code)
    if found is None:
        raise Unprocessable(
            f"unknown entitlement {code!r} (known: {', '.join(sorted(CATALOGUE))})",
            extra={"entitlement": code},
            code="ladder.unknown_entitlement",
            params={"kind": code, "known": ", ".join(sorted(CATALOGUE))},
        )
    return found
