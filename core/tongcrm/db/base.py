"""The declarative base and column types every table uses.

One ``MetaData`` with a naming convention so constraint names are stable across SQLite and PostgreSQL and
Alembic can diff and drop them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: 64-bit ids on PostgreSQL; INTEGER on SQLite so the column is the rowid and autoincrements.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


#: Length of a datetime as SQLite stores it here ("2026-01-01 00:00:00.000000", see ``UTCDateTime``)
_SQLITE_STORED_LEN = 26


#: the last datetime any UTCDateTime column wrote to SQLite and its text. Why: a unit of work binds the same
#: ``now`` again and again, in many columns (a till's receipt ~15 times over its statements, issue #22 till10); a
#: datetime is immutable, so the same object writes the same text. One tuple, swapped whole, so threads binding
#: at once never pair a value with another's text.
_LAST_SQLITE_TEXT: list[tuple[datetime | None, str | None]] = [(None, None)]


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both databases.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC. A naive
    datetime is refused on the way in: it is always a bug in the caller.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use an aware datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # Bulk writes (ingest pages, points awards) bind several datetimes per row; going through
    # process_bind_param and then the SQLite type's own processor cost a quarter of an award batch. These two
    # fuse both steps into one function per dialect with the same results (SQLite's storage format, to the
    # microsecond, so stored strings keep comparing in time order).
    def bind_processor(self, dialect: Dialect) -> Any:
        check = self.process_bind_param
        if dialect.name != "sqlite":
            impl = self.impl_instance.bind_processor(dialect)

            def to_utc(value: datetime | None) -> Any:
                if value is not None and value.tzinfo is not UTC:
                    value = check(value, dialect)
                return impl(value) if impl is not None else value

            return to_utc

        def to_sqlite(value: datetime | None) -> str | None:
            if value is None:
                return None
            seen = _LAST_SQLITE_TEXT[0]
            if seen[0] is value:
                return seen[1]
            text = _sqlite_text(value)
            _LAST_SQLITE_TEXT[0] = (value, text)
            return text

        def _sqlite_text(value: datetime) -> str:
            if value.tzinfo is not UTC:
                if value.tzinfo is None or value.utcoffset() is None:
                    check(value, dialect)  # refuses it
                value = value.astimezone(UTC)
            # SQLAlchemy's SQLite storage format, "%04d-%02d-%02d %02d:%02d:%02d.%06d", in one C call: the
            # ISO form with the microseconds always written, cut before the "+00:00" (half the time of the %
            # format and the astimezone/replace of process_bind_param; ingest binds seven a row, issue #22)
            return value.isoformat(" ", "microseconds")[:26]

        return to_sqlite

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        from_iso = datetime.fromisoformat

        def from_sqlite(value: str | datetime | None) -> datetime | None:
            if value is None:
                return None
            if type(value) is str and len(value) == _SQLITE_STORED_LEN:
                # the storage format above, naive UTC: parsed with its offset in one C call, which answers the
                # same aware datetime (tzinfo ``UTC`` itself) in a fifth of the time of parsing and then
                # ``replace(tzinfo=UTC)`` (every point read of a member parses two, issue #22)
                return from_iso(value + "+00:00")
            parsed = from_iso(value) if isinstance(value, str) else value
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

        return from_sqlite


#: JSON on SQLite, JSONB on PostgreSQL.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def not_null_index(name: str, column: str) -> sa.Index:
    """An index of ``column`` holding only the rows where it is set (partial: ``WHERE column IS NOT NULL``, on
    both databases), for a column most rows leave NULL and that every read compares with given values
    (``=``, ``IN``, ``= ANY``: a comparison a NULL never passes, so both planners prove the predicate and use it).
    A row inserted with NULL there maintains no entry of it (issue #22, branch ingestpg14)."""
    where = sa.text(f"{column} IS NOT NULL")
    return sa.Index(name, column, sqlite_where=where, postgresql_where=where)


#: The ``Column.info`` key of a column's PostgreSQL statistics target (``ALTER COLUMN … SET STATISTICS``).
STATISTICS_TARGET = "statistics_target"


def unsampled() -> dict[str, Any]:
    """``Column(info=unsampled())``: a column ``ANALYZE`` skips on PostgreSQL (statistics target 0).

    For a document no statement filters, joins, groups or sorts on (an order's shipments, a ledger entry's
    explain, a member's profile stamps), so no plan reads its statistics; sorting a sample of JSONB values for
    them was 40 % of the analyses a first sync runs as its tables grow (issue #22, branch ingestpg12:
    ``orders.shipments`` 85 ms of a 163 ms analyse of 20,000 orders, ``points_entries.detail`` 95 of 207 ms).
    SQLite's ``ANALYZE`` samples indexes only, so there it changes nothing. Revision 0037 sets it on existing
    databases; ``tongcrm db check`` compares it (:func:`tongcrm.db.migrate.check`). A new dict each call: a
    column's ``info`` is its own."""
    return {STATISTICS_TARGET: 0}


def statistics_targets(table: sa.Table) -> dict[str, int]:
    """The statistics target each column of ``table`` names in its ``info``, by column name."""
    return {c.name: int(c.info[STATISTICS_TARGET]) for c in table.columns if STATISTICS_TARGET in c.info}


def set_statistics_sql(table: str, column: str, target: int) -> str:
    """PostgreSQL: the statement that sets ``column``'s statistics target (-1: back to the default)."""
    return f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET STATISTICS {target}'


@sa.event.listens_for(metadata, "after_create")
def _set_statistics_targets(target: sa.MetaData, connection: sa.Connection, **kw: Any) -> None:
    """Tables built from the models (``metadata.create_all``: the tests, a scratch database) get the
    statistics targets the migrations set."""
    if connection.dialect.name != "postgresql":
        return
    for table in kw.get("tables") or target.sorted_tables:
        for column, stat in statistics_targets(table).items():
            connection.execute(sa.text(set_statistics_sql(table.name, column, stat)))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}
