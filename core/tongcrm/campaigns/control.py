"""Control-group assignment: which members of a campaign's audience are deliberately not messaged.

The assignment is a pure function of (campaign id, seed, member id): HMAC-SHA256 keyed by the seed, the first
8 bytes as an integer, compared modulo 10 000 with the share in basis points. Hence

* **stable**: a member is in the same group in every run of the campaign, in every process, after restarts;
* **unbiased**: the hash knows nothing about the member, so the two groups are comparable (tested with a
  chi-square over generated audiences);
* **reproducible** by an analyst who knows the seed; it needs no secrecy, so it does not use the instance's
  secret key (rotating that must not reshuffle a running campaign).

The share is at most 50 %: a control larger than the treatment makes the campaign the experiment's minority.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["CONTROL", "MAX_BP", "TREATMENT", "in_control", "share_bp", "split"]

TREATMENT = "treatment"
CONTROL = "control"
MAX_BP = 5_000
_SCALE = 10_000


def share_bp(percent: float) -> int:
    """A control share in percent (0–50, at most two decimals) as basis points; ValueError saying why not."""
    if not 0 <= percent <= MAX_BP / 100:
        raise ValueError(f"the control share is {percent:g} %; it must lie between 0 and {MAX_BP / 100:g} %")
    points = round(percent * 100)
    if abs(points - percent * 100) > 1e-6:
        raise ValueError("the control share has at most two decimals")
    return points


def in_control(campaign_id: int, member_id: int, bp: int, seed: str = "") -> bool:
    if bp <= 0:
        return False
    digest = hmac.new(
        f"tongcrm.campaign-control:{seed}".encode(), f"{campaign_id}:{member_id}".encode(), hashlib.sha256
    ).digest()
    return int.from_bytes(digest[:8], "big") % _SCALE < bp


def split(campaign_id: int, member_ids: Iterable[int], bp: int, seed: str = "") -> list[int]:
    """The members of ``member_ids`` that are in the control group."""
    return [m for m in member_ids if in_control(campaign_id, m, bp, seed)]
