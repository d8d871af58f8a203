"""Running Alembic migrations from code: ``tongcrm db upgrade`` and ``db check``, and the app's first start.

The Alembic environment lives in the repository's top-level ``migrations/`` folder and is copied into the
core wheel (``tongcrm/db/_alembic``) together with core's revisions, so a pip-only install can migrate. Each
distribution ships its revisions on its own branch label; plugins name theirs through ``migration_locations``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from tongcrm.db.base import metadata, statistics_targets
from tongcrm.db.engine import create_engine
from tongcrm.db.models import import_models
from tongcrm.errors import ConfigError
from tongcrm.plugin.host import PluginHost

CORE_BRANCH = "tongcrm"
_HERE = Path(__file__).resolve().parent
CORE_REVISIONS = _HERE / "revisions"


def environment_dir() -> Path:
    """The packaged copy in a wheel, or the repository's ``migrations/`` in a source checkout."""
    packaged = _HERE / "_alembic"
    if (packaged / "env.py").exists():
        return packaged
    checkout = _HERE.parents[2] / "migrations"
    if (checkout / "env.py").exists():
        return checkout
    raise ConfigError(
        "the Alembic environment is missing: neither tongcrm/db/_alembic nor migrations/ exists"
    )


def alembic_config(url: str, host: PluginHost) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(environment_dir()))
    locations = [str(CORE_REVISIONS), *(loc.path for loc in host.migration_locations())]
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(locations))
    cfg.set_main_option("sqlalchemy.url", url)
    import_models()
    cfg.attributes["target_metadata"] = metadata
    return cfg


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render tongcrm's shared column types by name, so revisions read like the models."""
    from tongcrm.db import base

    if type_ != "type":
        return False
    autogen_context.imports.add("import tongcrm.db.base")
    if isinstance(obj, base.UTCDateTime):
        return "tongcrm.db.base.UTCDateTime()"
    if obj is base.JSONType:
        return "tongcrm.db.base.JSONType"
    if obj is base.BigId:
        return "tongcrm.db.base.BigId"
    return False


def configure_context(context: EnvironmentContext | Any, connection: sa.Connection) -> None:
    """Shared by ``env.py`` and :func:`compare`: batch mode so SQLite can alter tables."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        render_item=render_item,
    )


def _run(connection: sa.Connection, cfg: Config, action: str, target: str) -> None:
    cfg.attributes["connection"] = connection
    if action == "upgrade":
        command.upgrade(cfg, target)
    elif action == "downgrade":
        command.downgrade(cfg, target)
    else:  # pragma: no cover - internal misuse
        raise ValueError(action)


async def _on_engine(engine: AsyncEngine, cfg: Config, action: str, target: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_run, cfg, action, target)


async def upgrade(engine: AsyncEngine, host: PluginHost, target: str = "heads") -> None:
    await _on_engine(
        engine, alembic_config(engine.url.render_as_string(hide_password=False), host), "upgrade", target
    )


async def downgrade(engine: AsyncEngine, host: PluginHost, target: str = "base") -> None:
    await _on_engine(
        engine, alembic_config(engine.url.render_as_string(hide_password=False), host), "downgrade", target
    )


def _heads_and_current(connection: sa.Connection, cfg: Config) -> tuple[set[str], set[str]]:
    script = ScriptDirectory.from_config(cfg)
    heads = set(script.get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    # A revision another branch depends on is not recorded as current once that branch is past it: count
    # everything the current revisions stand on, so "up to date" means every head is applied.
    applied = {rev.revision for head in current for rev in script.iterate_revisions(head, "base")}
    return heads, current | (heads & applied)


async def status(engine: AsyncEngine, host: PluginHost) -> tuple[set[str], set[str]]:
    """(heads of all installed distributions, the heads the database has applied)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False), host)
    async with engine.connect() as conn:
        return await conn.run_sync(_heads_and_current, cfg)


async def is_new_database(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    return not tables


def _compare(connection: sa.Connection) -> list[Any]:
    ctx = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
    return list(compare_metadata(ctx, metadata)) + _statistics_diffs(connection) + _storage_diffs(connection)


def _statistics_diffs(connection: sa.Connection) -> list[Any]:
    """PostgreSQL: columns whose statistics target differs from what the model names (``Column.info``, see
    :func:`tongcrm.db.base.unsampled`; a column naming none should be on the default). Alembic does not compare
    them, so a model that leaves a column out of ``ANALYZE`` without a revision would pass unnoticed."""
    if connection.dialect.name != "postgresql":
        return []
    rows = connection.execute(
        sa.text(
            "SELECT c.relname, a.attname, a.attstattarget FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
        )
    )
    stored = {(table, column): -1 if target is None else target for table, column, target in rows}
    diffs: list[Any] = []
    for table in metadata.sorted_tables:
        wanted = statistics_targets(table)
        for column in table.columns:
            found = stored.get((table.name, column.name))
            expected = wanted.get(column.name, -1)
            if found is not None and found != expected:
                diffs.append(("statistics_target", table.name, column.name, found, expected))
    return diffs


def _storage_diffs(connection: sa.Connection) -> list[Any]:
    """PostgreSQL: tables whose storage parameters (``fillfactor``…) differ from the model's
    ``postgresql_with`` (``Table.dialect_options``; none named: none set). Alembic does not compare them."""
    if connection.dialect.name != "postgresql":
        return []
    rows = connection.execute(
        sa.text(
            "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
    )
    stored = {table: dict(str(o).split("=", 1) for o in options or ()) for table, options in rows}
    diffs: list[Any] = []
    for table in metadata.sorted_tables:
        found = stored.get(table.name)
        expected = {k: str(v) for k, v in (table.dialect_options["postgresql"]["with"] or {}).items()}
        if found is not None and found != expected:
            diffs.append(("storage_parameters", table.name, found, expected))
    return diffs


async def check(host: PluginHost, scratch_url: str | None = None) -> list[Any]:
    """Differences between the models and what the migrations build, on a scratch database.

    The scratch database is a temporary SQLite file unless ``scratch_url`` names an empty database.
    """
    with tempfile.TemporaryDirectory() as tmp:
        url = scratch_url or f"sqlite:///{Path(tmp) / 'check.sqlite3'}"
        engine = create_engine(url)
        try:
            if not await is_new_database(engine):
                raise ConfigError("db check needs an empty scratch database")
            await upgrade(engine, host)
            async with engine.connect() as conn:
                diffs = await conn.run_sync(_compare)
            await downgrade(engine, host)
        finally:
            await engine.dispose()
    return diffs


def describe_diffs(diffs: Sequence[Any]) -> list[str]:
    lines: list[str] = []
    for diff in diffs:
        if isinstance(diff, list):  # column-level changes come grouped
            lines.extend(str(d) for d in diff)
        else:
            lines.append(str(diff))
    return lines


def run_env(context: Any) -> None:
    """Body of ``env.py``: use the connection the runner passed, or open one for the plain ``alembic`` CLI."""
    import asyncio

    cfg = context.config
    connection = cfg.attributes.get("connection")
    if connection is not None:
        configure_context(context, connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    import_models()
    url = cfg.get_main_option("sqlalchemy.url") or os.environ.get("TONGCRM_DATABASE_URL")
    if not url:
        raise ConfigError("set TONGCRM_DATABASE_URL (or sqlalchemy.url) to run alembic directly")

    async def _main() -> None:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.run_sync(_sync, context)
                await conn.commit()
        finally:
            await engine.dispose()

    asyncio.run(_main())


def _sync(connection: sa.Connection, context: Any) -> None:
    configure_context(context, connection)
    with context.begin_transaction():
        context.run_migrations()


__all__ = [
    "alembic_config",
    "check",
    "downgrade",
    "environment_dir",
    "is_new_database",
    "run_env",
    "status",
    "upgrade",
]
