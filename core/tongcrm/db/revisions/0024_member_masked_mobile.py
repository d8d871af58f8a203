"""Members can be found by a platform's masked mobile (138****8000): a keyed hash of the masked form, indexed

The column starts empty: ``tongcrm member index-masked`` (batched, resumable) fills it from the encrypted
mobiles after the upgrade; until then a masked search finds only members written since.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | Sequence[str] | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch_op:
        batch_op.add_column(sa.Column("mobile_masked_index", sa.String(length=80), nullable=True))
    op.create_index("ix_members_mobile_masked_index", "members", ["mobile_masked_index"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_members_mobile_masked_index", table_name="members")
    with op.batch_alter_table("members") as batch_op:
        batch_op.drop_column("mobile_masked_index")
