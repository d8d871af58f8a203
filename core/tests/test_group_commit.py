"""Writing units of work of the counter that arrive while one is open (tongcrm.db.held.GroupCommit, SQLite's group
commit): each in a savepoint of its own, a failure rolled back and raised for that unit alone, a duplicate key
met inside the group, every unit answered only after the one COMMIT that makes it durable, and a failed COMMIT
failing the whole group. The same units run on PostgreSQL, where each commits alone: the outcomes must be the
same on both databases."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.audit import chain
from tongcrm.audit import service as audit
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import SYSTEM
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.db import held, inline_sqlite
from tongcrm.db.engine import create_inline_writer, session_factory
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase

_meta = sa.MetaData()
_items = sa.Table(
    "group_items",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False, unique=True),
)
TABLES = (_items,)
_NAMES = sa.select(_items.c.name).order_by(_items.c.name)
_ADD = sa.insert(_items).values(name=sa.bindparam("name")).returning(_items.c.id)


class Refused(Exception):
    """A unit's own failure, raised after it wrote."""


@pytest.fixture
async def counter(tongcrm_db: TestDatabase, tongcrm_settings: Settings) -> AsyncIterator[CounterService]:
    """A counter on the app's writer: SQLite's inline writer (group commit), PostgreSQL's engine."""
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    writer = create_inline_writer(tongcrm_db.url) or tongcrm_db.engine
    service = CounterService(
        session_factory(writer), session_factory(writer, readonly=True), PluginHost(), tongcrm_settings
    )
    try:
        yield service
    finally:
        await service.close()
        if writer is not tongcrm_db.engine:
            await writer.dispose()
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(_meta.drop_all)


@pytest.fixture(autouse=True)
def _groups_unhurried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group's age bound (10 ms) is shorter than a loaded test machine's pauses: held off here, so the units
    started together are one group (test_the_bounds holds the bounds themselves)."""
    monkeypatch.setattr(held, "GROUP_MAX_S", 60.0)


async def _names(tongcrm_db: TestDatabase) -> list[str]:
    """What another connection sees committed."""
    async with tongcrm_db.engine.connect() as conn:
        return list((await conn.execute(_NAMES)).scalars())


def _grouped(tongcrm_db: TestDatabase) -> bool:
    return tongcrm_db.backend == "sqlite"


async def _unit(
    counter: CounterService,
    tongcrm_db: TestDatabase,
    name: str,
    *,
    fail: BaseException | None = None,
    claim: bool = False,
) -> bool:
    """One writing unit of work adding ``name`` (``claim``: if it is not there yet, as a receipt's claim does),
    failing with ``fail`` after its write. Once its block has ended the row must be visible to another
    connection: nobody is answered before the commit. True when it inserted the row."""
    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        await asyncio.sleep(0)  # every unit started with it reaches the writer turn before this one is done
        if claim:
            statement = uow.rows.insert(_items).values(name=sa.bindparam("name"))
            row = await uow.rows.first(
                statement.on_conflict_do_nothing().returning(_items.c.id), {"name": name}
            )
        else:
            row = await uow.rows.first(_ADD, {"name": name})
        if fail is not None:
            raise fail
    assert name in await _names(tongcrm_db), f"{name} answered before it was committed"
    return row is not None


async def test_units_that_arrive_together_are_committed_together(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    names = [f"r{n}" for n in range(8)]
    done = await asyncio.gather(*(_unit(counter, tongcrm_db, name) for name in names))
    assert done == [True] * 8
    assert await _names(tongcrm_db) == names
    if _grouped(tongcrm_db):
        assert (counter.group.commits, counter.group.committed_units) == (1, 8)


async def test_a_lone_unit_commits_at_once(counter: CounterService, tongcrm_db: TestDatabase) -> None:
    """Nobody queued behind it: no group is held open, one COMMIT a unit, as before."""
    for n in range(3):
        assert await _unit(counter, tongcrm_db, f"alone{n}")
    if _grouped(tongcrm_db):
        assert (counter.group.commits, counter.group.committed_units) == (3, 3)


@pytest.mark.parametrize("where", [0, 3, 7], ids=["lead", "middle", "last"])
async def test_a_failing_unit_is_rolled_back_alone_and_gets_its_own_error(
    counter: CounterService, tongcrm_db: TestDatabase, where: int
) -> None:
    names = [f"r{n}" for n in range(8)]
    fails: list[BaseException | None] = [None] * 8
    fails[where] = Refused(f"r{where} refused")
    answers = await asyncio.gather(
        *(_unit(counter, tongcrm_db, name, fail=fail) for name, fail in zip(names, fails, strict=True)),
        return_exceptions=True,
    )
    assert isinstance(answers[where], Refused) and str(answers[where]) == f"r{where} refused"
    assert [a for i, a in enumerate(answers) if i != where] == [True] * 7
    assert await _names(tongcrm_db) == [n for i, n in enumerate(names) if i != where]
    if _grouped(tongcrm_db):
        assert counter.group.committed_units == 7


async def test_a_statement_the_database_refuses_fails_its_unit_only(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    """The second ``a`` breaks the unique name: an ``IntegrityError`` for it; the group goes on."""
    answers = await asyncio.gather(
        *(_unit(counter, tongcrm_db, name) for name in ("a", "b", "a", "c")), return_exceptions=True
    )
    assert answers[1] is True and answers[3] is True
    # SQLite: the first in the turn wrote it; PostgreSQL: whichever inserted first (the other waited for it)
    first, second = answers[0], answers[2]
    assert (first is True and isinstance(second, sa.exc.IntegrityError)) or (
        second is True and isinstance(first, sa.exc.IntegrityError) and not _grouped(tongcrm_db)
    ), answers
    assert await _names(tongcrm_db) == ["a", "b", "c"]


async def test_a_key_sent_twice_in_one_group_is_written_once(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    """A receipt's claim twice at once: the second meets the first's row (uncommitted, in the same
    transaction on SQLite) and writes nothing; both are answered after the commit."""
    answers = await asyncio.gather(
        *(_unit(counter, tongcrm_db, name, claim=True) for name in ("k1", "k2", "k1", "k3"))
    )
    assert answers[1] is True and answers[3] is True
    assert sorted((answers[0], answers[2])) == [False, True]  # SQLite: the first in the turn
    if _grouped(tongcrm_db):
        assert answers[0] is True
    assert await _names(tongcrm_db) == ["k1", "k2", "k3"]
    if _grouped(tongcrm_db):
        assert (counter.group.commits, counter.group.committed_units) == (1, 4)


async def test_a_failed_commit_answers_nobody_success(
    counter: CounterService, tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group's COMMIT fails (a disk error): every unit in it raises, nothing of any is written, and the
    writer serves the next unit."""
    if not _grouped(tongcrm_db):
        pytest.skip("no group on PostgreSQL: each unit commits alone (tests/test_held.py)")
    real = inline_sqlite.InlineConnection.commit
    failing = [True]

    async def commit(self: inline_sqlite.InlineConnection) -> None:
        if failing.pop() if failing else False:
            raise sqlite3.OperationalError("disk I/O error")
        await real(self)

    monkeypatch.setattr(inline_sqlite.InlineConnection, "commit", commit)
    answers = await asyncio.gather(
        *(_unit(counter, tongcrm_db, f"r{n}") for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(a, sa.exc.OperationalError) for a in answers), answers
    assert await _names(tongcrm_db) == []
    assert counter.group.commits == 0
    assert await _unit(counter, tongcrm_db, "after")
    assert await _names(tongcrm_db) == ["after"]


async def test_a_transaction_lost_under_a_joiner_fails_the_whole_group(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    """SQLite rolled the whole transaction back under a joiner (as after a full disk): the units before it
    in the group fail with it (their work is gone), none is answered success, and the writer goes on."""
    if not _grouped(tongcrm_db):
        pytest.skip("no group on PostgreSQL")

    async def lost() -> None:
        async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
            await asyncio.sleep(0)
            await uow.rows.first(_ADD, {"name": "lost"})
            counter.group._group.held.driver._conn.rollback()  # type: ignore[union-attr]
            raise sqlite3.OperationalError("database or disk is full")

    answers = await asyncio.gather(
        _unit(counter, tongcrm_db, "r0"),
        _unit(counter, tongcrm_db, "r1"),
        lost(),
        _unit(counter, tongcrm_db, "r3"),
        return_exceptions=True,
    )
    assert isinstance(answers[0], sqlite3.OperationalError) and isinstance(
        answers[1], sqlite3.OperationalError
    )
    assert isinstance(answers[2], sqlite3.OperationalError)
    assert answers[3] is True  # came after: a group of its own
    assert await _names(tongcrm_db) == ["r3"]


async def test_the_orm_and_the_audit_chain_inside_a_group(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    """A joiner that begins the ORM session and stages an audit record: flushed and chained in its savepoint;
    a joiner whose ORM work fails is rolled back alone (its audit record with it)."""

    async def orm(name: str, fail: bool) -> None:
        async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
            await asyncio.sleep(0)
            await uow.rows.execute(sa.insert(_items).values(name=name))
            audit.record(uow._session, SYSTEM, "group.test", "item", name)
            if fail:
                raise Refused(name)

    answers = await asyncio.gather(
        _unit(counter, tongcrm_db, "a"),
        orm("b", False),
        orm("c", True),
        orm("d", False),
        return_exceptions=True,
    )
    assert (
        answers[0] is True and answers[1] is None and isinstance(answers[2], Refused) and answers[3] is None
    )
    assert await _names(tongcrm_db) == ["a", "b", "d"]
    async with tongcrm_db.sessions() as session:
        rows = (
            await session.execute(
                sa.select(AuditEntry.object_id, AuditEntry.seq)
                .where(AuditEntry.action == "group.test")
                .order_by(AuditEntry.seq)
            )
        ).all()
        assert sorted(r.object_id for r in rows) == ["b", "d"]  # PostgreSQL: in the order they committed
        assert rows[1].seq == rows[0].seq + 1
        assert (await chain.verify(session)).ok


async def test_a_unit_cancelled_in_the_queue_leaves_no_group_open(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    """The lead handed the turn to a unit queued behind it, which was cancelled before it ran: the group is
    committed all the same and the lead answered."""
    if not _grouped(tongcrm_db):
        pytest.skip("PostgreSQL's writers run at once: nobody queues behind a lead")
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def lead() -> bool:
        async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
            await asyncio.sleep(0)  # the other unit queues
            await uow.rows.first(_ADD, {"name": "lead"})
            asyncio.get_running_loop().call_soon(tasks["queued"].cancel)
        return True

    tasks["lead"] = asyncio.ensure_future(lead())
    tasks["queued"] = asyncio.ensure_future(_unit(counter, tongcrm_db, "queued"))
    assert await asyncio.wait_for(tasks["lead"], 5)
    with pytest.raises(asyncio.CancelledError):
        await tasks["queued"]
    assert await _names(tongcrm_db) == ["lead"]
    assert await _unit(counter, tongcrm_db, "next")
    assert await _names(tongcrm_db) == ["lead", "next"]


@pytest.mark.parametrize(("most", "age", "commits"), [(3, 60.0, 3), (16, 0.0, 8)], ids=["count", "age"])
async def test_a_group_is_bounded_by_count_and_age(
    counter: CounterService, tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch, most: int, age: float,
    commits: int,
) -> None:  # fmt: skip
    """At most GROUP_MAX units a group (8 queued at once, 3 a group: 3 commits); none joins a group older
    than GROUP_MAX_S (0: every unit commits alone)."""
    if not _grouped(tongcrm_db):
        pytest.skip("no group on PostgreSQL")
    monkeypatch.setattr(held, "GROUP_MAX", most)
    monkeypatch.setattr(held, "GROUP_MAX_S", age)
    names = [f"r{n}" for n in range(8)]
    assert await asyncio.gather(*(_unit(counter, tongcrm_db, name) for name in names)) == [True] * 8
    assert await _names(tongcrm_db) == names
    assert (counter.group.commits, counter.group.committed_units) == (commits, 8)
