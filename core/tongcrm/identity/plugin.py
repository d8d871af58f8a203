"""Core's own hook implementations for identity: the identity kinds the core defines, and the default
resolution policy (which runs last, so a plugin's ``resolve_member`` can override it)."""

from __future__ import annotations

from collections.abc import Sequence

from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import IdentityClaim, IdentityKindSpec, MemberMatch, ResolutionDecision

MOBILE = IdentityKindSpec(
    name="mobile",
    strong=True,
    description="Mobile number in E.164, matched through a keyed blind index and stored encrypted",
)

#: A member's id in the CRM a brand moved from (``tongcrm import``): ``<source>/<id>``, one person per value.
IMPORTED_MEMBER = IdentityKindSpec(
    name="import.member_id",
    strong=True,
    description="A member's id in a previous CRM, as '<import source>/<id>' (tongcrm import)",
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
    strong: dict[int, MemberMatch] = {}
    for m in matches:
        if m.strong and m.member_id not in strong:
            strong[m.member_id] = m
    if strong:
        ordered = sorted(strong.values(), key=lambda m: (m.member_created_at, m.member_id))
        survivor = ordered[0].member_id
        return ResolutionDecision(
            member_id=survivor,
            merge_from=tuple(m.member_id for m in ordered[1:]),
            reason="strong claims" if len(ordered) > 1 else "strong claim",
        )
    if matches and len({(m.kind, m.value) for m in matches}) >= len({(c.kind, c.value) for c in claims}):
        newest = max(matches, key=lambda m: (m.member_created_at, m.member_id))
        return ResolutionDecision(member_id=newest.member_id, reason="weak claims, all known")
    return ResolutionDecision(create=True, reason="no claim names a member")


@hookimpl(trylast=True)
def resolve_member(claims: Sequence[IdentityClaim], matches: Sequence[MemberMatch]) -> ResolutionDecision:
    return default_decision(claims, matches)
