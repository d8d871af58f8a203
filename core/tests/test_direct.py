"""Direct statements (tongcrm.db.direct): compiled once and run on the session's driver connection, they write
and read what ``session.execute`` writes and reads, in the same transaction and savepoint, with the same
errors, and listeners still see them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import registry
from tongcrm.db import direct, inline_sqlite
from tongcrm.db.base import UTCDateTime
from tongcrm.db.dialect import insert_for
from tongcrm.db.engine import create_engine, create_inline_writer
from tongcrm.testing.database import TestDatabase

_meta = sa.MetaData()
_things = sa.Table(
    "direct_things",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False, unique=True),
    sa.Column("seen_at", UTCDateTime()),
    sa.Column("born", sa.Date),
    sa.Column("meta", sa.JSON),
    sa.Column("ok", sa.Boolean),
)
SEEN = datetime(2026, 11, 11, 0, 0, 1, 250_000, tzinfo=UTC)
_READ = (
    sa.select(_things.c.id, _things.c.seen_at, _things.c.born, _things.c.meta, _things.c.ok, _things.c.name)
    .where(_things.c.name.in_(sa.bindparam("names", expanding=True)), _things.c.id.in_([1, 2, 3]))
    .order_by(_things.c.id)
)
_ADD = (
    sa.insert(_things)
    .values(
        name=sa.bindparam("name"),
        seen_at=sa.bindparam("seen_at"),
        born=sa.bindparam("born"),
        meta=sa.bindparam("meta"),
        ok=sa.bindparam("ok"),
    )
    .returning(_things.c.id, _things.c.seen_at, _things.c.meta)
)


class _Thing:
    """The table mapped, for a row the ORM holds before a flush."""

    def __init__(self, name: str) -> None:
        self.name = name


registry().map_imperatively(_Thing, _things)
_RENAME = sa.update(_things).where(_things.c.id == sa.bindparam("thing")).values(name=sa.bindparam("name"))


@pytest.fixture(params=["writer", "engine"])
async def sessions(
    tongcrm_db: TestDatabase, request: pytest.FixtureRequest
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions as the counter's writer gets them (the inline SQLite writer, PostgreSQL's engine) and as
    everything else does (the ordinary engine: on SQLite a file's connection is aiosqlite's thread's)."""
    if request.param == "engine" and tongcrm_db.backend != "sqlite":
        pytest.skip("one engine on PostgreSQL")
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    engine: AsyncEngine = (
        create_inline_writer(tongcrm_db.url) if request.param == "writer" else None
    ) or tongcrm_db.engine
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        if engine is not tongcrm_db.engine:
            await engine.dispose()
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(_meta.drop_all)


def _thing(name: str, **values: Any) -> dict[str, Any]:
    return {"name": name, "seen_at": None, "born": None, "meta": None, "ok": None, **values}


async def test_rows_written_and_read_directly_are_those_the_session_writes_and_reads(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session, session.begin():
        [added] = await direct.rows(
            session, _ADD, _thing("a", seen_at=SEEN, born=date(1990, 2, 28), meta={"k": [1, 2]}, ok=True)
        )
        assert (added.seen_at, added.meta) == (SEEN, {"k": [1, 2]})
        await session.execute(_ADD, _thing("b"))
        mine = await direct.rows(session, _READ, {"names": ["a", "b"]})
        theirs = (await session.execute(_READ, {"names": ["a", "b"]})).all()
        assert [tuple(r) for r in mine] == [tuple(r) for r in theirs]
        assert mine[0].seen_at.tzinfo is not None and mine[0].ok is True
        # another length of the list is another plan; the list the statement holds itself still applies
        assert [r.name for r in await direct.rows(session, _READ, {"names": ["b"]})] == ["b"]
        assert await direct.first(session, _READ, {"names": ["zz", "yy", "xx"]}) is None
        await direct.rows(session, _RENAME, {"thing": added.id, "name": "c"})
    async with sessions() as session:  # committed with the session's transaction
        names = (await session.execute(sa.select(_things.c.name).order_by(_things.c.id))).scalars().all()
    assert names == ["c", "b"]


async def _two_on_a_savepoint(session: AsyncSession, *names: str) -> None:
    async with session.begin_nested():
        for name in names:
            await direct.rows(session, _ADD, _thing(name))


async def test_a_refused_statement_is_the_session_s_error_and_its_savepoint_rolls_it_back(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session, session.begin():
        await direct.rows(session, _ADD, _thing("a"))
        with pytest.raises(sa.exc.IntegrityError):
            await _two_on_a_savepoint(session, "b", "a")  # "a" is taken
        # the transaction goes on (on PostgreSQL the savepoint was rolled back, not the transaction aborted)
        await direct.rows(session, _ADD, _thing("c"))
    async with sessions() as session:
        names = (await session.execute(sa.select(_things.c.name).order_by(_things.c.name))).scalars().all()
    assert names == ["a", "c"]


async def test_a_refused_statement_s_message_hides_its_parameters_as_the_engine_does(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Engines hide bound parameters from error messages (members' data ends up in the server log otherwise)."""
    async with sessions() as session, session.begin():
        await direct.rows(session, _ADD, _thing("13800138000"))
        with pytest.raises(sa.exc.IntegrityError) as refused:
            await _two_on_a_savepoint(session, "13800138000")
    assert "13800138000" not in str(refused.value)
    assert "hidden" in str(refused.value)


async def test_what_the_orm_holds_goes_first_and_listeners_see_direct_statements(
    sessions: async_sessionmaker[AsyncSession], tongcrm_db: TestDatabase
) -> None:
    seen: list[str] = []

    def on(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append(" ".join(statement.split()))

    async with sessions() as session, session.begin():
        session.add(_Thing("a"))  # pending in the ORM: flushed before the direct statement, as before execute
        assert [r.name for r in await direct.rows(session, _READ, {"names": ["a"]})] == ["a"]
        event.listen(sa.engine.Engine, "before_cursor_execute", on)
        try:
            await direct.rows(session, _RENAME, {"thing": 1, "name": "b"})
        finally:
            event.remove(sa.engine.Engine, "before_cursor_execute", on)
        # an upsert of the dialect, as the till's statements are
        upsert = (
            insert_for(tongcrm_db.backend, _things)
            .values(name=sa.bindparam("name"))
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(_things.c.id)
        )
        assert await direct.first(session, upsert, {"name": "b"}) is None
        assert (await direct.first(session, upsert, {"name": "d"})) is not None
    assert [s for s in seen if s.upper().startswith("UPDATE DIRECT_THINGS")]


_ONE = sa.select(sa.literal(1, sa.Integer).label("one"))
_BACKEND_PID = sa.select(sa.func.pg_backend_pid().label("pid"))


@pytest.fixture
async def one_connection(tongcrm_db: TestDatabase) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions of an engine that keeps one connection: the next session gets the connection the last had."""
    engine = create_inline_writer(tongcrm_db.url) or create_engine(tongcrm_db.url, pool_size=1)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


async def _lose_connection(session: AsyncSession, tongcrm_db: TestDatabase) -> None:
    """The session's connection lost under it: its PostgreSQL backend terminated, its SQLite file closed."""
    if tongcrm_db.backend == "postgresql":
        [mine] = await direct.rows(session, _BACKEND_PID, {})
        async with tongcrm_db.engine.connect() as other:
            await other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": mine.pid})
        await asyncio.sleep(0.2)  # the server closes the socket
    else:
        raw = await (await session.connection()).get_raw_connection()
        raw.driver_connection._conn.close()


async def test_a_connection_lost_under_a_direct_statement_is_invalidated_as_the_session_s_would_be(
    one_connection: async_sessionmaker[AsyncSession], tongcrm_db: TestDatabase
) -> None:
    async with one_connection() as session:
        await session.begin()
        await _lose_connection(session, tongcrm_db)
        with pytest.raises(sa.exc.DBAPIError) as lost:
            await direct.rows(session, _ONE, {})
        # SQLAlchemy's disconnect handling ran: the connection is invalidated, not handed back to the pool
        assert lost.value.connection_invalidated
        # and the unit of work cannot commit as if its statements had been written
        with pytest.raises(sa.exc.SQLAlchemyError):
            await session.commit()
    for _ in range(3):  # the pool's next connections work (a dead one handed out again would fail here)
        async with one_connection() as session, session.begin():
            assert [r.one for r in await direct.rows(session, _ONE, {})] == [1]


def test_a_plan_is_kept_under_the_dialect_and_the_length_of_each_list() -> None:
    from sqlalchemy.dialects import postgresql, sqlite
    from tongcrm.db.direct import plan_shape

    params = {"a": [1, 2], "b": ["x"], "c": [], "n": 5}
    assert plan_shape(sqlite.dialect(), (), params) == ("sqlite", ())
    assert plan_shape(sqlite.dialect(), ("a",), params) == ("sqlite", (2,))
    assert plan_shape(postgresql.dialect(), ("a", "b", "c"), params) == ("postgresql", (2, 1, 0))


async def test_on_sqlite_s_ordinary_engine_a_direct_statement_is_one_hand_off_to_aiosqlite_s_thread(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statement, rows and close in one call on the thread, in writing and read-only transactions alike."""
    from tongcrm.db.engine import session_factory

    async with _hand_offs(tongcrm_db, monkeypatch) as calls:
        async with tongcrm_db.sessions() as session, session.begin():
            await session.connection()  # BEGIN IMMEDIATE
            calls.clear()
            [added] = await direct.rows(session, _ADD, _thing("a", seen_at=SEEN, meta={"k": 1}))
            assert [r.name for r in await direct.rows(session, _READ, {"names": ["a"]})] == ["a"]
            assert len(calls) == 2
            assert (added.seen_at, added.meta) == (SEEN, {"k": 1})
        async with session_factory(tongcrm_db.engine, readonly=True)() as session, session.begin():
            await session.connection()
            calls.clear()
            assert [r.id for r in await direct.rows(session, _READ, {"names": ["a"]})] == [added.id]
            assert len(calls) == 1


@asynccontextmanager
async def _hand_offs(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[object]]:
    """SQLite's ordinary engine with the test table: the calls handed to aiosqlite's thread, as they are made."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("aiosqlite's thread is SQLite's")
    from tongcrm.db import sqlite_thread

    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    calls: list[object] = []
    handed = sqlite_thread.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await handed(self, fn, *args, **kwargs)

    monkeypatch.setattr(sqlite_thread.Connection, "_execute", counted)
    try:
        yield calls
    finally:
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(_meta.drop_all)


_SET_SEEN = sa.update(_things).where(_things.c.name == sa.bindparam("n")).values(seen_at=sa.bindparam("at"))


async def test_a_batch_runs_its_steps_in_order_and_returns_each_one_s_rows(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Single statements and executemanys, as :func:`direct.rows` and ``session.execute`` would run them one by
    one (an executemany of no rows runs nothing); the listeners see every statement."""
    seen: list[tuple[str, bool]] = []
    async with sessions() as session, session.begin():
        sync = (await session.connection()).sync_connection

        def heard(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
            seen.append((statement.split()[0], many))

        event.listen(sync.engine, "before_cursor_execute", heard)
        try:
            added, nothing, many, empty, read = await direct.batch(
                session,
                [
                    (_ADD, _thing("a", meta={"k": 1})),
                    (_RENAME, {"thing": -1, "name": "z"}),
                    (_SET_SEEN, [{"n": "a", "at": SEEN}, {"n": "none", "at": SEEN}]),
                    (_SET_SEEN, []),
                    (_READ, {"names": ["a"]}),
                ],
            )
        finally:
            event.remove(sync.engine, "before_cursor_execute", heard)
        assert [r.meta for r in added] == [{"k": 1}] and nothing == [] and many == [] and empty == []
        assert [(r.name, r.seen_at) for r in read] == [("a", SEEN)]
        assert await direct.batch(session, []) == []
    assert [s for s in seen if s[0] != "SAVEPOINT"] == [
        ("INSERT", False), ("UPDATE", False), ("UPDATE", True), ("SELECT", False)
    ]  # fmt: skip
    async with sessions() as session:
        rows = (await session.execute(sa.select(_things.c.name, _things.c.seen_at))).all()
    assert [tuple(r) for r in rows] == [("a", SEEN)]


async def test_a_refused_step_of_a_batch_is_the_session_s_error_for_that_statement(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The step that failed raises as the session would (its parameters hidden); the steps before it ran, in
    the caller's transaction (here its savepoint, rolled back), and those after it did not."""
    async with sessions() as session, session.begin():
        await direct.rows(session, _ADD, _thing("13800138000"))
        with pytest.raises(sa.exc.IntegrityError) as refused:
            async with session.begin_nested():
                await direct.batch(
                    session, [(_ADD, _thing("b")), (_ADD, _thing("13800138000")), (_ADD, _thing("c"))]
                )
        assert "13800138000" not in str(refused.value) and "INSERT" in str(refused.value)
        await direct.batch(session, [(_ADD, _thing("d"))])
    async with sessions() as session:
        names = (await session.execute(sa.select(_things.c.name).order_by(_things.c.name))).scalars().all()
    assert names == ["13800138000", "d"]


async def test_on_sqlite_s_ordinary_engine_a_batch_is_one_hand_off_to_aiosqlite_s_thread(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        _hand_offs(tongcrm_db, monkeypatch) as calls,
        tongcrm_db.sessions() as session,
        session.begin(),
    ):
        await session.connection()  # BEGIN IMMEDIATE
        calls.clear()
        added, _, read = await direct.batch(
            session,
            [
                (_ADD, _thing("a", seen_at=SEEN)),
                (_SET_SEEN, [{"n": "a", "at": None}, {"n": "a", "at": SEEN}]),
                (_READ, {"names": ["a"]}),
            ],
        )
        assert len(calls) == 1
        assert [(r.id, r.seen_at) for r in read] == [(added[0].id, SEEN)]


async def test_on_sqlite_s_inline_writer_a_batch_is_one_call_and_a_busy_step_is_retried_from_itself(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline writer runs a batch's statements in one call of its driver (one busy retry and one turn for
    the batch). A step refused busy had no effect and is retried with the steps after it; the steps before it
    ran once (a second run of the first insert would add a second row)."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("the inline writer is SQLite's")
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    engine = create_inline_writer(tongcrm_db.url)
    assert engine is not None
    calls: list[object] = []
    ran = inline_sqlite.InlineConnection.run

    async def counted(self: Any, call: Any) -> Any:
        calls.append(call)
        return await ran(self, call)

    monkeypatch.setattr(inline_sqlite.InlineConnection, "run", counted)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            await direct.rows(session, _ADD, _thing("first"))  # the write lock taken
            calls.clear()
            added, _, read = await direct.batch(
                session,
                [
                    (_ADD, _thing("a", seen_at=SEEN)),
                    (_SET_SEEN, [{"n": "a", "at": None}, {"n": "a", "at": SEEN}]),
                    (_READ, {"names": ["a"]}),
                ],
            )
            assert len(calls) == 1
            assert [(r.id, r.seen_at) for r in read] == [(added[0].id, SEEN)]

            driver = (await session.connection()).sync_connection.connection.driver_connection
            refusals = [sqlite3.OperationalError("database is locked")]
            real = driver._conn

            class Refusing:  # the connection, its cursors refusing the first UPDATE as busy
                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

                def cursor(self) -> Any:
                    inner = real.cursor()

                    class Cursor:
                        description = property(lambda _self: inner.description)

                        def execute(self, sql: str, args: Any) -> Any:
                            if sql.startswith("UPDATE") and refusals:
                                raise refusals.pop()
                            return inner.execute(sql, args)

                        def close(self) -> None:
                            inner.close()

                    return Cursor()

            sent: list[str] = []
            real.set_trace_callback(sent.append)
            driver._conn = Refusing()
            calls.clear()
            try:
                await direct.batch(
                    session, [(_ADD, _thing("b")), (_RENAME, {"thing": added[0].id, "name": "renamed"})]
                )
            finally:
                driver._conn = real
                real.set_trace_callback(None)
            assert refusals == [] and len(calls) == 1
            assert [s.split()[0] for s in sent] == ["INSERT", "UPDATE"]  # the insert once, the update retried
            names = await direct.rows(session, sa.select(_things.c.name).order_by(_things.c.name), {})
            assert [r.name for r in names] == ["b", "first", "renamed"]
    finally:
        await engine.dispose()
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(_meta.drop_all)


@asynccontextmanager
async def _held_or_run(tongcrm_db: TestDatabase) -> AsyncIterator[float]:
    """How a statement is caught while its driver is awaited: on PostgreSQL, waiting for a table lock another
    connection holds (for as long as the block lasts); on SQLite's inline writer, in the turn it gives other
    tasks right after the statement ran (the task's first pause; the test has the writer give one after every
    statement, not once per :data:`~tongcrm.db.inline_sqlite.TURN_S`). Yields how long to let the task run."""
    if tongcrm_db.backend == "postgresql":
        async with tongcrm_db.engine.connect() as other:
            await other.execute(sa.text("LOCK TABLE direct_things IN ACCESS EXCLUSIVE MODE"))
            yield 0.3
            await other.rollback()
    else:
        yield 0


async def _pid(session: AsyncSession, tongcrm_db: TestDatabase) -> int | None:
    if tongcrm_db.backend != "postgresql":
        return None
    return int((await direct.rows(session, _BACKEND_PID, {}))[0].pid)


@pytest.mark.parametrize("way", ["direct", "session"])
async def test_a_cancelled_statement_invalidates_its_connection_as_the_session_s_would(
    sessions: async_sessionmaker[AsyncSession],
    one_connection: async_sessionmaker[AsyncSession],
    tongcrm_db: TestDatabase,
    way: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A statement cancelled while its driver is awaited (waiting for a lock, or once it ran: see
    :func:`_held_or_run`) leaves its connection in an unknown state: ``session.execute`` invalidates it and the unit of work cannot
    commit; a direct statement does the same (its unit of work used to commit as if nothing had happened, and
    its connection went back to the pool)."""
    if way == "session" and tongcrm_db.backend == "sqlite":
        # the reference is PostgreSQL's: under pytest, the session's own path on the inline writer leaves the
        # file locked after such a cancellation (the next BEGIN IMMEDIATE waits 30 s), which a script does not
        pytest.skip("session.execute's cancellation on the inline SQLite writer: see the comment above")
    monkeypatch.setattr(inline_sqlite, "TURN_S", 0.0)  # a turn after every statement (see _held_or_run)
    async with one_connection() as session:
        await session.begin()
        assert [r.one for r in await direct.rows(session, _ONE, {})] == [1]  # connected, in its transaction
        first_pid = await _pid(session, tongcrm_db)
        async with _held_or_run(tongcrm_db) as pause:
            if way == "direct":
                task = asyncio.create_task(direct.rows(session, _ADD, _thing("cancelled")))
            else:
                task = asyncio.create_task(session.execute(_ADD, _thing("cancelled")))
            await asyncio.sleep(pause)
            assert not task.done(), "the statement did not wait"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        with pytest.raises(sa.exc.SQLAlchemyError):  # the unit of work cannot commit half of itself
            await session.commit()
    async with one_connection() as session, session.begin():  # the pool's connection is a new one
        assert [r.name for r in await direct.rows(session, _READ, {"names": ["cancelled"]})] == []
        if first_pid is not None:
            assert await _pid(session, tongcrm_db) != first_pid
