"""An import refreshes the planner statistics of the tables it grows (both databases), on a geometric schedule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from tongcrm.bulk import service
from tongcrm.crypto import Vault
from tongcrm.db import stats
from tongcrm.db.stats import AnalyseSchedule
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase

VAULT = Vault("bulk-test-secret-0123456789abcdef")
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)


def test_the_schedule_doubles_and_skips_what_a_large_page_jumped() -> None:
    schedule = AnalyseSchedule(first=100)
    assert [n for n in (50, 99, 100, 150, 199, 200, 250, 399) if schedule.due(n)] == [100, 200]
    assert schedule.due(1_000) is True  # past 400 and 800 in one step: one analyse, then 1,600 is next
    assert schedule.due(1_599) is False
    assert schedule.due(1_600) is True


async def _planner_rows(db: TestDatabase, table: str) -> float | None:
    """The row count the planner believes ``table`` has, from the statistics ANALYZE writes."""
    async with db.sessions() as session:
        if db.backend == "postgresql":
            found = await session.execute(
                sa.text("SELECT reltuples FROM pg_class WHERE relname = :t AND relkind = 'r'"), {"t": table}
            )
            return float(found.scalar_one())
        # an index's first figure is the rows it holds: a partial index (``WHERE … IS NOT NULL``, revision 0039)
        # holds fewer than the table, so the table's count is the largest
        found = await session.execute(sa.text("SELECT stat FROM sqlite_stat1 WHERE tbl = :t"), {"t": table})
        counts = [float(stat.split()[0]) for stat in found.scalars()]
        return max(counts) if counts else None


async def test_an_import_leaves_the_tables_it_grew_analysed(
    tongcrm_db: TestDatabase, memory_host: PluginHost, tmp_path: Path
) -> None:
    ctx = service.ImportContext(
        host=memory_host, vault=VAULT, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai")
    )
    rows = "".join(f"N{i},1380013{i:04d},会员{i}\n" for i in range(37))
    path = tmp_path / "members.csv"
    path.write_text("member_id,mobile,name\n" + rows, encoding="utf-8")
    job = await service.open_import(tongcrm_db.sessions, ctx, "members", path, "csv", source="stats")
    progress = await service.run_import(tongcrm_db.sessions, ctx, job.id, path, page_size=10)
    assert progress.imported == 37
    # 37 members, each with an import.member_id and a mobile identity: what ANALYZE counted at the end
    assert await _planner_rows(tongcrm_db, "members") == 37
    assert await _planner_rows(tongcrm_db, "identities") == 74


async def test_an_orders_import_that_created_its_buyers_leaves_their_tables_analysed_too(
    tongcrm_db: TestDatabase, memory_host: PluginHost, tmp_path: Path
) -> None:
    ctx = service.ImportContext(
        host=memory_host, vault=VAULT, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai")
    )
    rows = "".join(f"O{i},B{i % 12},2025-03-01T10:00:00+08:00,{1000 + i}\n" for i in range(30))
    path = tmp_path / "orders.csv"
    path.write_text("order_id,member_id,placed_at,total_fen\n" + rows, encoding="utf-8")
    job = await service.open_import(tongcrm_db.sessions, ctx, "orders", path, "csv", source="stats")
    progress = await service.run_import(tongcrm_db.sessions, ctx, job.id, path, page_size=10)
    assert progress.imported == 30
    assert await _planner_rows(tongcrm_db, "orders") == 30
    # 12 buyers nobody knew: resolution created them, and the import analysed what it grew for them
    assert await _planner_rows(tongcrm_db, "members") == 12
    assert await _planner_rows(tongcrm_db, "identities") == 12


async def test_a_database_emptied_between_tests_starts_its_analyse_schedule_again(
    tongcrm_db: TestDatabase, monkeypatch: Any
) -> None:
    """The tests' truncate empties the tables, so the next sync grows them from nothing: its schedule starts
    at the first threshold again instead of going on from the rows written before (a 100,000-order benchmark
    run after another was analysed 60,000 orders in, on the statistics of the tables before they were
    emptied)."""
    monkeypatch.setattr(stats, "_SCHEDULES", {})
    async with tongcrm_db.sessions() as session:
        assert stats.grown(session, stats.FIRST_ANALYSE) is True
        assert stats.grown(session, stats.FIRST_ANALYSE // 2) is False  # the next is at twice the first
        await tongcrm_db.truncate()
        assert stats.grown(session, stats.FIRST_ANALYSE) is True


async def test_a_members_import_analyses_members_at_its_end_and_on_the_schedule_once_resolution_ran(
    tongcrm_db: TestDatabase, memory_host: PluginHost, tmp_path: Path, monkeypatch: Any
) -> None:
    """New members written set-based (PostgreSQL) read ``identities`` only: the schedule's analyses leave the
    wide ``members`` table to the import's end (its ANALYZE was a third of the server's CPU, bulk12). A page
    that went through resolution — two rows sharing a mobile, or SQLite, where every row is resolved — reads
    members too, so from then on the schedule analyses it as well."""
    monkeypatch.setattr(stats, "_SCHEDULES", {})
    monkeypatch.setattr(stats, "FIRST_ANALYSE", 10)
    analysed: list[set[str]] = []
    restricted: list[bool] = []
    analyse = stats.analyse

    async def recording(session: Any, tables: Any, columns: Any = None) -> None:
        analysed.append(set(tables))
        restricted.append(columns == service.SCHEDULED_COLUMNS)
        await analyse(session, tables, columns)

    monkeypatch.setattr(stats, "analyse", recording)
    ctx = service.ImportContext(
        host=memory_host, vault=VAULT, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai")
    )
    new = "".join(f"N{i},1380013{i:04d},会员{i}\n" for i in range(10))  # page 1: ten members nobody knew
    shared = "".join(f"S{i},1390013{i // 2:04d},会员{i}\n" for i in range(10))  # page 2: pairs share a mobile
    path = tmp_path / "members.csv"
    path.write_text("member_id,mobile,name\n" + new + shared, encoding="utf-8")
    job = await service.open_import(tongcrm_db.sessions, ctx, "members", path, "csv", source="stats")
    progress = await service.run_import(tongcrm_db.sessions, ctx, job.id, path, page_size=10)
    assert progress.imported == 20
    both = {"members", "identities"}
    # after page 1 (10 rows), after page 2 (20 rows), and at the end
    first = {"identities"} if tongcrm_db.backend == "postgresql" else both
    assert analysed == [first, both, both]
    assert restricted == [
        True,
        True,
        False,
    ]  # the schedule's analyses name their columns, the end's every one
    assert await _planner_rows(tongcrm_db, "members") == 15  # ten, then five pairs merged
    assert await _planner_rows(tongcrm_db, "identities") == 35  # 15 mobiles, 20 member ids


async def test_an_analyse_of_named_columns_counts_the_rows_and_leaves_the_other_columns_alone(
    tongcrm_db: TestDatabase,
) -> None:
    """The schedule's analyses during an import name the columns its reads filter and join on
    (:data:`service.SCHEDULED_COLUMNS`): the planner's row count is refreshed all the same, and on PostgreSQL no
    statistics are computed for the other columns (the full analyse at the import's end does)."""
    async with tongcrm_db.sessions() as session, session.begin():
        await session.execute(
            sa.text("CREATE TABLE analysed_here (id INTEGER PRIMARY KEY, kind TEXT, note TEXT)")
        )
        await session.execute(sa.text("CREATE INDEX ix_analysed_here_kind ON analysed_here (kind)"))
        await session.execute(
            sa.text("INSERT INTO analysed_here (id, kind, note) VALUES (:id, :kind, :note)"),
            [{"id": i, "kind": f"k{i % 3}", "note": f"n{i}"} for i in range(25)],
        )
        await stats.analyse(session, ["analysed_here"], {"analysed_here": ["kind"]})
    try:
        if tongcrm_db.backend == "postgresql":
            async with tongcrm_db.sessions() as session:
                columns = await session.execute(
                    sa.text("SELECT attname FROM pg_stats WHERE tablename = 'analysed_here'")
                )
                assert set(columns.scalars()) == {"kind"}
        assert await _planner_rows(tongcrm_db, "analysed_here") == 25
    finally:
        async with tongcrm_db.sessions() as session, session.begin():
            await session.execute(sa.text("DROP TABLE analysed_here"))


async def test_an_orders_import_analyses_orders_at_its_end_and_what_its_pages_read_on_the_schedule(
    tongcrm_db: TestDatabase, memory_host: PluginHost, tmp_path: Path, monkeypatch: Any
) -> None:
    """Orders of known buyers written set-based read neither ``orders`` nor ``order_lines`` (a ``COPY``; the
    foreign keys probe primary keys): the schedule leaves both to the import's end (importpg14). Buyers the
    staged writer creates add ``members`` and ``identities`` (its lookup reads them); orders that went through
    ingest, which reads the stored orders, add ``orders`` and ``order_lines`` from then on."""
    ctx = service.ImportContext(
        host=memory_host, vault=VAULT, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai")
    )
    members = "".join(f"M{i},1380013{i:04d},会员{i}\n" for i in range(10))
    path = tmp_path / "members.csv"
    path.write_text("member_id,mobile,name\n" + members, encoding="utf-8")
    job = await service.open_import(tongcrm_db.sessions, ctx, "members", path, "csv", source="stats")
    assert (await service.run_import(tongcrm_db.sessions, ctx, job.id, path)).imported == 10

    monkeypatch.setattr(stats, "_SCHEDULES", {})
    monkeypatch.setattr(stats, "FIRST_ANALYSE", 10)
    analysed: list[set[str]] = []
    analyse = stats.analyse

    async def recording(session: Any, tables: Any, columns: Any = None) -> None:
        analysed.append(set(tables))
        await analyse(session, tables, columns)

    monkeypatch.setattr(stats, "analyse", recording)
    at = "2025-03-01T10:00:00+08:00"
    known = "".join(f"K{i},M{i},,{at},{1000 + i}\n" for i in range(10))  # page 1: known buyers
    new = "".join(f"N{i},B{i},,{at},{1000 + i}\n" for i in range(10))  # page 2: buyers nobody knew
    # page 3: a known buyer's member id beside a mobile not stored: resolution weighs it, through ingest
    mixed = "".join(f"X{i},M{i},1390013{i:04d},{at},{1000 + i}\n" for i in range(10))
    later = "".join(f"L{i},M{i},,{at},{1000 + i}\n" for i in range(10))  # page 4: known buyers again
    path = tmp_path / "orders.csv"
    path.write_text("order_id,member_id,mobile,placed_at,total_fen\n" + known + new + mixed + later, "utf-8")
    job = await service.open_import(tongcrm_db.sessions, ctx, "orders", path, "csv", source="stats")
    progress = await service.run_import(tongcrm_db.sessions, ctx, job.id, path, page_size=10)
    assert (progress.imported, progress.failed) == (40, 0)
    resolved, everything = {"members", "identities"}, {"orders", "order_lines", "members", "identities"}
    # page 1 (10 rows) was due but had nothing to analyse; page 2 (20 rows) created buyers; page 3 went through
    # ingest, so page 4 (40 rows) and the end analyse the orders too
    assert analysed == [resolved, everything, everything]
    assert await _planner_rows(tongcrm_db, "orders") == 40
