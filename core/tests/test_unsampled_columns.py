"""Documents left out of ANALYZE (``tongcrm.db.base.unsampled``, issue #22): no statistics for them, the same
statistics as before for the columns plans read."""

from __future__ import annotations

import sqlalchemy as sa
from tongcrm.db import stats
from tongcrm.db.base import STATISTICS_TARGET, metadata, unsampled
from tongcrm.db.models import import_models
from tongcrm.members.models import Member
from tongcrm.testing.database import TestDatabase

#: The columns the models leave out, as revision 0037 names them.
DOCUMENTS = {("orders", "shipments"), ("points_entries", "detail"), ("members", "profile_meta")}


def test_the_models_name_the_documents_of_the_revision() -> None:
    import_models()
    named = {
        (table.name, column.name)
        for table in metadata.sorted_tables
        for column in table.columns
        if column.info.get(STATISTICS_TARGET) == unsampled()[STATISTICS_TARGET]
    }
    assert named == DOCUMENTS


async def test_an_analyse_gathers_no_statistics_of_the_documents(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        session.add_all(
            Member(
                city=f"city-{i % 7}",
                profile_meta={"city": {"at": "2026-12-07T00:00:00Z", "verified": i % 2 == 0}},
            )
            for i in range(60)
        )
    async with tongcrm_db.sessions() as session, session.begin():
        await stats.analyse(session, ["members", "orders", "points_entries"])
        if tongcrm_db.backend == "postgresql":
            targets = dict(
                (
                    await session.execute(
                        sa.text(
                            "SELECT c.relname || '.' || a.attname, a.attstattarget FROM pg_attribute a"
                            " JOIN pg_class c ON c.oid = a.attrelid"
                            " WHERE c.relname IN ('orders', 'points_entries', 'members')"
                            " AND c.relnamespace = current_schema()::regnamespace AND a.attnum > 0"
                        )
                    )
                ).all()
            )
            assert {f"{t}.{c}" for t, c in DOCUMENTS} == {k for k, v in targets.items() if v == 0}
            sampled = set(
                (
                    await session.execute(
                        sa.text(
                            "SELECT attname FROM pg_stats WHERE schemaname = current_schema() AND tablename = 'members'"
                        )
                    )
                ).scalars()
            )
            # the columns a plan may read keep their statistics; the document has none
            assert {"id", "city", "status", "created_at"} <= sampled
            assert "profile_meta" not in sampled
        else:
            # SQLite's ANALYZE samples indexes only: no index holds a document, so there is nothing to leave out
            for table, column in DOCUMENTS:
                for index in (await session.execute(sa.text(f'PRAGMA index_list("{table}")'))).all():
                    columns = {
                        r[2] for r in (await session.execute(sa.text(f'PRAGMA index_info("{index[1]}")')))
                    }
                    assert column not in columns
            analysed = set(
                (
                    await session.execute(sa.text("SELECT idx FROM sqlite_stat1 WHERE tbl = 'members'"))
                ).scalars()
            )
            assert "ix_members_city" in analysed
