"""Standing entitlements as grants, on both databases: opened when a member enters a tier (upgrade, override,
ladder change, merge), closed — never deleted — when they leave it (review, override end, merge), idempotent
when re-evaluated or reconciled again, used any number of times but once per usage key, and shown by the API.
Also: a merge carries the absorbed member's override to the survivor and its undo restores both exactly, with
every row dated by the merge's own time (no wall clock)."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import time_machine
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import SYSTEM
from tongcrm.entitlements import service as ents
from tongcrm.entitlements.models import EntitlementGrant, EntitlementUsage, GrantStatus
from tongcrm.entitlements.standing import standing_filter
from tongcrm.errors import Conflict, Unprocessable
from tongcrm.jobs.models import Job, OutboxEvent
from tongcrm.jobs.queue import enqueue
from tongcrm.jobs.registry import load_job_modules
from tongcrm.jobs.runner import Runner
from tongcrm.members.merge import merge_members, undo_merge
from tongcrm.members.models import Member
from tongcrm.members.references import MergeContext, register_context_listener
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import service as tiers
from tongcrm.tiers import testing as kit
from tongcrm.tiers.models import MemberTier, TierHistory

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2025, 3, 10, 4, 0, tzinfo=UTC)  # noon in Shanghai; the wall clock is never this

Grant = tuple[str, str, int, datetime, datetime | None]  # kind, tier, value, valid_from, valid_until


def ctx(at: datetime) -> tiers.TierContext:
    return tiers.TierContext(at, SH)


async def setup(db: TestDatabase, doc: dict[str, Any] | None = None, at: datetime = T0) -> None:
    async with db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, ctx(at), doc or kit.LADDER, reason="launch", actor=SYSTEM)


async def grants_of(db: TestDatabase, member_id: int, *, open_only: bool = False) -> list[Grant]:
    stmt = sa.select(EntitlementGrant).where(EntitlementGrant.member_id == member_id, standing_filter())
    if open_only:
        stmt = stmt.where(EntitlementGrant.valid_until.is_(None))
    async with db.sessions() as s:
        rows = (
            await s.execute(
                stmt.order_by(EntitlementGrant.valid_from, EntitlementGrant.kind, EntitlementGrant.id)
            )
        ).scalars()
        return [(g.kind, g.tier_code or "", g.value, g.valid_from, g.valid_until) for g in rows]


async def tier_row(db: TestDatabase, member_id: int) -> dict[str, Any] | None:
    async with db.sessions() as s:
        row = await s.get(MemberTier, member_id)
        if row is None:
            return None
        return {
            c.key: getattr(row, c.key) for c in sa.inspect(MemberTier).column_attrs if c.key != "updated_at"
        }


async def test_upgrade_opens_the_tier_benefits_once_and_review_closes_them(tongcrm_db: TestDatabase) -> None:
    doc = copy.deepcopy(kit.LADDER)
    doc["review"] = {"mode": "anniversary", "one_step": True}
    await setup(tongcrm_db, doc)
    async with tongcrm_db.sessions() as s, s.begin():
        a, plain = await kit.members(s, 2)
        await kit.order(s, a, 600_000, T0 - timedelta(days=1))
        await tiers.reevaluate(s, ctx(T0), [a, plain])
    gold = [("free_shipping", "gold", 0, T0, None), ("points_multiplier", "gold", 150, T0, None)]
    assert await grants_of(tongcrm_db, a) == gold
    assert await grants_of(tongcrm_db, plain) == []  # the base tier has no standing benefits
    async with tongcrm_db.sessions() as s:
        keys = set((await s.execute(sa.select(EntitlementGrant.grant_key))).scalars())
        statuses = set((await s.execute(sa.select(EntitlementGrant.status))).scalars())
    assert keys == {
        f"standing:points_multiplier:m{a}:gold:v1:20250310T040000.000000Z",
        f"standing:free_shipping:m{a}:gold:v1:20250310T040000.000000Z",
    }
    assert statuses == {GrantStatus.ACTIVE}
    # re-evaluating (a replayed ingest page, later orders) grants nothing more
    later = T0 + timedelta(days=3)
    async with tongcrm_db.sessions() as s, s.begin():
        await kit.order(s, a, 10_000, later)
        assert await tiers.reevaluate(s, ctx(later), [a]) == []
    assert await grants_of(tongcrm_db, a) == gold
    # a year on, nothing qualifies: one step down at the review, gold closed at that moment, silver opened
    review_at = datetime(2026, 3, 9, 16, 0, tzinfo=UTC)  # 2026-03-10 00:00 in Shanghai
    assert await tiers.review(tongcrm_db.sessions, ctx(review_at)) == 1
    assert await grants_of(tongcrm_db, a) == [
        ("free_shipping", "gold", 0, T0, review_at),
        ("points_multiplier", "gold", 150, T0, review_at),
        ("points_multiplier", "silver", 120, review_at, None),
    ]
    # the next review drops to the base tier: nothing stays open, nothing is deleted
    next_review = datetime(2027, 3, 9, 16, 0, tzinfo=UTC)
    assert await tiers.review(tongcrm_db.sessions, ctx(next_review)) == 1
    assert await grants_of(tongcrm_db, a, open_only=True) == []
    assert len(await grants_of(tongcrm_db, a)) == 3


async def test_overrides_open_and_close_benefits_and_expiry_returns_the_held_tiers(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        (a,) = await kit.members(s, 1)
        await kit.order(s, a, 150_000, T0 - timedelta(days=1))
        await tiers.reevaluate(s, ctx(T0), [a])
    silver = ("points_multiplier", "silver", 120, T0, None)
    assert await grants_of(tongcrm_db, a) == [silver]
    t1 = T0 + timedelta(days=1)
    async with tongcrm_db.sessions() as s, s.begin():
        await tiers.set_override(
            s, ctx(t1), a, tier="gold", until=date(2025, 3, 31), reason="apology", actor=SYSTEM
        )
    assert await grants_of(tongcrm_db, a, open_only=True) == [
        ("free_shipping", "gold", 0, t1, None),
        ("points_multiplier", "gold", 150, t1, None),
    ]
    assert await grants_of(tongcrm_db, a) == [(*silver[:4], t1)] + await grants_of(
        tongcrm_db, a, open_only=True
    )
    t2 = T0 + timedelta(days=2)
    async with tongcrm_db.sessions() as s, s.begin():
        await tiers.clear_override(s, ctx(t2), a, reason="resolved", actor=SYSTEM)
    assert await grants_of(tongcrm_db, a, open_only=True) == [("points_multiplier", "silver", 120, t2, None)]
    t3 = T0 + timedelta(days=3)
    async with tongcrm_db.sessions() as s, s.begin():
        await tiers.set_override(
            s, ctx(t3), a, tier="gold", until=date(2025, 3, 31), reason="again", actor=SYSTEM
        )
    # the override is over at Shanghai midnight; the 10-minute job notices a little later
    ended = datetime(2025, 3, 31, 16, 5, tzinfo=UTC)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await tiers.expire_overrides(s, ctx(ended)) == 1
    assert (await grants_of(tongcrm_db, a))[-4:] == [
        ("points_multiplier", "silver", 120, t2, t3),
        ("free_shipping", "gold", 0, t3, ended),
        ("points_multiplier", "gold", 150, t3, ended),
        ("points_multiplier", "silver", 120, ended, None),
    ]
    assert await grants_of(tongcrm_db, a, open_only=True) == [
        ("points_multiplier", "silver", 120, ended, None)
    ]


async def test_a_ladder_change_reissues_changed_benefits_in_the_upgrade_pass(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)
        await kit.order(s, a, 600_000, T0)  # gold
        await kit.order(s, b, 60_000, T0)  # member; silver under the new ladder
        await tiers.reevaluate(s, ctx(T0), [a, b])
    async with tongcrm_db.sessions() as s:
        kept_id = (
            await s.execute(
                sa.select(EntitlementGrant.id).where(
                    EntitlementGrant.member_id == a, EntitlementGrant.kind == "free_shipping"
                )
            )
        ).scalar_one()
    richer = copy.deepcopy(kit.LADDER)
    richer["tiers"][1]["rule"] = {"metric": "spend_fen", "min": 50_000}
    richer["tiers"][2]["entitlements"][0]["value"] = 170
    richer["tiers"][2]["entitlements"].append({"kind": "gift_packaging"})
    t1 = T0 + timedelta(days=5)
    async with tongcrm_db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, ctx(t1), richer, reason="more for gold", actor=SYSTEM)
    await tiers.upgrade_all(tongcrm_db.sessions, ctx(t1), batch=1)
    assert await grants_of(tongcrm_db, a) == [
        ("free_shipping", "gold", 0, T0, None),  # unchanged: the same grant stays open
        ("points_multiplier", "gold", 150, T0, t1),
        ("gift_packaging", "gold", 0, t1, None),
        ("points_multiplier", "gold", 170, t1, None),
    ]
    async with tongcrm_db.sessions() as s:
        assert (await s.get(EntitlementGrant, kept_id)) is not None
        versions = dict(
            (
                await s.execute(
                    sa.select(EntitlementGrant.kind, EntitlementGrant.ladder_version).where(
                        EntitlementGrant.member_id == a, EntitlementGrant.valid_until.is_(None)
                    )
                )
            ).all()
        )
    assert versions == {"free_shipping": 1, "points_multiplier": 2, "gift_packaging": 2}
    assert await grants_of(tongcrm_db, b) == [("points_multiplier", "silver", 120, t1, None)]
    # the pass again, or the full reconciliation: nothing moves
    await tiers.upgrade_all(tongcrm_db.sessions, ctx(t1 + timedelta(hours=1)))
    moved = await tiers.grant_standing(tongcrm_db.sessions, ctx(t1 + timedelta(hours=2)))
    assert (moved.opened, moved.closed) == (0, 0)
    assert len(await grants_of(tongcrm_db, a)) == 4


async def test_backfill_grants_existing_members_once_and_closes_tombstones(tongcrm_db: TestDatabase) -> None:
    doc = copy.deepcopy(kit.LADDER)
    doc["tiers"][0]["entitlements"] = [{"kind": "member_price", "value": 98}]
    doc["tiers"][1]["entitlements"].append({"kind": "member_price", "value": 95})
    doc["tiers"][2]["entitlements"].append({"kind": "member_price", "value": 90})
    # fulfilled on a platform: pending until the provider confirms it, like any provider grant
    doc["tiers"][2]["entitlements"].append({"kind": "priority_service", "provider": "vip_desk"})
    await setup(tongcrm_db, doc)
    since = T0 - timedelta(days=100)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b, gone = await kit.members(s, 3)
        # tier rows as they were before standing benefits were granted: no grants at all
        for member, code in ((a, "gold"), (gone, "silver")):
            s.add(
                MemberTier(
                    member_id=member,
                    tier_code=code,
                    since=since,
                    anchor_on=date(2024, 11, 30),
                    review_on=date(2025, 11, 30),
                    ladder_version=1,
                )
            )
        s.add(
            EntitlementGrant(
                member_id=gone,
                grant_key="standing:legacy",
                kind="points_multiplier",
                tier_code="silver",
                ladder_version=1,
                value=120,
                params={},
                valid_from=since,
                status=GrantStatus.ACTIVE,
            )
        )
        await s.flush()
        await s.execute(sa.update(Member).where(Member.id == gone).values(status="merged", merged_into_id=a))
    moved = await tiers.grant_standing(tongcrm_db.sessions, ctx(T0), batch=2)
    assert (moved.opened, moved.closed) == (5, 1)
    assert await grants_of(tongcrm_db, a) == [
        ("free_shipping", "gold", 0, T0, None),
        ("member_price", "gold", 90, T0, None),
        ("points_multiplier", "gold", 150, T0, None),
        ("priority_service", "gold", 0, T0, None),
    ]
    async with tongcrm_db.sessions() as s:
        status = dict(
            (
                await s.execute(
                    sa.select(EntitlementGrant.kind, EntitlementGrant.status).where(
                        EntitlementGrant.member_id == a
                    )
                )
            ).all()
        )
        due = await s.execute(
            sa.select(EntitlementGrant.provider, EntitlementGrant.next_attempt_at).where(
                EntitlementGrant.kind == "priority_service"
            )
        )
        assert due.one() == ("vip_desk", T0)
    assert status == {
        "free_shipping": GrantStatus.ACTIVE,
        "member_price": GrantStatus.ACTIVE,
        "points_multiplier": GrantStatus.ACTIVE,
        "priority_service": GrantStatus.PENDING,
    }
    assert await grants_of(tongcrm_db, b) == [("member_price", "member", 98, T0, None)]
    assert await grants_of(tongcrm_db, gone) == [("points_multiplier", "silver", 120, since, T0)]
    again = await tiers.grant_standing(tongcrm_db.sessions, ctx(T0 + timedelta(days=1)))
    assert (again.opened, again.closed) == (0, 0)
    # a member who joins at the base tier gets its benefits from the hourly job (no tier change happens)
    async with tongcrm_db.sessions() as s, s.begin():
        (newcomer,) = await kit.members(s, 1)
        await s.execute(sa.update(Member).where(Member.id == newcomer).values(created_at=T0))
        await enqueue(s, "tiers.grant_standing", {"recent_hours": 48}, run_at=T0)
    runner = Runner(tongcrm_db.sessions, PluginHost(autoload=False), load_job_modules(), clock=lambda: T0)
    await runner.run_once()
    async with tongcrm_db.sessions() as s:
        failed = list((await s.execute(sa.select(Job.name).where(Job.status != "done"))).scalars())
    assert "tiers.grant_standing" not in failed
    assert await grants_of(tongcrm_db, newcomer) == [("member_price", "member", 98, T0, None)]


async def test_standing_use_is_recorded_once_per_usage_key_and_only_while_held(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, plain = await kit.members(s, 2)
        await kit.order(s, a, 600_000, T0 - timedelta(days=1))
        await tiers.reevaluate(s, ctx(T0), [a])
    t1 = T0 + timedelta(hours=1)
    async with tongcrm_db.sessions() as s, s.begin():
        first, created = await ents.use_standing(
            s, ctx(t1), a, "free_shipping", usage_key="order:o-1", reference="o-1", actor="t"
        )
        replay, replayed = await ents.use_standing(
            s, ctx(t1), a, "free_shipping", usage_key="order:o-1", reference="o-1", actor="t"
        )
        second, created_second = await ents.use_standing(
            s, ctx(t1), a, "free_shipping", usage_key="order:o-2", reference="o-2", actor="t"
        )
        by_id, created_by_id = await ents.use(
            s, ctx(t1), first.grant_id, usage_key="order:o-3", reference="o-3", actor="t"
        )
        assert created and not replayed and replay.id == first.id
        assert created_second and created_by_id and second.grant_id == by_id.grant_id == first.grant_id
        with pytest.raises(Conflict, match="holds no 'free_shipping'"):
            await ents.use_standing(
                s, ctx(t1), plain, "free_shipping", usage_key="x", reference="", actor="t"
            )
        with pytest.raises(Unprocessable, match="granted per monthly"):
            await ents.use_standing(s, ctx(t1), a, "monthly_coupon", usage_key="y", reference="", actor="t")
        with pytest.raises(Conflict, match="already used for grant"):
            await ents.use_standing(
                s, ctx(t1), a, "points_multiplier", usage_key="order:o-1", reference="", actor="t"
            )
        found = await ents.for_member(s, ctx(t1), a)
    assert [(g.kind, found.standing_uses[g.id].count) for g in found.standing] == [
        ("free_shipping", 3),
        ("points_multiplier", 0),
    ]
    async with tongcrm_db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(EntitlementUsage))).scalar_one() == 3
    # after the drop the benefit is gone; replaying a recorded use still answers with it
    gone = datetime(2026, 3, 9, 16, 0, tzinfo=UTC)
    await tiers.review(tongcrm_db.sessions, ctx(gone))
    async with tongcrm_db.sessions() as s, s.begin():
        with pytest.raises(Conflict, match="holds no 'free_shipping'"):
            await ents.use_standing(
                s, ctx(gone), a, "free_shipping", usage_key="late", reference="", actor="t"
            )
        with pytest.raises(Conflict, match="valid from"):
            await ents.use(s, ctx(gone), first.grant_id, usage_key="late", reference="", actor="t")
        old, again = await ents.use_standing(
            s, ctx(gone), a, "free_shipping", usage_key="order:o-1", reference="o-1", actor="t"
        )
        assert old.id == first.id and not again


async def test_member_entitlements_show_live_grants_over_http(make_client: Any) -> None:
    with time_machine.travel(T0, tick=False):
        async with make_client() as api:
            await setup(api.db)
            async with api.db.sessions() as s, s.begin():
                a, plain = await kit.members(s, 2)
                await kit.order(s, a, 600_000, T0 - timedelta(days=1))
                await tiers.reevaluate(s, ctx(T0 - timedelta(hours=1)), [a])
            used = await api.post(
                f"/api/members/{a}/entitlements/gift_packaging/usages", json={"usage_key": "till:r-1"}
            )
            assert used.status_code == 409, used.text  # gold has no gift packaging in this ladder
            ok = await api.post(
                f"/api/members/{a}/entitlements/free_shipping/usages",
                json={"usage_key": "order:o-9", "reference": "o-9"},
            )
            assert ok.status_code == 201, ok.text
            replay = await api.post(
                f"/api/members/{a}/entitlements/free_shipping/usages",
                json={"usage_key": "order:o-9", "reference": "o-9"},
            )
            assert replay.status_code == 200 and replay.json()["id"] == ok.json()["id"]
            unknown = await api.post(
                f"/api/members/{a}/entitlements/teleport/usages", json={"usage_key": "z"}
            )
            assert unknown.status_code == 422
            mine = (await api.get(f"/api/members/{a}/entitlements")).json()
            assert mine["tier"] == "gold"
            standing = {g["kind"]: g for g in mine["standing"]}
            assert set(standing) == {"free_shipping", "points_multiplier"}
            assert standing["free_shipping"]["uses"] == 1 and standing["free_shipping"]["valid_until"] is None
            assert standing["free_shipping"]["used_at"].startswith("2025-03-10T04:00:00")
            assert (
                standing["points_multiplier"]["value"] == 150 and standing["points_multiplier"]["uses"] == 0
            )
            assert mine["grants"] == []
            by_grant = await api.post(
                f"/api/entitlements/grants/{standing['points_multiplier']['id']}/usages",
                json={"usage_key": "order:o-9:multiplier"},
            )
            assert by_grant.status_code == 201, by_grant.text
            assert (await api.get(f"/api/members/{plain}/entitlements")).json()["standing"] == []


async def test_merge_carries_an_override_and_undo_restores_both_members_exactly(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)
        await kit.order(s, a, 150_000, T0 - timedelta(days=1))  # a: silver by its own orders
        await tiers.reevaluate(s, ctx(T0), [a, b])
        await tiers.set_override(
            s, ctx(T0), b, tier="gold", until=date(2025, 6, 30), reason="VIP complaint", actor=SYSTEM
        )
    before_a, before_b = await tier_row(tongcrm_db, a), await tier_row(tongcrm_db, b)
    grants_b = await grants_of(tongcrm_db, b)
    merged_at = T0 + timedelta(days=2)
    async with tongcrm_db.sessions() as s, s.begin():
        record = await merge_members(s, a, b, actor=SYSTEM, reason="same phone", at=merged_at, tz=SH)
        merge_id = record.id
    row = await tier_row(tongcrm_db, a)
    assert row is not None
    assert (row["tier_code"], row["override_code"]) == ("silver", "gold")
    assert row["override_until"] == datetime(2025, 6, 30, 16, 0, tzinfo=UTC)  # b's expiry, to the second
    assert row["override_reason"] == f"VIP complaint (carried over from member {b} by merge {merge_id})"
    async with tongcrm_db.sessions() as s:
        assert (await tiers.status(s, ctx(merged_at), a)).tier.code == "gold"
        hist = (
            (
                await s.execute(
                    sa.select(TierHistory).where(TierHistory.member_id == a).order_by(TierHistory.id.desc())
                )
            )
            .scalars()
            .first()
        )
        audits = list(
            (
                await s.execute(sa.select(AuditEntry).where(AuditEntry.action == "tiers.override.carry"))
            ).scalars()
        )
        events = [
            e.payload for e in (await s.execute(sa.select(OutboxEvent))).scalars() if e.name == "tier_changed"
        ]
    assert hist is not None and (hist.from_code, hist.to_code, hist.reason) == ("silver", "gold", "merge")
    assert f"merge {merge_id}" in hist.detail and "VIP complaint" in hist.detail and hist.at == merged_at
    assert len(audits) == 1 and audits[0].at == merged_at and audits[0].after is not None
    assert audits[0].after["from_member_id"] == b and audits[0].after["until"] == "2025-06-30T16:00:00+00:00"
    assert {"member_id": a, "from": "silver", "to": "gold", "reason": "merge"} in events
    # the survivor's silver benefit ends with the merge; the gold benefits of the override carry on with it
    assert await grants_of(tongcrm_db, a) == [
        ("free_shipping", "gold", 0, T0, None),
        ("points_multiplier", "silver", 120, T0, merged_at),
        ("points_multiplier", "gold", 150, T0, None),
    ]

    undone_at = merged_at + timedelta(days=1)
    async with tongcrm_db.sessions() as s, s.begin():
        await undo_merge(s, merge_id, actor=SYSTEM, at=undone_at, tz=SH)
    assert await tier_row(tongcrm_db, a) == before_a
    assert await tier_row(tongcrm_db, b) == before_b
    assert await grants_of(tongcrm_db, a) == [
        ("points_multiplier", "silver", 120, T0, merged_at),
        ("points_multiplier", "silver", 120, undone_at, None),
    ]
    assert await grants_of(tongcrm_db, b) == grants_b  # its grants went with it and back, untouched
    async with tongcrm_db.sessions() as s:
        last = (
            (
                await s.execute(
                    sa.select(TierHistory).where(TierHistory.member_id == a).order_by(TierHistory.id.desc())
                )
            )
            .scalars()
            .first()
        )
    assert last is not None and (last.from_code, last.to_code, last.at) == ("gold", "silver", undone_at)


async def test_a_better_own_tier_keeps_its_place_and_a_later_override_survives_the_undo(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)
        await kit.order(s, a, 600_000, T0 - timedelta(days=1))  # a: gold
        await tiers.reevaluate(s, ctx(T0), [a, b])
        await tiers.set_override(
            s, ctx(T0), b, tier="silver", until=date(2025, 6, 30), reason="goodwill", actor=SYSTEM
        )
    before_b = await tier_row(tongcrm_db, b)
    async with tongcrm_db.sessions() as s, s.begin():
        record = await merge_members(s, a, b, actor=SYSTEM, reason="same phone", at=T0, tz=SH)
    row = await tier_row(tongcrm_db, a)
    assert row is not None and (row["tier_code"], row["override_code"]) == ("gold", None)
    # an operator's override on the survivor after the merge is not the merge's to undo
    later = T0 + timedelta(days=1)
    async with tongcrm_db.sessions() as s, s.begin():
        await tiers.set_override(
            s, ctx(later), a, tier="silver", until=date(2025, 5, 1), reason="fraud check", actor=SYSTEM
        )
        await undo_merge(s, record.id, actor=SYSTEM, at=later, tz=SH)
    row = await tier_row(tongcrm_db, a)
    assert row is not None and (row["tier_code"], row["override_code"]) == ("gold", "silver")
    assert await tier_row(tongcrm_db, b) == before_b


async def test_merge_listeners_get_the_merge_time_and_zone_not_the_wall_clock(
    tongcrm_db: TestDatabase,
) -> None:
    seen: list[MergeContext] = []

    async def spy(session: Any, survivor: int, others: tuple[int, ...], context: MergeContext) -> None:
        seen.append(context)

    register_context_listener(spy)
    await setup(tongcrm_db)
    urumqi = ZoneInfo("Asia/Urumqi")
    async with tongcrm_db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)
        await kit.order(s, a, 150_000, T0 - timedelta(days=1))
        await kit.order(s, b, 600_000, T0 - timedelta(days=1))
        await tiers.reevaluate(s, ctx(T0), [a, b])
    merged_at = T0 + timedelta(days=30, hours=3)
    async with tongcrm_db.sessions() as s, s.begin():
        record = await merge_members(s, a, b, actor=SYSTEM, reason="same phone", at=merged_at, tz=urumqi)
        await undo_merge(s, record.id, actor=SYSTEM, at=merged_at + timedelta(minutes=5), tz=urumqi)
    assert [(c.at, c.tz, c.merge_id, c.undo) for c in seen[-2:]] == [
        (merged_at, urumqi, record.id, False),
        (merged_at + timedelta(minutes=5), urumqi, record.id, True),
    ]
    async with tongcrm_db.sessions() as s:
        merged = (
            (
                await s.execute(
                    sa.select(TierHistory).where(TierHistory.member_id == a, TierHistory.reason == "merge")
                )
            )
            .scalars()
            .all()
        )
    undone_at = merged_at + timedelta(minutes=5)
    assert [(h.from_code, h.to_code, h.at) for h in merged] == [
        ("silver", "gold", merged_at),
        ("gold", "silver", undone_at),
    ]
    assert await grants_of(tongcrm_db, a) == [
        ("points_multiplier", "silver", 120, T0, merged_at),
        ("points_multiplier", "silver", 120, undone_at, None),
    ]


async def test_undo_removes_the_tier_row_a_carried_override_created(tongcrm_db: TestDatabase) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)  # a never changed tier: no row
        await tiers.set_override(
            s, ctx(T0), b, tier="silver", until=date(2025, 4, 30), reason="launch gift", actor=SYSTEM
        )
    async with tongcrm_db.sessions() as s, s.begin():
        record = await merge_members(s, a, b, actor=SYSTEM, reason="same phone", at=T0, tz=SH)
    row = await tier_row(tongcrm_db, a)
    assert row is not None and (row["tier_code"], row["override_code"], row["since"]) == (
        "member",
        "silver",
        T0,
    )
    assert await grants_of(tongcrm_db, a, open_only=True) == [("points_multiplier", "silver", 120, T0, None)]
    async with tongcrm_db.sessions() as s, s.begin():
        await undo_merge(s, record.id, actor=SYSTEM, at=T0 + timedelta(hours=1), tz=SH)
    assert await tier_row(tongcrm_db, a) is None
    assert await grants_of(tongcrm_db, a, open_only=True) == []
    assert await grants_of(tongcrm_db, b, open_only=True) == [("points_multiplier", "silver", 120, T0, None)]
