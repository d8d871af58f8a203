"""Core's built-in hook implementation for messaging: care flows triggered by ``order_changed``.

It only enqueues: one ``messaging.care`` job per (flow, order), keyed ``care:<flow>:<order>``, so a replayed or
reordered event schedules nothing twice. Delays, conditions and configuration are the job's business.
"""

from __future__ import annotations

from tongcrm.messaging.flows import FLOWS
from tongcrm.plugin import hookimpl
from tongcrm.plugin.hookspecs import Enqueue
from tongcrm.plugin.types import DomainEvent


@hookimpl
def order_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    payload = event.payload
    order_id = payload.get("order_id")
    status = payload.get("status")
    if order_id is None or payload.get("member_id") is None or status == payload.get("previous"):
        return
    for flow in FLOWS.values():
        if status in flow.trigger:
            enqueue(
                "messaging.care",
                {"flow": flow.name, "order_id": int(order_id), "occurred_at": event.occurred_at.isoformat()},
                unique_key=f"care:{flow.name}:{order_id}",
            )
