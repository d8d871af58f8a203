"""webhooks schema: endpoints, secrets, messages, deliveries, attempts

Revision ID: wh_0001
Revises:
Create Date: 2026-12-06 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "wh_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("webhooks",)
depends_on: str | Sequence[str] | None = "0001"


def upgrade() -> None:
    op.create_table(
        "webhooks_endpoints",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("event_types", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks_endpoints")),
    )
    op.create_table(
        "webhooks_messages",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("occurred_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks_messages")),
        sa.UniqueConstraint("event_id", name=op.f("uq_webhooks_messages_event_id")),
    )
    op.create_table(
        "webhooks_secrets",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("endpoint_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhooks_endpoints.id"],
            name=op.f("fk_webhooks_secrets_endpoint_id_webhooks_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks_secrets")),
    )
    op.create_index(
        op.f("ix_webhooks_secrets_endpoint_id"), "webhooks_secrets", ["endpoint_id"], unique=False
    )
    op.create_table(
        "webhooks_deliveries",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("message_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("endpoint_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhooks_endpoints.id"],
            name=op.f("fk_webhooks_deliveries_endpoint_id_webhooks_endpoints"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["webhooks_messages.id"],
            name=op.f("fk_webhooks_deliveries_message_id_webhooks_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks_deliveries")),
        sa.UniqueConstraint(
            "message_id", "endpoint_id", name=op.f("uq_webhooks_deliveries_message_id_endpoint_id")
        ),
    )
    op.create_index(
        "ix_webhooks_deliveries_due", "webhooks_deliveries", ["status", "next_attempt_at"], unique=False
    )
    op.create_index(
        op.f("ix_webhooks_deliveries_endpoint_id"), "webhooks_deliveries", ["endpoint_id"], unique=False
    )
    op.create_table(
        "webhooks_attempts",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("delivery_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("attempted_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhooks_deliveries.id"],
            name=op.f("fk_webhooks_attempts_delivery_id_webhooks_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks_attempts")),
    )
    op.create_index(
        op.f("ix_webhooks_attempts_delivery_id"), "webhooks_attempts", ["delivery_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhooks_attempts_delivery_id"), table_name="webhooks_attempts")
    op.drop_table("webhooks_attempts")
    op.drop_index(op.f("ix_webhooks_deliveries_endpoint_id"), table_name="webhooks_deliveries")
    op.drop_index("ix_webhooks_deliveries_due", table_name="webhooks_deliveries")
    op.drop_table("webhooks_deliveries")
    op.drop_index(op.f("ix_webhooks_secrets_endpoint_id"), table_name="webhooks_secrets")
    op.drop_table("webhooks_secrets")
    op.drop_table("webhooks_messages")
    op.drop_table("webhooks_endpoints")
