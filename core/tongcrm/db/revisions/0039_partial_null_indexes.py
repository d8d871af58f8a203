"""Indexes on columns a sale leaves NULL become partial (``WHERE col IS NOT NULL``): ``points_entries.ref_entry_id``,
``members.merged_into_id`` and ``members.referrer_id`` (issue #22, branch tillcpu14).

Every earn entry names no other entry, and every new member (a till's new buyer) is neither merged nor referred,
yet each of those rows put a NULL key into the index: B-tree work on every sale that no lookup could use (they
look up by ``= value`` or ``IN (...)``, which imply ``IS NOT NULL``, so both databases keep using the index).

Revision ID: 0039
Revises: 0038
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0039"
down_revision: str | Sequence[str] | None = "0038"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_points_entries_ref_entry_id", "points_entries", "ref_entry_id"),
    ("ix_members_merged_into_id", "members", "merged_into_id"),
    ("ix_members_referrer_id", "members", "referrer_id"),
)


def upgrade() -> None:
    for name, table, column in _INDEXES:
        op.drop_index(name, table_name=table)
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, table, [column], unique=False, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, table, column in _INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column], unique=False)
