"""Broker mode: when the scheduler last published a job or an event delivery to the broker

Revision ID: 0020
Revises: 0014
Create Date: 2026-12-06 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # expand-only: nullable columns the in-process runner ignores, so workers of the previous release keep running
    op.add_column("jobs", sa.Column("published_at", tongcrm.db.base.UTCDateTime(), nullable=True))
    op.add_column("event_deliveries", sa.Column("published_at", tongcrm.db.base.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("event_deliveries") as batch:
        batch.drop_column("published_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("published_at")
