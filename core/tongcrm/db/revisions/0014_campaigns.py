"""Campaigns, their runs and each run's frozen audience; days marked on the campaign calendar

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
#: The audience references saved segments (0011); the lead relinks down_revision when merging.
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("goal", sa.String(length=500), nullable=False),
        sa.Column("segment_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("template_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("control_bp", sa.Integer(), nullable=False),
        sa.Column("control_seed", sa.String(length=64), nullable=False),
        sa.Column("response", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("budget_messages", sa.BigInteger(), nullable=True),
        sa.Column("message_cost_fen", sa.BigInteger(), nullable=False),
        sa.Column("schedule", tongcrm.db.base.JSONType, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("next_run_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_campaigns_segment_id_segments")
        ),
        sa.ForeignKeyConstraint(
            ["template_id"], ["message_templates.id"], name=op.f("fk_campaigns_template_id_message_templates")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
        sa.UniqueConstraint("name", name=op.f("uq_campaigns_name")),
    )
    op.create_index("ix_campaigns_status_next_run", "campaigns", ["status", "next_run_at"], unique=False)
    op.create_table(
        "campaign_runs",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("campaign_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("scheduled_for", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("started_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("segment_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("audience", sa.BigInteger(), nullable=False),
        sa.Column("control", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_campaign_runs_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_runs")),
        sa.UniqueConstraint(
            "campaign_id", "scheduled_for", name=op.f("uq_campaign_runs_campaign_id_scheduled_for")
        ),
    )
    op.create_table(
        "campaign_audience",
        sa.Column("run_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("member_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("grp", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_campaign_audience_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["campaign_runs.id"],
            name=op.f("fk_campaign_audience_run_id_campaign_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "member_id", name=op.f("pk_campaign_audience")),
    )
    op.create_table(
        "calendar_marks",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("on", sa.Date(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_marks")),
        sa.UniqueConstraint("on", "name", name=op.f("uq_calendar_marks_on_name")),
    )


def downgrade() -> None:
    op.drop_table("calendar_marks")
    op.drop_table("campaign_audience")
    op.drop_table("campaign_runs")
    op.drop_index("ix_campaigns_status_next_run", table_name="campaigns")
    op.drop_table("campaigns")
