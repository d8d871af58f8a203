"""Care flows: messages triggered by order events, after a delay, if the order still warrants them.

The ``order_changed`` handler (:mod:`tongcrm.messaging.plugin`) only enqueues ``messaging.care`` with the unique
key ``care:<flow>:<order>``, so replayed or reordered events schedule each flow at most once per order. That job
reads the flow's configuration for the order's channel account and schedules ``messaging.care.fire`` at the
anchor time plus the configured delay; the fire job checks the order *as it is now* (a paid order gets no
payment reminder, a delivered one no shipping notice) and logs the message in the unique send log.

Refund notices are the exception to "once per order": a refund is an occasion of its own. The handler keys
them ``care:refund_notice:<order>:r<refunded fen>`` from the event's ``refunded_fen`` (the sum refunded over
the order's lines), so a partial refund — some lines refunded while the order stays shipped or completed —
triggers a notice, a later refund of more lines another one, and a replayed event nothing. The fire job
compares what is refunded now with the largest amount a notice was already logged for, and logs one message
keyed by the new total (``<flow>:<member>:<order>:r<total>``) carrying the newly refunded amount as
``refund_amount``. The unique send log makes each refund notice go at most once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit_service
from tongcrm.errors import NotFound, Unprocessable
from tongcrm.messaging import service
from tongcrm.messaging.models import CareFlowConfig, Message, MessageTemplate
from tongcrm.messaging.variables import yuan
from tongcrm.orders.models import Order


@dataclass(frozen=True, slots=True)
class CareFlow:
    name: str
    title: str
    #: Order statuses whose arrival triggers the flow.
    trigger: frozenset[str]
    #: Statuses the order must still be in when the message is due.
    still: frozenset[str]
    default_delay: timedelta
    #: ``placed``: the delay counts from the order's creation; ``event``: from the event.
    anchor: str = "event"
    #: Don't send when the message would be this late after its anchor (stale care is worse than none).
    stale_after: timedelta = timedelta(days=3)
    #: Also triggered when the refunded amount of an order grows, whatever its status (partial refunds);
    #: one message per refund, keyed by the refunded total, instead of one per order.
    on_refund: bool = False

    @property
    def flow_key(self) -> str:
        return f"flow.{self.name}"


FLOWS: Mapping[str, CareFlow] = {
    f.name: f
    for f in (
        CareFlow(
            "payment_reminder",
            "催付: order created and still unpaid",
            frozenset({"created"}),
            frozenset({"created"}),
            timedelta(minutes=30),
            anchor="placed",
            stale_after=timedelta(hours=24),
        ),
        CareFlow("shipping_notice", "发货通知", frozenset({"shipped"}), frozenset({"shipped"}), timedelta(0)),
        CareFlow(
            "delivery_care",
            "物流关怀/签收: delivered",
            frozenset({"delivered"}),
            frozenset({"delivered", "completed"}),
            timedelta(0),
        ),
        CareFlow(
            "review_request",
            "催评: after completion",
            frozenset({"completed"}),
            frozenset({"completed"}),
            timedelta(days=1),
            stale_after=timedelta(days=7),
        ),
        CareFlow(
            "refund_notice",
            "退款通知: whole or partial refunds",
            frozenset({"refunded"}),
            frozenset({"refunded"}),
            timedelta(0),
            on_refund=True,
        ),
    )
}


def get_flow(name: str) -> CareFlow:
    flow = FLOWS.get(name)
    if flow is None:
        raise NotFound(f"no care flow {name!r} (flows: {', '.join(sorted(FLOWS))})")
    return flow


# -------------------------------------------------------------------------------------------------------------
# configuration


async def configure(
    session: AsyncSession,
    flow_name: str,
    *,
    template: str,
    channel_account_id: int | None = None,
    enabled: bool = True,
    delay_seconds: int | None = None,
    actor: audit_service.Actor = audit_service.SYSTEM,
) -> CareFlowConfig:
    """Set how ``flow_name`` runs for one channel account (or by default), audited as
    ``care_flow.configure`` with the settings before and after: turning a flow off stops messages to
    customers, so who did it and when must be answerable."""
    flow = get_flow(flow_name)
    tpl = await service.get_template(session, template)
    if delay_seconds is not None and delay_seconds < 0:
        raise Unprocessable("delay_seconds must not be negative")
    delay = int(flow.default_delay.total_seconds()) if delay_seconds is None else delay_seconds
    cond = (
        CareFlowConfig.channel_account_id.is_(None)
        if channel_account_id is None
        else (CareFlowConfig.channel_account_id == channel_account_id)
    )
    config = (
        await session.execute(sa.select(CareFlowConfig).where(CareFlowConfig.flow == flow.name, cond))
    ).scalar_one_or_none()
    before = None if config is None else _config_state(config)
    if config is None:
        config = CareFlowConfig(flow=flow.name, channel_account_id=channel_account_id)
        session.add(config)
    config.enabled = enabled
    config.delay_seconds = delay
    config.template_id = tpl.id
    await session.flush()
    audit_service.record(
        session,
        actor,
        "care_flow.configure",
        "care_flow",
        flow.name if channel_account_id is None else f"{flow.name}:{channel_account_id}",
        before=before,
        after=_config_state(config),
    )
    return config


def _config_state(config: CareFlowConfig) -> dict[str, object]:
    return {
        "channel_account_id": config.channel_account_id,
        "enabled": config.enabled,
        "delay_seconds": config.delay_seconds,
        "template_id": config.template_id,
    }


async def config_for(
    session: AsyncSession, flow_name: str, channel_account_id: int | None
) -> CareFlowConfig | None:
    """The account's own configuration, else the default one."""
    rows = (
        await session.execute(
            sa.select(CareFlowConfig).where(
                CareFlowConfig.flow == flow_name,
                sa.or_(
                    CareFlowConfig.channel_account_id.is_(None),
                    CareFlowConfig.channel_account_id == channel_account_id,
                ),
            )
        )
    ).scalars()
    by_account = {c.channel_account_id: c for c in rows}
    return by_account.get(channel_account_id) or by_account.get(None)


async def list_configs(session: AsyncSession) -> list[CareFlowConfig]:
    return list(
        (
            await session.execute(sa.select(CareFlowConfig).order_by(CareFlowConfig.flow, CareFlowConfig.id))
        ).scalars()
    )


# -------------------------------------------------------------------------------------------------------------
# running


@dataclass(frozen=True, slots=True)
class Schedule:
    due: datetime | None
    reason: str


async def schedule(session: AsyncSession, flow: CareFlow, order_id: int, occurred_at: datetime) -> Schedule:
    """When the flow's message for this order is due, or why it never will be."""
    order = await session.get(Order, order_id)
    if order is None:
        return Schedule(None, "order not found")
    config = await config_for(session, flow.name, order.account_id)
    if config is None or not config.enabled:
        return Schedule(None, "flow not configured or disabled for this account")
    anchor = order.placed_at if flow.anchor == "placed" else occurred_at
    return Schedule(anchor + timedelta(seconds=config.delay_seconds), "scheduled")


async def fire(
    session: AsyncSession, flow: CareFlow, order_id: int, occurred_at: datetime, now: datetime
) -> str:
    """Log the flow's message for the order if it is still warranted. Returns what happened."""
    order = await session.get(Order, order_id)
    if order is None or order.member_id is None:
        return "skipped: order or member unknown"
    if not flow.on_refund and order.status not in flow.still:
        return f"skipped: order is {order.status}"
    if flow.name == "payment_reminder" and order.paid_at is not None:
        return "skipped: order was paid"
    anchor = order.placed_at if flow.anchor == "placed" else occurred_at
    if now - anchor > flow.stale_after:
        return "skipped: too late"
    config = await config_for(session, flow.name, order.account_id)
    if config is None or not config.enabled:
        return "skipped: flow disabled"
    template = await session.get(MessageTemplate, config.template_id)
    if template is None:
        return "skipped: template missing"
    target = service.Target(order.member_id, order.id)
    if flow.on_refund:
        refunded = refunded_total(order)
        if refunded <= 0:
            return "skipped: nothing refunded"
        if now - order.modified_at > flow.stale_after:
            # a refund seen first long after it happened (a backfill of old orders): news no longer
            return "skipped: refund is too old"
        notified = await notified_refund(session, flow, order)
        if refunded <= notified:
            return "skipped: refund already notified"
        target = service.Target(
            order.member_id,
            order.id,
            params={"refund_amount": yuan(refunded - notified)},
            occasion=refund_occasion(refunded),
        )
    new = await service.queue_messages(session, flow.flow_key, template, [target], now=now)
    return "queued" if new else "skipped: already in the send log"


def refunded_total(order: Order) -> int:
    """Fen refunded on the order: the sum over its lines; a whole-order refund from a channel that reports
    no line amounts counts as everything paid."""
    if order.refunded_fen:
        return int(order.refunded_fen)
    return int(order.paid_fen) if order.status == "refunded" else 0


def refund_occasion(refunded_fen: int) -> str:
    return f"r{refunded_fen}"


async def notified_refund(session: AsyncSession, flow: CareFlow, order: Order) -> int:
    """The largest refunded total a notice was already logged for (sent, refused or waiting alike), read
    from the send log's keys. A key without a refunded total predates partial refunds: that notice was for
    the whole order, so it covers everything paid."""
    keys = (
        await session.execute(
            sa.select(Message.dedupe_key).where(Message.flow == flow.flow_key, Message.order_id == order.id)
        )
    ).scalars()
    covered = 0
    for key in keys:
        last = key.rsplit(":", 1)[-1]
        if last.startswith("r") and last[1:].isdigit():
            covered = max(covered, int(last[1:]))
        elif key.count(":") == 2:  # <flow>:<member>:<order>, as logged before refunds had occasions
            covered = max(covered, int(order.paid_fen))
    return covered


# -------------------------------------------------------------------------------------------------------------
# reporting


@dataclass(frozen=True, slots=True)
class FlowReport:
    flow: str
    title: str
    configured: bool
    statuses: dict[str, int]
    #: Payment reminders only: orders reminded (sent or delivered), of those paid afterwards, the amount paid.
    reminded_orders: int | None = None
    paid_after_reminder: int | None = None
    recovered_fen: int | None = None


async def reports(session: AsyncSession) -> list[FlowReport]:
    counts = await service.status_counts(session)
    configured = {c.flow for c in await list_configs(session) if c.enabled}
    out: list[FlowReport] = []
    for flow in FLOWS.values():
        statuses = counts.get(flow.flow_key, {s: 0 for s in service.STATUSES})
        extra: dict[str, int] = {}
        if flow.name == "payment_reminder":
            reached = sa.and_(
                Message.flow == flow.flow_key,
                Message.status.in_(("sent", "delivered")),
                Message.order_id.is_not(None),
            )
            reminded = (
                await session.execute(sa.select(sa.func.count(sa.distinct(Message.order_id))).where(reached))
            ).scalar_one()
            paid = (
                await session.execute(
                    sa.select(
                        sa.func.count(sa.distinct(Order.id)), sa.func.coalesce(sa.func.sum(Order.paid_fen), 0)
                    )
                    .join(Message, Message.order_id == Order.id)
                    .where(reached, Order.paid_at.is_not(None), Order.paid_at >= Message.sent_at)
                )
            ).one()
            extra = {
                "reminded_orders": int(reminded),
                "paid_after_reminder": int(paid[0]),
                "recovered_fen": int(paid[1]),
            }
        out.append(FlowReport(flow.name, flow.title, flow.name in configured, statuses, **extra))
    return out
