"""Broker mode: when a job or delivery was last published; call windows shared by every worker

Revision ID: 0020
Revises: 0018
Create Date: 2026-12-06 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # expand-only: nullable columns the in-process runner ignores, so workers of the previous release keep running
    op.add_column("jobs", sa.Column("published_at", tongcrm.db.base.UTCDateTime(), nullable=True))
    op.add_column("jobs", sa.Column("request_id", sa.String(length=64), nullable=True))
    op.add_column("event_deliveries", sa.Column("published_at", tongcrm.db.base.UTCDateTime(), nullable=True))
    op.create_table(
        "call_grants",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("granted_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_grants")),
    )
    op.create_index("ix_call_grants_key_granted", "call_grants", ["key", "granted_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_call_grants_key_granted", table_name="call_grants")
    op.drop_table("call_grants")
    with op.batch_alter_table("event_deliveries") as batch:
        batch.drop_column("published_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("request_id")
        batch.drop_column("published_at")
