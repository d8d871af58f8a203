"""Exports (a ledger round trip through verify's recomputation, masking, reveal) and the import/export API."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import Actor
from tongcrm.bulk import export
from tongcrm.bulk import service as imports
from tongcrm.crypto import Vault
from tongcrm.errors import Forbidden
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.points.ledger import derive, verify
from tongcrm.points.models import PointsBalance
from tongcrm.points.service import PointsContext, redeem
from tongcrm.testing.database import TestDatabase

VAULT = Vault("bulk-test-secret-0123456789abcdef")
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)
TZ = ZoneInfo("Asia/Shanghai")

MEMBERS = "member_id,mobile,name\n" + "".join(f"M{i},1380013{8000 + i},会员{i}号\n" for i in range(1, 8))
POINTS = "member_id,points,occurred_at\n" + "".join(
    f"M{i},{i * 100},2024-01-0{i} 08:00:00\n" for i in range(1, 8)
)


async def _import(db: TestDatabase, host: PluginHost, tmp_path: Path, kind: str, text: str) -> None:
    ctx = imports.ImportContext(host=host, vault=VAULT, clock=lambda: NOW, tz=TZ)
    path = tmp_path / f"{kind}.csv"
    path.write_text(text, encoding="utf-8")
    job = await imports.open_import(db.sessions, ctx, kind, path, "csv")
    await imports.run_import(db.sessions, ctx, job.id, path, page_size=3)


async def _collect(db: TestDatabase, kind: str, fmt: str, *, reveal: bool = False, page: int = 2) -> str:
    chunks = [c async for c in export.stream(db.read_sessions, kind, fmt, VAULT, reveal=reveal, page=page)]
    return b"".join(chunks).decode()


async def test_an_exported_ledger_adds_up_to_what_verify_recomputes(
    tongcrm_db: TestDatabase, plugin_host: PluginHost, tmp_path: Path
) -> None:
    await _import(tongcrm_db, plugin_host, tmp_path, "members", MEMBERS)
    await _import(tongcrm_db, plugin_host, tmp_path, "points", POINTS)
    async with tongcrm_db.sessions() as session, session.begin():
        members = list((await session.execute(sa.select(Member.id).order_by(Member.id))).scalars())
        points_ctx = PointsContext(clock=lambda: NOW, tz=TZ)
        await redeem(session, points_ctx, members[2], 250, key="r1", reason="a gift")
        await redeem(session, points_ctx, members[6], 700, key="r2")

    text = await _collect(tongcrm_db, "ledger", "csv", page=2)  # five pages of keyset reads
    exported = list(csv.DictReader(io.StringIO(text)))
    assert len(exported) == 9 and [int(r["id"]) for r in exported] == sorted({int(r["id"]) for r in exported})
    totals: dict[int, int] = defaultdict(int)
    for r in exported:
        totals[int(r["member_id"])] += int(r["amount"])
    assert {r["kind"] for r in exported} == {"opening", "redeem"}
    # an opening balance stood when the previous CRM says; its entry was written when it was imported
    opening = [r for r in exported if r["kind"] == "opening"]
    assert [datetime.fromisoformat(r["occurred_at"]) for r in opening] == [
        datetime(2024, 1, i, tzinfo=UTC) for i in range(1, 8)
    ]
    assert {datetime.fromisoformat(r["created_at"]) for r in opening} == {NOW}
    async with tongcrm_db.sessions() as session:
        assert await verify(session) == []
        derived = await derive(session)
        cached = {
            b.member_id: b.available + b.pending
            for b in (await session.execute(sa.select(PointsBalance))).scalars()
        }
    assert totals == {m: d.available + d.pending for m, d in derived.items()} == cached
    assert totals[members[2]] == 50 and totals[members[6]] == 0

    lines = (await _collect(tongcrm_db, "ledger", "jsonl", page=4)).splitlines()
    assert [json.loads(line)["amount"] for line in lines] == [int(r["amount"]) for r in exported]


async def test_member_exports_are_masked_unless_an_admin_reveals(
    tongcrm_db: TestDatabase, plugin_host: PluginHost, tmp_path: Path
) -> None:
    await _import(tongcrm_db, plugin_host, tmp_path, "members", MEMBERS)
    masked = list(csv.DictReader(io.StringIO(await _collect(tongcrm_db, "members", "csv"))))
    assert len(masked) == 7
    assert masked[0]["mobile"] == "138****8001" and masked[0]["name"] == "会***"
    revealed = list(csv.DictReader(io.StringIO(await _collect(tongcrm_db, "members", "csv", reveal=True))))
    assert revealed[0]["mobile"] == "+8613800138001" and revealed[0]["name"] == "会员1号"
    assert export.check_reveal(True, Actor("key:1", "admin"))
    with pytest.raises(Forbidden):
        export.check_reveal(True, Actor("key:2", "operator"))
    empty = await _collect(tongcrm_db, "orders", "csv")
    assert empty.splitlines() == [",".join(export.KINDS["orders"].columns)]


async def test_import_and_export_over_http(tongcrm_db: TestDatabase, make_client: Callable[..., Any]) -> None:
    async with make_client(role="operator") as op:
        answer = await op.post(
            "/api/imports",
            params={"kind": "members", "format": "csv", "source": "youzan", "file_name": "members.csv"},
            content=(MEMBERS + "M9,12345,坏号码\n").encode(),
        )
        assert answer.status_code == 202, answer.text
        location = answer.headers["location"]
        status = (await op.get(location)).json()
        assert (status["status"], status["imported"], status["failed"], status["lines_total"]) == (
            "finished", 7, 1, 8,
        )  # fmt: skip
        assert status["errors"][0]["line"] == 9 and "phone number" in status["errors"][0]["reason"]
        again = await op.post(
            "/api/imports",
            params={"kind": "members", "format": "csv", "source": "youzan"},
            content=(MEMBERS + "M9,12345,坏号码\n").encode(),
        )
        assert again.json()["id"] == status["id"]  # the same file: the same import, nothing twice

        bad = await op.post("/api/imports", params={"kind": "coupons", "format": "csv"}, content=b"x\n")
        assert bad.status_code == 400 and "unknown import kind 'coupons'" in bad.json()["detail"]
        assert bad.headers["content-type"].startswith("application/problem+json")
        long = await op.post("/api/imports", params={"kind": "c" * 5000, "format": "csv"}, content=b"x\n")
        assert long.status_code == 400, long.text
        assert f"unknown import kind '{'c' * 40}'…;" in long.json()["detail"] and "c" * 41 not in long.text
        # a form upload (curl -F) wraps the file: 415 saying to send the bytes as the body, nothing imported
        # (it was read as a CSV whose header was the multipart boundary)
        form = await op.post(
            "/api/imports",
            params={"kind": "members", "format": "csv", "source": "formed"},
            files={"file": ("members.csv", MEMBERS.encode(), "text/csv")},
        )
        assert form.status_code == 415, form.text
        assert "not a form (multipart/form-data)" in form.json()["detail"] and "--data-binary" in form.text
        empty = await op.post("/api/imports", params={"kind": "members", "format": "csv"}, content=b"")
        assert empty.status_code == 400 and "body is empty" in empty.json()["detail"]
        mapping = await op.post(
            "/api/imports",
            params={"kind": "members", "format": "csv", "mapping": '{"phone": "x"}'},
            content=b"a\n1\n",
        )
        assert mapping.status_code == 400 and "'phone' is not a column" in mapping.json()["detail"]

        masked = await op.get("/api/exports/members", params={"format": "jsonl"})
        assert masked.status_code == 200 and masked.headers["content-type"].startswith("application/x-ndjson")
        rows = [json.loads(line) for line in masked.text.splitlines()]
        assert len(rows) == 7 and rows[0]["mobile"] == "138****8001"
        as_csv = await op.get("/api/exports/members")
        # one charset parameter: litestar adds it to a text/* type, so the type named must not carry it too
        assert as_csv.status_code == 200 and as_csv.headers["content-type"] == "text/csv; charset=utf-8"
        refused = await op.get("/api/exports/members", params={"reveal": "true"})
        assert refused.status_code == 403
        unknown = await op.get("/api/exports/coupons")
        assert unknown.status_code == 400 and "unknown export 'coupons'" in unknown.json()["detail"]
        long_export = await op.get(f"/api/exports/{'c' * 3000}")
        assert long_export.status_code == 400 and "c" * 41 not in long_export.json()["detail"]

    async with make_client(role="analyst") as analyst:
        upload = await analyst.post(
            "/api/imports", params={"kind": "members", "format": "csv"}, content=b"a\n"
        )
        assert upload.status_code == 403
        # the imports, newest first, a keyset page at a time (it answered 405 before)
        first = await analyst.get("/api/imports", params={"limit": 1})
        assert first.status_code == 200, first.text
        page = first.json()
        assert [i["id"] for i in page["items"]] == [status["id"]] and page["next_cursor"] == status["id"]
        assert "errors" not in page["items"][0] and page["items"][0]["failed"] == 1
        rest = (await analyst.get("/api/imports", params={"before": page["next_cursor"]})).json()
        assert rest == {"items": [], "next_cursor": None}
        assert (await analyst.get("/api/imports", params={"kind": "orders"})).json()["items"] == []
        wrong = await analyst.get("/api/imports", params={"kind": "coupons"})
        assert wrong.status_code == 400 and "unknown import kind 'coupons'" in wrong.json()["detail"]
        too_many = await analyst.get("/api/imports", params={"limit": 201})
        assert too_many.status_code == 400 and too_many.headers["content-type"].startswith(
            "application/problem+json"
        )
        ledger = await analyst.get("/api/exports/ledger")
        assert ledger.status_code == 200 and ledger.text.startswith("id,member_id,kind,amount")

    async with make_client(role="admin") as admin:
        revealed = await admin.get("/api/exports/members", params={"reveal": "true"})
        assert revealed.status_code == 200 and "+8613800138001" in revealed.text
    async with tongcrm_db.sessions() as session:
        actions = list((await session.execute(sa.select(AuditEntry.action))).scalars())
    assert actions.count("export.reveal") == 1 and actions.count("import.start") == 2


def test_csv_cells_never_start_a_spreadsheet_formula() -> None:
    page = [{"id": 1, "name": '=HYPERLINK("http://x")', "mobile": "+8613800138001", "amount": -50, "t": "-x"}]
    text = export.encode_page("csv", ("id", "name", "mobile", "amount", "t"), page, header=False).decode()
    assert text == '1,"\'=HYPERLINK(""http://x"")",+8613800138001,-50,\'-x\n'
    assert export.encode_page("jsonl", ("name",), [{"name": "=1+1"}], header=False) == b'{"name": "=1+1"}\n'
