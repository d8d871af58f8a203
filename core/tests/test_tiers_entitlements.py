"""Entitlements: recurring grants by jobs (idempotent by grant key), fulfilment through a provider plugin that
fails and then succeeds (retried with backoff by the job runner), birthday points fulfilled by the core, usage."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.entitlements import service as ents
from tongcrm.entitlements.catalogue import Recurrence
from tongcrm.entitlements.models import EntitlementGrant, GrantStatus
from tongcrm.entitlements.standing import standing_filter
from tongcrm.errors import Conflict
from tongcrm.jobs.registry import load_job_modules
from tongcrm.jobs.runner import Runner
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import EntitlementProviderSpec, FulfilmentRequest, FulfilmentResult
from tongcrm.points.models import PointsEntry
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import service as tiers
from tongcrm.tiers import testing as kit

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 4, 30, 16, 30, tzinfo=UTC)  # 2026-05-01 00:30 in Shanghai: already May there
#: Recurring grants only (tier changes also grant standing benefits, see test_tiers_standing.py)
RECURRING = sa.select(EntitlementGrant).where(sa.not_(standing_filter())).order_by(EntitlementGrant.id)


class FlakyCoupons:
    """Fails the first two calls for each grant (once retryable, once by raising), then issues a coupon."""

    def __init__(self) -> None:
        self.calls: list[FulfilmentRequest] = []

    def __call__(self, settings: Mapping[str, str]) -> FlakyCoupons:
        return self

    async def fulfil(self, request: FulfilmentRequest) -> FulfilmentResult:
        self.calls.append(request)
        seen = sum(1 for c in self.calls if c.grant_id == request.grant_id)
        if seen == 1:
            return FulfilmentResult(ok=False, retryable=True, detail="shop API busy")
        if seen == 2:
            raise ConnectionError("connection reset")
        return FulfilmentResult(ok=True, reference=f"coupon-{request.grant_id}")


class CouponPlugin:
    def __init__(self, provider: FlakyCoupons) -> None:
        self.provider = provider

    @hookimpl
    def entitlement_providers(self) -> list[EntitlementProviderSpec]:
        return [EntitlementProviderSpec("test_coupons", ("monthly_coupon",), self.provider)]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def _gold_and_silver(db: TestDatabase) -> tuple[int, int, int]:
    async with db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, tiers.TierContext(NOW, SH), kit.LADDER, reason="launch", actor=SYSTEM)
        gold, silver, plain = await kit.members(s, 3, birthday=date(2000, 5, 20))
        await kit.order(s, gold, 600_000, NOW - timedelta(days=1))
        await kit.order(s, silver, 100_000, NOW - timedelta(days=1))
        await tiers.reevaluate(s, tiers.TierContext(NOW, SH), [gold, silver, plain])
    return gold, silver, plain


async def test_monthly_coupon_is_granted_once_and_fulfilled_after_failures(tongcrm_db: TestDatabase) -> None:
    gold, _silver, _ = await _gold_and_silver(tongcrm_db)
    provider = FlakyCoupons()
    host = PluginHost(autoload=False)
    host.register(CouponPlugin(provider), "coupons")
    clock = Clock(NOW)
    runner = Runner(tongcrm_db.sessions, host, load_job_modules(), clock=clock, retry_base=1.0)
    for _ in range(2):  # twice: the grant key makes the second run a no-op
        async with tongcrm_db.sessions() as s, s.begin():
            await ents.grant_recurring(s, tiers.TierContext(clock(), SH), host, Recurrence.MONTHLY)
    async with tongcrm_db.sessions() as s:
        grants = list((await s.execute(RECURRING)).scalars())
    assert [(g.member_id, g.grant_key, g.status, g.value) for g in grants] == [
        (gold, f"monthly_coupon:2026-05:m{gold}", GrantStatus.PENDING, 2000)
    ]
    grant = grants[0]
    assert grant.valid_until == datetime(2026, 6, 1, tzinfo=SH)

    await ents.fulfil_due(tongcrm_db.sessions, host, tiers.TierContext(clock(), SH))
    async with tongcrm_db.sessions() as s:
        g = await s.get(EntitlementGrant, grant.id)
    assert (
        g is not None
        and g.status == GrantStatus.PENDING
        and g.attempts == 1
        and g.last_error == "shop API busy"
    )
    assert g.next_attempt_at is not None and g.next_attempt_at > clock()
    # not retried before its backoff is over
    assert await ents.fulfil_due(tongcrm_db.sessions, host, tiers.TierContext(clock(), SH)) == 0
    for _ in range(2):  # the periodic job does the retries
        clock.now = clock.now + timedelta(hours=1)
        await runner.run_once()
    async with tongcrm_db.sessions() as s:
        g = await s.get(EntitlementGrant, grant.id)
    assert g is not None and g.status == GrantStatus.FULFILLED and g.reference == f"coupon-{g.grant_key}"
    assert len(provider.calls) == 3 and {c.grant_id for c in provider.calls} == {g.grant_key}
    assert provider.calls[0].parameters["value"] == 2000 and provider.calls[0].member_id == gold


async def test_birthday_points_are_posted_to_the_ledger_once(tongcrm_db: TestDatabase) -> None:
    gold, silver, _plain = await _gold_and_silver(tongcrm_db)
    host = PluginHost(autoload=False)
    ctx = tiers.TierContext(NOW, SH)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await ents.grant_recurring(s, ctx, host, Recurrence.BIRTHDAY) == 2
        assert await ents.grant_recurring(s, ctx, host, Recurrence.BIRTHDAY) == 0
    await ents.fulfil_due(tongcrm_db.sessions, host, ctx)
    async with tongcrm_db.sessions() as s:
        entries = {(e.member_id, e.amount) for e in (await s.execute(sa.select(PointsEntry))).scalars()}
        statuses = {g.status for g in (await s.execute(RECURRING)).scalars()}
    assert entries == {(gold, 300), (silver, 100)}
    assert statuses == {GrantStatus.FULFILLED}


async def test_usage_is_recorded_once(tongcrm_db: TestDatabase) -> None:
    _gold, _, _ = await _gold_and_silver(tongcrm_db)
    host = PluginHost(autoload=False)
    doc_host_free = tiers.TierContext(NOW, SH)
    async with tongcrm_db.sessions() as s, s.begin():
        await ents.grant_recurring(s, doc_host_free, host, Recurrence.MONTHLY)
        grant = (await s.execute(RECURRING)).scalar_one()
        grant.status = GrantStatus.FULFILLED
    async with tongcrm_db.sessions() as s, s.begin():
        usage, created = await ents.use(
            s, doc_host_free, grant.id, usage_key="order-1", reference="o1", actor="t"
        )
        again, created_again = await ents.use(
            s, doc_host_free, grant.id, usage_key="order-1", reference="o1", actor="t"
        )
        assert created and not created_again and again.id == usage.id
        with pytest.raises(Conflict, match="already used"):
            await ents.use(s, doc_host_free, grant.id, usage_key="order-2", reference="o2", actor="t")
    late = tiers.TierContext(datetime(2026, 6, 2, tzinfo=UTC), SH)
    async with tongcrm_db.sessions() as s, s.begin():
        (other,) = await kit.members(s, 1)
        s.add(
            EntitlementGrant(
                member_id=other,
                grant_key="x",
                kind="monthly_coupon",
                value=1,
                valid_from=NOW,
                valid_until=NOW + timedelta(days=1),
                status=GrantStatus.ACTIVE,
                params={},
            )
        )
        await s.flush()
        expired = (
            await s.execute(sa.select(EntitlementGrant.id).where(EntitlementGrant.grant_key == "x"))
        ).scalar_one()
        with pytest.raises(Conflict, match="valid from"):
            await ents.use(s, late, expired, usage_key="late", reference="", actor="t")


async def test_member_entitlements_and_catalogue_over_http(make_client: Any) -> None:
    import time_machine

    with time_machine.travel(NOW, tick=False):
        async with make_client() as api:
            gold, _, plain = await _gold_and_silver(api.db)
            async with api.db.sessions() as s, s.begin():
                await ents.grant_recurring(
                    s, tiers.TierContext(NOW, SH), PluginHost(autoload=False), Recurrence.MONTHLY
                )
                grant = (await s.execute(RECURRING)).scalar_one()
                grant.status = GrantStatus.FULFILLED
            catalogue = (await api.get("/api/entitlements/catalogue")).json()
            assert {k["code"] for k in catalogue} >= {"points_multiplier", "member_price", "monthly_coupon"}
            mine = (await api.get(f"/api/members/{gold}/entitlements")).json()
            assert mine["tier"] == "gold"
            assert {e["kind"] for e in mine["standing"]} == {"points_multiplier", "free_shipping"}
            assert [g["kind"] for g in mine["grants"]] == ["monthly_coupon"]
            used = await api.post(f"/api/entitlements/grants/{grant.id}/usages", json={"usage_key": "o-1"})
            assert used.status_code == 201, used.text
            replay = await api.post(f"/api/entitlements/grants/{grant.id}/usages", json={"usage_key": "o-1"})
            assert replay.status_code == 200 and replay.json()["id"] == used.json()["id"]
            conflict = await api.post(
                f"/api/entitlements/grants/{grant.id}/usages", json={"usage_key": "o-2"}
            )
            assert conflict.status_code == 409
            assert (
                await api.post("/api/entitlements/grants/999/usages", json={"usage_key": "z"})
            ).status_code == 404
            assert (await api.post(f"/api/entitlements/grants/{grant.id}/usages", json={})).status_code == 400
            assert (await api.get("/api/members/999999/entitlements")).status_code == 404
            assert (await api.get(f"/api/members/{plain}/entitlements")).json()["standing"] == []
