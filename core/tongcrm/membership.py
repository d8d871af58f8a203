"""Platform membership binding, for any channel: a platform asks the brand whether its buyer is a member (by
mobile), binds the buyer's platform identities to that member, or registers a new member.

A bind also records the binding as state: each platform identity of the call gets ``bound_at`` (the
``identity.membership_bound`` segment field reads it), and :meth:`MembershipService.unbind` clears it when the
platform reports the buyer left the membership. Core keeps the state channel-neutral; which identity kinds a
channel's binding covers is the plugin's claims.

Tmall's 会员通 SPIs are one user of this (the Taobao plugin's routes); any platform with a similar "join the
brand's membership" flow uses the same calls. Each call is one unit of work owned by the core — plugin routes
receive this service through dependency injection and never see a database session. Binding and registering
are idempotent: platforms retry (Tmall backfills a missed call up to ten times a day).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit.service import Actor
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.db.base import utcnow
from tongcrm.errors import NotFound
from tongcrm.identity.models import Identity
from tongcrm.identity.service import ClaimSet, ResolutionContext, prepare_claim, resolve_many
from tongcrm.members import service as members
from tongcrm.members.phone import mask_mobile, normalise_mobile
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import BuyerProfile, IdentityClaim


@dataclass(frozen=True, slots=True)
class BindingStatus:
    """``member_id`` None: no member has this mobile. ``bound``: the platform identities already point at it."""

    member_id: int | None
    bound: bool
    masked_mobile: str | None = None
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class BindResult:
    member_id: int
    created: bool


class MembershipService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        host: PluginHost,
        settings: Settings,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._sessions = sessions
        self._host = host
        self._settings = settings
        self._vault = settings.vault()
        self._clock = clock or utcnow

    def _ctx(self, actor: str) -> ResolutionContext:
        return ResolutionContext(self._host, self._vault, self._clock, actor=actor, tz=self._settings.tz)

    async def account_settings(self, account_name: str, channel: str) -> dict[str, str]:
        """The settings (secrets decrypted) of one of the calling channel's accounts, to verify a platform's
        signature. An account of another channel is "not found": a plugin only reads its own accounts."""
        async with self._sessions() as session:
            account = await accounts.get_account(session, account_name)
            if account.channel != channel:
                raise NotFound(f"no {channel} account named {account_name!r}")
            ctx = accounts.channel_context(account, self._vault, clock=self._clock)
        return dict(ctx.settings)

    async def status(self, *, mobile: str, claims: Sequence[IdentityClaim]) -> BindingStatus:
        e164 = normalise_mobile(mobile)
        async with self._sessions() as session:
            try:
                member = await members.lookup(session, self._vault, self._host, mobile=e164)
            except NotFound:
                return BindingStatus(member_id=None, bound=False)
            bound = True
            for claim in claims:
                try:
                    owner = await members.lookup(
                        session, self._vault, self._host, identity=f"{claim.kind}:{claim.value}"
                    )
                except NotFound:
                    bound = False
                    break
                bound = bound and owner.id == member.id
            view = await members.member_view(session, self._vault, member.id, Actor("membership", "system"))
        return BindingStatus(member.id, bound, mask_mobile(e164), _sections(view))

    async def bind(
        self,
        *,
        mobile: str,
        claims: Sequence[IdentityClaim],
        account_name: str,
        register: bool,
        profile: BuyerProfile | None = None,
        actor: str,
    ) -> BindResult | None:
        """Attach the platform identities to the member with this mobile; with ``register``, create the member
        when there is none. Returns None when there is no member and ``register`` is False."""
        e164 = normalise_mobile(mobile)
        async with self._sessions() as session, session.begin():
            account = await accounts.get_account(session, account_name)
            if not register:
                try:
                    await members.lookup(session, self._vault, self._host, mobile=e164)
                except NotFound:
                    return None
            outcome = (
                await resolve_many(
                    session,
                    self._ctx(actor),
                    [
                        ClaimSet(
                            claims=(
                                IdentityClaim("mobile", e164, evidence=f"{account.channel} membership"),
                                *claims,
                            ),
                            account_id=account.id,
                            profile=profile,
                            source_channel=account.channel,
                        )
                    ],
                )
            )[0]
            if outcome.error is not None or outcome.member_id is None:
                raise NotFound(outcome.error or "the member could not be resolved")
            await self._mark(session, outcome.member_id, claims, self._clock(), actor)
            return BindResult(outcome.member_id, outcome.created)

    async def unbind(self, *, claims: Sequence[IdentityClaim], actor: str) -> int | None:
        """Record that the platform reports these identities unbound from the brand's membership (the buyer
        left it). The identities and the member stay; only the binding state is cleared. Returns the member
        the identities belong to, or None when none of them is known. Idempotent."""
        async with self._sessions() as session, session.begin():
            found = await self._identities(session, claims, actor)
            for identity in found:
                identity.bound_at = None
            return found[0].member_id if found else None

    async def _identities(
        self, session: AsyncSession, claims: Sequence[IdentityClaim], actor: str
    ) -> list[Identity]:
        ctx, kinds = self._ctx(actor), self._host.identity_kinds()
        wanted = [prepare_claim(ctx, kinds, claim) for claim in claims if claim.kind != "mobile"]
        if not wanted:
            return []
        rows = await session.execute(
            sa.select(Identity)
            .where(sa.or_(*(sa.and_(Identity.kind == c.kind, Identity.value.in_(c.lookup)) for c in wanted)))
            .order_by(Identity.id)
            .with_for_update()
        )
        return list(rows.scalars())

    async def _mark(
        self,
        session: AsyncSession,
        member_id: int,
        claims: Sequence[IdentityClaim],
        now: datetime,
        actor: str,
    ) -> None:
        """The platform identities of a bind are bound from now on (an earlier binding keeps its time: a
        platform retrying a bind does not move it). The mobile is how the member was found, not a binding."""
        for identity in await self._identities(session, claims, actor):
            if identity.member_id == member_id and identity.bound_at is None:
                identity.bound_at = now


def _sections(view: members.MemberView) -> dict[str, Any]:
    """The 360 view's blocks that other domains add (points, tier...), as plain JSON-able data."""
    plain: dict[str, Any] = json.loads(json.dumps(view.sections, default=str))
    return plain
