"""The POS API, mounted at ``/pos/v1`` through the ``routes`` hook.

Tills authenticate with a POS key (``tongcrm apikey create --role pos --store CODE``); a key sees only its own
store: any other store code in a path or a receipt is answered 404, exactly as a store that does not exist, so
a key cannot learn about other stores. Each request is one transaction. Every POS key is rate limited by an
in-process token bucket (see :mod:`tongcrm_offline_pos.ratelimit`); over the limit the answer is a 429 problem
with ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from litestar import Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tongcrm.api.security import principal_of, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.config import Settings
from tongcrm.crypto import Vault
from tongcrm.errors import NotFound, TongcrmError, TooManyRequests
from tongcrm.plugin.host import PluginHost

from tongcrm_offline_pos import codes, members, receipts, stores
from tongcrm_offline_pos.ratelimit import TokenBucket
from tongcrm_offline_pos.schemas import (
    BatchIn,
    BatchResult,
    CodeIn,
    CodeOut,
    EnrolIn,
    LookupIn,
    MemberAtTill,
    ReceiptIn,
    ReceiptResult,
    ReceiptView,
)

#: A batch of 200 receipts of 50 lines each stays well under this.
MAX_BODY_BYTES = 2 * 1024 * 1024


class PayloadTooLarge(TongcrmError):
    status_code = 413
    title = "Request too large"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PosConfig:
    """Knobs of the POS API. The defaults suit a store of a few tills; tests shrink them."""

    #: Requests per second per POS key, on average, and the burst allowed above that.
    rate_per_second: float = 20.0
    burst: int = 40
    max_batch: int = receipts.MAX_BATCH
    clock: Callable[[], datetime] = _utcnow
    limiter: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limiter", TokenBucket(self.rate_per_second, self.burst))


def build_router(config: PosConfig) -> Router:
    """The ``/pos/v1`` router with its own limiter state (one per plugin instance)."""

    def rate_limited(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        principal = principal_of(connection)
        wait = config.limiter.take(principal.key_id)
        if wait > 0:
            retry = TokenBucket.retry_after(wait)
            raise TooManyRequests(
                f"this till key is over its limit of {config.rate_per_second:g} requests/s; retry in {retry} s",
                extra={"retry_after": retry},
            )

    def ctx(settings: Settings, host: PluginHost, vault: Vault, principal: Principal) -> members.PosContext:
        return members.PosContext(host, vault, config.clock, settings.tz, Actor.of(principal))

    def own_store(principal: Principal, code: str) -> str:
        if principal.store_code is None or principal.store_code != code:
            raise NotFound(f"no store {code!r}")
        return code

    @post(
        "/members/lookup",
        summary="Find a member by mobile or by the dynamic member code they show",
        description="Returns masked name and mobile, tier (null without a tier ladder), entitlements usable "
        "now and available points. A member code is good for one use: a second lookup with it is a 409.",
        status_code=200,
    )
    async def lookup(
        data: JSONBody[LookupIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> MemberAtTill:
        async with sessions() as session, session.begin():
            store = await stores.get_store(session, own_store(principal, principal.store_code or ""))
            await stores.require_till(session, store, data.till)
            return await members.lookup(
                session,
                ctx(settings, host, vault, principal),
                store,
                data.till,
                mobile=data.mobile,
                code=data.code,
            )

    @post(
        "/members",
        summary="Enrol a walk-in customer with the consent given at the till",
        description="201 with the new member; 200 when the mobile already belongs to a member (their consent "
        "is still recorded as given now).",
    )
    async def enrol(
        data: JSONBody[EnrolIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> Response[MemberAtTill]:
        async with sessions() as session, session.begin():
            store = await stores.get_store(session, own_store(principal, principal.store_code or ""))
            await stores.require_till(session, store, data.till)
            out = await members.enrol(
                session,
                ctx(settings, host, vault, principal),
                store,
                data.till,
                mobile=data.mobile,
                name=data.name,
                marketing=data.consent.marketing,
                service=data.consent.service,
                proof=data.consent.proof,
            )
        return Response(out, status_code=201 if out.created else 200)

    @post(
        "/receipts",
        summary="Checkout or return: one receipt, online",
        description="A sale earns points under the earning rules; a points payment is redeemed in the same "
        "transaction. A return reverses points line by line. Sending the same receipt again returns the "
        "first answer (replayed: true). A receipt that cannot be applied is a 4xx problem with a `reason` and "
        "changes nothing.",
        request_max_body_size=MAX_BODY_BYTES,
    )
    async def checkout(
        data: JSONBody[ReceiptIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> Response[ReceiptResult]:
        own_store(principal, data.store)
        async with sessions() as session, session.begin():
            store = await stores.get_store(session, data.store)
            batch = await receipts.apply_batch(
                session,
                ctx(settings, host, vault, principal),
                store,
                [data],
                sent_at=None,
                offline=False,
                strict=True,
            )
        result = batch.results[0]
        return Response(result, status_code=200 if result.replayed else 201)

    @post(
        "/receipts/batch",
        summary="Upload receipts queued while offline",
        description="Applied in key order and marked offline. Idempotent per receipt key: upload again at will. "
        "A receipt that can no longer be applied (points spent meanwhile, original not uploaded yet) is "
        "reported in its result with a `reason`; the others still apply. At most 200 receipts per batch.",
        status_code=200,
        request_max_body_size=MAX_BODY_BYTES,
    )
    async def upload(
        data: JSONBody[BatchIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> BatchResult:
        if len(data.receipts) > config.max_batch:
            raise PayloadTooLarge(
                f"a batch holds at most {config.max_batch} receipts, this one {len(data.receipts)}: split it",
                extra={"max_batch": config.max_batch},
            )
        for r in data.receipts:
            own_store(principal, r.store)
        async with sessions() as session, session.begin():
            store = await stores.get_store(session, own_store(principal, principal.store_code or ""))
            return await receipts.apply_batch(
                session, ctx(settings, host, vault, principal), store, data.receipts, sent_at=data.sent_at
            )

    @get(
        "/receipts/{store_code:str}/{till:str}/{business_day:date}/{sequence:int}",
        summary="A receipt by its key, with the answer the till was given",
    )
    async def receipt(
        store_code: FromPath[str],
        till: FromPath[str],
        business_day: FromPath[date],
        sequence: FromPath[int],
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
    ) -> ReceiptView:
        own_store(principal, store_code)
        async with read_sessions() as session:
            store = await stores.get_store(session, store_code)
            view = await receipts.receipt_view(session, store, till, business_day, sequence)
        if view is None:
            raise NotFound(f"no receipt {receipts.receipt_key(store_code, till, business_day, sequence)}")
        return view

    pos = Router(
        "/",
        route_handlers=[lookup, enrol, checkout, upload, receipt],
        guards=[requires(Role.POS), rate_limited],
    )

    @post(
        "/member-codes",
        summary="Issue a member's dynamic code (for the member app's backend)",
        description="The code is valid for 30-60 seconds and for one lookup at a till.",
        guards=[requires(Role.ADMIN, Role.OPERATOR)],
        status_code=201,
    )
    async def issue_code(
        data: JSONBody[CodeIn],
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        vault: NamedDependency[Vault],
    ) -> CodeOut:
        from tongcrm.members.service import resolve_live_id

        async with read_sessions() as session:
            live = await resolve_live_id(session, data.member_id)
        if live is None:
            raise NotFound(f"no member {data.member_id}")
        issued = codes.issue(vault, live, config.clock())
        return CodeOut(issued.code, issued.member_id, issued.expires_at)

    return Router("/pos/v1", route_handlers=[pos, issue_code], tags=["pos"])
