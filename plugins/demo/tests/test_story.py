"""The demo's story, played in-process on each test database: what issue #21 promises a newcomer exists
afterwards — members on several channels with one mobile, merged identities, refunds and shipments on both
platforms, store receipts paid partly with points and returns, care messages through the SMS fake, a rule
change, segments, and a campaign whose report shows a response rate."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import sqlalchemy as sa
from tongcrm.campaigns import evaluation
from tongcrm.campaigns import service as campaigns
from tongcrm.config import Settings
from tongcrm.identity.models import Identity, Merge
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.points import ledger
from tongcrm.points import service as points
from tongcrm.points.models import PointsEntry
from tongcrm.segments.models import Segment
from tongcrm.testing.database import TestDatabase
from tongcrm_demo import platforms as fakes
from tongcrm_demo.clock import DemoClock
from tongcrm_demo.story import CAMPAIGN, Story


async def test_the_story_leaves_everything_the_issue_promises(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings
) -> None:
    clock = DemoClock()
    anchor = datetime.now(UTC).replace(microsecond=0)
    platforms = fakes.build(3, anchor, clock, fakes.Ports.free())
    with fakes.serving(platforms):
        report = await Story(
            tongcrm_settings,
            PluginHost(autoload=True, disabled=set()),
            platforms,
            clock,
            seed=3,
            anchor=anchor,
        ).play()

    async with tongcrm_db.sessions() as session:
        orders = (
            await session.execute(
                sa.select(
                    Order.member_id, Order.channel, Order.refunded_fen, Order.shipments, Order.placed_at
                )
            )
        ).all()
        channels: dict[int, set[str]] = defaultdict(set)
        for row in orders:
            if row.member_id is not None:
                channels[row.member_id].add(row.channel)
        kinds: dict[int, set[str]] = defaultdict(set)
        for member_id, kind in (await session.execute(sa.select(Identity.member_id, Identity.kind))).all():
            kinds[member_id].add(kind)
        merges = (await session.execute(sa.select(sa.func.count()).select_from(Merge))).scalar_one()
        redemptions = (
            await session.execute(
                sa.select(sa.func.count()).select_from(PointsEntry).where(PointsEntry.kind == "redeem")
            )
        ).scalar_one()
        rule_sets = await points.list_rule_sets(session)
        segments = set((await session.execute(sa.select(Segment.name))).scalars())
        sent = (
            await session.execute(
                sa.select(Message.flow, sa.func.count())
                .where(Message.status == "sent")
                .group_by(Message.flow)
            )
        ).all()
        campaign = await campaigns.get(session, CAMPAIGN)
        evaluated = await evaluation.report(session, campaign)
        drift = await ledger.verify(session)

    # shoppers who buy in a store and on both platforms with the same mobile are one member
    assert sum(1 for c in channels.values() if c == {"taobao", "jd", "offline_pos"}) >= 5, channels
    assert any({"mobile", "taobao.ouid", "jd.open_id", "taobao.open_uid"} <= k for k in kinds.values())
    assert merges >= 5 and report.tmall_bindings >= 20 and report.jd_bindings >= 20
    # three weeks of history, timestamps in the past
    placed = sorted(row.placed_at for row in orders)
    assert (anchor - placed[0]).days >= 20
    # refunds and shipments on both platforms; returns in the stores
    for channel in ("taobao", "jd", "offline_pos"):
        assert any(r.refunded_fen > 0 for r in orders if r.channel == channel), f"no refund on {channel}"
    for channel in ("taobao", "jd"):
        assert any(r.shipments for r in orders if r.channel == channel), f"no shipment on {channel}"
    # store receipts paid partly with points, recorded as redemptions on the exact ledger
    assert report.points_payments >= 5 and redemptions >= report.points_payments
    assert report.returns >= 3
    assert drift == []
    # the rule change, the segments
    assert [(r.version, r.status) for r in rule_sets] == [(2, "active"), (1, "retired")]
    assert {"omnichannel", "marketable"} <= segments
    # care messages and the campaign went out through the SMS fake
    flows = dict(sent)
    assert flows.get("flow.shipping_notice", 0) >= 1 and flows.get(f"campaign.{CAMPAIGN}", 0) >= 5
    assert len(platforms.sms.accepted) == sum(flows.values())
    # the campaign's report has a control group and a response rate for both groups
    total = evaluated.total
    assert (
        total.figures.control > 0 and total.figures.treated.eligible > 0 and total.figures.held.eligible > 0
    )
    assert 0 < total.uplift.treated_rate <= 1 and 0 <= total.uplift.control_rate <= 1
    assert total.figures.treated.responders <= total.figures.treated.eligible
