"""Core's own hook implementations for identity: the identity kinds the core itself defines."""

from __future__ import annotations

from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import IdentityKindSpec

MOBILE = IdentityKindSpec(
    name="mobile",
    strong=True,
    description="Mobile number in E.164, matched through a keyed blind index and stored encrypted",
)


@hookimpl
def identity_kinds() -> list[IdentityKindSpec]:
    return [MOBILE]
