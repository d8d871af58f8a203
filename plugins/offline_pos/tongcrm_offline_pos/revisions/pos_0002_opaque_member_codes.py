"""offline_pos: dynamic member codes are random tokens stored by hash (pos_member_codes replaces pos_code_uses)

The old codes carried the member id in clear; they stop working with this revision (a code lives 60 s at most,
so members only refresh). The old table recorded uses of those codes only and is dropped.

Revision ID: pos_0002
Revises: pos_0001
Create Date: 2026-12-06 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "pos_0002"
down_revision: str | Sequence[str] | None = "pos_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("pos_code_uses")
    op.create_table(
        "pos_member_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("member_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("issued_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("used_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("account_id", tongcrm.db.base.BigId, nullable=True),
        sa.Column("till_code", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["channel_accounts.id"],
            name=op.f("fk_pos_member_codes_account_id_channel_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_pos_member_codes_member_id_members")
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_pos_member_codes")),
    )
    op.create_index(op.f("ix_pos_member_codes_expires_at"), "pos_member_codes", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_pos_member_codes_expires_at"), table_name="pos_member_codes")
    op.drop_table("pos_member_codes")
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
