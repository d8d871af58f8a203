"""Files an operator may hand the import by mistake — the wrong columns, not UTF-8, empty, a 10 MB line, a mapping
naming an unknown column — through both doors (``POST /api/imports`` and ``tongcrm import``), on every database
backend: each is refused with a message naming the file the operator sent and what to fix (a 400 problem over
HTTP), nothing is imported from it and no upload is left behind; what the reader can take is imported whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from litestar import Request
from litestar.exceptions import InternalServerException
from tongcrm.bulk.api import INCOMING, _upload_path
from tongcrm.bulk.models import BulkImport
from tongcrm.cli import Context, build_cli
from tongcrm.config import Settings
from tongcrm.errors import BadRequest
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.cluster import stamp_heads
from tongcrm.testing.database import TestDatabase

#: A line of 10 MB: one cell far past the CSV reader's 128 KiB, as an unclosed quote makes of the rest of a file.
LONG = "x" * (10 * 1024 * 1024)
BIG_CSV = f"member_id,name\nA1,{LONG}\nA2,ok\n".encode()
BIG_JSONL = f'{{"member_id": "J1", "name": "{LONG}"}}\n{{"member_id": "J2", "name": "ok"}}\n'.encode()


async def _imports(db: TestDatabase) -> list[tuple[str, str, int, int]]:
    async with db.sessions() as session:
        rows = await session.execute(
            sa.select(BulkImport.file_name, BulkImport.status, BulkImport.imported, BulkImport.failed)
        )
        return [tuple(r) for r in rows.all()]


def _left_behind(settings: Settings, name: str = "*") -> list[Path]:
    """Files named ``name`` anywhere in the data folder: an incoming upload or a kept one."""
    return [p for p in settings.data_folder.glob(f"**/{name}") if p.is_file()]


@pytest.mark.asyncio
async def test_an_upload_is_refused_in_the_words_of_its_own_name(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any], tongcrm_settings: Settings
) -> None:
    async def upload(body: bytes, file_name: str, fmt: str = "csv", **params: str) -> Any:
        return await op.post(
            "/api/imports",
            params={"kind": "members", "format": fmt, "file_name": file_name, **params},
            content=body,
        )

    async with make_client(role="operator") as op:
        long_line = await upload(BIG_CSV, "big export.csv")
        assert long_line.status_code == 400, long_line.text
        assert long_line.headers["content-type"].startswith("application/problem+json")
        assert long_line.json()["detail"].startswith(
            "big export.csv cannot be read as CSV (field larger than field limit"
        )
        columns = await upload(b"id,phone\nA1,13800138000\n", "their members.csv")
        assert columns.status_code == 400 and columns.json()["detail"].startswith(
            "the header of their members.csv has no member_id column (it has: id, phone)"
        )
        gbk = await upload("member_id,name\nA1,张三\n".encode("gbk"), "gbk.csv")
        assert gbk.status_code == 400 and gbk.json()["detail"].startswith("gbk.csv is not UTF-8 text")
        mapping = await upload(b"id,name\nA1,x\n", "m.csv", mapping='{"member_id": "id", "nmae": "name"}')
        assert (
            mapping.status_code == 400
            and "'nmae' is not a column of members files" in mapping.json()["detail"]
        )
        assert (await upload(b"", "empty.csv")).status_code == 400
        assert await _imports(tongcrm_db) == []  # nothing opened, nothing imported
        assert [
            p
            for n in ("big export.csv", "their members.csv", "gbk.csv")
            for p in _left_behind(tongcrm_settings, n)
        ] == []

        # JSON Lines has no cell limit: the long line is a member like any other (its name cut to the column)
        jsonl = await upload(BIG_JSONL, "big.jsonl", fmt="jsonl")
        assert jsonl.status_code == 202, jsonl.text
        status = (await op.get(jsonl.headers["location"])).json()
        assert (status["status"], status["imported"], status["failed"]) == ("finished", 2, 0)
        assert _left_behind(tongcrm_settings) == []  # finished: its kept upload deleted
    async with tongcrm_db.sessions() as session:
        names = (await session.execute(sa.select(Member.name).order_by(Member.id))).scalars().all()
    assert names == ["x" * 100, "ok"]


@pytest.mark.asyncio
async def test_a_file_name_longer_than_the_status_keeps_is_a_400_not_a_cut(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    """``file_name`` was cut to 300 characters without a word; a cut name may name another file. Refused
    before a byte of the body is read, with the bound; 300 characters are kept whole."""
    async with make_client(role="operator") as op:
        body = b"member_id,name\nA1,x\n"
        refused = await op.post(
            "/api/imports", params={"kind": "members", "format": "csv", "file_name": "会" * 301}, content=body
        )
        assert refused.status_code == 400, refused.text
        assert "file_name" in refused.json()["detail"] and "300" in refused.json()["detail"]
        assert await _imports(tongcrm_db) == []
        kept = await op.post(
            "/api/imports", params={"kind": "members", "format": "csv", "file_name": "会" * 300}, content=body
        )
        assert kept.status_code == 202, kept.text
        assert (await op.get(kept.headers["location"])).json()["file_name"] == "会" * 300


@pytest.mark.asyncio
async def test_an_upload_cut_off_mid_body_leaves_nothing_behind(
    tongcrm_db: TestDatabase,
    make_client: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    tongcrm_settings: Settings,
) -> None:
    """The client goes away halfway through the body (litestar's request stream raises): the half-written upload
    is removed, and no import was opened from it."""

    async def cut_off(self: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
        yield b"member_id,name\nA1,first half\n"
        raise InternalServerException("client disconnected prematurely")

    async with make_client(role="operator") as op:
        monkeypatch.setattr(Request, "stream", cut_off)
        gone = await op.post(
            "/api/imports",
            params={"kind": "members", "format": "csv", "file_name": "cut off.csv"},
            content=b"member_id,name\nA1,first half\nA2,second half\n",
        )
        monkeypatch.undo()
    assert gone.status_code == 500
    assert _left_behind(tongcrm_settings) == [] and await _imports(tongcrm_db) == []


def test_an_upload_arrives_under_its_own_name_in_a_folder_of_its_own(tmp_path: Path) -> None:
    escaped = _upload_path(tmp_path, "../../etc/会员.csv", "csv")
    assert escaped.name == "会员.csv" and escaped.parent.parent == tmp_path / INCOMING
    assert _upload_path(tmp_path, "C:\\exports\\m.csv", "csv").name == "m.csv"
    assert _upload_path(tmp_path, "a\x00b\n.csv", "csv").name == "ab.csv"
    assert (
        _upload_path(tmp_path, "..", "jsonl").name
        == _upload_path(tmp_path, "", "jsonl").name
        == "upload.jsonl"
    )
    assert len(_upload_path(tmp_path, "会" * 300 + ".csv", "csv").name.encode()) <= 200
    assert _upload_path(tmp_path, "m.csv", "csv").parent != _upload_path(tmp_path, "m.csv", "csv").parent


@pytest.mark.asyncio
async def test_the_command_refuses_what_it_cannot_read_and_imports_the_corrected_file(
    tongcrm_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = PluginHost(autoload=False)
    await stamp_heads(tongcrm_db, host)
    monkeypatch.setenv("TONGCRM_DATABASE_URL", tongcrm_db.url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")

    async def invoke(*args: str) -> Any:
        return await asyncio.to_thread(CliRunner().invoke, build_cli(host), list(args), obj=Context(host))

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    big = tmp_path / "big.csv"
    big.write_bytes(BIG_CSV)
    for path, says in (
        (empty, "empty.csv is empty: nothing to import"),
        (big, "big.csv cannot be read as CSV (field larger than field limit (131072))"),
    ):
        refused = await invoke("import", "members", str(path))
        assert isinstance(refused.exception, BadRequest), refused.output
        assert str(refused.exception).startswith(says)
    assert await _imports(tongcrm_db) == []

    big.write_text("member_id,name\nA1,x\nA2,ok\n", encoding="utf-8")  # the quoting put right
    fixed = await invoke("import", "members", str(big))
    assert fixed.exit_code == 0, fixed.output
    assert await _imports(tongcrm_db) == [("big.csv", "finished", 2, 0)]
