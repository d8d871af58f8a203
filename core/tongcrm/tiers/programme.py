"""The programme settings every order needs: the active earning rule set and the tier ladder in force, read in
one statement and handed to the points and tier services' transaction caches.

A page of a sync and a till's receipt each need both; read apart they are two round trips per transaction,
which on a page of a few hundred orders is a tenth of its statements. The rule set belongs to the points
service and the ladder to this package: the points service never imports tiers, so the joint read lives here.
"""

from __future__ import annotations

import json
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db import direct
from tongcrm.points import service as points
from tongcrm.points.models import PointsRuleSet
from tongcrm.tiers import service as tiers
from tongcrm.tiers.models import TierLadder


def _settings_statement() -> Any:
    """The active rule set and the newest tier ladder, in one row (each None when there is none)."""
    rules = cast(sa.Table, PointsRuleSet.__table__)
    ladders = cast(sa.Table, TierLadder.__table__)
    active = rules.c.status == "active"
    newest = sa.select(sa.func.max(ladders.c.version)).scalar_subquery()
    return sa.select(
        sa.select(rules.c.version).where(active).scalar_subquery().label("rules_version"),
        sa.select(rules.c.document).where(active).scalar_subquery().label("rules_document"),
        sa.select(ladders.c.version)
        .where(ladders.c.version == newest)
        .scalar_subquery()
        .label("ladder_version"),
        sa.select(ladders.c.definition)
        .where(ladders.c.version == newest)
        .scalar_subquery()
        .label("ladder_definition"),
    )


#: One row: ``rules_version``, ``rules_document``, ``ladder_version``, ``ladder_definition``. A caller may
#: join it to a read of its own (a till's first order) and hand the row to :func:`hold`.
SETTINGS = _settings_statement()


def held(session: AsyncSession) -> bool:
    """Whether the transaction holds the active rule set and ladder already (:mod:`tongcrm.db.txcache`), where
    :func:`tongcrm.points.service.active_rules` and :func:`tongcrm.tiers.service.active_ladder` find them."""
    return points.holds_active_rules(session) and tiers.holds_active_ladder(session)


def hold(session: AsyncSession, row: Any) -> None:
    """Hand the points and tier services what a row of :data:`SETTINGS` holds, where the transaction holds
    nothing yet."""
    if not points.holds_active_rules(session):
        points.hold_active_rules(session, row.rules_version, _json(row.rules_document))
    if not tiers.holds_active_ladder(session):
        tiers.hold_active_ladder(session, row.ladder_version, _json(row.ladder_definition))


async def read(session: AsyncSession) -> None:
    """Read the rule set and ladder in one statement, unless the transaction holds them already."""
    if not held(session):
        row = await direct.first(session, SETTINGS, {})
        assert row is not None  # one row of scalar subqueries
        hold(session, row)


def _json(value: Any) -> Any:
    """A JSON column read through a scalar subquery: SQLite hands back its text."""
    return json.loads(value) if isinstance(value, str | bytes) else value
