"""orders.referral_awarded: whether an awarded referral reward hangs on the order, so the referral hook of an
ingest page knows from the order upsert's RETURNING whether a refund may have a reward to reverse (issue #22)

Filled from ``referral_rewards`` (status awarded) in the upgrade.

Revision ID: 0036
Revises: 0033
Create Date: 2026-12-06 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0036"
down_revision: str | Sequence[str] | None = "0033"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(
            sa.Column("referral_awarded", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(
        "UPDATE orders SET referral_awarded = true WHERE id IN "
        "(SELECT order_id FROM referral_rewards WHERE status = 'awarded')"
    )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_column("referral_awarded")
