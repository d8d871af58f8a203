"""Bulk import: a checkpoint per imported file, the natural keys of imported rows, and the rows that failed

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bulk_imports",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("file_name", sa.String(length=300), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("line_reached", sa.BigInteger(), nullable=False),
        sa.Column("lines_total", sa.BigInteger(), nullable=False),
        sa.Column("imported", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("account_id", tongcrm.db.base.BigId, nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("finished_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_imports")),
        sa.UniqueConstraint("kind", "digest", name=op.f("uq_bulk_imports_kind_digest")),
    )
    op.create_table(
        "bulk_import_keys",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("import_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["bulk_imports.id"],
            name=op.f("fk_bulk_import_keys_import_id_bulk_imports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("kind", "key", name=op.f("pk_bulk_import_keys")),
    )
    with op.batch_alter_table("bulk_import_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bulk_import_keys_import_id"), ["import_id"], unique=False)
    op.create_table(
        "bulk_import_errors",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("import_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("row", sa.Text(), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["bulk_imports.id"],
            name=op.f("fk_bulk_import_errors_import_id_bulk_imports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_import_errors")),
        sa.UniqueConstraint("import_id", "line", name=op.f("uq_bulk_import_errors_import_id_line")),
    )


def downgrade() -> None:
    op.drop_table("bulk_import_errors")
    with op.batch_alter_table("bulk_import_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bulk_import_keys_import_id"))
    op.drop_table("bulk_import_keys")
    op.drop_table("bulk_imports")
