"""Indexes on columns a sale leaves NULL are partial (``WHERE col IS NOT NULL``: revisions 0039, 0040 and pos_0004),
and the lookups they exist for (``col = value``, ``col IN (...)``, ``col IS NOT NULL``) still use them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tongcrm.db import migrate
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import open_database, scratch_url

#: index -> (table, a lookup it serves)
PARTIAL = {
    "ix_points_entries_ref_entry_id": (
        "points_entries",
        "SELECT id FROM points_entries WHERE ref_entry_id = 7",
    ),
    "ix_members_merged_into_id": (
        "members",
        "SELECT id FROM members WHERE merged_into_id IN (3, 4) AND status = 'merged'",
    ),
    "ix_members_referrer_id": (
        "members",
        "SELECT count(*) FROM members WHERE referrer_id = 5 AND status = 'active'",
    ),
    "ix_pos_receipts_account_original": (
        "pos_receipts",
        "SELECT id FROM pos_receipts WHERE account_id = 1 AND original_key = 'S1-T01-20261207-1'",
    ),
}


@pytest.mark.parametrize("index", sorted(PARTIAL))
async def test_a_null_column_index_is_partial_and_used(tongcrm_backend: str, index: str) -> None:
    table, lookup = PARTIAL[index]
    host = PluginHost(autoload=True, disabled=set())
    async with scratch_url(tongcrm_backend) as url, open_database(tongcrm_backend, url) as db:
        await migrate.upgrade(db.engine, host)
        async with db.engine.connect() as conn:
            if tongcrm_backend == "sqlite":
                sql = (
                    await conn.execute(
                        sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"),
                        {"n": index},
                    )
                ).scalar_one()
                plan = " ".join(
                    str(row[-1]) for row in await conn.execute(sa.text(f"EXPLAIN QUERY PLAN {lookup}"))
                )
            else:
                sql = (
                    await conn.execute(
                        sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": index}
                    )
                ).scalar_one()
                await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
                plan = " ".join(str(row[0]) for row in await conn.execute(sa.text(f"EXPLAIN {lookup}")))
    assert f"ON {table}" in sql.replace("public.", ""), sql
    assert "IS NOT NULL" in sql, sql
    assert index in plan, plan
