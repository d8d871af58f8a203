"""A masked mobile (138****8000) finds a member by any of its mobile identities, not only its profile mobile:
each mobile identity keeps a keyed hash of its masked form, indexed

The column starts empty: the ``members.index_masked`` job (every 10 minutes) or ``tongcrm member index-masked``
fills it from the identities' encrypted numbers after the upgrade, as for revision 0024.

Revision ID: 0033
Revises: 0031
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0033"
down_revision: str | Sequence[str] | None = "0031"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("identities") as batch_op:
        batch_op.add_column(sa.Column("masked_index", sa.String(length=80), nullable=True))
    op.create_index("ix_identities_masked_index", "identities", ["masked_index"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_identities_masked_index", table_name="identities")
    with op.batch_alter_table("identities") as batch_op:
        batch_op.drop_column("masked_index")
