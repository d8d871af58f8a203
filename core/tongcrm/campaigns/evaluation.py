"""A campaign's evaluation, per run and in total, computed from the frozen audiences, the send log and the
orders as they are now — so a report asked again after more orders arrived says more.

Groups: the *eligible* treated members (the policy allowed their message: sent, delivered, or failed at the
gateway) against the *eligible* control members (the policy would have sent; refused ``hold-out``). Members the
policy refused in either group (no consent, opted out, fatigue) are out of both alike, and messages still waiting
(quiet hours) are counted as pending and left out until decided. This is the comparison the hold-out design of
:mod:`tongcrm.messaging.holdout` was built for.

A member *responds* to a run when, within ``within_days`` of the run's start, they place an order in any channel
that is paid and not closed or refunded (optionally paying at least ``min_paid_fen``, or with a line of product
``sku``), visit a store (an order with a store code), or redeem points — per the campaign's response definition.
Orders and revenue are counted for those orders (revenue = paid − refunded, in fen). Responses are matched on
the member the audience row names *now*: a member merged into another after the run has its orders (and
ledger, and consent) moved to the survivor, so the audience member is followed along ``merged_into_id`` to
the surviving member and that member's orders count (:func:`merged_survivors`, :func:`credited_member`).

The totals pool the runs: a member in three runs is three exposures. Uplift and its interval are in
:mod:`tongcrm.campaigns.stats`. Incremental orders and revenue are the difference of per-member averages between
the groups times the eligible treated; cost is the messages sent times the campaign's cost per message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute

from tongcrm.campaigns import stats
from tongcrm.campaigns.feed import flow_of, occasion_of
from tongcrm.campaigns.models import RUN_SENT, Campaign, CampaignAudience, CampaignRun
from tongcrm.campaigns.service import runs
from tongcrm.consent.models import ConsentEvent
from tongcrm.members.models import Member
from tongcrm.messaging.holdout import HOLDOUT_REASON
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order, OrderLine
from tongcrm.points.models import EntryKind, PointsEntry

_ELIGIBLE_TREATED = ("sent", "in_doubt", "delivered", "failed")
#: Not settled yet; ``in_doubt`` (no answer from the gateway) waits for its delivery report.
_PENDING = ("queued", "sending", "in_doubt")
RESPONDING_STATUSES = ("paid", "shipped", "delivered", "completed")


@dataclass
class GroupFigures:
    eligible: int = 0
    responders: int = 0
    orders: int = 0
    revenue_fen: int = 0

    def add(self, other: GroupFigures) -> None:
        self.eligible += other.eligible
        self.responders += other.responders
        self.orders += other.orders
        self.revenue_fen += other.revenue_fen


@dataclass
class Figures:
    """What one run (or all of them) did and what came of it."""

    audience: int = 0
    control: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    opted_out: int = 0
    #: Points granted to the treated members (the benefit).
    points_granted: int = 0
    #: Entitlements granted to the treated members (the benefit), and what they cost in fen.
    entitlements_granted: int = 0
    entitlement_cost_fen: int = 0
    treated: GroupFigures = field(default_factory=GroupFigures)
    held: GroupFigures = field(default_factory=GroupFigures)

    def add(self, other: Figures) -> None:
        self.audience += other.audience
        self.control += other.control
        self.sent += other.sent
        self.delivered += other.delivered
        self.failed += other.failed
        self.pending += other.pending
        for reason, n in other.refused.items():
            self.refused[reason] = self.refused.get(reason, 0) + n
        self.opted_out += other.opted_out
        self.points_granted += other.points_granted
        self.entitlements_granted += other.entitlements_granted
        self.entitlement_cost_fen += other.entitlement_cost_fen
        self.treated.add(other.treated)
        self.held.add(other.held)


@dataclass(frozen=True, slots=True)
class Outcome:
    figures: Figures
    uplift: stats.Uplift
    incremental_orders: float
    incremental_revenue_fen: int
    cost_fen: int
    #: None when there is no incremental order to divide by.
    cost_per_incremental_order_fen: int | None
    #: Points granted per incremental order (None likewise): the benefit's cost, in points.
    points_per_incremental_order: int | None = None


@dataclass(frozen=True, slots=True)
class RunReport:
    run: CampaignRun
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Report:
    campaign: Campaign
    runs: list[RunReport]
    total: Outcome


def tally_messages(f: Figures, rows: Iterable[Any]) -> None:
    """Add (status, reason, count) rows of the send log to ``f``: sent (delivered included), delivered, failed,
    pending, refused by reason — hold-outs are the control group's, not refusals."""
    for status, reason, n in rows:
        n = int(n)
        if status in ("sent", "delivered"):
            f.sent += n  # a delivered message was sent first
            f.delivered += n if status == "delivered" else 0
        elif status == "failed":
            f.failed += n
        elif status in _PENDING:
            f.pending += n
        elif status == "refused" and reason != HOLDOUT_REASON:
            f.refused[reason] = f.refused.get(reason, 0) + n


def _run_messages(campaign: Campaign, run_id: int) -> list[sa.ColumnElement[bool]]:
    """The send log's messages of one run: the campaign's flow and the run's occasion ending the key
    (``campaign.<name>:<member>:-:run<id>``, see :func:`messaging.service.dedupe_key`). ``:-:run1`` does not end
    ``…:-:run11``, so the suffix names one run."""
    return [Message.flow == flow_of(campaign), Message.dedupe_key.endswith(f":-:{occasion_of(run_id)}")]


def _eligible() -> sa.ColumnElement[bool]:
    """A run's messages to members the contact policy allowed: treated and sent (or failed at the gateway), or
    control and refused only because they are held out. The group is the message's ``held_out``, which the feed
    writes from the member's audience row (``grp == control``)."""
    return sa.or_(
        sa.and_(Message.held_out.is_(False), Message.status.in_(_ELIGIBLE_TREATED)),
        sa.and_(Message.held_out.is_(True), Message.reason == HOLDOUT_REASON),
    )


def merged_survivors() -> sa.Subquery:
    """``(origin, current)`` for each merged member: the member it is now, at the end of its chain of merges.
    Seeded from the members that were merged (few, found by the index on ``merged_into_id``) rather than from an
    audience of a million, so a report follows merges without walking every audience member."""
    chain = (
        sa.select(
            Member.id.label("origin"),
            Member.merged_into_id.label("current"),
            Member.merged_into_id.label("next_id"),
        )
        .where(Member.merged_into_id.is_not(None))
        .cte("merged_chain", recursive=True)
    )
    step = sa.select(chain.c.origin, Member.id, Member.merged_into_id).join(
        Member, Member.id == chain.c.next_id
    )
    chain = chain.union_all(step)
    return sa.select(chain.c.origin, chain.c.current).where(chain.c.next_id.is_(None)).subquery("survivors")


def credited_member(
    survivors: sa.Subquery, member_id: sa.ColumnElement[int] | QueryableAttribute[int]
) -> sa.ColumnElement[int]:
    """The member whose orders and ledger are credited to ``member_id`` now: the survivor it was merged into
    (``survivors`` from :func:`merged_survivors`, outer-joined on ``origin``), else itself. The one credit rule
    of the campaign and the journey reports."""
    return sa.func.coalesce(survivors.c.current, member_id)


def order_filters(response: Mapping[str, Any], start: Any, end: Any) -> list[sa.ColumnElement[bool]]:
    """The orders that count as a response placed from ``start`` until before ``end`` (moments, or columns of a
    per-member window): paid and not closed or refunded, a store visit, a minimum paid, a product code."""
    where = [Order.placed_at >= start, Order.placed_at < end, Order.status.in_(RESPONDING_STATUSES)]
    if response["kind"] == "store_visit":
        where.append(Order.store_code.is_not(None))
    if response.get("min_paid_fen") is not None:
        where.append(Order.paid_fen >= int(response["min_paid_fen"]))
    if response.get("sku"):
        where.append(sa.exists().where(OrderLine.order_id == Order.id, OrderLine.sku == response["sku"]))
    return where


def _responses(campaign: Campaign, run: CampaignRun) -> sa.Select[Any, Any, Any]:
    """(member id, order count, revenue) of responding members, for the run's window."""
    response = campaign.response
    start = run.started_at
    end = start + timedelta(days=int(response["within_days"]))
    kind = response["kind"]
    if kind == "redemption":
        return (
            sa.select(
                PointsEntry.member_id.label("member_id"),
                sa.literal(0).label("orders"),
                sa.literal(0).label("revenue"),
            )
            .where(
                PointsEntry.kind == EntryKind.REDEEM,
                PointsEntry.occurred_at >= start,
                PointsEntry.occurred_at < end,
            )
            .distinct()
        )
    where = [Order.member_id.is_not(None), *order_filters(response, start, end)]
    return (
        sa.select(
            Order.member_id.label("member_id"),
            sa.func.count().label("orders"),
            sa.func.sum(Order.paid_fen - Order.refunded_fen).label("revenue"),
        )
        .where(*where)
        .group_by(Order.member_id)
    )


async def run_figures(session: AsyncSession, campaign: Campaign, run: CampaignRun) -> Figures:
    """One run's figures in three set-based statements: the send log tallied, the opt-outs in the window, and the
    groups with their responses — the responding orders pre-aggregated per member over the window (the
    ``placed_at`` index), joined by hash to the run's messages (which carry the member and its group, so the
    audience is not joined: a hash of every audience member spilt to disk at the default ``work_mem`` from a
    couple of hundred thousand), merged members followed through :func:`merged_survivors`. No per-member
    subquery."""
    benefit = campaign.benefit_entitlement or {}
    f = Figures(
        audience=run.audience,
        control=run.control,
        points_granted=run.points_granted,
        entitlements_granted=run.entitlements_granted,
        entitlement_cost_fen=run.entitlements_granted * int(benefit.get("cost_fen", 0)),
    )
    if run.status not in RUN_SENT:
        return f
    of_run = _run_messages(campaign, run.id)
    rows = await session.execute(
        sa.select(Message.status, Message.reason, sa.func.count())
        .where(*of_run)
        .group_by(Message.status, Message.reason)
    )
    tally_messages(f, rows.all())
    # audience members whose message the feed has not written yet are waiting like queued ones
    f.pending += max(0, run.audience - run.enqueued)
    window_end = run.started_at + timedelta(days=int(campaign.response["within_days"]))
    survivors = merged_survivors()
    in_audience = sa.exists().where(CampaignAudience.run_id == run.id)
    # the audience members as they are now: themselves unless merged (then the survivor they were merged into)
    now_in_audience = sa.or_(
        in_audience.where(CampaignAudience.member_id == ConsentEvent.member_id).where(
            ~sa.exists().where(Member.id == ConsentEvent.member_id, Member.merged_into_id.is_not(None))
        ),
        ConsentEvent.member_id.in_(
            sa.select(survivors.c.current).where(
                in_audience.where(CampaignAudience.member_id == survivors.c.origin)
            )
        ),
    )
    f.opted_out = int(
        (
            await session.execute(
                sa.select(sa.func.count(sa.distinct(ConsentEvent.member_id))).where(
                    ConsentEvent.purpose == "marketing",
                    ConsentEvent.status == "opt_out",
                    ConsentEvent.recorded_at >= run.started_at,
                    ConsentEvent.recorded_at < window_end,
                    now_in_audience,
                )
            )
        ).scalar_one()
    )
    responses = _responses(campaign, run).subquery()
    groups = await session.execute(
        sa.select(
            Message.held_out,
            sa.func.count(),
            sa.func.count(responses.c.member_id),
            sa.func.coalesce(sa.func.sum(responses.c.orders), 0),
            sa.func.coalesce(sa.func.sum(responses.c.revenue), 0),
        )
        .select_from(
            sa.outerjoin(Message, survivors, survivors.c.origin == Message.member_id).outerjoin(
                responses, responses.c.member_id == credited_member(survivors, Message.member_id)
            )
        )
        .where(*of_run, _eligible())
        .group_by(Message.held_out)
    )
    for held_out, eligible, responders, orders, revenue in groups.all():
        target = f.held if held_out else f.treated
        target.eligible, target.responders = int(eligible), int(responders)
        target.orders, target.revenue_fen = int(orders), int(revenue)
    return f


def outcome(campaign: Campaign | Any, f: Figures) -> Outcome:
    """Uplift, increments and cost of ``f``; ``campaign`` is anything with ``message_cost_fen`` (a journey
    too)."""
    t, c = f.treated, f.held
    up = stats.uplift(t.responders, t.eligible, c.responders, c.eligible)
    if t.eligible and c.eligible:
        inc_orders = (t.orders / t.eligible - c.orders / c.eligible) * t.eligible
        inc_revenue = round((t.revenue_fen / t.eligible - c.revenue_fen / c.eligible) * t.eligible)
    else:
        inc_orders, inc_revenue = 0.0, 0
    cost = f.sent * campaign.message_cost_fen + f.entitlement_cost_fen
    per = round(cost / inc_orders) if inc_orders > 0 else None
    points_per = round(f.points_granted / inc_orders) if inc_orders > 0 else None
    return Outcome(f, up, round(inc_orders, 2), inc_revenue, cost, per, points_per)


async def report(session: AsyncSession, campaign: Campaign) -> Report:
    out: list[RunReport] = []
    total = Figures()
    for run in await runs(session, campaign.id):
        figures = await run_figures(session, campaign, run)
        total.add(figures)
        out.append(RunReport(run, outcome(campaign, figures)))
    return Report(campaign, out, outcome(campaign, total))
