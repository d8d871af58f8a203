"""offline_pos schema: tills, receipts, dynamic member code uses

Revision ID: pos_0001
Revises:
Create Date: 2026-11-23 01:37:59.975049
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "pos_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("offline_pos",)
depends_on: str | Sequence[str] | None = "0001"


def upgrade() -> None:
    op.create_table(
        "pos_tills",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("account_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("till_code", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["channel_accounts.id"],
            name=op.f("fk_pos_tills_account_id_channel_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pos_tills")),
        sa.UniqueConstraint("account_id", "till_code", name=op.f("uq_pos_tills_account_id_till_code")),
    )
    op.create_table(
        "pos_code_uses",
        sa.Column("member_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("account_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("till_code", sa.String(length=32), nullable=False),
        sa.Column("used_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["channel_accounts.id"],
            name=op.f("fk_pos_code_uses_account_id_channel_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_pos_code_uses_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", "step", name=op.f("pk_pos_code_uses")),
    )
    op.create_table(
        "pos_receipts",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("account_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("till_code", sa.String(length=32), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("receipt_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("offline", sa.Boolean(), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("till_time", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("sent_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("received_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("effective_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("clock_skew_seconds", sa.Integer(), nullable=True),
        sa.Column("member_id", tongcrm.db.base.BigId, nullable=True),
        sa.Column("order_id", tongcrm.db.base.BigId, nullable=True),
        sa.Column("original_key", sa.String(length=64), nullable=True),
        sa.Column("refunds", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("returns_applied", sa.Integer(), nullable=False),
        sa.Column("body", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("result", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("updated_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["channel_accounts.id"],
            name=op.f("fk_pos_receipts_account_id_channel_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_pos_receipts_member_id_members")
        ),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_pos_receipts_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pos_receipts")),
        sa.UniqueConstraint(
            "account_id",
            "till_code",
            "business_day",
            "sequence",
            name=op.f("uq_pos_receipts_account_id_till_code_business_day_sequence"),
        ),
    )
    with op.batch_alter_table("pos_receipts", schema=None) as batch_op:
        batch_op.create_index("ix_pos_receipts_account_key", ["account_id", "receipt_key"], unique=False)
        batch_op.create_index(
            "ix_pos_receipts_account_original", ["account_id", "original_key"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_pos_receipts_member_id"), ["member_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pos_receipts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pos_receipts_member_id"))
        batch_op.drop_index("ix_pos_receipts_account_original")
        batch_op.drop_index("ix_pos_receipts_account_key")
    op.drop_table("pos_receipts")
    op.drop_table("pos_code_uses")
    op.drop_table("pos_tills")
