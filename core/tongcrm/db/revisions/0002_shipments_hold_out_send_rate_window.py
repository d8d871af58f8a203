"""Shipments on orders, campaign hold-out, the shared send-rate window

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 03:24:03.471305
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "messenger_send_grants",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("account_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("granted_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("permits", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["messenger_accounts.id"],
            name=op.f("fk_messenger_send_grants_account_id_messenger_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messenger_send_grants")),
    )
    with op.batch_alter_table("messenger_send_grants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messenger_send_grants_account_granted", ["account_id", "granted_at"], unique=False
        )

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_out", sa.Boolean(), server_default=sa.false(), nullable=False))

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("shipments", tongcrm.db.base.JSONType, server_default=sa.text("'[]'"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("shipments")

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("held_out")

    with op.batch_alter_table("messenger_send_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_messenger_send_grants_account_granted")

    op.drop_table("messenger_send_grants")
