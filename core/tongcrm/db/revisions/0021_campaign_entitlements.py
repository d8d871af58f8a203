"""Campaign and journey entitlement benefits: the benefit on the campaign, the grants made by each run and by each
journey participant's action

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("benefit_entitlement", tongcrm.db.base.JSONType, nullable=True))
    with op.batch_alter_table("campaign_runs") as batch:
        batch.add_column(
            sa.Column("entitlements_granted", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("journey_participants") as batch:
        batch.add_column(sa.Column("entitlements_granted", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("journey_participants") as batch:
        batch.drop_column("entitlements_granted")
    with op.batch_alter_table("campaign_runs") as batch:
        batch.drop_column("entitlements_granted")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("benefit_entitlement")
