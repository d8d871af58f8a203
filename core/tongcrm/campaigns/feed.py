"""A campaign run's messages, written into the send log a page at a time from its frozen audience.

The run freezes its audience (``campaign_audience``: one narrow row per member with its group) and writes the
first page of messages in its own transaction; the dispatcher asks for the next page before it claims
(:mod:`tongcrm.messaging.feed`), and :func:`feed_runs` writes one only while little of the campaign's flow is
still queued — so quiet hours, the gateway's rate and the fatigue budget, all applied by the dispatcher at send
time, also pace how much of the backlog sits in the send log.

Each page is the next members in id order after the run's cursor (``enqueued_through``), written by one
``INSERT … SELECT`` with the send-log key ``campaign.<name>:<member>:-:run<id>``; the cursor and the count move
in the same transaction. A page retried after a crash writes the same keys, which the unique send log skips:
nobody is messaged twice, and nobody is skipped, since the cursor only moves with the page it covers.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.campaigns import control
from tongcrm.campaigns.models import Campaign, CampaignAudience, CampaignRun
from tongcrm.messaging import feed
from tongcrm.messaging import service as messaging
from tongcrm.messaging.models import Message, MessageTemplate

#: Members written when the run starts (a small audience is written whole, at once).
FIRST_PAGE = 10_000
#: Members written per page afterwards, when the campaign's flow has fewer than a dispatcher batch queued.
PAGE = 10_000


def flow_of(campaign: Campaign) -> str:
    return f"campaign.{campaign.name}"


def occasion_of(run_id: int) -> str:
    return f"run{run_id}"


async def write_page(
    session: AsyncSession, campaign: Campaign, run: CampaignRun, *, now: datetime, limit: int
) -> int:
    """Write the messages of the next ``limit`` audience members of ``run`` after its cursor; move the cursor.
    Returns how many members the page covered (0: the run's feed is done)."""
    page = (
        sa.select(CampaignAudience.member_id)
        .where(CampaignAudience.run_id == run.id, CampaignAudience.member_id > run.enqueued_through)
        .order_by(CampaignAudience.member_id)
        .limit(limit)
        .subquery("page")
    )
    covered, last = (await session.execute(sa.select(sa.func.count(), sa.func.max(page.c.member_id)))).one()
    if not covered:
        return 0
    template = await session.get(MessageTemplate, campaign.template_id)
    assert template is not None
    await messaging.queue_selected(
        session,
        flow_of(campaign),
        template,
        sa.select(CampaignAudience.member_id, CampaignAudience.grp == control.CONTROL).where(
            CampaignAudience.run_id == run.id,
            CampaignAudience.member_id > run.enqueued_through,
            CampaignAudience.member_id <= last,
        ),
        occasion=occasion_of(run.id),
        now=now,
    )
    run.enqueued += int(covered)
    run.enqueued_through = int(last)
    await session.flush()
    return int(covered)


def unfed() -> sa.ColumnElement[bool]:
    """Runs whose audience is not all in the send log yet."""
    return sa.and_(CampaignRun.status == "queued", CampaignRun.enqueued < CampaignRun.audience)


async def feed_runs(session: AsyncSession, now: datetime, room: int) -> int:
    """The registered feeder: for each run not fully written whose campaign has fewer than ``room`` messages
    still queued, write its next page. Runs are locked (others' skipped), so two dispatchers never write the
    same page. Returns the members covered."""
    runs = list(
        (
            await session.execute(
                sa.select(CampaignRun)
                .where(unfed())
                .order_by(CampaignRun.id)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    written = 0
    for run in runs:
        campaign = await session.get(Campaign, run.campaign_id)
        assert campaign is not None
        backlog = (
            await session.execute(
                sa.select(sa.func.count()).where(
                    Message.flow == flow_of(campaign), Message.status.in_(("queued", "sending"))
                )
            )
        ).scalar_one()
        if backlog >= room:
            continue  # still draining (or waiting for the marketing window): the next page can wait
        written += await write_page(session, campaign, run, now=now, limit=max(PAGE, room))
    return written


async def unwritten(session: AsyncSession, flow: str) -> feed.Unwritten:
    """The registered backlog: members of this flow's runs the feed has not written yet, and the control members
    among them (their messages will be held out)."""
    if not flow.startswith("campaign."):
        return feed.Unwritten()
    total, control_left = (
        await session.execute(
            sa.select(sa.func.count(), sa.func.count().filter(CampaignAudience.grp == control.CONTROL))
            .select_from(CampaignAudience)
            .join(CampaignRun, CampaignRun.id == CampaignAudience.run_id)
            .join(Campaign, Campaign.id == CampaignRun.campaign_id)
            .where(
                unfed(),
                Campaign.name == flow[len("campaign.") :],
                CampaignAudience.member_id > CampaignRun.enqueued_through,
            )
        )
    ).one()
    return feed.Unwritten(int(total), int(control_left))


feed.register("campaigns", feed_runs, unwritten)
