"""Migrations: upgrade → downgrade → upgrade on each backend, and ``db check`` catching drift."""

from __future__ import annotations

import sqlalchemy as sa
from tongcrm.db import migrate
from tongcrm.db.base import STATISTICS_TARGET, metadata, unsampled
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import open_database, scratch_url


async def _tables(engine: sa.ext.asyncio.AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


async def test_upgrade_downgrade_upgrade(tongcrm_backend: str) -> None:
    host = PluginHost(autoload=True, disabled=set())
    async with scratch_url(tongcrm_backend) as url, open_database(tongcrm_backend, url) as db:
        assert await migrate.is_new_database(db.engine)
        await migrate.upgrade(db.engine, host)
        heads, current = await migrate.status(db.engine, host)
        assert heads == current and heads
        assert {"api_keys", "jobs", "outbox_events", "event_deliveries", "leases"} <= await _tables(db.engine)
        await migrate.downgrade(db.engine, host)
        assert await _tables(db.engine) <= {"alembic_version"}
        await migrate.upgrade(db.engine, host)
        assert (await migrate.status(db.engine, host))[1] == heads


async def test_db_check_agrees_with_the_models(tongcrm_backend: str) -> None:
    host = PluginHost(autoload=True, disabled=set())
    async with scratch_url(tongcrm_backend) as url:
        assert await migrate.check(host, url) == []


async def test_db_check_reports_a_model_without_migration() -> None:
    table = sa.Table("unmigrated_things", metadata, sa.Column("id", sa.Integer, primary_key=True))
    try:
        diffs = await migrate.check(PluginHost(autoload=False))
    finally:
        metadata.remove(table)
    assert any("unmigrated_things" in line for line in migrate.describe_diffs(diffs))


async def test_db_check_reports_a_statistics_target_without_migration(tongcrm_backend: str) -> None:
    """A model that leaves a column out of ANALYZE (``unsampled()``) needs a revision that does it: on PostgreSQL
    ``db check`` names the column; SQLite has no statistics targets."""
    host = PluginHost(autoload=True, disabled=set())
    city = metadata.tables["members"].c.city
    city.info.update(unsampled())
    try:
        async with scratch_url(tongcrm_backend) as url:
            diffs = await migrate.check(host, url)
    finally:
        del city.info[STATISTICS_TARGET]
    if tongcrm_backend == "postgresql":
        assert diffs == [("statistics_target", "members", "city", -1, 0)]
    else:
        assert diffs == []


async def test_db_check_reports_a_fillfactor_without_migration(tongcrm_backend: str) -> None:
    """A model that sets a table's storage parameters (``postgresql_with``) needs a revision that does it: on
    PostgreSQL ``db check`` names the table, and it finds the fillfactors revision 0039 set as the models name
    them; SQLite has no storage parameters."""
    host = PluginHost(autoload=True, disabled=set())
    options = metadata.tables["members"].dialect_options["postgresql"]
    options["with"] = {"fillfactor": 70}
    try:
        async with scratch_url(tongcrm_backend) as url:
            diffs = await migrate.check(host, url)
    finally:
        options["with"] = None
    if tongcrm_backend == "postgresql":
        assert diffs == [("storage_parameters", "members", {}, {"fillfactor": "70"})]
    else:
        assert diffs == []
