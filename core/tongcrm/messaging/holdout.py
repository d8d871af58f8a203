"""Campaign hold-out (control) groups: which members a campaign deliberately does not message.

Assignment is a pure function of the campaign, the member and a seed — HMAC-SHA256 keyed by the seed over
``<campaign flow>:<member id>`` — so it is deterministic (the same member lands in the same group in every
request and every process), independent of anything known about the member (so the two groups are
comparable), and reproducible by an analyst who knows the seed. It needs no secrecy, so the key is not the
instance's secret key (rotating that must not reshuffle a running campaign).

Members are assigned when the campaign is queued; a held-out message then goes through the contact policy like
every other, and only where the policy would have sent it is it refused with the reason ``hold-out``. The
control group is therefore the *eligible* held-out members (consent, opt-outs and fatigue applied alike),
measured against the eligible members who were sent the message.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HOLDOUT_REASON", "MAX_PERCENT", "basis_points", "in_holdout"]

HOLDOUT_REASON = "hold-out"
#: A larger control group than the treatment would make the campaign the experiment's minority.
MAX_PERCENT = 50.0
_SCALE = 10_000  # basis points


def basis_points(percent: float) -> int:
    """``percent`` (0–:data:`MAX_PERCENT`, two decimals at most) as basis points."""
    if not 0 <= percent <= MAX_PERCENT:
        raise ValueError(f"a hold-out percentage lies between 0 and {MAX_PERCENT:g}")
    points = round(percent * 100)
    if abs(points - percent * 100) > 1e-6:
        raise ValueError("a hold-out percentage has at most two decimals")
    return points


def in_holdout(flow: str, member_id: int, points: int, seed: str = "") -> bool:
    """Whether ``member_id`` belongs to the hold-out of ``flow`` at ``points`` basis points."""
    if points <= 0:
        return False
    digest = hmac.new(
        f"tongcrm.holdout:{seed}".encode(), f"{flow}:{member_id}".encode(), hashlib.sha256
    ).digest()
    return int.from_bytes(digest[:8], "big") % _SCALE < points
