"""webhooks: endpoints remember since when they fail (auto-disable) and messages are swept by age (retention)

Revision ID: wh_0002
Revises: wh_0001
Create Date: 2026-12-06 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "wh_0002"
down_revision: str | Sequence[str] | None = "wh_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks_endpoints") as batch:
        batch.add_column(sa.Column("failing_since", tongcrm.db.base.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("disabled_reason", sa.String(length=200), nullable=True))
    op.create_index(op.f("ix_webhooks_messages_created_at"), "webhooks_messages", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_webhooks_messages_created_at"), table_name="webhooks_messages")
    with op.batch_alter_table("webhooks_endpoints") as batch:
        batch.drop_column("disabled_reason")
        batch.drop_column("failing_since")
