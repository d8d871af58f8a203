"""Shared pieces of the campaign tests: a campaign body, a one-tag segment, tagging members."""

from __future__ import annotations

from typing import Any

from messaging_kit import World
from tongcrm.members.models import MemberTag


def segment_of(tag_name: str) -> dict[str, Any]:
    return {"version": 1, "condition": {"field": "tags", "op": "has", "value": tag_name}}


async def tag(w: World, members: list[int], name: str = "vip") -> None:
    async with w.sessions() as session, session.begin():
        session.add_all(MemberTag(member_id=m, tag=name) for m in members)


CAMPAIGN: dict[str, Any] = {
    "name": "spring",
    "goal": "bring VIPs back before the season",
    "segment": "vip",
    "template": "promo",
    "control_percent": 25,
    "control_seed": "2026",
    "response": {"kind": "order", "within_days": 7, "min_paid_fen": 5000},
    "message_cost_fen": 5,
}


async def vip_world(
    db: Any, clock: Any, n: int, *, segment: bool = True, endpoint: str = "http://127.0.0.1:9"
) -> tuple[World, list[int]]:
    """A world on the test database (SMS account, templates, a shop), ``n`` consenting members and, unless told
    otherwise, the saved segment ``vip`` (members tagged ``vip``). The SMS account sends to ``endpoint`` (by
    default nowhere: messages are only queued)."""
    from messaging_kit import SECRET_KEY, sms_host
    from tongcrm.audit.service import SYSTEM
    from tongcrm.config import Settings
    from tongcrm.segments import service as segments

    w = World(db.sessions, Settings(database_url=db.url, secret_key=SECRET_KEY).vault(), sms_host(), clock)
    await w.setup(endpoint)
    members = [await w.member(i) for i in range(n)]
    if segment:
        async with w.sessions() as session, session.begin():
            context = await segments.load_context(session, w.host, clock())
            await segments.save(session, context, "vip", segment_of("vip"), SYSTEM)
    return w, members


async def granted(w: World, key_prefix: str) -> dict[int, int]:
    """Points granted per member by ledger entries whose key starts with ``grant:<key_prefix>``."""
    import sqlalchemy as sa
    from tongcrm.points.models import PointsEntry

    async with w.sessions() as session:
        rows = await session.execute(
            sa.select(PointsEntry.member_id, sa.func.sum(PointsEntry.amount))
            .where(PointsEntry.idempotency_key.like(f"grant:{key_prefix}%"))
            .group_by(PointsEntry.member_id)
        )
        return {int(m): int(p) for m, p in rows.all()}


async def run_due_twice(w: World, name: str, tz: Any) -> list[Any]:
    """Move the clock to the campaign's next run and start it, twice; returns the campaign's runs."""
    from tongcrm.campaigns import service

    for _ in range(2):
        async with w.sessions() as session:
            due = (await service.get(session, name)).next_run_at
        assert due is not None
        w.clock.now = due
        await service.run_due(w.sessions, w.host, now=w.clock(), tz=tz)
    async with w.sessions() as session:
        return await service.runs(session, (await service.get(session, name)).id)
