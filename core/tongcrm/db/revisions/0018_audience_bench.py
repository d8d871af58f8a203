"""Identities record a platform membership binding; orders are found by when they last changed, and a
member's orders are read from one covering index

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: A member's orders by time with the columns segments and RFM read, so those reads are index-only.
_ACTIVITY = [
    "member_id",
    "placed_at",
    "channel",
    "status",
    "store_code",
    "paid_fen",
    "refunded_fen",
    "paid_at",
]


def upgrade() -> None:
    with op.batch_alter_table("identities") as batch:
        batch.add_column(sa.Column("bound_at", tongcrm.db.base.UTCDateTime(), nullable=True))
    op.create_index("ix_orders_updated_at", "orders", ["updated_at"], unique=False)
    op.create_index("ix_orders_member_activity", "orders", _ACTIVITY, unique=False)
    # both begin with member_id, which the covering index serves (foreign key checks, merges) on its own
    op.drop_index("ix_orders_member_placed", table_name="orders")
    op.drop_index("ix_orders_member_id", table_name="orders")


def downgrade() -> None:
    op.create_index("ix_orders_member_id", "orders", ["member_id"], unique=False)
    op.create_index("ix_orders_member_placed", "orders", ["member_id", "placed_at"], unique=False)
    op.drop_index("ix_orders_member_activity", table_name="orders")
    op.drop_index("ix_orders_updated_at", table_name="orders")
    with op.batch_alter_table("identities") as batch:
        batch.drop_column("bound_at")
