"""The member activity summary per channel (``member_channel_activity``), so "N orders on a channel lately" is a
probe of one row instead of a read of the member's orders; ``ix_member_activity_reach`` with ``last2_at`` before
``orders`` (issue #19). The new table is empty after the upgrade: the summary's state row is removed so the next
refresh rebuilds both tables whole (until then segments read the orders).

Revision ID: 0031
Revises: 0027
Create Date: 2026-12-06 10:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from tongcrm.db.base import UTCDateTime

revision: str = "0031"
down_revision: str | Sequence[str] | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REACH = [
    "tier_code",
    "marketing",
    "store_orders",
    "override_code",
    "orders",
    "last_at",
    "last2_at",
    "member_id",
]
_REACH_NOW = [
    "tier_code",
    "marketing",
    "store_orders",
    "override_code",
    "last2_at",
    "orders",
    "last_at",
    "member_id",
]


def upgrade() -> None:
    op.create_table(
        "member_channel_activity",
        sa.Column("member_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("spend", sa.BigInteger(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.Column("last2_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_member_channel_activity_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", "channel", name=op.f("pk_member_channel_activity")),
        sqlite_with_rowid=False,
    )
    op.drop_index("ix_member_activity_reach", table_name="member_activity")
    op.create_index("ix_member_activity_reach", "member_activity", _REACH_NOW, unique=False)
    op.execute("DELETE FROM member_activity_state")


def downgrade() -> None:
    op.drop_index("ix_member_activity_reach", table_name="member_activity")
    op.create_index("ix_member_activity_reach", "member_activity", _REACH, unique=False)
    op.drop_table("member_channel_activity")
