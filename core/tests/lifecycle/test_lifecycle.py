"""Lifecycle stages derived from orders: hand-checked stages at the Asia/Shanghai day boundary, refunds and
unpaid orders, tombstones left alone, history and events only for changes, time moving members on, the policy
API and the stage in segments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from tongcrm.jobs.models import Job, OutboxEvent
from tongcrm.lifecycle import service
from tongcrm.lifecycle.models import LifecycleChange
from tongcrm.members.models import Member
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import testing as kit

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai on 2026-11-20
POLICY = service.DEFAULT  # new 30, dormant 180, churned 365 days


def local(day_offset: int, hour: int, minute: int) -> datetime:
    """A Shanghai wall-clock time ``day_offset`` days before NOW's local date, as an aware datetime."""
    day = NOW.astimezone(SH).date() - timedelta(days=day_offset)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SH)


async def _stages(db: TestDatabase) -> dict[int, str]:
    async with db.sessions() as s:
        return {
            r.id: r.lifecycle_stage for r in await s.execute(sa.select(Member.id, Member.lifecycle_stage))
        }


async def test_stages_follow_local_days_refunds_and_tombstones(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as s, s.begin():
        ids = await kit.members(s, 10)
        (none, unpaid, refunded, new, just_old, dormant_edge, still_repeat, churned, tomb, repeat) = ids
        await kit.order(s, unpaid, 5_000, local(3, 10, 0), status="created", paid=False)
        await kit.order(s, refunded, 5_000, local(3, 10, 0), refunded_fen=5_000, status="refunded")
        await kit.order(s, new, 5_000, local(29, 0, 1))  # 29 local days old: still new
        await kit.order(s, just_old, 5_000, local(30, 23, 59))  # 30 days old by the local date: repeat
        # the latest order 180 local days old at 23:59 (15:59 UTC): dormant; the other one minute after midnight
        # of the next local day (16:01 UTC the same UTC day) is 179 days old: still repeat
        await kit.order(s, dormant_edge, 5_000, local(180, 23, 59))
        await kit.order(s, still_repeat, 5_000, local(179, 0, 1))
        await kit.order(s, churned, 5_000, local(365, 12, 0))
        await kit.order(s, churned, 5_000, local(400, 12, 0))
        await kit.order(s, tomb, 5_000, local(1, 12, 0))
        await kit.order(s, repeat, 5_000, local(100, 12, 0))
        await kit.order(s, repeat, 5_000, local(2, 12, 0))
        member = await s.get(Member, tomb)
        assert member is not None
        member.status, member.merged_into_id = "merged", repeat
    assert local(180, 23, 59).astimezone(UTC).date() == local(179, 0, 1).astimezone(UTC).date()

    done = await service.recompute(tongcrm_db.sessions, NOW, SH, batch=3)
    stages = await _stages(tongcrm_db)
    assert {k: stages[k] for k in ids} == {
        none: "prospect",
        unpaid: "prospect",
        refunded: "prospect",
        new: "new",
        just_old: "repeat",
        dormant_edge: "dormant",
        still_repeat: "repeat",
        churned: "churned",
        tomb: "prospect",  # a tombstone keeps what it had
        repeat: "repeat",
    }
    assert done.changed == 6
    # the pure rule agrees with the SQL one
    assert (
        service.stage_of(POLICY, NOW.astimezone(SH).date(), SH, local(180, 23, 59), local(180, 23, 59))
        == "dormant"
    )
    assert (
        service.stage_of(POLICY, NOW.astimezone(SH).date(), SH, local(179, 0, 1), local(179, 0, 1))
        == "repeat"
    )


async def test_history_and_events_only_for_changes_and_time_moves_members_on(
    tongcrm_db: TestDatabase,
) -> None:
    async with tongcrm_db.sessions() as s, s.begin():
        (member,) = await kit.members(s, 1)
        await kit.order(s, member, 5_000, local(10, 12, 0))
    assert (await service.recompute(tongcrm_db.sessions, NOW, SH)).changed == 1
    assert (
        await service.recompute(tongcrm_db.sessions, NOW, SH)
    ).changed == 0  # nothing new: nothing written
    later = NOW + timedelta(days=20)  # the first order is now 30 local days old
    assert (await service.recompute(tongcrm_db.sessions, later, SH)).changed == 1
    async with tongcrm_db.sessions() as s:
        changes = (await s.execute(sa.select(LifecycleChange).order_by(LifecycleChange.id))).scalars().all()
        assert [(c.from_stage, c.to_stage, c.at) for c in changes] == [
            ("prospect", "new", NOW),
            ("new", "repeat", later),
        ]
        events = (
            (
                await s.execute(
                    sa.select(OutboxEvent.payload)
                    .where(OutboxEvent.name == "lifecycle_changed")
                    .order_by(OutboxEvent.id)
                )
            )
            .scalars()
            .all()
        )
        assert events == [
            {"member_id": member, "from": "prospect", "to": "new"},
            {"member_id": member, "from": "new", "to": "repeat"},
        ]
        row = await s.get(Member, member)
        # derived, not a profile edit: the If-Match version stays, so the pass never makes an edit fail
        assert row is not None and row.version == 1 and row.lifecycle_stage == "repeat"


def test_policy_thresholds_are_checked() -> None:
    import pytest
    from tongcrm.errors import Unprocessable

    assert service.parse_policy({"new_days": 14}).as_dict() == {
        "new_days": 14,
        "dormant_days": 180,
        "churned_days": 365,
    }
    for bad, pointer in (
        ({"new_days": 0}, "/new_days"),
        ({"dormant_days": "90"}, "/dormant_days"),
        ({"new_days": 200}, "/dormant_days"),
        ({"sleep_days": 3}, "/sleep_days"),
    ):
        with pytest.raises(Unprocessable) as caught:
            service.parse_policy(bad)
        assert caught.value.extra["pointer"] == pointer


async def test_policy_api_history_and_segments(make_client: Any) -> None:
    async with make_client(role="admin") as api:
        assert (await api.get("/api/lifecycle/policy")).json() == {
            "version": 0, "new_days": 30, "dormant_days": 180, "churned_days": 365,
        }  # fmt: skip
        bad = await api.put("/api/lifecycle/policy", json={"new_days": 90, "dormant_days": 60})
        assert bad.status_code == 422 and bad.json()["pointer"] == "/dormant_days"
        saved = await api.put(
            "/api/lifecycle/policy", json={"new_days": 7, "dormant_days": 60, "churned_days": 120}
        )
        assert saved.status_code == 200, saved.text
        assert saved.json()["version"] == 1
        analyst = await api.create_key("analyst")
        denied = await api.put(
            "/api/lifecycle/policy", json={}, headers={"Authorization": f"Bearer {analyst}"}
        )
        assert denied.status_code == 403
        async with api.db.sessions() as s, s.begin():
            assert (
                (await s.execute(sa.select(Job.name).where(Job.name == "lifecycle.recompute")))
                .scalars()
                .all()
            )
            a, b = await kit.members(s, 2)
            await kit.order(s, a, 5_000, datetime.now(UTC) - timedelta(days=70))
        await service.recompute(api.db.sessions, datetime.now(UTC), SH)
        history = (await api.get(f"/api/lifecycle/members/{a}/history")).json()
        assert [(h["from_stage"], h["to_stage"], h["policy_version"]) for h in history] == [
            ("prospect", "dormant", 1)
        ]
        found = await api.post(
            "/api/segments/preview",
            json={
                "definition": {
                    "version": 1,
                    "condition": {"field": "lifecycle.stage", "op": "eq", "value": "dormant"},
                }
            },
        )
        assert [m["id"] for m in found.json()["sample"]] == [a]
        assert b
