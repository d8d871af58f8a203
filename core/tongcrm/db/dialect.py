"""The few statements that differ between SQLite and PostgreSQL, chosen by the session's dialect."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db.base import UTCDateTime
from tongcrm.db.jsontext import json_bytes, json_text


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def insert(session: AsyncSession, table: Any) -> Any:
    """An ``INSERT`` that supports ``on_conflict_do_nothing``/``on_conflict_do_update`` on both databases."""
    return insert_for(dialect_name(session), table)


def insert_for(dialect: str, table: Any) -> Any:
    """:func:`insert` by dialect name, for statements built once per dialect and cached."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def one_of(dialect: str, column: Any, name: str) -> Any:
    """``column`` is one of the list bound as ``name``, in SQL whose text does not depend on the list's length.

    An ``IN`` list renders one placeholder per value, so every page size was a new statement: PostgreSQL
    prepared 2,539 statements for 1,388 distinct texts over one 100k-order sync, and SQLAlchemy expanded the
    list on every execution (issue #22). Here the list is one parameter — ``= ANY($1)`` with an array on
    PostgreSQL, ``IN (SELECT value FROM json_each(?))`` with a JSON array on SQLite — and the statement,
    built once per dialect, is prepared once per connection. Bind a Python list.
    """
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))
    values = sa.select(sa.column("value", column.type)).select_from(
        sa.func.json_each(sa.bindparam(name, type_=sa.JSON()))
    )
    return column.in_(values)


def among(dialect: str, column: Any, values: Sequence[Any]) -> Any:
    """``column`` is one of ``values``, bound with the statement: on PostgreSQL ``= ANY($1)`` with one array,
    so the text (and asyncpg's prepared statement) does not change with the number of values — an ``IN`` list
    was a new text, a new prepare round trip and an entry evicting others from the connection's statement cache
    for every length; an ``IN`` list elsewhere."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def _is_json(column: sa.ColumnElement[Any]) -> bool:
    return isinstance(column.type, sa.JSON)


def array_rows(table: sa.Table, columns: Sequence[str], *, in_order: bool = False) -> sa.Select[Any]:
    """PostgreSQL: the rows bound as one array per column, each parameter named after its column, as a
    ``SELECT`` for ``INSERT … SELECT`` (bind them with :func:`column_arrays`).

    ``unnest($1::bigint[], $2::text[], …)`` has one text whatever the number of rows, so it is parsed and
    planned once per connection; ``executemany`` with ``RETURNING`` rendered a ``VALUES`` list per batch size —
    a new statement to parse and plan on nearly every page (issue #22). JSON columns travel as text and are
    cast back. ``in_order`` sorts by the arrays' positions: ids drawn from a sequence then ascend in row order,
    the guarantee SQLAlchemy's own ``sort_by_parameter_order`` rests on.
    """

    def item_type(name: str) -> Any:
        return sa.Text() if _is_json(table.c[name]) else table.c[name].type

    arrays = [sa.bindparam(name, type_=postgresql.ARRAY(item_type(name))) for name in columns]
    rows = (
        sa.func.unnest(*arrays)
        .table_valued(*columns, with_ordinality="position" if in_order else None)
        .render_derived()
    )
    select = sa.select(
        *(rows.c[n].cast(postgresql.JSONB) if _is_json(table.c[n]) else rows.c[n] for n in columns)
    )
    return select.order_by(rows.c.position) if in_order else select


def column_arrays(
    table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[Any]]:
    """The parameters of :func:`array_rows`: one list per column, JSON values serialised.

    A row with a key the statement has no column for is refused: SQLite's executemany would write it, the arrays
    would silently drop it, and the two databases would hold different rows."""
    if rows and (extra := set(rows[0]) - set(columns)):
        raise ValueError(f"{table.name}: values for columns the statement does not write: {sorted(extra)}")
    params: dict[str, list[Any]] = {}
    for name in columns:
        values = [row[name] for row in rows]
        if _is_json(table.c[name]):
            values = [None if v is None else json_text(v) for v in values]
        params[name] = values
    return params


def insert_rows(
    dialect: str, table: sa.Table, columns: Sequence[str], *, in_order: bool = False, size: int | None = None
) -> Any:
    """An ``INSERT`` of many rows whose text does not depend on their number: ``INSERT … SELECT`` from
    :func:`array_rows` on PostgreSQL, from :func:`json_rows` on SQLite — or, on SQLite with ``size`` (from
    :func:`values_size`), from :func:`values_rows`, whose text depends only on that size. Add ``on_conflict_…``
    and ``returning`` as usual; bind with :func:`rows_params` (given the same ``size``)."""
    if dialect == "postgresql":
        return postgresql.insert(table).from_select(
            list(columns), array_rows(table, columns, in_order=in_order)
        )
    if size is not None:
        source = values_rows(tuple(columns), size, in_order=in_order)
        return sqlite.insert(table).from_select(list(columns), source)
    return sqlite.insert(table).from_select(list(columns), json_rows(columns, in_order=in_order))


def typed_unnest(arrays: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """PostgreSQL, for statements written as text: ``unnest(CAST(:a AS T[]), …)`` over the named, typed
    arrays, and their bind parameters: one text for any number of rows (JSON travels as text; cast it where it
    is stored)."""
    pg: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    binds: list[Any] = []
    casts: list[str] = []
    for name, type_ in arrays:
        item = sa.Text() if isinstance(type_, sa.JSON) else type_
        binds.append(sa.bindparam(name, type_=postgresql.ARRAY(item)))
        casts.append(f"CAST(:{name} AS {item.compile(dialect=pg)}[])")
    return f"unnest({', '.join(casts)})", binds


def rows_params(
    dialect: str,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    size: int | None = None,
) -> Any:
    """The parameters of an :func:`insert_rows` statement: column arrays on PostgreSQL, one JSON array of
    the rows on SQLite, or with ``size`` the rows' values in one flat list (:func:`values_rows_param`)."""
    if dialect == "postgresql":
        return column_arrays(table, columns, rows)
    if size is not None:
        return values_rows_param(table, columns, rows, size)
    return json_rows_param(table, columns, rows)


# ------------------------------------------------------------------------------------------------- SQLite

#: The parameter :func:`json_rows` reads its rows from.
JSON_ROWS = "rows_json"
#: Bind processors are taken from this dialect: aiosqlite's is pysqlite's, whose processors these are.
_SQLITE = sqlite.dialect(json_serializer=json_text)  # as every engine (tongcrm.db.engine)


def json_rows(columns: Sequence[str], *, in_order: bool = False) -> sa.Select[Any]:
    """SQLite: the rows bound as one JSON array of arrays (:func:`json_rows_param`), as a ``SELECT`` for
    ``INSERT … SELECT``: ``SELECT value ->> 0, value ->> 1, … FROM json_each(?)``.

    An executemany ``INSERT`` rendered a ``VALUES`` list per batch through SQLAlchemy's insertmanyvalues, the
    SQL text changing with the row count and every value bound one by one (issue #22). One text and one
    parameter whatever the number of rows: SQLite parses the statement once per connection (its statement
    cache) and SQLAlchemy caches its compilation. Each value was already converted by its column's bind
    processor (:func:`json_rows_param`), so ``->>`` yields exactly what the executemany bound: text, integer,
    real or NULL. ``WHERE true`` settles SQLite's parsing ambiguity between a join's ``ON`` and an upsert's
    ``ON CONFLICT``; ``in_order`` inserts in row order (``ORDER BY`` the array index), so new rowids ascend in
    row order as PostgreSQL's ``in_order`` sequence ids do.
    """
    rows = sa.func.json_each(sa.bindparam(JSON_ROWS, type_=sa.Text())).table_valued("key", "value")
    select = sa.select(
        *(rows.c.value.op("->>")(sa.literal_column(str(i))).label(name) for i, name in enumerate(columns))
    ).where(sa.true())
    return select.order_by(rows.c.key) if in_order else select


#: SQLite: the row counts :func:`values_rows` is built for (a batch is padded to the next); beyond the last,
#: or past SQLite's limit on parameters, rows travel as JSON (:func:`json_rows`). Sizes start at one row: a
#: padding row is not free (SQLite runs a multi-row ``VALUES`` as a co-routine, each row bound and filtered,
#: ~7 µs a row of an order's width), and a till's receipt writes its order, line, award, entry and events one
#: row each — padded to 8, those inserts cost ~60 µs each instead of ~4 (issue #22).
VALUES_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: The parameter :func:`values_rows` reads: every row's values, row after row (:func:`values_rows_param`).
VALUES_ROWS = "rows_values"
#: SQLITE_MAX_VARIABLE_NUMBER's default since SQLite 3.32.
_SQLITE_MAX_PARAMETERS = 32_766


def values_size(dialect: str, columns: Sequence[str], count: int) -> int | None:
    """The ``size`` of :func:`insert_rows` and :func:`rows_params` for ``count`` rows of ``columns``: on SQLite
    the smallest of :data:`VALUES_SIZES` that holds them; None (JSON rows, or PostgreSQL's arrays) otherwise."""
    if dialect != "sqlite":
        return None
    for size in VALUES_SIZES:
        if count <= size:
            return size if size * (len(columns) + 1) <= _SQLITE_MAX_PARAMETERS else None
    return None


@functools.cache
def values_rows(columns: tuple[str, ...], size: int, *, in_order: bool = False) -> sa.Select[Any]:
    """SQLite: up to ``size`` rows as a ``VALUES`` list of positional parameters, as a ``SELECT`` for
    ``INSERT … SELECT``: each row is its position, then its values (``column1``, ``column2``, … as SQLite names
    them); a batch is padded with rows of NULLs, which ``WHERE column1 IS NOT NULL`` leaves out. ``in_order``
    inserts in row order (``ORDER BY column1``), as :func:`json_rows` does.

    Why not :func:`json_rows` for a page's rows: SQLite (before 3.45) parses a row's JSON text again for every
    ``->>``, so a row of 21 columns was parsed 21 times — two thirds of the order upsert's time on SQLite (100
    orders: 2.1 ms of JSON extraction in a 3.2 ms statement, against 1.1 ms for the same upsert from
    ``VALUES``, issue #22). The text depends only on ``size``, so a page's statements are a few texts, each
    prepared once per connection. Bind with :func:`values_rows_param`; :mod:`tongcrm.db.direct` binds the list
    as it is. The rows compile as ONE parameter behind a mark naming their size and width, which
    :func:`render_values` writes out as their placeholders in the compiled text: SQLAlchemy visited every value's
    parameter when the text held them (issue #22)."""
    width = len(columns) + 1
    source = (
        sa.text(f"VALUES {_VALUES_MARK}{size}x{width} :{VALUES_ROWS}")
        .columns(*(sa.column(f"column{i + 1}") for i in range(width)))
        .subquery("v")
    )
    values: list[Any] = [sa.literal_column(f"column{i + 2}").label(name) for i, name in enumerate(columns)]
    select = sa.select(*values).select_from(source).where(sa.literal_column("column1").is_not(None))
    return select.order_by(sa.literal_column("column1")) if in_order else select


#: What :func:`values_rows` compiles in place of its rows: the mark, ``<size>x<width>``, then the one parameter
#: that stands for them all (see :func:`render_values`).
_VALUES_MARK = "__tongcrm_values_"
_VALUES_AT = re.compile(re.escape(_VALUES_MARK) + r"(\d+)x(\d+) \?")


def render_values(sql: str) -> tuple[str, int]:
    """A compiled :func:`values_rows` statement's SQL with its ``VALUES`` rows written out as positional
    parameters, and how many there are (the flat list's length, :func:`values_rows_param`).

    :func:`values_rows` compiles one parameter in their place: SQLAlchemy's compiler visits a bind parameter
    per value, so a 512-row line upsert (12,288 values) took ~33 ms to compile, ~9 % of a 20,000-order sync's
    CPU on SQLite (issue #22). Written here as text, once per size and width (:func:`_values_text`), the
    statement compiles in the time of a one-row statement."""
    found = _VALUES_AT.search(sql)
    if found is None:
        raise ValueError("not a VALUES statement of tongcrm.db.dialect.values_rows")
    size, width = int(found[1]), int(found[2])
    return sql[: found.start()] + _values_text(size, width) + sql[found.end() :], size * width


@functools.lru_cache(maxsize=64)
def _values_text(size: int, width: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * size)


def values_rows_param(
    table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], size: int
) -> dict[str, list[Any]]:
    """The parameter of :func:`values_rows`: per row its position and its values in ``columns`` order, each
    converted by its column's SQLite bind processor as :func:`json_rows_param` converts them (so the rows
    stored are those an executemany stores), padded with NULLs to ``size`` rows. An integer beyond 64 bits is
    refused by the driver (``OverflowError``), as the executemany refused it."""
    if len(rows) > size:
        raise ValueError(f"{table.name}: {len(rows)} rows for a statement of {size}")
    if rows and (extra := set(rows[0]) - set(columns)):
        raise ValueError(f"{table.name}: values for columns the statement does not write: {sorted(extra)}")
    read = _row_reader(table, tuple(columns))
    flat: list[Any] = []
    for position, row in enumerate(rows):
        flat.append(position)
        flat.extend(read(row))
    flat.extend([None] * ((size - len(rows)) * (len(columns) + 1)))
    return {VALUES_ROWS: flat}


def json_rows_param(
    table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """The parameter of :func:`json_rows`: the rows as one JSON array of arrays, in ``columns`` order, each
    value converted by its column's SQLite bind processor (datetimes to SQLAlchemy's stored text, JSON to its
    serialised text, booleans to integers), the same values the executemany bound. A value JSON cannot carry
    (bytes, NaN, infinities) is refused, as is a key the statement has no column for (see
    :func:`column_arrays`), and so is an integer beyond SQLite's 64 bits (:data:`INT64`): the executemany
    refused it (``OverflowError``), and SQLite's JSON would have read it as a REAL, another number.

    The values are read with one ``itemgetter`` per row and only the columns that have a bind processor are
    converted (:func:`_row_reader`, built once per table and columns): converting value by value was ~18 % of
    a page's CPU on SQLite (issue #22)."""
    if not rows:
        return {JSON_ROWS: "[]"}
    if extra := set(rows[0]) - set(columns):
        raise ValueError(f"{table.name}: values for columns the statement does not write: {sorted(extra)}")
    text = _ENCODE(list(map(_row_reader(table, tuple(columns)), rows)))
    if _may_hold_wide_integers(text):
        _refuse_wide_integers(table, columns, rows)
    return {JSON_ROWS: text}


def sqlite_values(
    table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """SQLite: each row's values in ``columns`` order, converted by the columns' bind processors exactly as
    :func:`json_rows_param` converts them (so what is stored is what an ``INSERT`` through SQLAlchemy stores),
    for a plain ``executemany`` of one prepared statement on the driver: sqlite3 binds each row in C, with no
    JSON to build and parse again per value."""
    if rows and (extra := set(rows[0]) - set(columns)):
        raise ValueError(f"{table.name}: values for columns the statement does not write: {sorted(extra)}")
    return [tuple(values) for values in map(_row_reader(table, tuple(columns)), rows)]


def sqlite_tuples(
    table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[tuple[Any, ...]]:
    """:func:`sqlite_values` of rows already in ``columns`` order (tuples, as a ``COPY`` takes them on
    PostgreSQL): no dict per row to build and read back."""
    converting = _converting(table, tuple(columns))
    if not converting:
        return [tuple(row) for row in rows]
    out = []
    for row in rows:
        values = list(row)
        for i, convert in converting:
            values[i] = convert(values[i])
        out.append(tuple(values))
    return out


#: The integers SQLite stores as INTEGER; its JSON reads any other integer as a REAL.
INT64 = range(-(2**63), 2**63)
#: The C encoder, made once; NaN and infinities are refused (JSON has no such numbers).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: Digits to 0 and commas to ``[``: an array item of 19 digits or more then reads ``[`` and 19 zeros.
_DIGITS = bytes.maketrans(b"0123456789,", b"0000000000[")
_LONG = b"[" + b"0" * 19
_LONG_NEGATIVE = b"[-" + b"0" * 19


def _may_hold_wide_integers(text: str) -> bool:
    """Whether ``text`` (a JSON array of arrays) has an item of 19 digits or more, possibly beyond
    :data:`INT64`. Digits in a string are quoted and do not count, unless a comma stands before them inside the
    string; :func:`_refuse_wide_integers` then checks exactly. Byte translation and ``find`` run in C: ~20 µs
    for a page of 100 orders, where a regular expression took ~150 µs."""
    digits = text.encode().translate(_DIGITS)
    return _LONG in digits or _LONG_NEGATIVE in digits


@functools.lru_cache(maxsize=512)
def _row_reader(table: sa.Table, columns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """A row's values in ``columns`` order, converted by the bind processors of the columns that have one
    (integers and text have none on SQLite: they are bound as they are; see :func:`_converter`)."""
    get = operator.itemgetter(*columns)
    converting = _converting(table, columns)
    if len(columns) == 1:
        (only,) = columns
        convert = converting[0][1] if converting else None
        return lambda row: (row[only] if convert is None else convert(row[only]),)
    if not converting:
        return get  # a tuple, which JSON encodes as an array

    def read(row: Mapping[str, Any]) -> list[Any]:
        values = list(get(row))
        for i, convert in converting:
            values[i] = convert(values[i])
        return values

    return read


@functools.lru_cache(maxsize=512)
def _converting(table: sa.Table, columns: tuple[str, ...]) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """The positions among ``columns`` whose values have a bind processor on SQLite, with their converters (see
    :func:`_converter`; the columns of one type share theirs)."""
    shared: dict[tuple[type[Any], str], Callable[[Any], Any]] = {}
    return tuple(
        (i, convert)
        for i, name in enumerate(columns)
        if (convert := _converter(table.c[name], shared)) is not None
    )


#: Values of these types cannot change, so one converted a moment ago can be reused (see :func:`_converter`).
_IMMUTABLE = (datetime.datetime, datetime.date, bool, int, float, str, decimal.Decimal)


def _converter(
    column: sa.Column[Any], shared: dict[tuple[type[Any], str], Callable[[Any], Any]]
) -> Callable[[Any], Any] | None:
    """The column's SQLite bind processor (the type caches it per dialect), None when it has none; with two
    shortcuts of the same results. A JSON column's ``None`` is its ``null`` text at once. Otherwise, when the
    values cannot change, the last two values converted are remembered with their results, by identity, and
    shared by the row's columns of the same type (``shared``, one reader's, by the type's class and ``repr``):
    a page's rows share one ``ingested_at``/``updated_at`` (the same object), and an imported order binds the
    same datetime as its ``placed_at``, ``paid_at`` and ``modified_at`` — converted once a row instead of three
    times, which was half of the staged SQLite writer's conversion (issue #22)."""
    process = column.type._cached_bind_processor(_SQLITE)
    if process is None:
        return None
    if isinstance(column.type, sa.JSON):
        null = process(None)
        return lambda value: null if value is None else process(value)
    kind = column.type.impl_instance if isinstance(column.type, sa.TypeDecorator) else column.type
    try:
        immutable = kind.python_type in _IMMUTABLE
    except NotImplementedError:
        immutable = False
    if not immutable:
        return cast(Callable[[Any], Any], process)
    convert: Callable[[Any], Any] = process
    if isinstance(column.type, UTCDateTime):
        convert = _utc_texts(process)  # by value across columns and rows; the memo below by identity first
    key = (type(column.type), repr(column.type))
    if key not in shared:
        shared[key] = _remembering(convert)
    return shared[key]


def _remembering(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` remembering its last two values (immutable ones) and their results; ``None`` is converted
    once, up front, so a blank column between two times does not push them out."""
    null = process(None)
    empty: tuple[Any, Any] = (None, null)
    last: list[tuple[tuple[Any, Any], tuple[Any, Any]]] = [(empty, empty)]

    def convert(value: Any) -> Any:
        if value is None:
            return null
        newest, older = last[0]  # one tuple, swapped whole: safe across threads
        if value is newest[0]:
            return newest[1]
        if value is older[0]:
            return older[1]
        converted = process(value)
        last[0] = ((value, converted), newest)
        return converted

    return convert


#: :class:`UTCDateTime`'s SQLite text of the datetimes converted lately, shared by every column of that type
#: (see :func:`_utc_texts`); emptied when it holds this many.
_UTC_TEXTS: dict[datetime.datetime, str] = {}
_UTC_TEXTS_MAX = 8192


def _utc_texts(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``UTCDateTime``'s SQLite bind processor, remembering its text by value across columns and rows.

    An order's times often share one value (placed and paid, paid and modified; a refund's credit and its
    entries; a page's ``ingested_at``), each converted once a column: ~6 % of a SQLite sync's CPU was turning
    datetimes into text (issue #22). Equal aware datetimes are the same instant, hence the same UTC text; only
    values at a fixed offset (``datetime.timezone``, as the channels parse them) are looked up, since two
    times in a zone with daylight saving can compare equal across a fold and yet be different instants."""
    texts = _UTC_TEXTS
    fixed = datetime.timezone

    def convert(value: Any) -> Any:
        if value is None or type(value.tzinfo) is not fixed:
            return process(value)
        text = texts.get(value)
        if text is None:
            text = process(value)
            if len(texts) >= _UTC_TEXTS_MAX:
                texts.clear()
            texts[value] = text
        return text

    return convert


def _refuse_wide_integers(table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """The exact check behind :func:`_may_hold_wide_integers`, on the values as bound (a JSON column's number is
    text)."""
    for values in map(_row_reader(table, tuple(columns)), rows):
        for name, value in zip(columns, values, strict=True):
            if type(value) is int and value not in INT64:
                raise OverflowError(f"{table.name}.{name}: {value} does not fit SQLite's 64-bit INTEGER")


def json_records(param: str, columns: Sequence[tuple[str, Any]], *, alias: str) -> str:
    """PostgreSQL, for statements written as text: the rows bound as ONE JSON array of objects ``:param``
    (:func:`tongcrm.db.jsontext.json_bytes`), as the table ``alias`` with the named, typed ``columns`` and
    ``ordinality`` (each row's position): one text for any number of rows, whatever keys the objects also hold.

    One text parameter instead of an array per column: asyncpg encodes an array element by element, each
    checked against ``collections.abc`` classes (a Python call per element), and a posting of ledger entries
    bound 22 of them (issue #22). The server parses the JSON; a JSON ``null`` is SQL ``NULL``; JSON columns are
    read as ``JSONB``."""
    pg: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    definitions = ", ".join(f"{name} {_read_as(type_).compile(dialect=pg)}" for name, type_ in columns)
    return (
        f"ROWS FROM (json_to_recordset(CAST(:{param} AS JSON)) AS ({definitions})) WITH ORDINALITY AS {alias}"
    )


def json_table(param: str, columns: Sequence[tuple[str, Any]], alias: str) -> Any:
    """PostgreSQL, for statements SQLAlchemy builds: :func:`json_records` as a table-valued function — the
    records of the JSON text ``param`` (:func:`json_records_text`) as the table ``alias`` with the named, typed
    ``columns`` (``json_to_recordset``; no ordinality: bind a position as a column where order matters)."""
    text = sa.bindparam(param, type_=sa.Text())
    return (
        sa.func.json_to_recordset(sa.cast(text, sa.JSON))
        .table_valued(*(sa.column(name, _read_as(type_)) for name, type_ in columns))
        .render_derived(name=alias, with_types=True)
    )


def _read_as(type_: Any) -> Any:
    """The type a record's value is read as: JSON as ``JSONB``, a string as ``TEXT`` (the column's own length
    check then refuses a longer value; a cast to ``VARCHAR(n)`` would cut it), the rest as the column's."""
    if isinstance(type_, sa.JSON):
        return postgresql.JSONB()
    if isinstance(type_, sa.String) and not isinstance(type_, sa.Enum):
        return sa.Text()
    return type_


#: A datetime as msgspec writes one without a time zone, every digit written as 0 (:data:`_DIGITS_AS_ZERO`):
#: only a text holding one has its values looked at one by one.
_NAIVE_STAMP = re.compile(rb'"0000-00-00T00:00:00(?:\.0{1,6})?"')
#: Every ASCII digit as ``0``: :data:`_NAIVE_STAMP` then starts with a literal prefix, which ``re`` finds with a
#: fast substring search; a pattern opening on ``"\d`` was tried at every quote of the text, and cost a page's
#: records three times their encoding (py-spy, 20,000 orders on PostgreSQL, #22). The same positions match.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


def json_records_text(records: Sequence[Any]) -> str:
    """``records`` (dicts or dataclasses) as the JSON text :func:`json_records` reads: one parameter for a
    record set of any size, where a column per array cost asyncpg a Python check per element.

    A naive datetime is refused as :class:`tongcrm.db.base.UTCDateTime` refuses it (the server would read it in
    the session's time zone), without looking at every value: msgspec writes an aware one with its offset, so
    only a text holding a string shaped like a naive one (which a free-text value may also hold) has its
    records' datetimes checked. Only a record's own values are stored as timestamps; a nested one is JSON."""
    text = json_bytes(records)
    if _NAIVE_STAMP.search(text.translate(_DIGITS_AS_ZERO)):
        for record in records:
            values = record.values() if isinstance(record, Mapping) else _field_values(record)
            for value in values:
                if isinstance(value, datetime.datetime) and (
                    value.tzinfo is None or value.utcoffset() is None
                ):
                    raise ValueError(f"naive datetime {value!r} cannot be stored; use an aware datetime")
    return text.decode()


def _field_values(record: Any) -> list[Any]:
    return [getattr(record, f.name) for f in dataclasses.fields(record)]
