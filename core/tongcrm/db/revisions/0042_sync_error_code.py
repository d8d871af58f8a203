"""``sync_states.last_error_code``: what a stopped sync's English ``last_error`` is, as a code the console words
in its own language (issue #22, branch console18).

The channels, re-authorisation and dashboard pages showed the English sentence (``authorisation failed: invalid
session``) on the Chinese console. The ingest engine now stores a ``sync.*`` code beside it, from the plugin
contract's error class (never from the channel). Errors recorded before this revision get the code their
sentence starts with where it names one; the others keep none, and the console shows their sentence as stored.

Revision ID: 0042
Revises: 0041
Create Date: 2026-12-07 21:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0042"
down_revision: str | Sequence[str] | None = "0041"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The start of each English sentence the ingest engine wrote before this revision, and its code.
_PREFIXES = (
    ("authorisation failed:%", "sync.auth_failed"),
    ("ChannelUnavailable:%", "sync.unavailable"),
    ("ChannelRequestError:%", "sync.request_refused"),
    ("the channel adapter returned the same cursor%", "sync.cursor_loop"),
)


def upgrade() -> None:
    with op.batch_alter_table("sync_states") as batch_op:
        batch_op.add_column(sa.Column("last_error_code", sa.String(64), nullable=True))
    for prefix, code in _PREFIXES:
        op.execute(
            sa.text(
                "UPDATE sync_states SET last_error_code = :code WHERE last_error LIKE :prefix"
            ).bindparams(code=code, prefix=prefix)
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_states") as batch_op:
        batch_op.drop_column("last_error_code")
