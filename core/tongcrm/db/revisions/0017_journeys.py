"""Campaign benefits (points per treated member, a points budget) and journeys with their participants

Revision ID: 0017
Revises: 0015
Create Date: 2026-12-06 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("benefit_points", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("budget_points", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("campaign_runs") as batch:
        batch.add_column(sa.Column("points_granted", sa.BigInteger(), server_default="0", nullable=False))
    op.create_table(
        "journeys",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("goal", sa.String(length=500), nullable=False),
        sa.Column("trigger", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("steps", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("control_bp", sa.Integer(), nullable=False),
        sa.Column("control_seed", sa.String(length=64), nullable=False),
        sa.Column("response", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("budget_messages", sa.BigInteger(), nullable=True),
        sa.Column("budget_points", sa.BigInteger(), nullable=True),
        sa.Column("message_cost_fen", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scanned_on", sa.Date(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journeys")),
        sa.UniqueConstraint("name", name=op.f("uq_journeys_name")),
    )
    op.create_table(
        "journey_participants",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("journey_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("member_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("occurrence", sa.String(length=100), nullable=False),
        sa.Column("grp", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("entered_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("due_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("acted_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("respond_until", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("branch", sa.String(length=8), nullable=True),
        sa.Column("messaged", sa.Boolean(), nullable=False),
        sa.Column("points_granted", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["journey_id"], ["journeys.id"], name=op.f("fk_journey_participants_journey_id_journeys")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_journey_participants_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_participants")),
        sa.UniqueConstraint(
            "journey_id",
            "member_id",
            "occurrence",
            name=op.f("uq_journey_participants_journey_id_member_id_occurrence"),
        ),
    )
    op.create_index(
        "ix_journey_participants_state_due", "journey_participants", ["state", "due_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_journey_participants_state_due", table_name="journey_participants")
    op.drop_table("journey_participants")
    op.drop_table("journeys")
    with op.batch_alter_table("campaign_runs") as batch:
        batch.drop_column("points_granted")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("budget_points")
        batch.drop_column("benefit_points")
