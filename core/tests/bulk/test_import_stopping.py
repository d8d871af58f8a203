"""An import whose process stops, on both databases: a run cancelled (its server stopping, a command's Ctrl-C)
marks its import ``interrupted`` at once and releases its lease, and resumes from its checkpoint; a serving
process's stopping hooks cancel the imports it runs after their answers; ``tongcrm import`` finishing a file an
API upload kept deletes the kept file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from litestar.datastructures import State
from tongcrm.bulk import kept
from tongcrm.bulk import service as imports
from tongcrm.bulk.api import ImportRuns
from tongcrm.cli import Context, build_cli
from tongcrm.config import Settings
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.errors import Conflict
from tongcrm.jobs.models import Lease
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.serving import STOPPING_HOOKS, run_stopping_hooks
from tongcrm.testing.database import TestDatabase

MEMBERS = "member_id,mobile\n" + "".join(f"S{i},1390013{8000 + i}\n" for i in range(1, 9))


async def _count(db: TestDatabase, model: Any) -> int:
    async with db.sessions() as session:
        return int((await session.execute(sa.select(sa.func.count()).select_from(model))).scalar_one())


def _stall_on_second_page(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, Callable[[], None]]:
    """Pages of 2 records; the second page waits (inside its transaction) until cancelled. Returns the event set
    when it waits, and the undo."""
    real = imports._apply_members
    waiting = asyncio.Event()
    calls = 0

    async def stalling(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        outcome = await real(*args)
        if calls == 2:
            waiting.set()
            await asyncio.Event().wait()  # until cancelled
        return outcome

    monkeypatch.setattr(imports, "PAGE_SIZE", 2)
    monkeypatch.setattr(imports, "_apply_members", stalling)
    return waiting, lambda: monkeypatch.setattr(imports, "_apply_members", real)


def _ctx() -> imports.ImportContext:
    from zoneinfo import ZoneInfo

    return imports.ImportContext(
        host=PluginHost(autoload=False),
        vault=Vault("stop-test-secret-0123456789abcdef"),
        clock=utcnow,
        tz=ZoneInfo("Asia/Shanghai"),
    )


async def _open(db: TestDatabase, tmp_path: Path) -> tuple[int, Path]:
    path = tmp_path / "members.csv"
    path.write_text(MEMBERS, encoding="utf-8")
    job = await imports.open_import(db.sessions, _ctx(), "members", path, "csv")
    return job.id, path


async def test_a_cancelled_run_is_interrupted_at_once_and_resumes_from_its_checkpoint(
    tongcrm_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting, undo = _stall_on_second_page(monkeypatch)
    import_id, path = await _open(tongcrm_db, tmp_path)
    run = asyncio.create_task(imports.run_import(tongcrm_db.sessions, _ctx(), import_id, path, page_size=2))
    await asyncio.wait_for(waiting.wait(), 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    async with tongcrm_db.sessions() as session:
        job = await imports.get_import(session, import_id)
        leases = (await session.execute(sa.select(Lease.key))).scalars().all()
    assert (job.status, job.line_reached, job.imported) == ("interrupted", 3, 2)
    assert job.error == imports.INTERRUPTED
    assert kept.lease_key(import_id) not in leases  # a resume may take it at once
    assert await _count(tongcrm_db, Member) == 2  # the stalled page rolled back whole

    undo()
    progress = await imports.run_import(tongcrm_db.sessions, _ctx(), import_id, path, page_size=2)
    assert (progress.done, progress.imported, progress.line_reached) == (True, 8, 9)
    assert await _count(tongcrm_db, Member) == 8


async def test_a_stopping_server_interrupts_the_imports_it_runs_after_their_answers(
    tongcrm_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting, _undo = _stall_on_second_page(monkeypatch)
    import_id, path = await _open(tongcrm_db, tmp_path)
    runs = ImportRuns()

    async def work() -> None:
        await imports.run_import(tongcrm_db.sessions, _ctx(), import_id, path, page_size=2)

    answered = asyncio.create_task(runs.run(work))  # as a request's background task runs it
    await asyncio.wait_for(waiting.wait(), 30)
    assert len(runs) == 1
    app = type("App", (), {"state": State({STOPPING_HOOKS: [runs.interrupt]})})()
    await run_stopping_hooks(app)
    assert await asyncio.wait_for(answered, 30) is None  # the request's task ends quietly, not cancelled
    assert len(runs) == 0
    async with tongcrm_db.sessions() as session:
        assert (await imports.get_import(session, import_id)).status == "interrupted"


async def test_the_command_finishing_a_file_an_upload_kept_deletes_the_kept_file(
    tongcrm_db: TestDatabase,
    make_client: Callable[..., Any],
    tongcrm_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = imports._apply_members

    async def crashing(*args: Any) -> Any:
        raise RuntimeError("power cut")

    monkeypatch.setattr(imports, "_apply_members", crashing)
    async with make_client(role="operator") as op:
        answer = await op.post(
            "/api/imports", params={"kind": "members", "format": "csv"}, content=MEMBERS.encode()
        )
        assert answer.status_code == 202, answer.text
        import_id = answer.json()["id"]
        stopped = (await op.get(f"/api/imports/{import_id}")).json()
        assert (stopped["status"], stopped["file_kept"]) == ("failed", True)
    monkeypatch.setattr(imports, "_apply_members", real)
    kept_files = [p for p in (tongcrm_settings.data_folder / kept.FOLDER).glob("*") if p.is_file()]
    assert len(kept_files) == 1

    path = tmp_path / "same.csv"  # the same bytes, wherever the operator has them
    path.write_text(MEMBERS, encoding="utf-8")
    monkeypatch.setenv("TONGCRM_DATABASE_URL", tongcrm_db.url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", tongcrm_settings.secret_key)
    monkeypatch.setenv("TONGCRM_DATA_DIR", str(tongcrm_settings.data_folder))
    host = PluginHost(autoload=False)
    result = await asyncio.to_thread(  # the command runs its own event loop
        CliRunner().invoke, build_cli(host), ["import", "members", str(path)], obj=Context(host)
    )
    assert result.exit_code == 0, result.output
    assert f"import {import_id}: 8 imported" in result.output
    assert not kept_files[0].exists()
    async with tongcrm_db.sessions() as session:
        job = await imports.get_import(session, import_id)
    assert (job.status, job.upload_path) == ("finished", None)


async def test_a_resume_of_a_just_queued_import_says_how_long_its_grace_has_left(
    tongcrm_db: TestDatabase, tmp_path: Path
) -> None:
    import_id, _path = await _open(tongcrm_db, tmp_path)  # queued, no run has its lease
    async with tongcrm_db.sessions() as session:
        job = await imports.get_import(session, import_id)
        now = job.updated_at
        with pytest.raises(Conflict) as refused:
            await kept.check_stopped(session, job, now + timedelta(seconds=20))
        assert "is queued" in refused.value.message and "in 40 s" in refused.value.message
        await kept.check_stopped(session, job, now + timedelta(seconds=kept.QUEUED_GRACE_S + 1))  # stopped
