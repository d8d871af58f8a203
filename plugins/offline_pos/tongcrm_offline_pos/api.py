"""The POS API, mounted at ``/pos/v1`` through the ``routes`` hook.

Tills authenticate with a POS key (``tongcrm apikey create --role pos --store CODE``); a key sees only its own
store: any other store code in a path or a receipt is answered 404, exactly as a store that does not exist, so
a key cannot learn about other stores. The one exception is a return that names a sale of another store of the
brand (``original.store``): the store taking the goods back decides whether it accepts those (its setting
``allow_cross_store_returns``), and the return receipt is its own. Every POS key is rate limited by an
in-process token bucket (see :mod:`tongcrm_offline_pos.ratelimit`); over the limit the answer is a 429 problem
with ``Retry-After``.

Each request is one unit of work of the core's counter (:class:`tongcrm.counter.CounterService`, the
``counter`` dependency): the core owns the transaction, and the plugin writes its own rows inside it. A lookup
by mobile and a receipt query are read-only units of work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, PathParameter
from tongcrm.api.inputs import PathDate, nul_checked_per_item, path_date, problems
from tongcrm.api.security import confirm_key, confirms_key_itself, limited_by, principal_of, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.counter import CounterService, CounterWork
from tongcrm.errors import NotFound, TongcrmError, TooManyRequests

from tongcrm_offline_pos import codes, members, receipts, stores
from tongcrm_offline_pos.models import TABLES
from tongcrm_offline_pos.ratelimit import TokenBucket
from tongcrm_offline_pos.schemas import (
    BatchIn,
    BatchResult,
    CodeIn,
    CodeOut,
    EnrolIn,
    EntitlementUseIn,
    EntitlementUseOut,
    LookupIn,
    MemberAtTill,
    ReceiptIn,
    ReceiptResult,
    ReceiptView,
)

#: Where the till API is mounted.
PREFIX = "/pos/v1"
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
    #: Seconds a store's active tills are kept in memory (a till disabled elsewhere works this long).
    till_ttl: float = 10.0
    limiter: TokenBucket = field(init=False)
    tills: stores.TillCache = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limiter", TokenBucket(self.rate_per_second, self.burst))
        object.__setattr__(self, "tills", stores.TillCache(self.till_ttl))


#: Confirms the caller's key under the revocation counter a statement read after the request arrived (None:
#: read it now); 401 when it was revoked meanwhile. The route's is ``confirm_key``, a hot answer's its caller's.
Confirm = Callable[[int | None], Awaitable[None]]


def _work(
    config: PosConfig, counter: CounterService, principal: Principal, *, readonly: bool = False
) -> AbstractAsyncContextManager[CounterWork]:
    return counter.unit_of_work(
        actor=Actor.of(principal), tables=TABLES, clock=config.clock, readonly=readonly
    )


def own_store(principal: Principal, code: str) -> str:
    """``code`` when it is the till key's own store; else 404, as a store that does not exist."""
    if principal.store_code is None or principal.store_code != code:
        raise NotFound(f"no store {code!r}")
    return code


async def find_member(
    config: PosConfig, counter: CounterService, principal: Principal, data: LookupIn, confirm: Confirm
) -> MemberAtTill:
    """The till's lookup (``POST /members/lookup``), for its route and its hot answer alike. A till key trusted
    from the cache is confirmed under the revocation counter the lookup's own statement read (a refusal
    included: under the counter its statement read when it read one, else read here), before anything is
    answered or committed."""
    read: CounterWork | None = None
    try:
        async with _work(config, counter, principal, readonly=data.code is None) as uow:
            read = uow
            store = await stores.get_store(uow, own_store(principal, principal.store_code or ""))
            await config.tills.require(uow, store, data.till)
            found = await members.lookup(
                uow, store, data.till, mobile=data.mobile, code=data.code, card=data.card
            )
            await confirm(uow.key_generation)
    except Exception:
        # a lookup that found nobody read the counter in its statement on PostgreSQL (no round trip here)
        await confirm(None if read is None else read.key_generation)
        raise
    return found


async def take_receipt(
    config: PosConfig, counter: CounterService, principal: Principal, data: ReceiptIn, confirm: Confirm
) -> ReceiptResult:
    """The till's checkout or return (``POST /receipts``), for its route and its hot answer alike; the key is
    confirmed as the lookup confirms it, inside the unit of work (a 401 there rolls the receipt back)."""
    read: CounterWork | None = None
    try:
        own_store(principal, data.store)
        async with _work(config, counter, principal) as uow:
            read = uow
            store = await stores.get_store(uow, data.store)
            result = await receipts.apply_receipt(
                uow,
                store,
                data,
                tills=config.tills,
                offline=False,
                sent_at=None,
                strict=True,
                confirm=confirm,
            )
            await confirm(uow.key_generation)
    except Exception:
        # a receipt refused after its claim read the counter (rolled back since; the counter read stands)
        await confirm(None if read is None else read.key_generation)
        raise
    return result


def receipt_status(result: ReceiptResult) -> int:
    """201 for a receipt applied now, 200 for one sent again (its first answer)."""
    return 200 if result.replayed else 201


def build_router(config: PosConfig) -> Router:
    """The ``/pos/v1`` router with its own limiter and till cache (one per plugin instance)."""

    def rate_limited(principal: Principal) -> None:
        # Run by the app's authorize hook once the key and its role passed (tongcrm.api.security.limited_by),
        # not as a guard: litestar copies the whole route handler for every guard call. A key of another role
        # is refused for its role (403), never counted or limited as a till (429).
        wait = config.limiter.take(principal.key_id)
        if wait > 0:
            retry = TokenBucket.retry_after(wait)
            raise TooManyRequests(
                f"this till key is over its limit of {config.rate_per_second:g} requests/s; retry in {retry} s",
                extra={"retry_after": retry},
            )

    def work(
        counter: CounterService, principal: Principal, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[CounterWork]:
        return _work(config, counter, principal, readonly=readonly)

    # Handlers take the caller from the request rather than as a second named dependency: litestar resolves
    # two or more dependencies in a task group, which costs a till request more than it looks. The lookup and
    # the checkout take none at all (the counter from the app's state): their hot answers (tongcrm_offline_pos.hot)
    # skip litestar's dependency injection, so their routes must not rely on it.

    @post(
        "/members/lookup",
        summary="Find a member by mobile, membership card, or the dynamic member code they show",
        description="Returns masked name and mobile, tier (null without a tier ladder), entitlements usable "
        "now and available points. A member code is good for one use: a second lookup with it is a 409.",
        status_code=200,
        opt=confirms_key_itself(),
    )
    async def lookup(data: JSONBody[LookupIn], request: Request[Any, Any, Any]) -> MemberAtTill:
        return await find_member(
            config, request.app.state.counter, principal_of(request), data, partial(confirm_key, request)
        )

    @post(
        "/members",
        summary="Enrol a walk-in customer with the consent given at the till",
        description="201 with the new member; 200 when the mobile already belongs to a member (their consent "
        "is still recorded as given now).",
        responses={200: ResponseSpec(MemberAtTill, description="the mobile's member, already enrolled")},
    )
    async def enrol(
        data: JSONBody[EnrolIn],
        counter: NamedDependency[CounterService],
        request: Request[Any, Any, Any],
    ) -> Response[MemberAtTill]:
        principal = principal_of(request)
        async with work(counter, principal) as uow:
            store = await stores.get_store(uow, own_store(principal, principal.store_code or ""))
            await config.tills.require(uow, store, data.till)
            out = await members.enrol(
                uow,
                store,
                data.till,
                mobile=data.mobile,
                name=data.name,
                marketing=data.consent.marketing,
                service=data.consent.service,
                proof=data.consent.proof,
                card=data.card,
            )
        return Response(out, status_code=201 if out.created else 200)

    @post(
        "/receipts",
        summary="Checkout or return: one receipt, online",
        description="A sale earns points under the earning rules; a points payment is redeemed in the same "
        "transaction. A return reverses the points its lines earned, line by line, and gives back the share of "
        "a points payment that the returned goods account for (`points_refunded`; over all returns of a sale "
        "never more than was redeemed). A return may name a sale of another store of the brand in "
        "`original.store` (a cross-store return): allowed when the returning store's setting "
        "`allow_cross_store_returns` is true (the default), refused with reason `cross_store_return_refused` "
        "otherwise; the return receipt belongs to the returning store, the member, lines and amounts come from "
        "the sale, and a line comes back at most once in total, whichever store takes it. Sending the same "
        "receipt again returns the first answer (replayed: true). A receipt that cannot be applied is a 4xx "
        "problem with a `reason` and changes nothing.",
        request_max_body_size=MAX_BODY_BYTES,
        responses={200: ResponseSpec(ReceiptResult, description="the receipt sent again: its first answer")},
        # text the database cannot store is the receipt's own refusal (422, reason invalid_text), as any other
        # the till's key is confirmed under the revocation counter the receipt's claim read (see lookup)
        opt={**nul_checked_per_item(), **confirms_key_itself()},
    )
    async def checkout(data: JSONBody[ReceiptIn], request: Request[Any, Any, Any]) -> Response[ReceiptResult]:
        result = await take_receipt(
            config, request.app.state.counter, principal_of(request), data, partial(confirm_key, request)
        )
        return Response(result, status_code=receipt_status(result))

    @post(
        "/receipts/batch",
        summary="Upload receipts queued while offline",
        description="Applied in key order and marked offline. Idempotent per receipt key: upload again at will. "
        "A receipt that can no longer be applied (points spent meanwhile, original not uploaded yet) is "
        "reported in its result with a `reason`; the others still apply. At most 200 receipts per batch. "
        "Returns follow the rules of `POST /receipts` (cross-store returns included).",
        status_code=200,
        request_max_body_size=MAX_BODY_BYTES,
        opt=nul_checked_per_item(),  # one receipt with a NUL is refused alone; the others apply
    )
    async def upload(
        data: JSONBody[BatchIn],
        counter: NamedDependency[CounterService],
        request: Request[Any, Any, Any],
    ) -> BatchResult:
        principal = principal_of(request)
        if len(data.receipts) > config.max_batch:
            raise PayloadTooLarge(
                f"a batch holds at most {config.max_batch} receipts, this one {len(data.receipts)}: split it",
                extra={"max_batch": config.max_batch},
            )
        for r in data.receipts:
            own_store(principal, r.store)
        async with work(counter, principal) as uow:
            store = await stores.get_store(uow, own_store(principal, principal.store_code or ""))
            return await receipts.apply_batch(
                uow, store, data.receipts, tills=config.tills, sent_at=data.sent_at
            )

    @get(
        "/receipts/{store_code:str}/{till:str}/{business_day:str}/{sequence:int}",
        summary="A receipt by its key, with the answer the till was given",
        description="Only the key's own store: another store's receipt is a 404, also when this store took "
        "back goods from it (the return receipt, with its `original_key`, is this store's).",
    )
    async def receipt(
        store_code: FromPath[str],
        till: FromPath[str],
        business_day: PathDate,
        sequence: Annotated[int, PathParameter(ge=1, le=10**9)],
        counter: NamedDependency[CounterService],
        request: Request[Any, Any, Any],
    ) -> ReceiptView:
        principal = principal_of(request)
        day = path_date("business_day", business_day)
        own_store(principal, store_code)
        async with work(counter, principal, readonly=True) as uow:
            store = await stores.get_store(uow, store_code)
            view = await receipts.receipt_view(uow, store, till, day, sequence)
        if view is None:
            raise NotFound(f"no receipt {receipts.receipt_key(store_code, till, day, sequence)}")
        return view

    @post(
        "/entitlements/usages",
        summary="Record that the member at the till used an entitlement (idempotent by usage_key)",
        description="The member is named as the lookup names them (mobile, membership card or a fresh dynamic "
        "member code), never by member id; the entitlement by `grant_id` (as the lookup listed it) or by the "
        "`kind` of a standing benefit. 201 when recorded now, 200 with `replayed: true` when the usage key was "
        "seen before. Refused with a problem and a `reason`: `grant_not_found` (404: no such grant, or another "
        "member's), `grant_closed`, `grant_not_valid_now`, `grant_used`, `not_held`, `usage_key_taken` (409), "
        "`not_standing`, `unknown_entitlement` (422). Members are brand-wide: any store's till serves any "
        "member presented in person.",
        responses={200: ResponseSpec(EntitlementUseOut, description="the use recorded before (replayed)")},
    )
    async def use_entitlement(
        data: JSONBody[EntitlementUseIn],
        counter: NamedDependency[CounterService],
        request: Request[Any, Any, Any],
    ) -> Response[EntitlementUseOut]:
        principal = principal_of(request)
        async with work(counter, principal) as uow:
            store = await stores.get_store(uow, own_store(principal, principal.store_code or ""))
            await config.tills.require(uow, store, data.till)
            out = await members.use_entitlement(uow, store, data)
        return Response(out, status_code=200 if out.replayed else 201)

    pos = Router(
        "/",
        route_handlers=[lookup, enrol, use_entitlement, checkout, upload, receipt],
        opt={**requires(Role.POS), **problems(429), **limited_by(rate_limited)},  # a till over its rate limit
    )

    @post(
        "/member-codes",
        summary="Issue a member's dynamic code (for the member app's backend)",
        description="The code is valid for 30-60 seconds and for one lookup at a till.",
        opt=requires(Role.ADMIN, Role.OPERATOR),
        status_code=201,
    )
    async def issue_code(
        data: JSONBody[CodeIn],
        counter: NamedDependency[CounterService],
        request: Request[Any, Any, Any],
    ) -> CodeOut:
        principal = principal_of(request)
        async with work(counter, principal) as uow:
            live = await uow.live_member(data.member_id)
            if live is None:
                raise NotFound(f"no member {data.member_id}")
            issued = await codes.issue(uow.rows, live, uow.clock())
        return CodeOut(issued.code, issued.member_id, issued.expires_at)

    return Router(PREFIX, route_handlers=[pos, issue_code], tags=["pos"])
