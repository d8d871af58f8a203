"""Saved segments with versions and daily counts; members indexed by referrer for referral counts; lifecycle
policy and stage history

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("name", name=op.f("uq_segments_name")),
    )
    op.create_table(
        "segment_versions",
        sa.Column("segment_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("definition", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("note", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_segment_versions_segment_id_segments")
        ),
        sa.PrimaryKeyConstraint("segment_id", "version", name=op.f("pk_segment_versions")),
    )
    op.create_table(
        "segment_counts",
        sa.Column("segment_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("on", sa.Date(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("members", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_segment_counts_segment_id_segments")
        ),
        sa.PrimaryKeyConstraint("segment_id", "on", name=op.f("pk_segment_counts")),
    )
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.create_index("ix_members_referrer_id", ["referrer_id"], unique=False)
    op.create_table(
        "lifecycle_policies",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("new_days", sa.Integer(), nullable=False),
        sa.Column("dormant_days", sa.Integer(), nullable=False),
        sa.Column("churned_days", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_lifecycle_policies")),
    )
    op.create_table(
        "lifecycle_history",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("member_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("from_stage", sa.String(length=16), nullable=False),
        sa.Column("to_stage", sa.String(length=16), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_lifecycle_history_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifecycle_history")),
    )
    with op.batch_alter_table("lifecycle_history", schema=None) as batch_op:
        batch_op.create_index("ix_lifecycle_history_member_id_id", ["member_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("lifecycle_history")
    op.drop_table("lifecycle_policies")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_index("ix_members_referrer_id")
    op.drop_table("segment_counts")
    op.drop_table("segment_versions")
    op.drop_table("segments")
