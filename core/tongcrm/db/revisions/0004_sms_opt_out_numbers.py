"""SMS opt-outs keep their number encrypted, so a key rotation can re-index them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 08:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for opt-outs recorded before: those move with a member's mobile identity when one has the number
    with op.batch_alter_table("sms_opt_outs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mobile_enc", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sms_opt_outs", schema=None) as batch_op:
        batch_op.drop_column("mobile_enc")
