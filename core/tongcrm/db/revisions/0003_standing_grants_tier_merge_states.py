"""Standing entitlement grants (open-ended validity), tier state around merges, refunds found by reference

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 04:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tier_merge_states",
        sa.Column("merge_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("survivor_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("before", tongcrm.db.base.JSONType, nullable=True),
        sa.Column("after", tongcrm.db.base.JSONType, nullable=True),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["merge_id"], ["member_merges.id"], name=op.f("fk_tier_merge_states_merge_id_member_merges")
        ),
        sa.ForeignKeyConstraint(
            ["survivor_id"], ["members.id"], name=op.f("fk_tier_merge_states_survivor_id_members")
        ),
        sa.PrimaryKeyConstraint("merge_id", name=op.f("pk_tier_merge_states")),
    )
    with op.batch_alter_table("tier_merge_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tier_merge_states_survivor_id"), ["survivor_id"], unique=False)

    # NULL: a standing grant that lasts as long as its tier
    with op.batch_alter_table("entitlement_grants", schema=None) as batch_op:
        batch_op.alter_column("valid_until", existing_type=tongcrm.db.base.UTCDateTime(), nullable=True)

    with op.batch_alter_table("points_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_points_entries_ref_entry_id"), ["ref_entry_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("points_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_points_entries_ref_entry_id"))

    # open standing grants end now: the older schema has no open-ended validity
    op.execute(
        sa.text("UPDATE entitlement_grants SET valid_until = CURRENT_TIMESTAMP WHERE valid_until IS NULL")
    )
    with op.batch_alter_table("entitlement_grants", schema=None) as batch_op:
        batch_op.alter_column("valid_until", existing_type=tongcrm.db.base.UTCDateTime(), nullable=False)

    with op.batch_alter_table("tier_merge_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tier_merge_states_survivor_id"))

    op.drop_table("tier_merge_states")
