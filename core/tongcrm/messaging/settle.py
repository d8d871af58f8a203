"""Settling in-doubt messages: the operator's word on a send nobody could confirm.

A message is ``in_doubt`` when its request may have reached the gateway and no answer came (a read timeout;
for a multi-recipient Aliyun ``SendBatchSms`` every message of the batch). The dispatcher never sends it again,
since that could message the member twice, and only a delivery report matched to it settled it. A report may
never come (the gateway never took the request, or the account has no receipt channel), so the message stayed
in doubt for good. The operator, having checked the gateway's console or the member, says what happened:

* ``sent``: it did go out (it stays open to a delivery report, as any sent message);
* ``failed``: it did not go out, and is not sent again;
* ``resend``: it did not go out and should: queued again at once, through the contact policy like any send.
  Because a message in doubt may in fact have been delivered, a resend must be confirmed explicitly
  (``resend_confirmed``): without it the request is refused and nothing changes.

Every settled message is audited (``message.settle``, with the operator's note) and a sent or failed one emits its
``message_status`` event. The messages of one request are settled together or not at all: one that is no longer
in doubt (a delivery report settled it meanwhile) refuses the request, naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.errors import Conflict, NotFound, Unprocessable, listed
from tongcrm.messaging.jobs import request_dispatch
from tongcrm.messaging.models import Message
from tongcrm.messaging.service import emit_status

#: What an operator may say of an in-doubt message.
OUTCOMES = ("sent", "failed", "resend")
#: Most messages one request settles (a batch request to the gateway holds at most 1,000 numbers).
MAX_SETTLE = 1000
#: The longest note kept with a settlement.
MAX_NOTE = 500
#: The ``reason`` a settled message carries.
SETTLED_REASON = "settled_by_operator"


async def settle_in_doubt(
    session: AsyncSession,
    actor: Actor,
    message_ids: Sequence[int],
    outcome: str,
    *,
    note: str,
    resend_confirmed: bool = False,
    now: datetime,
) -> list[Message]:
    """Settle the in-doubt messages ``message_ids`` as ``outcome`` (:data:`OUTCOMES`) in the caller's
    transaction; the messages, in id order. Refused, changing nothing: an unknown outcome, no note, a resend
    not confirmed (422); an unknown message (404); one not in doubt (409)."""
    ids = sorted(set(message_ids))
    if outcome not in OUTCOMES:
        raise Unprocessable(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if not ids or len(ids) > MAX_SETTLE:
        raise Unprocessable(f"settle 1 to {MAX_SETTLE} messages at a time, not {len(ids)}")
    note = note.strip()
    if not note or len(note) > MAX_NOTE:
        raise Unprocessable(f"a note (1 to {MAX_NOTE} characters) must say how the outcome was established")
    if outcome == "resend" and not resend_confirmed:
        raise Unprocessable(
            "a message in doubt may have been delivered: resending it may message the member twice. "
            "Confirm with resend_confirmed (--resend-confirmed) if that is accepted",
            extra={"reason": "resend_not_confirmed"},
        )
    found = list(
        (
            await session.execute(
                sa.select(Message).where(Message.id.in_(ids)).order_by(Message.id).with_for_update()
            )
        ).scalars()
    )
    missing = sorted(set(ids) - {m.id for m in found})
    if missing:
        raise NotFound(f"no message {listed([str(i) for i in missing])}")
    settled = [m for m in found if m.status != "in_doubt"]
    if settled:
        raise Conflict(
            "only messages in doubt are settled; "
            + listed([f"{m.id} is {m.status}" for m in settled])
            + " (a delivery report may have settled it): nothing changed",
            extra={"not_in_doubt": [m.id for m in settled[:MAX_SETTLE]]},
        )
    events: list[tuple[int, int, str, str]] = []
    for message in found:
        before = {"status": message.status, "code": message.code, "reason": message.reason}
        if outcome == "resend":
            message.status, message.next_attempt_at = "queued", now
            message.locked_until = message.sent_at = None
        else:
            message.status = outcome
            if outcome == "failed":
                message.finished_at = now
            events.append((message.id, message.member_id, outcome, message.code))
        message.reason = SETTLED_REASON
        message.updated_at = now
        audit.record(
            session,
            actor,
            "message.settle",
            "message",
            message.id,
            before=before,
            after={"status": message.status, "outcome": outcome, "note": note},
            at=now,
        )
    await emit_status(session, events, now)
    if outcome == "resend":
        await request_dispatch(session, now)
    return found
