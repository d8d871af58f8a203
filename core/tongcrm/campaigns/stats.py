"""Statistics of a campaign's evaluation: the difference of two response rates and its 95 % interval.

The interval is **Newcombe's hybrid score interval** (Newcombe 1998, method 10): a Wilson score interval for each
group's rate, ``(l1, u1)`` and ``(l2, u2)``, combined as

    d - sqrt((p1 - l1)² + (u2 - p2)²)   …   d + sqrt((u1 - p1)² + (p2 - l2)²),   d = p1 - p2.

It was chosen over the Wald interval ``d ± z·sqrt(p1(1-p1)/n1 + p2(1-p2)/n2)`` because campaign response rates
are small (a few per cent) and control groups are often small too; there Wald's coverage falls well below 95 %
and its interval can leave [-1, 1], while Newcombe's stays close to nominal and within bounds. The coverage is
tested by simulation (a known true effect recovered in ≥ 93 of 100 seeded repetitions; no effect covered too).

The relative uplift is ``d / p2``; it is reported as a point estimate only (undefined when the control rate is 0).

"Too small to conclude": the normal approximation behind any such interval needs enough responders and
non-responders in each group; below :data:`MIN_EXPECTED` expected of either in a group (at the pooled rate), or
with fewer than :data:`MIN_GROUP` members in a group, the report says so instead of claiming an effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054
MIN_GROUP = 30
MIN_EXPECTED = 5.0


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``x / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Uplift:
    treated_rate: float
    control_rate: float
    #: Absolute uplift (treated − control) and its 95 % Newcombe interval.
    absolute: float
    low: float
    high: float
    #: absolute / control rate; None when the control rate is 0.
    relative: float | None
    #: None when the sample can support a conclusion, else why not.
    too_small: str | None

    @property
    def conclusion(self) -> str:
        if self.too_small:
            return "too_small"
        if self.low > 0:
            return "positive"
        if self.high < 0:
            return "negative"
        return "no_clear_effect"


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """(p1 − p2, low, high) with Newcombe's hybrid score interval; the full range when a group is empty."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, -1.0, 1.0
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, low), min(1.0, high)


@dataclass(frozen=True, slots=True)
class TooSmall:
    """Why a sample cannot support a conclusion, as figures, so each reader (the API's English sentence, the
    console in Chinese) words it in its own language from the same test."""

    #: ``"group"``: a group has fewer than :data:`MIN_GROUP` members; ``"expected"``: too few responders or
    #: non-responders expected in a group at the pooled rate.
    kind: str
    treated: int
    control: int
    smallest_expected: float = 0.0
    pooled_rate: float = 0.0

    def english(self) -> str:
        if self.kind == "group":
            return (
                f"each group needs at least {MIN_GROUP} eligible members"
                f" (treated {self.treated}, control {self.control})"
            )
        return (
            f"too few responders or non-responders expected in a group ({self.smallest_expected:.1f} <"
            f" {MIN_EXPECTED:g} at the pooled rate {self.pooled_rate:.2%})"
        )


def too_small_why(x1: int, n1: int, x2: int, n2: int) -> TooSmall | None:
    """Why the sample cannot support a conclusion yet, or None."""
    if min(n1, n2) < MIN_GROUP:
        return TooSmall("group", n1, n2)
    pooled = (x1 + x2) / (n1 + n2)
    smallest = min(n * q for n in (n1, n2) for q in (pooled, 1 - pooled))
    if smallest < MIN_EXPECTED:
        return TooSmall("expected", n1, n2, smallest, pooled)
    return None


def too_small(x1: int, n1: int, x2: int, n2: int) -> str | None:
    """Why the sample cannot support a conclusion yet, in English, or None."""
    why = too_small_why(x1, n1, x2, n2)
    return None if why is None else why.english()


def uplift(x1: int, n1: int, x2: int, n2: int) -> Uplift:
    """Responders ``x1`` of ``n1`` treated against ``x2`` of ``n2`` in the control group."""
    d, low, high = newcombe(x1, n1, x2, n2)
    p1 = x1 / n1 if n1 else 0.0
    p2 = x2 / n2 if n2 else 0.0
    return Uplift(p1, p2, d, low, high, d / p2 if p2 > 0 else None, too_small(x1, n1, x2, n2))
