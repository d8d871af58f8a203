"""Members at the till: lookup (mobile, membership card or dynamic code) and walk-in enrolment.

The core's counter (:mod:`tongcrm.counter`) does the member work — identity resolution, consent, sign-up points,
what a cashier may see (masked name and mobile, tier, entitlements usable now, available points); this module
adds the till's side: dynamic member codes and the shape of the answer.
"""

from __future__ import annotations

from tongcrm.counter import CounterRefused, CounterWork, MemberAtCounter
from tongcrm.errors import Conflict, NotFound, Unprocessable

from tongcrm_offline_pos import codes
from tongcrm_offline_pos.cards import POS_CARD, card_claim, normalise_card
from tongcrm_offline_pos.schemas import (
    EntitlementOut,
    EntitlementUseIn,
    EntitlementUseOut,
    MemberAtTill,
    TierOut,
)
from tongcrm_offline_pos.stores import Store, till_place


def at_till(member: MemberAtCounter) -> MemberAtTill:
    return MemberAtTill(
        member_id=member.member_id,
        name=member.name,
        mobile=member.mobile,
        tier=TierOut(member.tier.code, member.tier.name) if member.tier is not None else None,
        entitlements=[
            EntitlementOut(e.kind, e.name, e.value, e.grant_id, e.valid_until) for e in member.entitlements
        ],
        points_available=member.points_available,
        created=member.created,
    )


async def identify(
    uow: CounterWork,
    store: Store,
    till: str,
    *,
    mobile: str | None,
    code: str | None,
    card: str | None = None,
) -> int:
    """The live member presented at the till by exactly one of mobile, membership card (reads) or a dynamic
    member code (records the code's one use: a write). Never by a bare member id: a till serves who stands in
    front of it and must not be able to walk the member base."""
    if sum(x is not None for x in (mobile, code, card)) != 1:
        raise Unprocessable("name the member by exactly one of mobile, code or card")
    if code is not None:
        named = await codes.consume(
            uow.rows, code, at=uow.clock(), account_id=store.account_id, till_code=till
        )
        member_id = await uow.live_member(named)
        if member_id is None:
            raise NotFound("this member code names no member")
        return member_id
    if card is not None:
        found = await uow.find_member(identity=f"{POS_CARD.name}:{normalise_card(card)}")
        if found is None:
            raise NotFound("no member has this card")
        return found
    assert mobile is not None
    try:
        found = await uow.find_member(mobile=mobile)
    except CounterRefused as exc:
        raise Unprocessable(exc.message) from None
    if found is None:
        raise NotFound("no member has this mobile number")
    return found


async def lookup(
    uow: CounterWork,
    store: Store,
    till: str,
    *,
    mobile: str | None,
    code: str | None,
    card: str | None = None,
) -> MemberAtTill:
    """By mobile or membership card (reads) or by a dynamic member code (records the code's one use: a write)."""
    member_id = await identify(uow, store, till, mobile=mobile, code=code, card=card)
    return at_till(await uow.member_card(member_id))


async def use_entitlement(uow: CounterWork, store: Store, data: EntitlementUseIn) -> EntitlementUseOut:
    """Record a use of an entitlement of the member presented at the till (see :meth:`CounterWork.
    use_entitlement` for the rules and refusals, which are the entitlements service's plus "the grant must be
    this member's"). The usage's reference names the till (``pos:STORE:TILL``) after the till's own text, so
    an operator can tell where a coupon went."""
    if (data.grant_id is None) == (data.kind is None):
        raise Unprocessable("name the entitlement by exactly one of grant_id or kind")
    who = data.member
    member_id = await identify(uow, store, data.till, mobile=who.mobile, code=who.code, card=who.card)
    place = f"pos:{store.code}:{data.till}"  # a reference, not a source: cut to its column below
    reference = f"{place} {data.reference}".strip()[:200]
    used = await uow.use_entitlement(
        member_id, grant_id=data.grant_id, kind=data.kind, usage_key=data.usage_key, reference=reference
    )
    return EntitlementUseOut(
        usage_id=used.usage_id,
        grant_id=used.grant_id,
        kind=used.kind,
        name=used.name,
        member_id=used.member_id,
        usage_key=used.usage_key,
        reference=used.reference,
        used_at=used.used_at,
        replayed=not used.created,
    )


async def enrol(
    uow: CounterWork,
    store: Store,
    till: str,
    *,
    mobile: str,
    name: str | None,
    marketing: bool,
    service: bool,
    proof: str,
    card: str | None = None,
) -> MemberAtTill:
    """Enrol a walk-in customer (or find them, if the mobile is already a member) and record what they agreed
    to at the till; ``card``, a membership card handed over now, is bound to them. A new member gets the
    sign-up event points of the active rules."""
    place = till_place(store, till)
    claims = () if card is None else (card_claim(card, evidence=f"card issued at {place}"),)
    try:
        member = await uow.enrol(
            store.account,
            mobile=mobile,
            name=name,
            marketing=marketing,
            service=service,
            proof=proof,
            place=place,
            claims=claims,
        )
    except CounterRefused as exc:
        raise (Conflict if exc.status_code == 409 else Unprocessable)(exc.message) from None
    return at_till(member)
