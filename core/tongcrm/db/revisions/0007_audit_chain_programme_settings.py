"""Audit records chained by hash (over a salted digest of their content, so it can be redacted); programme settings stored in the database, versioned; the orders listing's index

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-06 01:00:00
"""

from collections.abc import Sequence
from types import SimpleNamespace

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op
from tongcrm.audit.chain import GENESIS, HEAD_ID, content_digest, json_ready, new_salt, record_hash

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "programme_settings",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("values", tongcrm.db.base.JSONType, nullable=False),
        sa.Column("changed_at", tongcrm.db.base.UTCDateTime(), nullable=False),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_programme_settings")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("content_salt", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("redacted_at", tongcrm.db.base.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_placed_at_id", ["placed_at", "id"], unique=False)
    _chain_existing_records()
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("content_digest", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_audit_log_seq"), ["seq"])


def _chain_existing_records() -> None:
    """Give the records already there a salt and content digest, chain them in id order (the order they were
    written in) and set the head."""
    log = sa.table(
        "audit_log",
        sa.column("id", sa.BigInteger()),
        sa.column("at", tongcrm.db.base.UTCDateTime()),
        sa.column("actor", sa.String()),
        sa.column("actor_key_id", sa.BigInteger()),
        sa.column("role", sa.String()),
        sa.column("action", sa.String()),
        sa.column("object_type", sa.String()),
        sa.column("object_id", sa.String()),
        sa.column("before", tongcrm.db.base.JSONType),
        sa.column("after", tongcrm.db.base.JSONType),
        sa.column("request_id", sa.String()),
        sa.column("content_digest", sa.String()),
        sa.column("content_salt", sa.String()),
        sa.column("seq", sa.BigInteger()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    conn = op.get_bind()
    seq, prev, last_id = 0, GENESIS, None
    while True:
        page = sa.select(log).order_by(log.c.id).limit(1000)
        if last_id is not None:
            page = page.where(log.c.id > last_id)
        rows = conn.execute(page).mappings().all()
        if not rows:
            break
        for row in rows:
            seq += 1
            salt = new_salt()
            before, after = json_ready(row["before"]), json_ready(row["after"])
            digest = content_digest(salt, before, after)
            values = dict(row, seq=seq, prev_hash=prev, content_digest=digest)
            values["hash"] = record_hash(SimpleNamespace(**values))
            conn.execute(
                sa.update(log)
                .where(log.c.id == row["id"])
                .values(
                    seq=seq, prev_hash=prev, hash=values["hash"], content_digest=digest, content_salt=salt
                )
            )
            prev, last_id = values["hash"], row["id"]
    head = sa.table("audit_chain_head", sa.column("id"), sa.column("seq"), sa.column("hash"))
    conn.execute(head.insert().values(id=HEAD_ID, seq=seq, hash=prev))


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_audit_log_seq"), type_="unique")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("seq")
        batch_op.drop_column("redacted_at")
        batch_op.drop_column("content_salt")
        batch_op.drop_column("content_digest")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_placed_at_id")
    op.drop_table("programme_settings")
    op.drop_table("audit_chain_head")
