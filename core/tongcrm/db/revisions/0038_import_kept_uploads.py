"""bulk_imports.upload_path and .mapping: where an upload through the API or the console waits until its import
finished, and the column mapping it was imported with, so that a stopped import resumes from its checkpoint
without the file being uploaded again (issue #22, branch imports13).

Imports made before keep neither (their uploads were deleted when their run ended): they resume, as before, by
uploading the same file again.

Revision ID: 0038
Revises: 0037
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0038"
down_revision: str | Sequence[str] | None = "0037"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bulk_imports") as batch_op:
        batch_op.add_column(sa.Column("upload_path", sa.String(200), nullable=True))
        batch_op.add_column(
            sa.Column("mapping", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("bulk_imports") as batch_op:
        batch_op.drop_column("mapping")
        batch_op.drop_column("upload_path")
