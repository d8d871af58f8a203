"""Four indexes of columns most rows leave NULL hold only the rows where the column is set (partial indexes,
``WHERE … IS NOT NULL``, both databases): ``members.merged_into_id``, ``members.mobile_masked_index``,
``identities.masked_index`` and ``points_entries.ref_entry_id`` (issue #22, branch ingestpg14).

Every read through them compares the column with given values (``=``, ``IN``, ``= ANY``), which a NULL never
passes, so both planners still use them; a member, identity or earn entry written with NULL there no longer
maintains an entry of them.

On PostgreSQL, ``points_balances`` (fillfactor 50) and ``identities`` (80) leave room on each page so that the
updates a sync makes of their rows (a balance on every posting, ``last_seen_at`` of a claim seen again; no index
holds either) can be HOT: the new row version on the same page, no new index entries. It applies to the pages
written from now on. The downgrade puts back the full indexes and the default fillfactor.

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

#: Fixed here, not read from the models: a revision builds the schema of its own time.
_INDEXES = (
    ("members", "merged_into_id"),
    ("members", "mobile_masked_index"),
    ("identities", "masked_index"),
    ("points_entries", "ref_entry_id"),
)


#: (table, fillfactor) on PostgreSQL
_FILLFACTORS = (("points_balances", 50), ("identities", 80))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, fillfactor in _FILLFACTORS:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {fillfactor})")
    for table, column in _INDEXES:
        name = f"ix_{table}_{column}"
        where = sa.text(f"{column} IS NOT NULL")
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, _ in _FILLFACTORS:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    for table, column in _INDEXES:
        name = f"ix_{table}_{column}"
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column])
