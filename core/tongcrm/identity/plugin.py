"""Core's own hook implementations for identity: the identity kinds the core defines, and the default
resolution policy (which runs last, so a plugin's ``resolve_member`` can override it)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import IdentityClaim, IdentityKindSpec, MemberMatch, ResolutionDecision

MOBILE = IdentityKindSpec(
    name="mobile",
    strong=True,
    description="Mobile number in E.164, matched through a keyed blind index and stored encrypted",
    labels={"zh": "手机号"},
)

#: A member's id in the CRM a brand moved from (``tongcrm import``): ``<source>/<id>``, one person per value.
IMPORTED_MEMBER = IdentityKindSpec(
    name="import.member_id",
    strong=True,
    description="A member's id in a previous CRM, as '<import source>/<id>' (tongcrm import)",
    labels={"zh": "原系统会员号"},
)


@hookimpl
def identity_kinds() -> list[IdentityKindSpec]:
    return [MOBILE, IMPORTED_MEMBER]


def default_decision(claims: Sequence[IdentityClaim], matches: Sequence[MemberMatch]) -> ResolutionDecision:
    """The core policy.

    - Strong claims name one member: attach to it. Several: the oldest survives and the others merge into it.
    - No strong claim names anyone: when every claim is already known (only weak ones, e.g. a Taobao ``oaid``),
      attach to the most recently created member they name, which keeps weak-only claim sets idempotent
      without ever merging on weak evidence; otherwise (something new) create a member.
    """
    member_id, merge_from, reason = core_choice(
        [(c.kind, c.value) for c in claims],
        [(m.member_id, m.kind, m.value, m.strong, m.member_created_at) for m in matches],
    )
    if member_id is None:
        return ResolutionDecision(create=True, reason=reason)
    return ResolutionDecision(member_id=member_id, merge_from=merge_from, reason=reason)


#: A match as :func:`core_choice` takes it: (member id, kind, value, strong, the member's ``created_at``).
Match = tuple[int, str, str, bool, datetime]


def core_choice(
    claims: Sequence[tuple[str, str]], matches: Sequence[Match]
) -> tuple[int | None, tuple[int, ...], str]:
    """:func:`default_decision` on plain values: ``claims`` as (kind, value), ``matches`` as :data:`Match`.
    Returns the member to attach to (None: create one), the members to merge into it, and the reason.

    Identity resolution calls it directly when no plugin implements ``resolve_member``
    (:meth:`tongcrm.plugin.host.PluginHost.resolution_is_core`): an ingest page built an
    :class:`IdentityClaim` and a :class:`MemberMatch` (frozen, validated dataclasses) per claim to ask the hook,
    ~6 % of a page's CPU for values resolution had already checked (issue #22)."""
    strong: dict[int, Match] = {}
    for m in matches:
        if m[3] and m[0] not in strong:
            strong[m[0]] = m
    if strong:
        ordered = sorted(strong.values(), key=lambda m: (m[4], m[0]))
        reason = "strong claims" if len(ordered) > 1 else "strong claim"
        return ordered[0][0], tuple(m[0] for m in ordered[1:]), reason
    if matches and len({(m[1], m[2]) for m in matches}) >= len(set(claims)):
        newest = max(matches, key=lambda m: (m[4], m[0]))
        return newest[0], (), "weak claims, all known"
    return None, (), "no claim names a member"


@hookimpl(trylast=True)
def resolve_member(claims: Sequence[IdentityClaim], matches: Sequence[MemberMatch]) -> ResolutionDecision:
    return default_decision(claims, matches)
