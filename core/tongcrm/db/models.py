"""Importing every core model module registers its tables on the shared ``metadata``.

Migrations and ``db check`` need the whole schema; plugins import their own models from their plugin module.
"""

from __future__ import annotations

import importlib

CORE_MODEL_MODULES: tuple[str, ...] = (
    "tongcrm.auth.models",
    "tongcrm.jobs.models",
    "tongcrm.members.models",
    "tongcrm.channels.models",
    "tongcrm.bulk.models",
    "tongcrm.orders.models",
    "tongcrm.points.models",
    "tongcrm.identity.models",
    "tongcrm.consent.models",
    "tongcrm.audit.models",
    "tongcrm.tiers.models",
    "tongcrm.entitlements.models",
    "tongcrm.messaging.models",
    "tongcrm.programme.models",
    "tongcrm.replay.models",
    "tongcrm.segments.models",
    "tongcrm.lifecycle.models",
    "tongcrm.campaigns.models",
    "tongcrm.rfm.models",
    "tongcrm.referrals.models",
    "tongcrm.members.tag_history",
    "tongcrm.tagrules.models",
    "tongcrm.console.models",
    "tongcrm.limits.models",
)


def import_models() -> None:
    for name in CORE_MODEL_MODULES:
        importlib.import_module(name)
