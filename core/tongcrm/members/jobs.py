"""The masked-mobile index of members stored before it existed (revision 0024), filled in the background.

``tongcrm member index-masked`` does the same at once; this job makes an upgraded installation find its members
by masked mobile without that step, a share at a time so a run stays short whatever the size of the base."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tongcrm.config import Settings
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.members import masked

log = get_logger(__name__)

#: Members one run indexes at most (about ten seconds' work at the measured 6,500–9,400 members/s).
PER_RUN = 50_000


@registry.job("members.index_masked")
async def index_masked(ctx: JobContext, payload: dict[str, Any]) -> None:
    settings = ctx.services.get("settings")
    if not isinstance(settings, Settings):  # a runner without settings has no key to index with
        return
    report = await masked.index_masked_mobiles(ctx.sessions, settings.vault(), limit=PER_RUN)
    if report.indexed or report.identities or report.cleared or report.unreadable:
        log.info(
            "masked mobile index filled in",
            indexed=report.indexed,
            identities=report.identities,
            cleared=report.cleared,
            unreadable=report.unreadable,
        )


registry.every("members.index_masked", timedelta(minutes=10), "members.index_masked")
