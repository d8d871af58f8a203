"""The orders of a time window and the members of a tier are read from indexes alone (segment counts)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | Sequence[str] | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The keyset of the order list followed by the columns a windowed segment condition reads.
_PLACED_ACTIVITY = [
    "placed_at",
    "id",
    "member_id",
    "channel",
    "status",
    "store_code",
    "paid_fen",
    "refunded_fen",
    "paid_at",
]


def upgrade() -> None:
    op.create_index("ix_orders_placed_activity", "orders", _PLACED_ACTIVITY, unique=False)
    # its first two columns are the order list's keyset, which the wider index serves on its own
    op.drop_index("ix_orders_placed_at_id", table_name="orders")
    op.create_index("ix_member_tiers_tier_code", "member_tiers", ["tier_code", "member_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_member_tiers_tier_code", table_name="member_tiers")
    op.create_index("ix_orders_placed_at_id", "orders", ["placed_at", "id"], unique=False)
    op.drop_index("ix_orders_placed_activity", table_name="orders")
