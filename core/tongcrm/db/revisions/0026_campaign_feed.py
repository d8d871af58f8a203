"""Campaign messages written page by page as they are sent (the run's feed cursor), entitlement budgets for
campaigns and journeys, a journey's start moment for its day scans, and no per-row member or run check on a
frozen audience

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-06 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0026"
down_revision: str | Sequence[str] | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("budget_entitlements", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("campaign_runs") as batch:
        batch.add_column(sa.Column("enqueued", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("enqueued_through", sa.BigInteger(), server_default="0", nullable=False))
    # runs started before this revision wrote every message up front: their feed is done
    op.execute("UPDATE campaign_runs SET enqueued = audience, enqueued_through = 9223372036854775807")
    with op.batch_alter_table("campaign_audience") as batch:
        batch.drop_constraint("fk_campaign_audience_member_id_members", type_="foreignkey")
        batch.drop_constraint("fk_campaign_audience_run_id_campaign_runs", type_="foreignkey")
    with op.batch_alter_table("journeys") as batch:
        batch.add_column(sa.Column("budget_entitlements", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("active_since", tongcrm.db.base.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("journeys") as batch:
        batch.drop_column("active_since")
        batch.drop_column("budget_entitlements")
    with op.batch_alter_table("campaign_audience") as batch:
        batch.create_foreign_key("fk_campaign_audience_member_id_members", "members", ["member_id"], ["id"])
        batch.create_foreign_key(
            "fk_campaign_audience_run_id_campaign_runs",
            "campaign_runs",
            ["run_id"],
            ["id"],
            ondelete="CASCADE",
        )
    with op.batch_alter_table("campaign_runs") as batch:
        batch.drop_column("enqueued_through")
        batch.drop_column("enqueued")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("budget_entitlements")
