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
