"""The audit log's hash chain: appends chain in order (also concurrently), and ``verify`` finds records edited,
inserted or removed behind the application's back with raw SQL, on each database."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm.audit import chain
from tongcrm.audit import service as audit
from tongcrm.audit.models import AuditChainHead, AuditEntry
from tongcrm.cli import Context, build_cli
from tongcrm.db import migrate
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase, open_database, scratch_url


async def _append(db: TestDatabase, *object_ids: int, before: dict[str, Any] | None = None) -> None:
    async with db.sessions() as session, session.begin():
        for object_id in object_ids:
            audit.record(
                session,
                audit.SYSTEM,
                "member.update",
                "member",
                object_id,
                before=before or {"name": "张*", "tags": ("vip",)},
                after={"name": "李*", "n": object_id},
            )


async def _verify(db: TestDatabase) -> chain.ChainReport:
    async with db.read_sessions() as session, session.begin():
        return await chain.verify(session, batch=2)  # small pages: the walk crosses page boundaries


async def _raw(db: TestDatabase, sql: str, **params: Any) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def _rows(db: TestDatabase) -> list[AuditEntry]:
    async with db.sessions() as session:
        return list((await session.execute(sa.select(AuditEntry).order_by(AuditEntry.seq))).scalars())


async def test_appends_are_chained_in_order_across_transactions(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3)
    await _append(tongcrm_db, 4, 5)
    rows = await _rows(tongcrm_db)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [r.object_id for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0].prev_hash == chain.GENESIS
    for previous, row in itertools.pairwise(rows):
        assert row.prev_hash == previous.hash
    # the hash is SHA-256 over the canonical encoding, recomputable by anyone from the stored fields
    assert rows[2].hash == hashlib.sha256(chain.canonical(**_fields(rows[2]))).hexdigest()
    assert rows[0].before == {"name": "张*", "tags": ["vip"]}  # stored as read back, so the digest holds
    # the chain covers the content through a digest salted per record (so a short value cannot be guessed)
    assert rows[2].content_salt is not None and len({r.content_salt for r in rows}) == 5
    assert rows[2].content_digest == chain.content_digest(rows[2].content_salt, rows[2].before, rows[2].after)
    report = await _verify(tongcrm_db)
    assert report.ok and report.records == 5
    assert (report.head_seq, report.head_hash) == (5, rows[-1].hash)


def _fields(row: AuditEntry) -> dict[str, Any]:
    names = ("seq", "at", "actor", "actor_key_id", "role", "action", "object_type", "object_id")
    return {n: getattr(row, n) for n in (*names, "content_digest", "request_id", "prev_hash")}


async def test_a_rolled_back_append_leaves_no_gap(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1)
    async with tongcrm_db.sessions() as session, session.begin():
        audit.record(session, audit.SYSTEM, "member.update", "member", 2)
        await session.flush()
        await session.rollback()
    await _append(tongcrm_db, 3)
    assert [(r.seq, r.object_id) for r in await _rows(tongcrm_db)] == [(1, "1"), (2, "3")]
    assert (await _verify(tongcrm_db)).ok


async def test_concurrent_appends_never_share_a_predecessor(tongcrm_db: TestDatabase) -> None:
    async def writer(n: int) -> None:
        async with tongcrm_db.sessions() as session, session.begin():
            audit.record(session, audit.SYSTEM, "test.write", "thing", n)
            await session.flush()
            await asyncio.sleep(0.01)  # let the units of work interleave
            audit.record(session, audit.SYSTEM, "test.write", "thing", n)

    await asyncio.gather(*(writer(n) for n in range(12)))
    rows = await _rows(tongcrm_db)
    assert [r.seq for r in rows] == list(range(1, 25))
    assert len({r.prev_hash for r in rows}) == 24
    report = await _verify(tongcrm_db)
    assert report.ok, report.findings


async def test_a_record_made_in_a_rolled_back_savepoint_is_dropped(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        audit.record(session, audit.SYSTEM, "outer.before", "thing", 1)
        try:
            async with session.begin_nested():
                audit.record(session, audit.SYSTEM, "inner.undone", "thing", 2)
                async with session.begin_nested():
                    audit.record(session, audit.SYSTEM, "inner.released.then.undone", "thing", 3)
                raise RuntimeError("undo the savepoint")
        except RuntimeError:
            pass
        async with session.begin_nested():
            audit.record(session, audit.SYSTEM, "inner.kept", "thing", 4)
        audit.record(session, audit.SYSTEM, "outer.after", "thing", 5)
    assert [(r.seq, r.action) for r in await _rows(tongcrm_db)] == [
        (1, "outer.before"),
        (2, "inner.kept"),
        (3, "outer.after"),
    ]
    assert (await _verify(tongcrm_db)).ok


async def test_a_long_unit_of_work_does_not_hold_up_other_audited_changes(tongcrm_db: TestDatabase) -> None:
    if tongcrm_db.backend == "sqlite":
        pytest.skip(
            "SQLite serialises whole write transactions (BEGIN IMMEDIATE); the head lock is PostgreSQL's"
        )
    other_done = asyncio.Event()

    async def long_unit() -> None:
        async with tongcrm_db.sessions() as session, session.begin():
            audit.record(session, audit.SYSTEM, "long.first", "thing", 1)
            await session.flush()
            # still working: another audited change commits meanwhile instead of queueing behind this one
            await asyncio.wait_for(other_done.wait(), timeout=10)
            audit.record(session, audit.SYSTEM, "long.second", "thing", 1)

    async def short_unit() -> None:
        await asyncio.sleep(0.05)
        await _append(tongcrm_db, 2)
        other_done.set()

    await asyncio.gather(long_unit(), short_unit())
    assert [(r.seq, r.action) for r in await _rows(tongcrm_db)] == [
        (1, "member.update"),
        (2, "long.first"),
        (3, "long.second"),
    ]
    assert (await _verify(tongcrm_db)).ok


async def test_an_edited_record_is_named(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3, 4)
    victim = (await _rows(tongcrm_db))[1]
    await _raw(tongcrm_db, "UPDATE audit_log SET actor = 'key:99' WHERE id = :id", id=victim.id)
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq, f.record_id) for f in report.findings] == [("edited", 2, victim.id)]
    assert "was edited" in report.findings[0].detail


async def test_an_edit_that_recomputes_its_own_hash_breaks_the_next_link(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3)
    victim = (await _rows(tongcrm_db))[1]
    forged = dict(_fields(victim), object_id="999")
    new_hash = chain.record_hash(SimpleNamespace(**forged))
    await _raw(
        tongcrm_db,
        "UPDATE audit_log SET object_id = '999', hash = :h WHERE id = :id",
        h=new_hash,
        id=victim.id,
    )
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq) for f in report.findings] == [("inserted", 3)]
    assert f"does not follow record {victim.id}" in report.findings[0].detail


async def test_a_removed_record_is_named(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3, 4, 5)
    rows = await _rows(tongcrm_db)
    await _raw(tongcrm_db, "DELETE FROM audit_log WHERE seq IN (2, 3)")
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq) for f in report.findings] == [("removed", 2)]
    assert "seq 2 to 3 were removed" in report.findings[0].detail
    assert f"after record {rows[0].id}, before record {rows[3].id}" in report.findings[0].detail


async def test_removing_the_newest_record_is_found_through_the_head(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3)
    await _raw(tongcrm_db, "DELETE FROM audit_log WHERE seq = 3")
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq) for f in report.findings] == [("removed", 3)]


async def test_a_record_inserted_behind_the_applications_back_is_named(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2)
    last = (await _rows(tongcrm_db))[-1]
    # a forger who knows the encoding appends a well-formed record, but cannot move the head in the same breath
    forged = {
        "seq": 3,
        "at": datetime(2026, 12, 1, tzinfo=UTC),
        "actor": "key:1",
        "actor_key_id": 1,
        "role": "admin",
        "action": "member.update",
        "object_type": "member",
        "object_id": "7",
        "before": None,
        "after": None,
        "content_salt": "00" * 16,
        "content_digest": chain.content_digest("00" * 16, None, None),
        "request_id": None,
        "prev_hash": last.hash,
    }
    digest = chain.record_hash(SimpleNamespace(**forged))
    async with tongcrm_db.engine.begin() as conn:
        await conn.execute(sa.insert(AuditEntry.__table__).values(**forged, hash=digest))
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq) for f in report.findings] == [("inserted", 3)]
    assert "beyond the chain head" in report.findings[0].detail


async def test_the_head_row_deleted_is_reported(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1)
    await _raw(tongcrm_db, "DELETE FROM audit_chain_head")
    report = await _verify(tongcrm_db)
    assert [f.kind for f in report.findings] == ["head"]


async def test_verify_api_is_for_admins_and_reports_breaks(
    tongcrm_db: TestDatabase, make_client: Any
) -> None:
    async with make_client(role="analyst") as analyst:
        assert (await analyst.get("/api/audit/verify")).status_code == 403
    async with make_client() as admin:
        created = await admin.post("/api/members", json={"name": "王五"})
        assert created.status_code == 201
        ok = (await admin.get("/api/audit/verify")).json()
        assert ok["ok"] is True and ok["records"] >= 1 and ok["findings"] == []
        await _raw(tongcrm_db, "UPDATE audit_log SET after = NULL WHERE seq = 1")
        broken = (await admin.get("/api/audit/verify")).json()
        assert broken["ok"] is False
        assert [(f["kind"], f["seq"]) for f in broken["findings"]] == [("edited", 1)]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("TONGCRM_DATABASE_URL", url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    return url


def test_cli_audit_verify_exits_non_zero_on_a_break(cli_env: str) -> None:
    host = PluginHost(autoload=True, disabled=set())

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host))

    async def on_db(sql: str | None) -> None:
        async with open_database("sqlite", cli_env) as db:
            await (_raw(db, sql) if sql else _append(db, 1, 2))

    assert invoke("db", "upgrade").exit_code == 0
    asyncio.run(on_db(None))
    good = invoke("audit", "verify")
    assert good.exit_code == 0, good.output
    assert "2 record(s) chained, intact" in good.output

    asyncio.run(on_db("DELETE FROM audit_log WHERE seq = 1"))
    bad = invoke("audit", "verify")
    assert bad.exit_code == 1
    assert "removed: record(s) seq 1 were removed" in bad.output


async def test_the_migration_chains_existing_records_in_id_order(tongcrm_backend: str) -> None:
    host = PluginHost(autoload=True, disabled=set())
    log = sa.table(
        "audit_log",
        *(sa.column(n) for n in ("actor", "role", "action", "object_type", "object_id", "before")),
        sa.column("at", sa.DateTime(timezone=True)),
    )
    async with scratch_url(tongcrm_backend) as url, open_database(tongcrm_backend, url) as db:
        await migrate.upgrade(db.engine, host, "0004")
        async with db.engine.begin() as conn:
            for n in (1, 2, 3):
                at: Any = datetime(2026, 11, n, 8, tzinfo=UTC)
                if tongcrm_backend == "sqlite":
                    at = at.replace(tzinfo=None)
                await conn.execute(
                    sa.insert(log).values(
                        actor="system",
                        role="system",
                        action="old.change",
                        object_type="member",
                        object_id=str(n),
                        before=sa.text("NULL"),
                        at=at,
                    )
                )
        await migrate.upgrade(db.engine, host)
        rows = await _rows(db)
        assert [(r.seq, r.object_id) for r in rows] == [(1, "1"), (2, "2"), (3, "3")]
        async with db.sessions() as session:
            head = await session.get(AuditChainHead, chain.HEAD_ID)
        assert head is not None and (head.seq, head.hash) == (3, rows[-1].hash)
        assert (await _verify(db)).ok
        await _append(db, 4)  # new records carry on from the migrated chain
        report = await _verify(db)
        assert report.ok and report.head_seq == 4


# -------------------------------------------------------------------------------------------------------------
# redaction: the content goes, the chain stays


async def _redact(db: TestDatabase, *object_ids: int, reason: str = "erasure request 7") -> list[int]:
    async with db.sessions() as session, session.begin():
        return await audit.redact(
            session,
            audit.SYSTEM,
            sa.and_(
                AuditEntry.object_type == "member", AuditEntry.object_id.in_([str(i) for i in object_ids])
            ),
            reason=reason,
            object_type="member",
            object_id=object_ids[0],
        )


async def _update(db: TestDatabase, seq: int, **values: Any) -> None:
    """Change a record behind the application's back (typed values, so JSON is JSON on both databases)."""
    async with db.engine.begin() as conn:
        await conn.execute(sa.update(AuditEntry.__table__).where(AuditEntry.seq == seq).values(**values))


async def _table_text(db: TestDatabase) -> str:
    """Every audit row as text, with JSON's ``\\uXXXX`` escapes (SQLite's JSON keeps them) read back."""
    async with db.engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT * FROM audit_log"))).all()
    text = "\n".join("\t".join(str(value) for value in row) for row in rows)
    return text.encode("ascii", "backslashreplace").decode("unicode_escape")


async def test_a_redacted_record_keeps_the_chain_verifying(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3, before={"name": "张三丰"})
    kept = await _rows(tongcrm_db)
    assert "张三丰" in await _table_text(tongcrm_db)
    assert await _redact(tongcrm_db, 2) == [2]
    rows = await _rows(tongcrm_db)
    redacted, proof = rows[1], rows[3]
    assert (redacted.before, redacted.after, redacted.content_salt) == (None, None, None)
    assert redacted.redacted_at is not None and redacted.redacted_at.tzinfo is not None
    # the digest, the link and the non-personal fields are those written at first
    assert (redacted.content_digest, redacted.hash, redacted.actor, redacted.object_id) == (
        kept[1].content_digest,
        kept[1].hash,
        "system",
        "2",
    )
    assert (rows[0].before, rows[2].before) == ({"name": "张三丰"}, {"name": "张三丰"})  # others untouched
    assert (proof.seq, proof.action, proof.object_type, proof.object_id) == (4, "audit.redact", "member", "2")
    assert proof.after == {"records": [2], "reason": "erasure request 7"}
    report = await _verify(tongcrm_db)
    assert report.ok, report.findings
    assert report.records == 4
    # redacting again finds nothing new, and the redaction record itself is never redacted
    async with tongcrm_db.sessions() as session, session.begin():
        everything = await audit.redact(
            session, audit.SYSTEM, sa.true(), reason="all", object_type="audit_log", object_id="all"
        )
    assert everything == [1, 3]
    rows = await _rows(tongcrm_db)
    assert rows[3].after == {"records": [2], "reason": "erasure request 7"}
    assert rows[4].after == {"records": [1, 3], "reason": "all"}
    assert (await _verify(tongcrm_db)).ok
    assert "张三丰" not in await _table_text(tongcrm_db)


async def test_editing_a_redacted_records_other_fields_is_caught(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3)
    await _redact(tongcrm_db, 2)
    victim = (await _rows(tongcrm_db))[1]
    await _update(tongcrm_db, 2, action="member.reveal")
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq, f.record_id) for f in report.findings] == [("edited", 2, victim.id)]
    assert "no longer match its hash" in report.findings[0].detail


async def test_editing_the_content_of_an_unredacted_record_is_caught(tongcrm_db: TestDatabase) -> None:
    await _append(tongcrm_db, 1, 2, 3)
    await _redact(tongcrm_db, 3)
    await _update(tongcrm_db, 2, before={"name": "王*", "tags": ["vip"]})
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq) for f in report.findings] == [("edited", 2)]
    assert "content (before/after) no longer matches its digest" in report.findings[0].detail
    # removing the content (and its salt) without the redaction mark is an edit too
    await _update(tongcrm_db, 2, before={"name": "张*", "tags": ["vip"]})
    assert (await _verify(tongcrm_db)).ok
    await _update(tongcrm_db, 1, before=sa.null(), after=sa.null(), content_salt=None)
    assert [(f.kind, f.seq) for f in (await _verify(tongcrm_db)).findings] == [("edited", 1)]


async def test_a_redaction_mark_set_behind_the_applications_back_is_caught(tongcrm_db: TestDatabase) -> None:
    """``redacted_at`` is not covered by the hash (it is set after the record was chained), so the mark alone
    proves nothing: a record marked redacted that still carries its content is reported as edited."""
    await _append(tongcrm_db, 1, 2)
    await _update(tongcrm_db, 1, redacted_at=datetime(2026, 12, 1, tzinfo=UTC))
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq) for f in report.findings] == [("edited", 1)]
    assert "marked redacted but still carries its content" in report.findings[0].detail


async def test_content_removed_behind_the_applications_back_is_caught(tongcrm_db: TestDatabase) -> None:
    """A forger who removes content the way the application does (content, salt, mark) leaves no
    ``audit.redact`` record naming it, and cannot append one without breaking the chain or edit one without
    breaking its digest."""
    await _append(tongcrm_db, 1, 2, 3)
    await _redact(tongcrm_db, 1)  # seq 4 names seq 1
    victim = (await _rows(tongcrm_db))[2]
    scrub = {"before": sa.null(), "after": sa.null(), "content_salt": None}
    await _update(tongcrm_db, 3, **scrub, redacted_at=datetime(2026, 12, 1, tzinfo=UTC))
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq, f.record_id) for f in report.findings] == [("redacted", 3, victim.id)]
    assert "no audit.redact record names it" in report.findings[0].detail
    # adding it to the genuine redaction record's list breaks that record's digest, and a redaction record
    # that is not intact vouches for nothing (so seq 1 is unexplained now as well)
    await _update(tongcrm_db, 4, after={"records": [1, 3], "reason": "erasure request 7"})
    report = await _verify(tongcrm_db)
    assert [(f.kind, f.seq) for f in report.findings] == [("edited", 4), ("redacted", 1), ("redacted", 3)]
