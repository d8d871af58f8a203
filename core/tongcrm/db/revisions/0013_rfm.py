"""RFM: settings versions, recompute runs with their quintile edges, scores per member; referral codes and
referral rewards; member tag history and tag rules

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
# tag_rules references segments (0011); the chain is relinked on merge, this keeps the order until then
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rfm_policies",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("channels", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_rfm_policies")),
    )
    op.create_table(
        "rfm_runs",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("as_of", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("started_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("finished_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("edges_run_id", tongcrm.db.base.BigId, nullable=True),
        sa.Column("edges", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("means", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("members", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rfm_runs")),
    )
    op.create_table(
        "rfm_scores",
        sa.Column("member_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("recency_days", sa.Integer(), nullable=False),
        sa.Column("frequency", sa.Integer(), nullable=False),
        sa.Column("monetary_fen", sa.BigInteger(), nullable=False),
        sa.Column("r", sa.SmallInteger(), nullable=False),
        sa.Column("f", sa.SmallInteger(), nullable=False),
        sa.Column("m", sa.SmallInteger(), nullable=False),
        sa.Column("cell", sa.String(length=24), nullable=False),
        sa.Column("run_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("computed_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], name=op.f("fk_rfm_scores_member_id_members")),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_rfm_scores")),
    )
    with op.batch_alter_table("rfm_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rfm_scores_cell"), ["cell"], unique=False)

    op.create_table(
        "referral_codes",
        sa.Column("member_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_referral_codes_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_referral_codes")),
        sa.UniqueConstraint("code", name=op.f("uq_referral_codes_code")),
    )
    op.create_table(
        "referral_rewards",
        sa.Column("referred_member_id", tongcrm.db.base.BigId, autoincrement=False, nullable=False),
        sa.Column("referrer_member_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("order_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("awarded_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("reversed_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.Column("reversed_points", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_referral_rewards_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["referred_member_id"],
            ["members.id"],
            name=op.f("fk_referral_rewards_referred_member_id_members"),
        ),
        sa.ForeignKeyConstraint(
            ["referrer_member_id"],
            ["members.id"],
            name=op.f("fk_referral_rewards_referrer_member_id_members"),
        ),
        sa.PrimaryKeyConstraint("referred_member_id", name=op.f("pk_referral_rewards")),
    )
    with op.batch_alter_table("referral_rewards", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_referral_rewards_referrer_member_id"), ["referrer_member_id"], unique=False
        )

    op.create_table(
        "member_tag_history",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("member_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("rule_id", tongcrm.db.base.BigId, nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_member_tag_history_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_member_tag_history")),
    )
    with op.batch_alter_table("member_tag_history", schema=None) as batch_op:
        batch_op.create_index("ix_member_tag_history_member_id_id", ["member_id", "id"], unique=False)
    op.create_table(
        "tag_rules",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("segment_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("last_run_at", tongcrm.db.base.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_tag_rules_segment_id_segments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tag_rules")),
        sa.UniqueConstraint("tag", name=op.f("uq_tag_rules_tag")),
    )
    op.create_table(
        "tag_rule_members",
        sa.Column("id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("rule_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("member_id", tongcrm.db.base.BigId, nullable=False),
        sa.Column("tagged_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_tag_rule_members_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["tag_rules.id"], name=op.f("fk_tag_rule_members_rule_id_tag_rules")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tag_rule_members")),
    )
    with op.batch_alter_table("tag_rule_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tag_rule_members_member_id"), ["member_id"], unique=False)
        batch_op.create_index("ix_tag_rule_members_rule_id_member_id", ["rule_id", "member_id"], unique=False)


def downgrade() -> None:
    op.drop_table("tag_rule_members")
    op.drop_table("tag_rules")
    op.drop_table("member_tag_history")
    op.drop_table("referral_rewards")
    op.drop_table("referral_codes")
    op.drop_table("rfm_scores")
    op.drop_table("rfm_runs")
    op.drop_table("rfm_policies")
