"""Windowed backfills: a long sync cut into windows that many workers take at once

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-06 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0027"
down_revision: str | Sequence[str] | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # expand-only: two new tables; workers of the previous release never read them
    op.create_table(
        "backfills",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("account_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("since", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("until", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("through", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("finished_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["channel_accounts.id"],
            name=op.f("fk_backfills_account_id_channel_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfills")),
    )
    op.create_table(
        "backfill_windows",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("backfill_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("start", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("end", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worked_by", sa.String(length=100), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["backfill_id"],
            ["backfills.id"],
            name=op.f("fk_backfill_windows_backfill_id_backfills"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfill_windows")),
        sa.UniqueConstraint("backfill_id", "seq", name=op.f("uq_backfill_windows_backfill_id_seq")),
    )


def downgrade() -> None:
    op.drop_table("backfill_windows")
    op.drop_table("backfills")
