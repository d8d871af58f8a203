"""The process-wide job registry. Domain modules register their job handlers and periodic schedules on import;
:data:`JOB_MODULES` lists the modules a runner imports so every handler is known before the first claim."""

from __future__ import annotations

import importlib

from tongcrm.jobs.runner import JobRegistry

registry = JobRegistry()

JOB_MODULES: tuple[str, ...] = (
    "tongcrm.ingest.jobs",
    "tongcrm.points.jobs",
    "tongcrm.tiers.jobs",
    "tongcrm.entitlements.jobs",
    "tongcrm.messaging.jobs",
    "tongcrm.segments.jobs",
    "tongcrm.lifecycle.jobs",
    "tongcrm.campaigns.jobs",
    "tongcrm.rfm.jobs",
    "tongcrm.tagrules.jobs",
    "tongcrm.members.jobs",
    "tongcrm.jobs.prune",
)


def load_job_modules() -> JobRegistry:
    for name in JOB_MODULES:
        importlib.import_module(name)
    return registry
