"""Send-log feeders: sources of messages written into the send log page by page as the dispatcher drains it,
rather than all at once when they are decided.

A campaign run to a million members freezes its audience (one narrow row per member) and writes the first page
of its messages; the rest would be a million send-log rows written up front — four foreign-key checks and seven
indexes each — for messages the dispatcher will take hours to send at the gateway's rate. A feeder writes the next
page when the dispatcher is about to claim, and only while little of its flow is still queued, so the send log
holds what is being sent, not the whole backlog (messages held back by quiet hours stay queued, and stop the
feeding until the window opens).

The messaging module knows no feeder: modules register theirs (campaigns do, in :mod:`tongcrm.campaigns.feed`).
Each feeder is called in its own transaction; it must be idempotent per member (its rows carry the send-log key,
so a retried page is skipped by the unique key and never sent twice) and keep its own cursor in that transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.logging import get_logger

log = get_logger(__name__)

#: ``(session, now, room) -> messages written``: write up to about ``room`` more queued messages.
Feeder = Callable[[AsyncSession, datetime, int], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Unwritten:
    """Messages of a flow a feeder has decided but not written yet, and how many of them are held out."""

    messages: int = 0
    held_out: int = 0


#: ``(session, flow) -> Unwritten``: what a feeder still has to write for ``flow`` (a status read counts these as
#: queued, so a flow being fed is not under-reported).
Backlog = Callable[[AsyncSession, str], Awaitable[Unwritten]]

_FEEDERS: dict[str, Feeder] = {}
_BACKLOGS: dict[str, Backlog] = {}


def register(name: str, feeder: Feeder, backlog: Backlog | None = None) -> None:
    """Register (or replace) the feeder called ``name``; the dispatcher calls every one before it claims."""
    _FEEDERS[name] = feeder
    if backlog is not None:
        _BACKLOGS[name] = backlog


async def unwritten(session: AsyncSession, flow: str) -> Unwritten:
    """What every feeder has still to write for ``flow``."""
    messages = held_out = 0
    for backlog in list(_BACKLOGS.values()):
        left = await backlog(session, flow)
        messages, held_out = messages + left.messages, held_out + left.held_out
    return Unwritten(messages, held_out)


async def top_up(sessions: async_sessionmaker[AsyncSession], now: datetime, room: int) -> int:
    """Let every feeder write up to ``room`` messages, each in its own transaction. Returns how many were
    written. A feeder that fails is logged and skipped: the messages already queued still go out."""
    written = 0
    for name, feeder in list(_FEEDERS.items()):
        try:
            async with sessions() as session, session.begin():
                written += await feeder(session, now, room)
        except Exception:  # one broken source must not stop the dispatcher
            log.exception("send-log feeder failed", feeder=name)
    return written
