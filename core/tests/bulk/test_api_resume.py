"""An import started through the API that stopped resumes without its file being uploaded again, on both
databases: the upload is kept in the data folder under the import's name until the import finished, a crash
between pages leaves it (and the checkpoint) for ``POST /api/imports/{id}/resume``, which imports every row once;
a finished or running import is refused (409), a discarded one's file is gone (410); a server start marks an
import left running by a dead process as interrupted."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.bulk import kept
from tongcrm.bulk import service as imports
from tongcrm.bulk.models import BulkImport
from tongcrm.config import Settings
from tongcrm.identity.models import Identity
from tongcrm.jobs.models import Lease
from tongcrm.members.models import Member
from tongcrm.testing.database import TestDatabase

#: The previous CRM's own column names: the mapping given at the upload must be the one the resume reads with.
MEMBERS = "会员编号,手机号,name\n" + "".join(f"M{i},1380013{8000 + i},会员{i}号\n" for i in range(1, 8))
MAPPING = '{"member_id": "会员编号", "mobile": "手机号"}'


async def _count(db: TestDatabase, model: Any, *where: Any) -> int:
    async with db.sessions() as session:
        return int(
            (await session.execute(sa.select(sa.func.count()).select_from(model).where(*where))).scalar_one()
        )


async def _row(db: TestDatabase, import_id: int) -> BulkImport:
    async with db.sessions() as session:
        return await imports.get_import(session, import_id)


def _kept_files(settings: Settings) -> list[Path]:
    return sorted(p for p in (settings.data_folder / kept.FOLDER).glob("*") if p.is_file())


def _crash_on_second_page(monkeypatch: Any) -> Callable[[], None]:
    """Pages of 2 records, and the second page fails after its members were written (before its commit): the run
    stops between pages as a killed process would, with the first page committed. Returns the undo."""
    real = imports._apply_members
    calls = 0

    async def crashing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        outcome = await real(*args)
        if calls == 2:
            raise RuntimeError("power cut")
        return outcome

    monkeypatch.setattr(imports, "PAGE_SIZE", 2)
    monkeypatch.setattr(imports, "_apply_members", crashing)
    return lambda: monkeypatch.setattr(imports, "_apply_members", real)


async def _upload(client: Any, body: str, **params: str) -> Any:
    return await client.post(
        "/api/imports",
        params={"kind": "members", "format": "csv", "source": "youzan", "mapping": MAPPING, **params},
        content=body.encode(),
    )


async def test_a_crash_mid_file_through_the_api_resumes_from_the_kept_file_every_row_once(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any], tongcrm_settings: Settings, monkeypatch: Any
) -> None:
    undo = _crash_on_second_page(monkeypatch)
    async with make_client(role="operator") as op:
        started = await _upload(op, MEMBERS, file_name="../会员 export.csv")
        assert started.status_code == 202, started.text
        import_id = started.json()["id"]
        crashed = (await op.get(f"/api/imports/{import_id}")).json()
        assert (crashed["status"], crashed["line_reached"], crashed["imported"]) == ("failed", 3, 2)
        assert "power cut" in crashed["error"] and crashed["file_kept"] is True
        assert await _count(tongcrm_db, Member) == 2  # the second page rolled back whole
        # kept under the import's name (not the client's), recorded on its row with its mapping
        row = await _row(tongcrm_db, import_id)
        files = _kept_files(tongcrm_settings)
        assert [f.name for f in files] == [Path(str(row.upload_path)).name]
        assert files[0].name.startswith(f"{import_id}-") and files[0].read_text() == MEMBERS
        assert row.mapping == {"member_id": "会员编号", "mobile": "手机号"}

        undo()
        resumed = await op.post(f"/api/imports/{import_id}/resume")
        assert resumed.status_code == 202, resumed.text
        assert resumed.headers["location"] == f"/api/imports/{import_id}"
        assert resumed.json()["status"] == "queued" and resumed.json()["line_reached"] == 3
        done = (await op.get(f"/api/imports/{import_id}")).json()
        assert (done["status"], done["imported"], done["skipped"], done["failed"], done["line_reached"]) == (
            "finished", 7, 0, 0, 8,
        )  # fmt: skip
        # every row once: seven members, seven imported ids, seven mobiles
        assert await _count(tongcrm_db, Member) == 7
        assert await _count(tongcrm_db, Identity, Identity.kind == "import.member_id") == 7
        assert await _count(tongcrm_db, Identity, Identity.kind == "mobile") == 7
        assert _kept_files(tongcrm_settings) == [] and (await _row(tongcrm_db, import_id)).upload_path is None

        # a finished import: nothing to resume or discard
        again = await op.post(f"/api/imports/{import_id}/resume")
        assert again.status_code == 409 and "finished" in again.json()["detail"]
        assert again.headers["content-type"].startswith("application/problem+json")
        assert (await op.post(f"/api/imports/{import_id}/discard")).status_code == 409
        assert (await op.post("/api/imports/999999/resume")).status_code == 404

    async with make_client(role="analyst") as analyst:
        assert (await analyst.post(f"/api/imports/{import_id}/resume")).status_code == 403
        assert (await analyst.post(f"/api/imports/{import_id}/discard")).status_code == 403
    async with tongcrm_db.sessions() as session:
        actions = list((await session.execute(sa.select(AuditEntry.action))).scalars())
    assert actions.count("import.start") == 1 and actions.count("import.resume") == 1


async def test_a_discarded_import_loses_its_file_and_the_same_upload_resumes_it(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any], tongcrm_settings: Settings, monkeypatch: Any
) -> None:
    undo = _crash_on_second_page(monkeypatch)
    async with make_client(role="operator") as op:
        import_id = (await _upload(op, MEMBERS)).json()["id"]
        assert (await _row(tongcrm_db, import_id)).status == "failed" and _kept_files(tongcrm_settings)
        undo()
        discarded = await op.post(f"/api/imports/{import_id}/discard")
        assert discarded.status_code == 200, discarded.text
        assert discarded.json()["status"] == "discarded" and discarded.json()["imported"] == 2
        assert discarded.json()["file_kept"] is False
        assert _kept_files(tongcrm_settings) == [] and (await _row(tongcrm_db, import_id)).upload_path is None
        gone = await op.post(f"/api/imports/{import_id}/resume")
        assert gone.status_code == 410, gone.text
        assert "upload the same file again" in gone.json()["detail"]
        # the rows imported before the discard stay; the same file uploaded again goes on after the checkpoint
        again = await _upload(op, MEMBERS)
        assert again.json()["id"] == import_id
        done = (await op.get(f"/api/imports/{import_id}")).json()
        assert (done["status"], done["imported"], done["skipped"]) == ("finished", 7, 0)
        assert await _count(tongcrm_db, Member) == 7 and _kept_files(tongcrm_settings) == []

        # a kept file deleted from the data folder by hand: 410 too, saying where it was looked for
        undo2 = _crash_on_second_page(monkeypatch)
        other = (await _upload(op, MEMBERS.replace("M", "P"))).json()["id"]
        undo2()
        for path in _kept_files(tongcrm_settings):
            path.unlink()
        missing = await op.post(f"/api/imports/{other}/resume")
        assert missing.status_code == 410 and "not in the data folder" in missing.json()["detail"]
    async with tongcrm_db.sessions() as session:
        actions = list((await session.execute(sa.select(AuditEntry.action))).scalars())
    assert actions.count("import.discard") == 1


def _dead_pid() -> int:
    """The id of a process of this host that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_server_start_marks_an_import_left_running_interrupted_and_it_resumes(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any], tongcrm_settings: Settings, monkeypatch: Any
) -> None:
    undo = _crash_on_second_page(monkeypatch)
    async with make_client(role="operator") as op:
        dead = (await _upload(op, MEMBERS)).json()["id"]
        undo()
        elsewhere = (await _upload(op, MEMBERS.replace("M", "Q"))).json()["id"]
    # as a process killed mid-import leaves them: "running", the lease of a process that is gone (not lapsed
    # yet); another import running in a live process of another host, whose lease is held
    now = datetime.now(UTC)
    async with tongcrm_db.sessions() as session, session.begin():
        await session.execute(
            sa.update(BulkImport)
            .where(BulkImport.id.in_([dead, elsewhere]))
            .values(status="running", error=None)
        )
        session.add(
            Lease(
                key=kept.lease_key(dead),
                holder=f"{socket.gethostname()}:{_dead_pid()}",
                expires_at=now + timedelta(minutes=4),
            )
        )
        session.add(
            Lease(
                key=kept.lease_key(elsewhere),
                holder="another-host:4242",
                expires_at=now + timedelta(minutes=4),
            )
        )

    async with make_client(role="operator") as op:  # the server starts again
        stopped = (await op.get(f"/api/imports/{dead}")).json()
        assert (
            stopped["status"] == "interrupted" and "process running this import stopped" in stopped["error"]
        )
        assert (await op.get(f"/api/imports/{elsewhere}")).json()["status"] == "running"
        busy = await op.post(f"/api/imports/{elsewhere}/resume")
        assert busy.status_code == 409 and "running" in busy.json()["detail"]
        assert (await op.post(f"/api/imports/{elsewhere}/discard")).status_code == 409

        resumed = await op.post(f"/api/imports/{dead}/resume")
        assert resumed.status_code == 202, resumed.text
        done = (await op.get(f"/api/imports/{dead}")).json()
        assert (done["status"], done["imported"], done["line_reached"]) == ("finished", 7, 8)
    assert await _count(tongcrm_db, Identity, Identity.kind == "import.member_id") == 14  # 7 each


async def test_a_recent_queued_import_is_live_and_an_old_one_without_a_lease_is_not(
    tongcrm_db: TestDatabase,
) -> None:
    now = datetime.now(UTC)
    async with tongcrm_db.sessions() as session, session.begin():
        for n, (status, age) in enumerate((("queued", 5), ("queued", 600), ("running", 5), ("failed", 5))):
            session.add(
                BulkImport(
                    kind="members", source="legacy", file_name=f"f{n}.csv", digest=f"{n:064d}", format="csv",
                    status=status, created_at=now, updated_at=now - timedelta(seconds=age),
                )
            )  # fmt: skip
    turned = await kept.mark_interrupted(tongcrm_db.sessions, now)
    async with tongcrm_db.sessions() as session:
        rows = (await session.execute(sa.select(BulkImport.status).order_by(BulkImport.id))).scalars().all()
    # queued 5 s ago: its run is about to take its lease; queued 10 minutes ago or running, no lease: stopped
    assert list(rows) == ["queued", "interrupted", "interrupted", "failed"] and len(turned) == 2
