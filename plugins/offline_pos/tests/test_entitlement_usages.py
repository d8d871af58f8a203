"""A till records entitlement uses through ``POST /pos/v1/entitlements/usages`` (issue #18 closed ``/api`` to
till keys, which used to record them there): the member is named as the lookup names them (mobile, card, a
fresh dynamic code), a grant must be that member's, and the same usage key answers the recorded use again."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.config import Settings
from tongcrm.entitlements.models import EntitlementGrant, EntitlementUsage, GrantStatus
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.plugin import ApiClient
from tongcrm.tiers import service as tiers
from tongcrm.tiers.testing import LADDER

from .conftest import FakeClock, add_store

URL = "/pos/v1/entitlements/usages"
MOBILE_A = "13800138000"
MOBILE_B = "13900139000"
CARD_A = "8801 2345 6789"


async def _enrol(api: ApiClient, mobile: str, card: str | None = None) -> int:
    body: dict[str, Any] = {"till": "T01", "mobile": mobile, "consent": {"marketing": False}}
    if card is not None:
        body["card"] = card
    response = await api.post("/pos/v1/members", json=body)
    assert response.status_code == 201, response.text
    member_id: int = response.json()["member_id"]
    return member_id


async def _grant(
    api: ApiClient,
    member_id: int,
    kind: str,
    key: str,
    clock: FakeClock,
    *,
    value: int = 0,
    status: str = GrantStatus.ACTIVE,
    days: float | None = 30,
) -> int:
    """A grant as the tier engine writes it: standing kinds open-ended, recurring ones for ``days``."""
    now = clock()
    async with api.db.sessions() as session, session.begin():
        grant = EntitlementGrant(
            member_id=member_id,
            grant_key=key,
            kind=kind,
            value=value,
            params={},
            valid_from=now - timedelta(days=1),
            valid_until=None if days is None else now + timedelta(days=days),
            status=status,
        )
        session.add(grant)
        await session.flush()
        return grant.id


async def _setup(api: ApiClient, clock: FakeClock) -> dict[str, int]:
    async with api.db.sessions() as session, session.begin():
        await tiers.apply_ladder(session, tiers.TierContext(clock()), LADDER, reason="test", actor=SYSTEM)
    a = await _enrol(api, MOBILE_A, CARD_A)
    b = await _enrol(api, MOBILE_B)
    return {
        "a": a,
        "b": b,
        "a_wrap": await _grant(api, a, "gift_packaging", "standing:a:wrap", clock, days=None),
        "a_coupon": await _grant(api, a, "birthday_coupon", "birthday:a:2025", clock, value=2000),
        "b_coupon": await _grant(api, b, "birthday_coupon", "birthday:b:2025", clock, value=2000),
    }


async def _uses(api: ApiClient, grant_id: int) -> list[tuple[str, str]]:
    async with api.db.sessions() as session:
        rows = await session.execute(
            sa.select(EntitlementUsage.usage_key, EntitlementUsage.reference)
            .where(EntitlementUsage.grant_id == grant_id)
            .order_by(EntitlementUsage.id)
        )
        return [(r[0], r[1]) for r in rows.all()]


async def test_a_standing_benefit_by_mobile_is_used_once_per_key_and_replayed(
    pos: ApiClient, clock: FakeClock
) -> None:
    ids = await _setup(pos, clock)
    body = {
        "till": "T01",
        "member": {"mobile": MOBILE_A},
        "kind": "gift_packaging",
        "usage_key": "S1-T01-20250314-7",
        "reference": "receipt 7",
    }
    first = await pos.post(URL, json=body)
    assert first.status_code == 201, first.text
    out = first.json()
    assert out["grant_id"] == ids["a_wrap"] and out["member_id"] == ids["a"]
    assert out["kind"] == "gift_packaging" and out["replayed"] is False
    assert out["reference"] == "pos:S1:T01 receipt 7"
    again = await pos.post(URL, json=body)
    assert again.status_code == 200
    assert again.json() == {**out, "replayed": True}
    # a standing benefit is used as often as the member likes, once per key; by its grant id as well
    by_id = {**body, "kind": None, "grant_id": ids["a_wrap"], "usage_key": "S1-T01-20250314-8"}
    del by_id["kind"]
    second = await pos.post(URL, json=by_id)
    assert second.status_code == 201, second.text
    assert await _uses(pos, ids["a_wrap"]) == [
        ("S1-T01-20250314-7", "pos:S1:T01 receipt 7"),
        ("S1-T01-20250314-8", "pos:S1:T01 receipt 7"),
    ]
    listed = (await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": MOBILE_A})).json()
    assert ids["a_wrap"] in {e["grant_id"] for e in listed["entitlements"]}  # still usable


async def test_a_recurring_grant_by_card_is_used_once(pos: ApiClient, clock: FakeClock) -> None:
    ids = await _setup(pos, clock)
    body = {
        "till": "T02",
        "member": {"card": "880123456789"},
        "grant_id": ids["a_coupon"],
        "usage_key": "c-1",
    }
    used = await pos.post(URL, json=body)
    assert used.status_code == 201, used.text
    assert used.json()["grant_id"] == ids["a_coupon"] and used.json()["name"].endswith("birthday coupon")
    replay = await pos.post(URL, json=body)
    assert replay.status_code == 200 and replay.json()["usage_id"] == used.json()["usage_id"]
    twice = await pos.post(URL, json={**body, "usage_key": "c-2"})
    assert twice.status_code == 409 and twice.json()["reason"] == "grant_used", twice.text
    listed = (await pos.post("/pos/v1/members/lookup", json={"till": "T01", "card": CARD_A})).json()
    assert ids["a_coupon"] not in {e["grant_id"] for e in listed["entitlements"]}
    # a key used for one grant cannot name another
    taken = await pos.post(
        URL,
        json={"till": "T01", "member": {"mobile": MOBILE_A}, "kind": "gift_packaging", "usage_key": "c-1"},
    )
    assert taken.status_code == 409 and taken.json()["reason"] == "usage_key_taken"
    assert await _uses(pos, ids["a_coupon"]) == [("c-1", "pos:S1:T02")]


async def test_another_members_grant_is_refused_and_left_unused(pos: ApiClient, clock: FakeClock) -> None:
    ids = await _setup(pos, clock)
    for member in ({"mobile": MOBILE_A}, {"card": CARD_A}):
        refused = await pos.post(
            URL, json={"till": "T01", "member": member, "grant_id": ids["b_coupon"], "usage_key": "steal"}
        )
        assert refused.status_code == 404, refused.text
        problem = refused.json()
        assert problem["reason"] == "grant_not_found" and problem["status"] == 404
    # a grant that does not exist is answered alike: a till cannot tell other members' grant ids apart
    missing = await pos.post(
        URL, json={"till": "T01", "member": {"mobile": MOBILE_A}, "grant_id": 10**9, "usage_key": "x"}
    )
    assert missing.status_code == 404 and missing.json()["reason"] == "grant_not_found"
    assert await _uses(pos, ids["b_coupon"]) == []
    # the coupon's own member still uses it
    own = await pos.post(
        URL,
        json={"till": "T01", "member": {"mobile": MOBILE_B}, "grant_id": ids["b_coupon"], "usage_key": "b"},
    )
    assert own.status_code == 201 and own.json()["member_id"] == ids["b"]


async def test_closed_expired_and_unheld_entitlements_are_refused_with_a_reason(
    pos: ApiClient, clock: FakeClock
) -> None:
    ids = await _setup(pos, clock)
    failed = await _grant(
        pos, ids["a"], "birthday_coupon", "birthday:a:failed", clock, status=GrantStatus.FAILED
    )
    expired = await _grant(pos, ids["a"], "birthday_coupon", "birthday:a:2024", clock, days=-0.5)
    at_a: dict[str, Any] = {"till": "T01", "member": {"mobile": MOBILE_A}}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"grant_id": failed}, 409, "grant_closed"),
        ({"grant_id": expired}, 409, "grant_not_valid_now"),
        ({"kind": "free_shipping"}, 409, "not_held"),
        ({"kind": "birthday_coupon"}, 422, "not_standing"),
        ({"kind": "no_such_thing"}, 422, "unknown_entitlement"),
    ]
    for extra, status, reason in cases:
        response = await pos.post(URL, json={**at_a, **extra, "usage_key": f"k-{reason}"})
        assert response.status_code == status, (extra, response.text)
        assert response.json()["reason"] == reason and response.json()["detail"]
    # B holds no gift packaging: A's standing benefit is not B's
    b_wrap = await pos.post(
        URL, json={"till": "T01", "member": {"mobile": MOBILE_B}, "kind": "gift_packaging", "usage_key": "bw"}
    )
    assert b_wrap.status_code == 409 and b_wrap.json()["reason"] == "not_held"
    # malformed: no entitlement, both, no member, two ways of naming the member, a member id, no key
    for bad in (
        {**at_a, "usage_key": "m1"},
        {**at_a, "grant_id": ids["a_coupon"], "kind": "gift_packaging", "usage_key": "m2"},
        {"till": "T01", "member": {}, "kind": "gift_packaging", "usage_key": "m3"},
        {
            "till": "T01",
            "member": {"mobile": MOBILE_A, "card": CARD_A},
            "kind": "gift_packaging",
            "usage_key": "m4",
        },
        {"till": "T01", "member": {"member_id": ids["a"]}, "kind": "gift_packaging", "usage_key": "m5"},
        {**at_a, "kind": "gift_packaging", "usage_key": ""},
        {**at_a, "kind": "gift_packaging"},
    ):
        response = await pos.post(URL, json=bad)
        assert 400 <= response.status_code < 500 and response.status_code != 404, (bad, response.text)
    unknown = await pos.post(
        URL,
        json={"till": "T01", "member": {"mobile": "13700137000"}, "kind": "gift_packaging", "usage_key": "u"},
    )
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no member has this mobile number"
    async with pos.db.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(EntitlementUsage))).scalar() == 0


async def test_a_dynamic_code_names_the_member_for_one_request(pos: ApiClient, clock: FakeClock) -> None:
    ids = await _setup(pos, clock)
    admin = {"Authorization": f"Bearer {await pos.create_key('admin')}"}
    code = (await pos.post("/pos/v1/member-codes", json={"member_id": ids["a"]}, headers=admin)).json()[
        "code"
    ]
    body = {"till": "T01", "member": {"code": code}, "grant_id": ids["a_coupon"], "usage_key": "by-code"}
    used = await pos.post(URL, json=body)
    assert used.status_code == 201 and used.json()["member_id"] == ids["a"], used.text
    spent = await pos.post(URL, json={**body, "usage_key": "by-code-2", "grant_id": ids["a_wrap"]})
    assert spent.status_code == 409  # the code was used; the member shows a fresh one
    assert await _uses(pos, ids["a_wrap"]) == []
    # a till that lost the answer asks again with the same usage key and a fresh code: the recorded use
    fresh = (await pos.post("/pos/v1/member-codes", json={"member_id": ids["a"]}, headers=admin)).json()[
        "code"
    ]
    replay = await pos.post(URL, json={**body, "member": {"code": fresh}})
    assert replay.status_code == 200 and replay.json() == {**used.json(), "replayed": True}


async def test_any_store_of_the_brand_serves_a_member_in_person_and_other_roles_are_refused(
    pos: ApiClient,
    pos_host: PluginHost,
    tongcrm_settings: Settings,
    clock: FakeClock,
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
) -> None:
    """Members are brand-wide, so a till of store S2 may record a use for a member it can look up (the member
    stands there); it is scoped to its own store's tills, and keys of other roles cannot use the route."""
    ids = await _setup(pos, clock)
    await add_store(pos, pos_host, tongcrm_settings, "S2", ("T01",))
    s2 = {"Authorization": f"Bearer {await pos.create_key('pos', store_code='S2')}"}
    body = {"till": "T01", "member": {"mobile": MOBILE_A}, "grant_id": ids["a_coupon"], "usage_key": "s2-1"}
    used = await pos.post(URL, json=body, headers=s2)
    assert used.status_code == 201 and used.json()["reference"] == "pos:S2:T01", used.text
    not_its_till = await pos.post(URL, json={**body, "till": "T02", "usage_key": "s2-2"}, headers=s2)
    assert not_its_till.status_code == 404 and "no active till 'T02'" in not_its_till.json()["detail"]
    for role in ("admin", "operator", "analyst"):
        key = await pos.create_key(role)
        response = await pos.post(
            URL, json={**body, "usage_key": f"{role}-1"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 403, (role, response.text)
    assert await _uses(pos, ids["a_coupon"]) == [("s2-1", "pos:S2:T01")]
