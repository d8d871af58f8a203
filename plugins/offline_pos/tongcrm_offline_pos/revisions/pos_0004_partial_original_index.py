"""``ix_pos_receipts_account_original`` becomes partial (``WHERE original_key IS NOT NULL``)

Revision ID: pos_0004
Revises: pos_0003
Create Date: 2026-12-07 14:00:00

Only a return names the sale it returns goods from; every sale put a NULL ``original_key`` into the index, B-tree
work on each receipt that no lookup by ``original_key = value`` could use (issue #22, branch tillcpu14).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pos_0004"
down_revision: str | Sequence[str] | None = "pos_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_pos_receipts_account_original"
_COLUMNS = ["account_id", "original_key"]


def upgrade() -> None:
    op.drop_index(_NAME, table_name="pos_receipts")
    where = sa.text("original_key IS NOT NULL")
    op.create_index(_NAME, "pos_receipts", _COLUMNS, unique=False, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index(_NAME, table_name="pos_receipts")
    op.create_index(_NAME, "pos_receipts", _COLUMNS, unique=False)
