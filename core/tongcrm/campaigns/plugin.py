"""Core's built-in hooks for journeys: the events a journey may trigger on only enqueue ``journeys.enter``, one
job per event (unique key ``journey-enter:<event id>``), so a redelivered event enters nobody twice. Which
journeys match, and whether an order is a member's first, is the job's business (it reads the database)."""

from __future__ import annotations

from tongcrm.plugin import hookimpl
from tongcrm.plugin.hookspecs import Enqueue
from tongcrm.plugin.types import DomainEvent

#: Order statuses that make an order count (as the campaign responses do).
_PAID = frozenset({"paid", "shipped", "delivered", "completed"})


def _enqueue(event: DomainEvent, enqueue: Enqueue) -> None:
    if event.payload.get("member_id") is None:
        return
    enqueue(
        "journeys.enter",
        {"event": event.name, "event_id": event.id, "payload": dict(event.payload)},
        unique_key=f"journey-enter:{event.id}",
    )


@hookimpl
def lifecycle_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    _enqueue(event, enqueue)


@hookimpl
def tier_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    _enqueue(event, enqueue)


@hookimpl
def order_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    # only the step into a paid status can make a first order; the rest of an order's life is not news here
    status, previous = event.payload.get("status"), event.payload.get("previous")
    if status in _PAID and previous not in _PAID:
        _enqueue(event, enqueue)
