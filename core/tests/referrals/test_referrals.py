"""Referrals through the ingest engine on both databases: the referral rule fires on the referred member's first
completed order only (not on payment, not twice, not on a replay), is reversed when that order is refunded in
full, and credits the member a merged referrer lives on in; codes, set-once referrers and "who referred whom"
over HTTP and in segments."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import Actor
from tongcrm.channels import service as accounts
from tongcrm.channels.models import ChannelAccount
from tongcrm.crypto import Vault
from tongcrm.errors import Conflict, Unprocessable
from tongcrm.identity.models import Identity
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.members.merge import merge_members
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import OrderStatus
from tongcrm.points import service as points
from tongcrm.points.models import PointsEntry
from tongcrm.referrals import service
from tongcrm.referrals.models import ReferralReward
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.memory import T0, make_order

VAULT = Vault("referral-test-secret-0123456789")
NOW = datetime(2026, 11, 12, 2, 0, tzinfo=UTC)
RULES = {
    "rules": [
        {"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1", "release": "paid"},
        {"type": "event", "code": "refer-a-friend", "priority": 10, "event": "referral", "points": 500},
    ]
}


@pytest.fixture
def ctx(memory_host: PluginHost) -> IngestContext:
    return IngestContext(host=memory_host, vault=VAULT, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"))


@pytest.fixture
async def account(tongcrm_db: TestDatabase, memory_host: PluginHost) -> ChannelAccount:
    async with tongcrm_db.sessions() as s, s.begin():
        created = await accounts.create_account(
            s, memory_host, VAULT, "memory", "shop-a", {"token": "t0ken-value", "shop": "A"}
        )
        await points.create_rule_set(s, RULES, now=NOW - timedelta(days=30), activate=True)
    return created


def order(ext: str, buyer: str, status: OrderStatus, minutes: int, **kw: Any) -> Any:
    made = make_order(ext, buyer, status=status, minutes=minutes, lines=(("l1", 10_000),), **kw)
    if status is OrderStatus.COMPLETED:
        made = replace(made, completed_at=T0 + timedelta(minutes=minutes))
    return made


async def apply(db: TestDatabase, ctx: IngestContext, account: ChannelAccount, *orders: Any) -> None:
    async with db.sessions() as s, s.begin():
        await apply_orders_page(s, ctx, account.id, "memory", list(orders), ())


async def member_of(db: TestDatabase, buyer: str) -> int:
    async with db.sessions() as s:
        return int(
            (await s.execute(sa.select(Identity.member_id).where(Identity.value == buyer))).scalar_one()
        )


async def available(db: TestDatabase, member_id: int) -> int:
    async with db.sessions() as s:
        return (await points.balance(s, member_id)).available


async def reward(db: TestDatabase, referred: int) -> ReferralReward | None:
    async with db.sessions() as s:
        return await s.get(ReferralReward, referred)


async def _referrer_and_friend(
    db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> tuple[int, int]:
    """The referrer buys once (so it is a member with its own points); the friend's first order is paid, then
    the friend is recorded as referred with the referrer's code."""
    await apply(db, ctx, account, order("r1", "referrer", OrderStatus.PAID, 0))
    await apply(db, ctx, account, order("f1", "friend", OrderStatus.PAID, 0))
    referrer, friend = await member_of(db, "referrer"), await member_of(db, "friend")
    async with db.sessions() as s, s.begin():
        code = await service.code_for(s, referrer)
        assert await service.code_for(s, referrer) == code  # one code per member
        assert await service.set_referrer(s, friend, code.lower()) == referrer
    return referrer, friend


async def test_first_completed_order_credits_once_and_a_refund_reverses(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    referrer, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    assert await available(tongcrm_db, referrer) == 100  # its own spend only
    await apply(
        tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.PAID, 1)
    )  # a replay: still unpaid-ish
    assert await reward(tongcrm_db, friend) is None  # paid is not completed
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 2))
    assert await available(tongcrm_db, referrer) == 600
    got = await reward(tongcrm_db, friend)
    assert got is not None and (got.status, got.points, got.referrer_member_id) == ("awarded", 500, referrer)
    # the same order again, and a second completed order: nothing more
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 3))
    await apply(tongcrm_db, ctx, account, order("f2", "friend", OrderStatus.COMPLETED, 3))
    assert await available(tongcrm_db, referrer) == 600
    # the order that fired the rule is refunded in full: the 500 points go back, once
    refunded = order("f1", "friend", OrderStatus.REFUNDED, 4, refunded={"l1": 10_000})
    await apply(tongcrm_db, ctx, account, refunded)
    await apply(
        tongcrm_db, ctx, account, replace(refunded, modified_at=refunded.modified_at + timedelta(minutes=1))
    )
    assert await available(tongcrm_db, referrer) == 100
    got = await reward(tongcrm_db, friend)
    assert got is not None and (got.status, got.reversed_points, got.reversed_at) == ("reversed", 500, NOW)


async def test_a_partial_refund_keeps_the_reward_and_an_unreferred_buyer_earns_nobody_anything(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    _, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 2))
    await apply(
        tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 3, refunded={"l1": 4_000})
    )
    got = await reward(tongcrm_db, friend)
    assert got is not None and got.status == "awarded"
    await apply(tongcrm_db, ctx, account, order("s1", "stranger", OrderStatus.COMPLETED, 2))
    async with tongcrm_db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(ReferralReward))).scalar_one() == 1


async def apply_counting(
    db: TestDatabase, ctx: IngestContext, account: ChannelAccount, *orders: Any
) -> list[str]:
    """:func:`apply`, and the statements naming ``referral_rewards`` it ran."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "referral_rewards" in statement:
            seen.append(statement)

    engine = db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        await apply(db, ctx, account, *orders)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return seen


async def test_the_referral_hook_costs_a_page_one_statement_when_nothing_fires(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    """Every page and till receipt runs the hook; a page where no reward fires or reverses (the referred
    friend's order only paid, a stranger's completed) reads once, and nothing is written."""
    await _referrer_and_friend(tongcrm_db, ctx, account)
    seen = await apply_counting(
        tongcrm_db,
        ctx,
        account,
        order("f2", "friend", OrderStatus.PAID, 1),
        order("s1", "stranger", OrderStatus.COMPLETED, 2),
    )
    assert len(seen) == 1, seen
    assert seen[0].lstrip().upper().startswith("SELECT")
    async with tongcrm_db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(ReferralReward))).scalar_one() == 0


async def awarded_marker(db: TestDatabase, ext: str) -> bool:
    async with db.sessions() as s:
        return bool(
            (await s.execute(sa.select(Order.referral_awarded).where(Order.external_id == ext))).scalar_one()
        )


async def test_a_page_of_ordinary_orders_with_refunds_reads_no_referral(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    """Buyers without a referrer, and orders closed or refunded in full that carry no awarded reward (the
    order upsert returns ``orders.referral_awarded``): the referral hook has nothing to read; the same buyers'
    refunds were a read each page before."""
    await apply(
        tongcrm_db,
        ctx,
        account,
        order("s1", "stranger", OrderStatus.COMPLETED, 0),
        order("s2", "stranger", OrderStatus.PAID, 0),
    )
    seen = await apply_counting(
        tongcrm_db,
        ctx,
        account,
        order("s1", "stranger", OrderStatus.REFUNDED, 1, refunded={"l1": 10_000}),
        order("s2", "stranger", OrderStatus.CLOSED, 1),
        order("n1", "newcomer", OrderStatus.CLOSED, 1),
    )
    assert seen == []
    assert not await awarded_marker(tongcrm_db, "s1")
    async with tongcrm_db.sessions() as s:
        assert (await s.execute(sa.select(Order.status).where(Order.external_id == "s1"))).scalar_one() == (
            "refunded"
        )


async def test_a_refund_reverses_the_reward_its_order_carries_when_the_buyer_has_no_referrer_any_more(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    """The friend, rewarded for order f1, is merged into its own referrer (which has no referrer): the buyer of
    f1 is read without a referrer, yet f1's refund still reverses the reward, because the order is marked."""
    referrer, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 2))
    assert await awarded_marker(tongcrm_db, "f1")
    assert not await awarded_marker(tongcrm_db, "r1")
    async with tongcrm_db.sessions() as s, s.begin():
        await merge_members(s, referrer, friend, actor=Actor("test", "admin"), reason="same person", at=NOW)
    async with tongcrm_db.sessions() as s:
        assert (await s.get(Member, referrer)).referrer_id is None  # type: ignore[union-attr]
    seen = await apply_counting(
        tongcrm_db,
        ctx,
        account,
        order("f1", "friend", OrderStatus.REFUNDED, 4, refunded={"l1": 10_000}),
        order("s1", "stranger", OrderStatus.CLOSED, 4),
    )
    assert seen  # the marked order's refund is read
    got = await reward(tongcrm_db, friend)
    assert got is not None and (got.status, got.reversed_points) == ("reversed", 500)
    assert not await awarded_marker(tongcrm_db, "f1")


async def test_unbinding_clears_the_marker_of_the_rewarded_order(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    _, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 2))
    assert await awarded_marker(tongcrm_db, "f1")
    async with tongcrm_db.sessions() as s, s.begin():
        unbound = await service.unbind_referrer(
            s,
            points.PointsContext(clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai")),
            friend,
            reason="wrong code",
        )
    assert unbound.reward_status == "unbound"
    assert not await awarded_marker(tongcrm_db, "f1")


async def test_a_merged_referrer_is_credited_in_the_member_it_was_merged_into(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    referrer, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    await apply(tongcrm_db, ctx, account, order("o1", "other", OrderStatus.PAID, 0))
    survivor = await member_of(tongcrm_db, "other")
    async with tongcrm_db.sessions() as s, s.begin():
        await merge_members(s, survivor, referrer, actor=Actor("test", "admin"), reason="same person", at=NOW)
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 2))
    got = await reward(tongcrm_db, friend)
    assert got is not None and got.referrer_member_id == survivor and got.points == 500
    assert await available(tongcrm_db, survivor) == 100 + 100 + 500  # both purchases moved in, and the reward
    async with tongcrm_db.sessions() as s:
        count, referred = await service.referred_by(s, referrer)
        assert count == 1 and referred[0].member_id == friend  # the friend still names the tombstone
        # the code of the merged referrer refers to the survivor from now on
        code = (await s.execute(sa.text("SELECT code FROM referral_codes"))).scalar_one()
        assert await service.owner_of(s, code) == survivor


async def test_referrer_is_set_once_and_codes_are_checked(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    referrer, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    async with tongcrm_db.sessions() as s, s.begin():
        other = Member()
        s.add(other)
        await s.flush()
        other_code = await service.code_for(s, other.id)
        with pytest.raises(Conflict) as caught:
            await service.set_referrer(s, friend, other_code)
        assert caught.value.extra["referrer_id"] == referrer
        with pytest.raises(Unprocessable):
            await service.set_referrer(s, other.id, other_code)  # oneself
        with pytest.raises(Unprocessable) as bad:
            await service.set_referrer(s, other.id, "NOPE2345")
        assert bad.value.extra["pointer"] == "/code"
    # a later sync of the friend's orders leaves the acquisition data alone
    await apply(tongcrm_db, ctx, account, order("f3", "friend", OrderStatus.PAID, 5))
    async with tongcrm_db.sessions() as s:
        row = await s.get(Member, friend)
        assert row is not None and row.referrer_id == referrer and row.source_channel == "memory"


async def test_http_codes_referrer_and_referrals(make_client: Any) -> None:
    async with make_client(role="admin") as api:
        async with api.db.sessions() as s, s.begin():
            a, b, c = Member(), Member(), Member()
            s.add_all([a, b, c])
            await s.flush()
            ids = a.id, b.id, c.id
        made = await api.post(f"/api/members/{ids[0]}/referral-code")
        assert made.status_code == 200, made.text
        code = made.json()["code"]
        assert len(code) == 8
        for referred in ids[1:]:
            put = await api.put(f"/api/members/{referred}/referrer", json={"code": code})
            assert put.status_code == 200 and put.json() == {"member_id": referred, "referrer_id": ids[0]}
        bad = await api.put(f"/api/members/{ids[1]}/referrer", json={"code": "ZZZZ2222"})
        assert bad.status_code == 422 and bad.json()["pointer"] == "/code"
        listed = (await api.get(f"/api/members/{ids[0]}/referrals")).json()
        assert listed["count"] == 2 and [r["member_id"] for r in listed["referred"]] == [ids[2], ids[1]]
        assert listed["referred"][0]["reward_status"] is None
        found = await api.post(
            "/api/segments/preview",
            json={"definition": {"version": 1, "condition": {"field": "profile.referral_count", "op": "gte",
                                                             "value": 2}}},
        )  # fmt: skip
        assert [m["id"] for m in found.json()["sample"]] == [ids[0]]
        assert (await api.post("/api/members/999999/referral-code")).status_code == 404


async def test_unbinding_a_wrong_referrer_takes_the_reward_back_through_the_ledger(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    """The operator recorded the wrong referrer and the reward already fired: the unbinding takes the points back
    with an adjustment under its own key (no ledger row deleted), leaves the reward row as history, and the right
    referrer can then be recorded — without a second reward for the same friend."""
    wrong, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 2))
    assert await available(tongcrm_db, wrong) == 600
    pctx = points.PointsContext(clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"), actor="test")
    async with tongcrm_db.sessions() as s, s.begin():
        with pytest.raises(Unprocessable):
            await service.unbind_referrer(s, pctx, friend, reason="  ")
        done = await service.unbind_referrer(s, pctx, friend, reason="wrong code typed")
    assert done == service.Unbound(friend, wrong, "unbound", 500)
    assert await available(tongcrm_db, wrong) == 100
    got = await reward(tongcrm_db, friend)
    assert got is not None and (got.status, got.reversed_points, got.referrer_member_id) == (
        "unbound",
        500,
        wrong,
    )
    async with tongcrm_db.sessions() as s:
        keys = (
            await s.execute(
                sa.select(PointsEntry.idempotency_key, PointsEntry.amount)
                .where(PointsEntry.member_id == wrong)
                .order_by(PointsEntry.id)
            )
        ).all()
        assert [tuple(k) for k in keys][-2:] == [
            (f"event:referral:{friend}:refer-a-friend", 500),
            (f"adjust:referral-unbind:{friend}", -500),
        ]
        assert (await s.get(Member, friend)).referrer_id is None  # type: ignore[union-attr]
        assert (await service.referred_by(s, wrong))[0] == 0
    async with tongcrm_db.sessions() as s, s.begin():
        with pytest.raises(Conflict):  # nothing left to unbind
            await service.unbind_referrer(s, pctx, friend, reason="again")
        right = Member()
        s.add(right)
        await s.flush()
        right_id = right.id
        assert await service.set_referrer(s, friend, await service.code_for(s, right_id)) == right_id
    # the friend buys again and the old order is refunded: no second reward, no second take-back
    await apply(tongcrm_db, ctx, account, order("f2", "friend", OrderStatus.COMPLETED, 5))
    await apply(
        tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.REFUNDED, 6, refunded={"l1": 10_000})
    )
    assert await available(tongcrm_db, right_id) == 0
    assert await available(tongcrm_db, wrong) == 100
    got = await reward(tongcrm_db, friend)
    assert got is not None and got.status == "unbound"


async def test_unbinding_before_any_reward_and_after_a_refund_takes_nothing(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    pctx = points.PointsContext(clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"), actor="test")
    referrer, friend = await _referrer_and_friend(tongcrm_db, ctx, account)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await service.unbind_referrer(s, pctx, friend, reason="typo") == service.Unbound(
            friend, referrer, None, 0
        )
        await service.set_referrer(s, friend, await service.code_for(s, referrer))
    await apply(tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.COMPLETED, 2))
    await apply(
        tongcrm_db, ctx, account, order("f1", "friend", OrderStatus.REFUNDED, 3, refunded={"l1": 10_000})
    )
    async with tongcrm_db.sessions() as s, s.begin():
        done = await service.unbind_referrer(s, pctx, friend, reason="typo")
    assert done == service.Unbound(friend, referrer, "reversed", 0)  # the refund already took it back
    assert await available(tongcrm_db, referrer) == 100


async def test_http_unbind_referrer_is_audited(make_client: Any) -> None:
    async with make_client(role="admin") as api:
        async with api.db.sessions() as s, s.begin():
            a, b = Member(), Member()
            s.add_all([a, b])
            await s.flush()
            ids = a.id, b.id
        code = (await api.post(f"/api/members/{ids[0]}/referral-code")).json()["code"]
        assert (await api.put(f"/api/members/{ids[1]}/referrer", json={"code": code})).status_code == 200
        assert (
            await api.delete(f"/api/members/{ids[1]}/referrer")
        ).status_code == 400  # a reason is required
        done = await api.delete(f"/api/members/{ids[1]}/referrer", params={"reason": "wrong friend"})
        assert done.status_code == 200, done.text
        assert done.json() == {
            "member_id": ids[1], "referrer_id": ids[0], "reward_status": None, "points_taken": 0
        }  # fmt: skip
        again = await api.delete(f"/api/members/{ids[1]}/referrer", params={"reason": "wrong friend"})
        assert again.status_code == 409
        assert (await api.get(f"/api/members/{ids[0]}/referrals")).json()["count"] == 0
        async with api.db.sessions() as s:
            entry = (
                await s.execute(sa.select(AuditEntry).where(AuditEntry.action == "member.referrer_unbound"))
            ).scalar_one()
        assert entry.object_id == str(ids[1]) and entry.before == {"referrer_id": ids[0]}
        assert entry.after is not None and entry.after["reason"] == "wrong friend"
        assert (await api.delete("/api/members/999999/referrer", params={"reason": "x"})).status_code == 404
