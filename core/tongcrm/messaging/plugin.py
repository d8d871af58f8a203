"""Core's built-in hook implementation for messaging: care flows triggered by ``order_changed``.

It only enqueues: one ``messaging.care`` job per (flow, order), keyed ``care:<flow>:<order>``, so a replayed or
reordered event schedules nothing twice. Refund notices are keyed per refund instead,
``care:refund_notice:<order>:r<refunded fen>``: an event whose ``refunded_fen`` grew (a partial refund, with or
without a status change) schedules a new one, a replay of it nothing. Delays, conditions and configuration
are the job's business.

A flow counts from when the order changed on the platform (the event's ``changed_at``) when that is earlier
than the event: the first sync of a shop brings months of shipped and completed orders, and those are history,
not news — the fire job finds them too late instead of thanking customers for parcels long delivered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tongcrm.messaging.flows import FLOWS, refund_occasion
from tongcrm.plugin import hookimpl
from tongcrm.plugin.hookspecs import Enqueue
from tongcrm.plugin.types import DomainEvent


def _refunded_fen(payload: dict[str, Any]) -> int:
    value = payload.get("refunded_fen")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _occurred_at(event: DomainEvent) -> datetime:
    changed = event.payload.get("changed_at")
    if isinstance(changed, str):
        try:
            at = datetime.fromisoformat(changed)
        except ValueError:
            return event.occurred_at
        if at.tzinfo is not None and at < event.occurred_at:
            return at
    return event.occurred_at


@hookimpl
def order_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    payload = dict(event.payload)
    order_id = payload.get("order_id")
    status = payload.get("status")
    if order_id is None or payload.get("member_id") is None:
        return
    moved = status != payload.get("previous")
    refunded = _refunded_fen(payload)
    occurred_at = _occurred_at(event).isoformat()
    for flow in FLOWS.values():
        job = {"flow": flow.name, "order_id": int(order_id), "occurred_at": occurred_at}
        if flow.on_refund:
            if refunded or (moved and status in flow.trigger):
                occasion = refund_occasion(refunded)
                enqueue(
                    "messaging.care",
                    {**job, "occasion": occasion},
                    unique_key=f"care:{flow.name}:{order_id}:{occasion}",
                )
        elif moved and status in flow.trigger:
            enqueue("messaging.care", job, unique_key=f"care:{flow.name}:{order_id}")
