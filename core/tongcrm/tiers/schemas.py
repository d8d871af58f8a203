"""Request and response bodies of the tier and entitlement API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import msgspec

from tongcrm.db.lengths import fits
from tongcrm.entitlements.models import EntitlementUsage
from tongcrm.tiers.models import MemberTier, TierLadder

#: Bounded by the columns that keep them (a longer one was a 500 on PostgreSQL and stored whole on SQLite).
LadderReason = Annotated[str, fits(TierLadder.reason)]
OverrideReason = Annotated[str, fits(MemberTier.override_reason)]
TierCode = Annotated[str, fits(MemberTier.override_code)]
UsageKey = Annotated[str, fits(EntitlementUsage.usage_key)]
UsageReference = Annotated[str, fits(EntitlementUsage.reference)]


class LadderIn(msgspec.Struct, forbid_unknown_fields=True):
    #: The ladder document (see :mod:`tongcrm.tiers.ladder`).
    ladder: dict[str, Any]
    reason: LadderReason = ""


class LadderOut(msgspec.Struct):
    version: int
    definition: dict[str, Any]
    reason: str
    created_by: str
    created_at: datetime


class MoveOut(msgspec.Struct):
    from_tier: str
    to_tier: str
    members: int
    #: now: an upgrade applied when the ladder is applied; at_review: a drop at the member's next review
    when: str


class TierCountOut(msgspec.Struct):
    tier: str
    members_now: int
    members_after: int
    moving_up_in: int
    moving_down_in: int
    moving_up_out: int
    moving_down_out: int


class PreviewOut(msgspec.Struct):
    up: int
    down: int
    moves: list[MoveOut]
    tiers: list[TierCountOut]


class TierRef(msgspec.Struct):
    code: str
    name: str
    rank: int


class MetricOut(msgspec.Struct):
    metric: str
    months: int
    value: int


class ShortfallOut(msgspec.Struct):
    metric: str
    months: int
    threshold: int
    value: int
    missing: int
    text: str


class NextTierOut(msgspec.Struct):
    tier: TierRef
    #: Ways to get there, easiest first; each lists the conditions still unmet (empty: already qualifies).
    needs: list[list[ShortfallOut]]
    message: str


class KeepOut(msgspec.Struct):
    review_on: date
    safe: bool
    drop_to: TierRef | None
    needs: list[list[ShortfallOut]]
    #: What will still count on the review day of what the member already has.
    projected: list[MetricOut]
    message: str


class OverrideOut(msgspec.Struct):
    tier: str
    until: datetime
    reason: str
    by: str


class MemberTierOut(msgspec.Struct):
    member_id: int
    ladder_version: int
    tier: TierRef
    held_tier: TierRef
    qualified_tier: TierRef
    since: datetime | None
    review_on: date | None
    override: OverrideOut | None
    metrics: list[MetricOut]
    next_tier: NextTierOut | None
    keep: KeepOut | None
    entitlements: list[dict[str, Any]]


class HistoryOut(msgspec.Struct):
    id: int
    from_tier: str
    to_tier: str
    reason: str
    detail: str
    actor: str
    ladder_version: int
    at: datetime


class OverrideIn(msgspec.Struct, forbid_unknown_fields=True):
    tier: TierCode
    #: Last day of the override (programme time zone); it ends at the following midnight.
    until: date
    reason: OverrideReason


class GrantOut(msgspec.Struct):
    id: int
    grant_key: str
    kind: str
    tier: str | None
    value: int
    params: dict[str, Any]
    valid_from: datetime
    #: None: a standing benefit, valid for as long as the member holds the tier
    valid_until: datetime | None
    status: str
    provider: str | None
    attempts: int
    reference: str | None
    last_error: str | None
    #: When it was used (a standing grant: when it was last used)
    used_at: datetime | None
    #: How many times it was used (a recurring grant: 0 or 1)
    uses: int = 0


class MemberEntitlementsOut(msgspec.Struct):
    member_id: int
    tier: str
    #: The live standing grants of the member's tier (usable by grant id or by kind)
    standing: list[GrantOut]
    #: Recent recurring grants, newest first
    grants: list[GrantOut]


class UsageIn(msgspec.Struct, forbid_unknown_fields=True):
    usage_key: UsageKey
    reference: UsageReference = ""


class UsageOut(msgspec.Struct):
    id: int
    grant_id: int
    member_id: int
    usage_key: str
    reference: str
    used_at: datetime
