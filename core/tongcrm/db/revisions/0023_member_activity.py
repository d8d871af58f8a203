"""The member activity summary that common segment conditions read (issue #19), and the indexes through which
its refresh finds changed tier rows and consent statements

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from tongcrm.db.base import UTCDateTime

revision: str = "0023"
down_revision: str | Sequence[str] | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "member_activity",
        sa.Column("member_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tier_code", sa.String(length=32), nullable=True),
        sa.Column("override_code", sa.String(length=32), nullable=True),
        sa.Column("override_until", UTCDateTime(), nullable=True),
        sa.Column("marketing", sa.String(length=8), nullable=True),
        sa.Column("service", sa.String(length=8), nullable=True),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("spend", sa.BigInteger(), nullable=False),
        sa.Column("first_at", UTCDateTime(), nullable=True),
        sa.Column("last_at", UTCDateTime(), nullable=True),
        sa.Column("last2_at", UTCDateTime(), nullable=True),
        sa.Column("store_orders", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_member_activity_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_member_activity")),
    )
    op.create_table(
        "member_activity_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("refreshed_at", UTCDateTime(), nullable=False),
        sa.Column("orders_seen", UTCDateTime(), nullable=True),
        sa.Column("tiers_seen", UTCDateTime(), nullable=True),
        sa.Column("consent_seen", sa.BigInteger(), nullable=False),
        sa.Column("merges_seen", sa.BigInteger(), nullable=False),
        sa.Column("undone_seen", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_member_activity_state")),
    )
    op.create_index(
        "ix_member_activity_reach",
        "member_activity",
        [
            "tier_code",
            "marketing",
            "store_orders",
            "override_code",
            "orders",
            "last_at",
            "last2_at",
            "member_id",
        ],
        unique=False,
    )
    op.create_index(
        "ix_member_activity_override",
        "member_activity",
        ["override_code"],
        unique=False,
        sqlite_where=sa.text("override_code IS NOT NULL"),
        postgresql_where=sa.text("override_code IS NOT NULL"),
    )
    op.create_index("ix_member_tiers_updated_at", "member_tiers", ["updated_at"], unique=False)
    op.create_index("ix_consent_events_recorded_at", "consent_events", ["recorded_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_consent_events_recorded_at", table_name="consent_events")
    op.drop_index("ix_member_tiers_updated_at", table_name="member_tiers")
    op.drop_table("member_activity_state")
    op.drop_index("ix_member_activity_override", table_name="member_activity")
    op.drop_index("ix_member_activity_reach", table_name="member_activity")
    op.drop_table("member_activity")
