"""Tag rules run hourly (members enter and leave segments as orders, points and time move on), and at once when a
rule is created."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.tagrules import service

log = get_logger(__name__)


@registry.job("tags.rules")
async def run_rules(ctx: JobContext, payload: dict[str, Any]) -> None:
    rule_id = payload.get("rule_id")
    for done in await service.run_all(ctx.sessions, ctx.host, ctx.clock(), rule_id=rule_id):
        if done.added or done.removed:
            log.info(
                "tag rule applied", rule_id=done.rule_id, tag=done.tag, added=done.added, removed=done.removed
            )


registry.every("tags.rules", timedelta(hours=1), "tags.rules")
