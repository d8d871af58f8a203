"""Merging and undoing: every registered reference moves and moves back exactly, listeners run, the tombstone
resolves to the survivor, profile survivorship, strictest consent, and the refusals."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.audit.service import SYSTEM
from tongcrm.channels.models import ChannelAccount
from tongcrm.consent.service import consent_states, may_contact, may_contact_many, record_consent
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.identity.models import Identity
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve_many
from tongcrm.members import references
from tongcrm.members.merge import merge_members, undo_merge
from tongcrm.members.models import Member, MemberTag
from tongcrm.members.service import resolve_live_id
from tongcrm.orders.models import Order
from tongcrm.plugin.types import BuyerProfile, IdentityClaim
from tongcrm.testing.database import TestDatabase

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def two_members(db: TestDatabase, ctx: ResolutionContext) -> tuple[int, int]:
    async with db.sessions() as session, session.begin():
        a, b = await resolve_many(
            session,
            ctx,
            [
                ClaimSet(
                    (IdentityClaim("mobile", "13800138000"),),
                    profile=BuyerProfile(name="王五"),
                    source_channel="pos",
                ),
                ClaimSet(
                    (IdentityClaim("shop.uid", "u1"),),
                    profile=BuyerProfile(name="王 五", city="北京"),
                    source_channel="taobao",
                ),
            ],
        )
    assert a.member_id and b.member_id
    return a.member_id, b.member_id


async def add_order(session: AsyncSession, member_id: int, external_id: str) -> int:
    account = (await session.execute(sa.select(ChannelAccount.id).limit(1))).scalar_one_or_none()
    if account is None:
        acc = ChannelAccount(channel="taobao", name="shop")
        session.add(acc)
        await session.flush()
        account = acc.id
    order = Order(
        account_id=account, external_id=external_id, member_id=member_id, origin_member_id=member_id,
        channel="taobao", status="paid", total_fen=100, paid_fen=100, placed_at=T0, modified_at=T0,
    )  # fmt: skip
    session.add(order)
    await session.flush()
    return order.id


async def partition(session: AsyncSession) -> dict[tuple[str, str], int]:
    return {(i.kind, i.value): i.member_id for i in (await session.execute(sa.select(Identity))).scalars()}


async def test_merge_moves_everything_and_undo_moves_exactly_it_back(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    calls: list[tuple[int, tuple[int, ...]]] = []

    async def listener(session: AsyncSession, survivor: int, others: tuple[int, ...]) -> None:
        calls.append((survivor, others))

    references.register_listener(listener)
    a, b = await two_members(tongcrm_db, ctx)
    try:
        async with tongcrm_db.sessions() as session, session.begin():
            order_a = await add_order(session, a, "o-a")
            order_b = await add_order(session, b, "o-b")
            session.add_all([MemberTag(member_id=b, tag="vip"), MemberTag(member_id=a, tag="pos")])
            await record_consent(session, b, "marketing", "opt_in", source="pos")
            before = await partition(session)
        async with tongcrm_db.sessions() as session, session.begin():
            record = await merge_members(session, a, b, actor=SYSTEM, reason="same person", at=T0)
            merge_id = record.id
        async with tongcrm_db.sessions() as session, session.begin():
            assert set((await partition(session)).values()) == {a}
            moved_order = await session.get(Order, order_b)
            assert moved_order is not None and moved_order.member_id == a
            tags = (await session.execute(sa.select(MemberTag.tag).where(MemberTag.member_id == a))).scalars()
            assert sorted(tags) == ["pos", "vip"]
            assert await resolve_live_id(session, b) == a
            assert await may_contact(session, b, "marketing", "品牌") is True
            # something arrives on the survivor after the merge: it stays there after the undo
            late = await add_order(session, a, "o-late")
        assert calls[-1] == (a, (b,))
        async with tongcrm_db.sessions() as session, session.begin():
            await undo_merge(session, merge_id, actor=SYSTEM, at=T0)
        assert calls[-1] == (b, (a,))
        async with tongcrm_db.sessions() as session:
            assert await partition(session) == before
            orders = dict((await session.execute(sa.select(Order.id, Order.member_id))).all())
            assert orders == {order_a: a, order_b: b, late: a}
            member_b = await session.get(Member, b)
            assert member_b is not None and member_b.status == "active" and member_b.merged_into_id is None
            assert await may_contact(session, b, "marketing", "品牌") is True
            assert await may_contact(session, a, "marketing", "品牌") is False
        async with tongcrm_db.sessions() as session, session.begin():
            with pytest.raises(Conflict, match="already undone"):
                await undo_merge(session, merge_id, actor=SYSTEM, at=T0)
    finally:
        references._listeners.remove(listener)


async def test_profile_survivorship_most_recent_verified_wins_and_nothing_is_blanked(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    a, b = await two_members(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        mb = await session.get(Member, b)
        assert mb is not None
        mb.birthday = date(1990, 5, 1)
        mb.profile_meta = {
            **mb.profile_meta,
            "birthday": {"at": "2026-01-02T00:00:00+00:00", "verified": True},
            "name": {"at": "2099-01-01T00:00:00+00:00", "verified": False},
        }
    async with tongcrm_db.sessions() as session, session.begin():
        await merge_members(session, a, b, actor=SYSTEM, reason="t", at=T0)
    async with tongcrm_db.sessions() as session:
        ma = await session.get(Member, a)
        assert ma is not None
        assert ma.city == "北京"  # a had none: never blank, so b's value fills
        assert ma.birthday == date(1990, 5, 1)  # verified beats absent
        assert ma.name == "王 五"  # both unverified: the more recent one
        assert ma.mobile_enc is not None  # b had none: a's stays
        assert ma.source_channel == "pos"  # acquisition from the member created first


async def test_profile_verified_value_beats_a_newer_unverified_one_and_undo_restores(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    a, b = await two_members(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        ma = await session.get(Member, a)
        assert ma is not None
        ma.profile_meta = {**ma.profile_meta, "name": {"at": "2025-01-01T00:00:00+00:00", "verified": True}}
    async with tongcrm_db.sessions() as session, session.begin():
        record = await merge_members(session, b, a, actor=SYSTEM, reason="t", at=T0)
        merge_id = record.id
    async with tongcrm_db.sessions() as session:
        mb = await session.get(Member, b)
        assert mb is not None and mb.name == "王五" and mb.mobile_enc is not None
    async with tongcrm_db.sessions() as session, session.begin():
        await undo_merge(session, merge_id, actor=SYSTEM, at=T0)
    async with tongcrm_db.sessions() as session:
        mb = await session.get(Member, b)
        assert (
            mb is not None and mb.name == "王 五" and mb.mobile_enc is None and mb.source_channel == "taobao"
        )


async def test_consent_after_merge_is_the_strictest(tongcrm_db: TestDatabase, ctx: ResolutionContext) -> None:
    a, b = await two_members(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        await record_consent(session, a, "marketing", "opt_out", source="sms_reply", signature="品牌")
        await record_consent(session, b, "marketing", "opt_in", source="pos", signature="品牌")  # later
        await record_consent(session, b, "service", "opt_out", source="admin")  # every signature
        await record_consent(session, a, "service", "opt_in", source="pos", signature="物流")  # later
    async with tongcrm_db.sessions() as session, session.begin():
        record = await merge_members(session, a, b, actor=SYSTEM, reason="t", at=T0)
        merge_id = record.id
    async with tongcrm_db.sessions() as session, session.begin():
        assert await may_contact(session, a, "marketing", "品牌") is False
        assert await may_contact(session, a, "service", "物流") is False
        assert await may_contact(session, a, "service", "其他") is False
        states = {(s.purpose, s.signature): s.status for s in await consent_states(session, a)}
        assert states[("marketing", "品牌")] == "opt_out"
        # a new opt-in after the merge is respected
        await record_consent(session, a, "marketing", "opt_in", source="web", signature="品牌")
        assert await may_contact(session, a, "marketing", "品牌") is True
    async with tongcrm_db.sessions() as session, session.begin():
        await undo_merge(session, merge_id, actor=SYSTEM, at=T0)
    async with tongcrm_db.sessions() as session:
        assert await may_contact_many(session, [a, b], "service", "物流") == {a: True, b: False}
        assert await may_contact(session, b, "marketing", "品牌") is True


async def test_consent_defaults_and_immediate_opt_out(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    a, _ = await two_members(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        assert await may_contact(session, a, "service", "品牌") is True
        assert await may_contact(session, a, "marketing", "品牌") is False
        await record_consent(session, a, "marketing", "opt_in", source="pos", proof="signed form #12")
        assert await may_contact(session, a, "marketing", "品牌") is True
        await record_consent(
            session, a, "marketing", "opt_out", source="sms_reply", signature="品牌", proof="TD"
        )
        assert await may_contact(session, a, "marketing", "品牌") is False
        assert await may_contact(session, a, "marketing", "别的") is True
        assert await may_contact(session, 999_999, "service", "品牌") is False
        with pytest.raises(Unprocessable, match="purpose"):
            await may_contact(session, a, "spam", "品牌")
        with pytest.raises(Unprocessable, match="status"):
            await record_consent(session, a, "marketing", "maybe", source="x")
        with pytest.raises(NotFound):
            await record_consent(session, 999_999, "marketing", "opt_in", source="x")


async def test_merge_refusals(tongcrm_db: TestDatabase, ctx: ResolutionContext) -> None:
    a, b = await two_members(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        with pytest.raises(Unprocessable, match="into itself"):
            await merge_members(session, a, a, actor=SYSTEM, reason="t", at=T0)
        with pytest.raises(NotFound):
            await merge_members(session, a, 999_999, actor=SYSTEM, reason="t", at=T0)
    async with tongcrm_db.sessions() as session, session.begin():
        await merge_members(session, a, b, actor=SYSTEM, reason="t", at=T0)
    async with tongcrm_db.sessions() as session, session.begin():
        with pytest.raises(Conflict, match="tombstone"):
            await merge_members(session, b, a, actor=SYSTEM, reason="t", at=T0)
        with pytest.raises(NotFound):
            await undo_merge(session, 999_999, actor=SYSTEM, at=T0)


async def test_chained_merges_undo_last_in_first_out(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    a, b = await two_members(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        (c,) = await resolve_many(session, ctx, [ClaimSet((IdentityClaim("shop.uid", "u3"),))])
        assert c.member_id is not None
        first = await merge_members(session, b, a, actor=SYSTEM, reason="t", at=T0)
        second = await merge_members(session, c.member_id, b, actor=SYSTEM, reason="t", at=T0)
        ids = first.id, second.id
    async with tongcrm_db.sessions() as session, session.begin():
        assert await resolve_live_id(session, a) == c.member_id
        with pytest.raises(Conflict, match=f"merge {ids[1]}"):
            await undo_merge(session, ids[0], actor=SYSTEM, at=T0)
    async with tongcrm_db.sessions() as session, session.begin():
        await undo_merge(session, ids[1], actor=SYSTEM, at=T0)
        await undo_merge(session, ids[0], actor=SYSTEM, at=T0)
    async with tongcrm_db.sessions() as session:
        owners = set((await partition(session)).values())
    assert owners == {a, b, c.member_id}


async def test_lookup_that_lands_on_a_tombstone_answers_with_the_survivor(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    from tongcrm.db.point_reads import create_point_reader
    from tongcrm.members.service import lookup_summary

    a, b = await two_members(tongcrm_db, ctx)
    async with tongcrm_db.sessions() as session, session.begin():
        await merge_members(session, a, b, actor=SYSTEM, reason="same person", at=T0)
        # an identity row still naming the absorbed member (written by hand: merges move them all)
        session.add(Identity(kind="shop.uid", value="stale", member_id=b, first_seen_at=T0, last_seen_at=T0))
    reader = create_point_reader(tongcrm_db.url, tongcrm_db.engine)
    try:
        found = await lookup_summary(reader, ctx.vault, ctx.host, identity="shop.uid:stale")
        assert found.id == a and found.status == "active"
        with pytest.raises(NotFound, match="no member has this identity"):
            await lookup_summary(reader, ctx.vault, ctx.host, identity="shop.uid:nobody")
    finally:
        await reader.close()
