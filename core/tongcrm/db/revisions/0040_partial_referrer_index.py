"""``members.referrer_id``'s index becomes partial (``WHERE referrer_id IS NOT NULL``; issue #22, branch tillcpu14).

Every new member (a till's new buyer) is referred by nobody, yet each put a NULL key into the index: B-tree work
on every new buyer that no lookup could use (they look up by ``= value`` or ``IN (...)``, which imply
``IS NOT NULL``, so both databases keep using the index). Revision 0039 (ingestpg14) made the same change for
``points_entries.ref_entry_id`` and ``members.merged_into_id``, which tillcpu14 had found as well.

Revision ID: 0040
Revises: 0039
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0040"
down_revision: str | Sequence[str] | None = "0039"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (("ix_members_referrer_id", "members", "referrer_id"),)


def upgrade() -> None:
    for name, table, column in _INDEXES:
        op.drop_index(name, table_name=table)
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, table, [column], unique=False, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, table, column in _INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column], unique=False)
