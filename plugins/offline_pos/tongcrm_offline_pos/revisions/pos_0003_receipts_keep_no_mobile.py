"""Stored receipts keep no buyer's mobile or card: the buyer stays as the member it resolved to

Revision ID: pos_0003
Revises: pos_0002
Create Date: 2026-12-06 01:00:00

``pos_receipts.body`` kept the receipt as sent, ``member.mobile`` in clear. Receipts stored from now on keep
only ``member.member_id`` (:func:`tongcrm_offline_pos.receipts.stored_body`); this rewrites the ones stored
before, a page at a time. There is no way back: the downgrade leaves bodies as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import tongcrm.db.base
from alembic import op

revision: str = "pos_0003"
down_revision: str | Sequence[str] | None = "pos_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAGE = 500

receipts = sa.table(
    "pos_receipts",
    sa.column("id", sa.BigInteger),
    sa.column("member_id", sa.BigInteger),
    sa.column("body", tongcrm.db.base.JSONType),
)


def _stripped(body: object, member_id: int | None) -> dict[str, object] | None:
    """The body without the buyer's mobile and card; ``None`` when there is nothing to change."""
    if not isinstance(body, dict):
        return None
    member = body.get("member")
    if not isinstance(member, dict) or not (member.get("mobile") or member.get("card")):
        return None
    kept = member.get("member_id") or member_id
    return {**body, "member": {"member_id": kept, "mobile": None, "card": None}}


def upgrade() -> None:
    bind = op.get_bind()
    after = 0
    while True:
        rows = bind.execute(
            sa.select(receipts.c.id, receipts.c.member_id, receipts.c.body)
            .where(receipts.c.id > after)
            .order_by(receipts.c.id)
            .limit(_PAGE)
        ).all()
        if not rows:
            return
        after = rows[-1].id
        changes = [
            {"row_id": row.id, "new_body": new}
            for row in rows
            if (new := _stripped(row.body, row.member_id)) is not None
        ]
        if changes:
            bind.execute(
                sa.update(receipts)
                .where(receipts.c.id == sa.bindparam("row_id"))
                .values(body=sa.bindparam("new_body")),
                changes,
            )


def downgrade() -> None:
    pass  # the mobiles are gone, by design
