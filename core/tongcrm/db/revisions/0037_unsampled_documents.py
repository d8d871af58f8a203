"""JSON documents no statement filters on are left out of ANALYZE on PostgreSQL (statistics target 0):
``orders.shipments``, ``points_entries.detail``, ``members.profile_meta`` (issue #22, branch ingestpg12).

Sorting a sample of their JSONB values was ~40 % of the analyses a first sync runs as its tables grow, and no
plan reads those statistics. SQLite's ANALYZE samples indexes only: nothing to do there. The statistics already
gathered stay until the next ANALYZE, which drops them; the downgrade puts the columns back on the default.

Revision ID: 0037
Revises: 0036
Create Date: 2026-12-07 11:00:00
"""

from collections.abc import Sequence

from alembic import op
from tongcrm.db.base import set_statistics_sql

revision: str = "0037"
down_revision: str | Sequence[str] | None = "0036"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Fixed here, not read from the models: a revision builds the schema of its own time.
_COLUMNS = (("orders", "shipments"), ("points_entries", "detail"), ("members", "profile_meta"))


def _set(target: int) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.execute(set_statistics_sql(table, column, target))


def upgrade() -> None:
    _set(0)


def downgrade() -> None:
    _set(-1)
