"""Index referral_rewards.order_id: every ingest page asks whether an awarded reward hangs on its orders

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 07:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | Sequence[str] | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_referral_rewards_order_id", "referral_rewards", ["order_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_referral_rewards_order_id", table_name="referral_rewards")
