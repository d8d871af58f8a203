"""``campaign_runs.reason_code`` and ``reason_params``: what a refused run's English ``reason`` says, as a code
and figures the console words in its own language (issue #22, branch console17).

A run the scheduler refuses (empty audience, a budget passed, a segment that broke) stored only the English
sentence, which the Chinese campaign page showed as it was. The API keeps that sentence; the console now reads
the code. Runs refused before this revision get the code their sentence starts with where it names one without
figures (empty audience, could not start); a budget refusal keeps its English sentence, which the console shows
after its Chinese fallback.

Revision ID: 0041
Revises: 0040
Create Date: 2026-12-07 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0041"
down_revision: str | Sequence[str] | None = "0040"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign_runs") as batch_op:
        batch_op.add_column(sa.Column("reason_code", sa.String(64), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column(
                "reason_params", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True
            )
        )
    op.execute(
        "UPDATE campaign_runs SET reason_code = 'campaign_run.empty_audience' "
        "WHERE status = 'refused' AND reason LIKE 'empty audience:%'"
    )
    op.execute(
        "UPDATE campaign_runs SET reason_code = 'campaign_run.could_not_start' "
        "WHERE status = 'refused' AND reason LIKE 'the run could not start:%'"
    )


def downgrade() -> None:
    with op.batch_alter_table("campaign_runs") as batch_op:
        batch_op.drop_column("reason_params")
        batch_op.drop_column("reason_code")
