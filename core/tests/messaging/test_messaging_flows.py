"""Care flows and the contact policy end to end: order events → jobs → send log → fake Aliyun on loopback."""

from __future__ import annotations

import random

import pytest
from messaging_kit import SECRET_KEY, Clock, World, beijing, dump, fake_gateway, sms_host
from tongcrm.config import Settings
from tongcrm.consent.service import record_consent
from tongcrm.messaging import flows, service
from tongcrm.messaging.policy import PolicyConfig
from tongcrm.testing.database import TestDatabase

pytestmark = pytest.mark.asyncio


def world(db: TestDatabase, clock: Clock) -> World:
    return World(db.sessions, Settings(database_url=db.url, secret_key=SECRET_KEY).vault(), sms_host(), clock)


async def test_replayed_and_reordered_events_send_each_care_message_at_most_once(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url)
        unpaid_member, paying_member, shipped_member = (
            await w.member(1),
            await w.member(2),
            await w.member(3),
        )
        unpaid = await w.order(unpaid_member, "A")
        paying = await w.order(paying_member, "B")
        shipped = await w.order(shipped_member, "C", status="shipped")
        events = [
            (unpaid, unpaid_member, "created", None),
            (paying, paying_member, "created", None),
            (shipped, shipped_member, "shipped", "paid"),
        ]
        rng = random.Random(7)
        replayed = events * 3
        rng.shuffle(replayed)
        for e in replayed:
            await w.event(*e)
        runner = w.runner()
        await w.drain(runner)
        # B is paid within the 30 minutes; C's shipping notice goes at once
        await w.set_order(paying, status="paid", paid_at=clock(), paid_fen=12_900)
        await w.dispatcher().run()
        clock.advance(minutes=31)
        await w.drain(runner)
        # more replays, and a late, reordered "shipped" after "delivered" for C
        await w.set_order(shipped, status="delivered")
        for e in [
            *events,
            (shipped, shipped_member, "delivered", "shipped"),
            (shipped, shipped_member, "shipped", "paid"),
        ]:
            await w.event(*e)
        await w.drain(runner)
        await w.dispatcher().run()
        clock.advance(hours=2)
        await w.drain(runner)
        await w.dispatcher().run()

        messages = await w.messages()
        keys = [(m.flow, m.order_id) for m in messages]
        assert len(keys) == len(set(keys)), dump(messages)
        by = {(m.flow, m.order_id): m for m in messages}
        assert by[("flow.payment_reminder", unpaid)].status == "sent", dump(messages)
        assert ("flow.payment_reminder", paying) not in by  # paid before the reminder was due
        assert by[("flow.shipping_notice", shipped)].status == "sent"
        assert by[("flow.delivery_care", shipped)].status == "sent"
        assert len(fake.accepted) == 3
        assert {a.params["order_id"] for a in fake.accepted} == {"A", "C"}
        assert all(a.params["member_name"] == "王小明" for a in fake.accepted)

        # the reminded order is paid afterwards: the flow reports the recovered amount
        clock.advance(minutes=5)
        await w.set_order(unpaid, status="paid", paid_at=clock(), paid_fen=12_900)
        async with w.sessions() as session:
            reports = {r.flow: r for r in await flows.reports(session)}
        reminder = reports["payment_reminder"]
        assert (reminder.reminded_orders, reminder.paid_after_reminder, reminder.recovered_fen) == (
            1,
            1,
            12_900,
        )
        assert reminder.statuses["sent"] == 1
        assert reports["shipping_notice"].statuses["sent"] == 1


async def test_opted_out_member_gets_service_but_no_marketing_and_nothing_in_quiet_hours(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(beijing(2024, 5, 1, 21, 30))  # quiet hours in Beijing
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url)
        opted, happy, never_asked = await w.member(1), await w.member(2), await w.member(3, marketing=False)
        async with w.sessions() as session, session.begin():
            await service.record_opt_out(session, w.vault, "+8613900000001", "通通会员", "TD", clock())
            promo = await service.get_template(session, "promo")
            notice = await service.get_template(session, "order_notice")
            await service.queue_messages(
                session,
                "campaign.618",
                promo,
                [service.Target(m) for m in (opted, happy, never_asked)],
                now=clock(),
            )
        order = await w.order(opted, "X")
        async with w.sessions() as session, session.begin():
            await service.queue_messages(
                session, "flow.shipping_notice", notice, [service.Target(opted, order)], now=clock()
            )
        stats = await w.dispatcher().run()
        assert stats.deferred == 1  # happy's promotion waits for 08:00
        assert [a.template_code for a in fake.accepted] == ["SMS_900001"]  # the service message went
        campaign = {m.member_id: m for m in await w.messages(flow="campaign.618")}
        assert campaign[opted].status == "refused" and campaign[opted].reason == "opted_out"
        assert campaign[never_asked].status == "refused" and campaign[never_asked].reason == "no_consent"
        assert campaign[happy].status == "queued" and campaign[happy].reason == "quiet_hours"
        assert campaign[happy].next_attempt_at == beijing(2024, 5, 2, 8)

        clock.now = beijing(2024, 5, 2, 7, 59)
        await w.dispatcher().run()
        assert len(fake.accepted) == 1
        clock.now = beijing(2024, 5, 2, 8, 0)
        await w.dispatcher().run()
        assert len(fake.accepted) == 2
        assert (await w.messages(flow="campaign.618", member_id=happy))[0].status == "sent"
        for accepted in fake.accepted:
            hour = accepted.at.astimezone(beijing(2024, 1, 1, 0).tzinfo).hour  # UTC; compare via policy below
            assert hour is not None
        assert all(
            PolicyConfig().marketing_window_start.hour <= (a.at.hour + 8) % 24 < 20
            for a in fake.accepted
            if a.template_code == "SMS_900002"
        )


async def test_fatigue_budget_puts_service_before_marketing(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url)
        member = await w.member(1)
        orders = [await w.order(member, f"O{i}") for i in range(3)]
        async with w.sessions() as session, session.begin():
            promo = await service.get_template(session, "promo")
            notice = await service.get_template(session, "order_notice")
            for i in range(3):
                await service.queue_messages(
                    session, f"campaign.c{i}", promo, [service.Target(member)], now=clock()
                )
            await service.queue_messages(
                session,
                "flow.shipping_notice",
                notice,
                [service.Target(member, o) for o in orders],
                now=clock(),
            )
        await w.dispatcher(config=PolicyConfig(daily_budget=3, marketing_budget=2)).run()
        messages = await w.messages()
        service_sent = [m for m in messages if m.purpose == "service" and m.status == "sent"]
        marketing = [m for m in messages if m.purpose == "marketing"]
        assert len(service_sent) == 3, dump(messages)  # service went first and used the budget
        assert all(m.status == "refused" and m.reason == "fatigue" for m in marketing), dump(messages)
        assert len(fake.accepted) == 3
        # a new Beijing day has a fresh budget, but refusals are final
        clock.advance(days=1)
        await w.dispatcher().run()
        assert len(fake.accepted) == 3


async def test_withdrawn_service_consent_is_refused_with_reason(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url)
        member = await w.member(1)
        order = await w.order(member, "Q")
        async with w.sessions() as session, session.begin():
            await record_consent(session, member, "service", "opt_out", source="test")
            notice = await service.get_template(session, "order_notice")
            await service.queue_messages(
                session, "flow.refund_notice", notice, [service.Target(member, order)], now=clock()
            )
        await w.dispatcher().run()
        (message,) = await w.messages()
        assert (message.status, message.reason) == ("refused", "no_consent")
        assert fake.accepted == []


async def test_a_first_sync_of_old_orders_sends_no_care_messages(tongcrm_db: TestDatabase) -> None:
    """A shop's first sync brings months of shipped and completed orders: history, not news."""
    from datetime import timedelta

    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url)
        old_member, new_member = await w.member(1), await w.member(2)
        months_ago = (clock() - timedelta(days=90)).isoformat()
        minutes_ago = (clock() - timedelta(minutes=4)).isoformat()
        old = await w.order(old_member, "OLD", status="shipped")
        new = await w.order(new_member, "NEW", status="shipped")
        # both first seen now (previous: none); the platform changed one three months ago, one just now
        await w.event(old, old_member, "shipped", None, changed_at=months_ago)
        await w.event(new, new_member, "shipped", None, changed_at=minutes_ago)
        # a platform clock ahead of ours does not push the flow into the future
        await w.event(
            new, new_member, "shipped", "paid", changed_at=(clock() + timedelta(hours=2)).isoformat()
        )
        await w.drain(w.runner())
        await w.dispatcher().run()

        sent = {m.order_id: m.status for m in await w.messages(flow="flow.shipping_notice")}
        assert sent == {new: "sent"}, dump(await w.messages())
        assert len(fake.accepted) == 1


async def test_a_message_to_an_erased_member_is_refused_as_gone_and_a_merged_one_goes_to_the_survivor(
    tongcrm_db: TestDatabase,
) -> None:
    """Queued before the member was erased (PIPL art. 47), a message is refused ``member_gone``: no member is
    left to write to, which ``no_mobile`` (the erased record has none) would hide. A member merged into another
    is not gone: its message goes to the survivor's number."""
    from tongcrm.audit.service import SYSTEM
    from tongcrm.members.merge import merge_members
    from tongcrm.messaging.policy import Reason
    from tongcrm.privacy.service import erase_member

    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (fake, url):
        await w.setup(url)
        erased, absorbed, survivor = (await w.member(1), await w.member(2), await w.member(3))
        orders = {m: await w.order(m, f"O{m}") for m in (erased, absorbed)}
        async with w.sessions() as session, session.begin():
            notice = await service.get_template(session, "order_notice")
            await service.queue_messages(
                session,
                "flow.refund_notice",
                notice,
                [service.Target(m, o) for m, o in orders.items()],
                now=clock(),
            )
        async with w.sessions() as session, session.begin():
            await erase_member(session, erased, SYSTEM, reason="request #7")
            await merge_members(session, survivor, absorbed, actor=SYSTEM, reason="same buyer", at=clock())
        await w.dispatcher().run()
        by_member = {m.member_id: m for m in await w.messages()}
        assert (by_member[erased].status, by_member[erased].reason) == ("refused", Reason.MEMBER_GONE)
        assert by_member[absorbed].status == "sent", dump(await w.messages())
        assert len(fake.accepted) == 1


async def test_the_policy_refuses_a_gone_member_before_asking_for_a_mobile() -> None:
    from datetime import UTC, datetime

    from tongcrm.messaging.policy import Facts, Reason, Verdict, decide

    gone = Facts("service", consent=False, opted_out=False, has_mobile=False, used_today=0, gone=True)
    decision = decide(PolicyConfig(), gone, datetime(2024, 5, 1, 2, tzinfo=UTC))
    assert (decision.verdict, decision.reason) == (Verdict.REFUSE, Reason.MEMBER_GONE)
    there = Facts("service", consent=True, opted_out=False, has_mobile=False, used_today=0)
    assert decide(PolicyConfig(), there, datetime(2024, 5, 1, 2, tzinfo=UTC)).reason == Reason.NO_MOBILE
