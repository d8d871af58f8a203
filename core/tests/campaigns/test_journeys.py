"""Journeys on both databases: an event enters members (once per occurrence, replays add nothing), they wait,
one segment condition picks their action (message and/or points), the control group is held out; a process that
dies in the middle of acting neither doubles nor skips; budgets leave actions out with the reason; the report
counts responders through merges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from campaign_kit import granted, tag, vip_world
from messaging_kit import Clock, World
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import control, journeys
from tongcrm.campaigns.models import JourneyParticipant
from tongcrm.entitlements.models import EntitlementGrant
from tongcrm.errors import Unprocessable
from tongcrm.jobs.outbox import emit
from tongcrm.members.merge import merge_members
from tongcrm.messaging.models import Message
from tongcrm.points import service as points
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")
STEPS: dict[str, Any] = {
    "wait_hours": 24,
    "condition": "vip",
    "then": {"template": "promo", "points": 100},
    "else": {"template": "promo"},
}


async def _world(tongcrm_db: TestDatabase, clock: Clock, n: int) -> tuple[World, list[int]]:
    return await vip_world(tongcrm_db, clock, n)


async def _journey(w: World, name: str = "winback", **fields: Any) -> int:
    draft = journeys.Draft(
        name,
        fields.pop("trigger", {"kind": "lifecycle_changed", "to": "dormant"}),
        fields.pop("steps", STEPS),
        {"kind": "order", "within_days": 7},
        control_percent=fields.pop("control_percent", 0),
        **fields,
    )
    async with w.sessions() as session, session.begin():
        return (await journeys.create(session, draft, SYSTEM, now=w.clock())).id


async def _lifecycle(w: World, members: list[int], to: str = "dormant") -> None:
    async with w.sessions() as session, session.begin():
        for m in members:
            emit(
                session, "lifecycle_changed", {"member_id": m, "from": "repeat", "to": to}
            ).occurred_at = w.clock()


async def _participants(w: World) -> list[JourneyParticipant]:
    async with w.sessions() as session:
        return list(
            (
                await session.execute(sa.select(JourneyParticipant).order_by(JourneyParticipant.member_id))
            ).scalars()
        )


async def _granted(w: World) -> dict[int, int]:
    return await granted(w, "journey:")


@pytest.mark.asyncio
async def test_trigger_wait_branch_act_and_replays_add_nothing(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))  # 10:00 in Shanghai
    w, m = await _world(tongcrm_db, clock, 6)
    await tag(w, m[:3])
    journey_id = await _journey(w)
    await _lifecycle(w, m[:5])
    await _lifecycle(w, [m[5]], to="churned")  # another stage: not this journey's trigger
    runner = w.runner()
    await w.drain(runner, rounds=10)
    entered = await _participants(w)
    assert [(p.member_id, p.state) for p in entered] == [(x, "waiting") for x in m[:5]]
    assert {p.due_at for p in entered} == {clock() + timedelta(hours=24)}
    # the same event delivered again (a relay that died before recording its delivery) enters nobody
    event_id = int(entered[0].occurrence.removeprefix("event:"))
    payload = {"member_id": m[0], "from": "repeat", "to": "dormant"}
    async with w.sessions() as session, session.begin():
        assert await journeys.on_event(session, "lifecycle_changed", event_id, payload, now=clock()) == 0
    clock.advance(hours=23)
    await w.drain(runner)
    assert await w.messages(flow="journey.winback") == []
    clock.advance(hours=2)
    await w.drain(runner)
    acted = await _participants(w)
    assert [(p.member_id, p.state, p.branch) for p in acted] == [
        (m[0], "done", "then"), (m[1], "done", "then"), (m[2], "done", "then"),
        (m[3], "done", "else"), (m[4], "done", "else"),
    ]  # fmt: skip
    sent = await w.messages(flow="journey.winback")
    assert sorted(x.member_id for x in sent) == m[:5]
    assert await _granted(w) == {x: 100 for x in m[:3]}
    # acting again (another tick, a replay of the job) changes nothing
    async with w.sessions() as session:
        journey = await journeys.get(session, "winback")
    assert await journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH) == 0
    assert len(await w.messages(flow="journey.winback")) == 5 and await _granted(w) == {x: 100 for x in m[:3]}
    # a new occurrence (the member falls dormant again later) is a new entry
    await _lifecycle(w, [m[0]])
    await w.drain(runner, rounds=10)
    assert [p.state for p in await _participants(w) if p.member_id == m[0]] == ["done", "waiting"]
    # responses: the dispatcher sent the messages; m[3] orders, m[4] is merged into another member who orders
    async with w.sessions() as session, session.begin():
        await session.execute(sa.update(Message).values(status="sent", sent_at=clock()))
    clock.advance(hours=3)
    await w.order(m[3], "j-1", status="paid", paid_fen=800)
    survivor = await w.member(99)
    async with w.sessions() as session, session.begin():
        await merge_members(session, survivor, m[4], actor=SYSTEM, reason="same person", at=clock())
    await w.order(survivor, "j-2", status="paid", paid_fen=700)
    clock.advance(days=8)
    await w.order(m[2], "too-late", status="paid", paid_fen=600)
    async with w.sessions() as session:
        report = await journeys.report(session, journey)
    assert journey.id == journey_id
    assert (report.total.figures.audience, report.total.figures.points_granted) == (5, 300)
    assert report.branches == {"then": 3, "else": 2} and report.states == {"done": 5, "waiting": 1}
    treated = report.total.figures.treated
    assert (treated.eligible, treated.responders, treated.orders, treated.revenue_fen) == (5, 2, 2, 1500)
    assert report.total.figures.sent == 5 and report.total.uplift.conclusion == "too_small"


@pytest.mark.asyncio
async def test_a_restart_in_the_middle_neither_doubles_nor_skips(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, m = await _world(tongcrm_db, clock, 7)
    await tag(w, m)
    await _journey(w, steps={"wait_hours": 1, "condition": None, "then": {"template": "promo", "points": 50}})
    async with w.sessions() as session, session.begin():
        journey = await journeys.get(session, "winback")
        assert await journeys.enter(session, journey, m, "event:1", now=clock()) == 7
    clock.advance(hours=2)
    real = points.grant_many
    calls = 0

    async def dies_on_the_second_batch(*args: Any, **kwargs: Any) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the process died")
        return await real(*args, **kwargs)

    monkeypatch.setattr(points, "grant_many", dies_on_the_second_batch)
    with pytest.raises(RuntimeError):
        await journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH, limit=3)
    states = [p.state for p in await _participants(w)]
    assert (
        states.count("done") == 3 and states.count("waiting") == 4
    )  # the first batch committed, the second not
    assert len(await w.messages(flow="journey.winback")) == 3
    monkeypatch.setattr(points, "grant_many", real)
    assert await journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH, limit=3) == 4
    assert [p.state for p in await _participants(w)] == ["done"] * 7
    messages = await w.messages(flow="journey.winback")
    assert sorted(x.member_id for x in messages) == m
    assert await _granted(w) == {x: 50 for x in m}


@pytest.mark.asyncio
async def test_control_members_are_held_out_and_budgets_leave_actions_out(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, m = await _world(tongcrm_db, clock, 30)
    await tag(w, m)
    steps = {"wait_hours": 0, "condition": None, "then": {"template": "promo", "points": 10}}
    journey_id = await _journey(w, steps=steps, control_percent=40, control_seed="s", budget_points=100)
    async with w.sessions() as session, session.begin():
        journey = await journeys.get(session, "winback")
        await journeys.enter(session, journey, m, "event:7", now=clock())
    await journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH)
    held = {x for x in m if control.in_control(journey_id, x, 4000, "journey:s")}
    assert 0 < len(held) < 20
    participants = await _participants(w)
    assert {p.member_id for p in participants if p.grp == "control"} == held
    messages = await w.messages(flow="journey.winback")
    assert {x.member_id for x in messages if x.held_out} == held
    assert len(messages) == 30  # the control's are queued held out, for the policy to refuse as hold-out
    granted = await _granted(w)
    assert not set(granted) & held and sum(granted.values()) == 100 and len(granted) == 10
    refused = [p for p in participants if p.grp == "treatment" and p.points_granted == 0]
    assert refused and all(p.reason.startswith("points budget exceeded") for p in refused)


@pytest.mark.asyncio
async def test_past_the_message_budget_a_treated_member_gets_no_message(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, m = await _world(tongcrm_db, clock, 12)
    steps = {"wait_hours": 0, "condition": None, "then": {"template": "promo", "points": 5}}
    await _journey(w, steps=steps, budget_messages=8)
    async with w.sessions() as session, session.begin():
        journey = await journeys.get(session, "winback")
        await journeys.enter(session, journey, m, "event:9", now=clock())
    await journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH, limit=5)  # the budget spans batches
    participants = await _participants(w)
    assert sorted(x.member_id for x in await w.messages(flow="journey.winback")) == m[:8]
    assert [p.reason for p in participants[8:]] == ["message budget exhausted (8 messages)"] * 4
    assert await _granted(w) == {x: 5 for x in m}  # the points are another budget (none set)


@pytest.mark.asyncio
async def test_bad_journeys_are_refused_with_the_reason(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, _ = await _world(tongcrm_db, clock, 1)
    cases = [
        ({"trigger": {"kind": "lifecycle_changed", "to": "asleep"}}, "lifecycle stage"),
        ({"trigger": {"kind": "sunset"}}, "trigger kind 'sunset' is unknown"),
        ({"trigger": {"kind": "points_expiring", "days_before": -1}}, "days_before must be a whole number"),
        ({"steps": {"wait_hours": 1, "condition": None, "then": {}}}, "a journey needs an action"),
        ({"steps": {**STEPS, "condition": None}}, "an 'else' action needs a condition"),
        ({"steps": {**STEPS, "then": {"template": "order_notice"}}}, "must be a marketing template"),
        ({"control_percent": 60}, "between 0 and 50"),
    ]
    for fields, message in cases:
        with pytest.raises(Unprocessable, match=message):
            await _journey(w, **fields)


@pytest.mark.asyncio
async def test_first_order_and_tier_triggers(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, m = await _world(tongcrm_db, clock, 3)
    steps = {"wait_hours": 0, "condition": None, "then": {"template": "promo"}}
    await _journey(w, "welcome", trigger={"kind": "first_order"}, steps=steps)
    await _journey(w, "gold", trigger={"kind": "tier_changed", "to": "gold"}, steps=steps)
    runner = w.runner()
    first = await w.order(m[0], "o1", status="paid", paid_fen=100)
    await w.event(first, m[0], "paid", "created")
    clock.advance(hours=1)
    second = await w.order(m[0], "o2", status="paid", paid_fen=100)
    await w.event(second, m[0], "paid", "created")  # not a first order
    async with w.sessions() as session, session.begin():
        emit(
            session, "tier_changed", {"member_id": m[1], "from": "silver", "to": "gold", "reason": "qualify"}
        )
        emit(session, "tier_changed", {"member_id": m[2], "from": "gold", "to": "silver", "reason": "review"})
    for _ in range(5):
        await w.drain(runner, rounds=20)
    await journeys.advance_due(
        w.sessions, w.host, now=clock(), tz=SH
    )  # the tick may have run before the entries
    rows = [(p.journey_id, p.member_id, p.occurrence, p.state) for p in await _participants(w)]
    assert [(r[1], r[2].split(":")[0], r[3]) for r in rows] == [
        (m[0], "first_order", "done"),
        (m[1], "event", "done"),
    ]
    assert sorted(x.member_id for x in await w.messages()) == [m[0], m[1]]


@pytest.mark.asyncio
async def test_an_entitlement_action_goes_to_treated_participants_once_and_counts_as_cost(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, m = await _world(tongcrm_db, clock, 24)
    await tag(w, m[:12])
    coupon = {"kind": "monthly_coupon", "value": 500, "validity_days": 7, "cost_fen": 300}
    steps = {
        "wait_hours": 0, "condition": "vip", "then": {"template": "promo", "entitlement": coupon},
        "else": {"template": "promo"},
    }  # fmt: skip
    journey_id = await _journey(w, steps=steps, control_percent=30, control_seed="e")
    async with w.sessions() as session, session.begin():
        journey = await journeys.get(session, "winback")
        await journeys.enter(session, journey, m, "event:9", now=clock())
    await journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH, limit=5)  # across batches
    # a replayed event and a second advance add nothing
    async with w.sessions() as session, session.begin():
        await journeys.enter(session, await journeys.get(session, "winback"), m, "event:9", now=clock())
    await journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH)
    held = {x for x in m if control.in_control(journey_id, x, 3000, "journey:e")}
    entitled = [x for x in m[:12] if x not in held]
    assert held & set(m[:12]) and entitled
    async with w.sessions() as session:
        grants = list(
            (
                await session.execute(sa.select(EntitlementGrant).order_by(EntitlementGrant.member_id))
            ).scalars()
        )
    by_member = {p.member_id: p for p in await _participants(w)}
    assert [g.member_id for g in grants] == entitled  # the vip branch's treated only: not control, not 'else'
    assert all(
        g.grant_key == f"journey:{journey_id}:p{by_member[g.member_id].id}:entitlement" for g in grants
    )
    assert all((g.kind, g.value) == ("monthly_coupon", 500) for g in grants)
    assert sum(p.entitlements_granted for p in by_member.values()) == len(entitled)
    async with w.sessions() as session:
        report = await journeys.report(session, await journeys.get(session, "winback"))
    f = report.total.figures
    assert (f.entitlements_granted, f.entitlement_cost_fen) == (len(entitled), 300 * len(entitled))
    assert report.total.cost_fen == 300 * len(entitled)  # the journey's messages cost nothing here


@pytest.mark.asyncio
async def test_a_bad_entitlement_action_is_refused_naming_the_field(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, _ = await _world(tongcrm_db, clock, 1)
    steps = {
        "wait_hours": 0,
        "condition": None,
        "then": {"entitlement": {"kind": "member_price", "value": 90}},
    }
    with pytest.raises(Unprocessable, match="cannot be a campaign benefit") as refused:
        await _journey(w, steps=steps)
    assert refused.value.extra == {"pointer": "/steps/then/entitlement/kind"}
