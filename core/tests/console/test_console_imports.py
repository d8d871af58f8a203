"""The console's import pages over HTTP, on each backend: an operator uploads a file through the form (multipart,
as a browser sends it), follows it on the list and on its page with the bad rows by line and reason, uploads the
same file again (nothing twice) and resumes a stopped import; a refused upload shows the form again with the
reason; analysts see no upload form and their POST is refused; the upload is audited as the API's."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.bulk import service as imports
from tongcrm.bulk.models import BulkImport, BulkImportKey
from tongcrm.members.models import Member

from .conftest import sign_in

MEMBERS = "member_id,mobile,name\n" + "".join(f"M{i},1380013{8000 + i},会员{i}号\n" for i in range(1, 8))
BAD = MEMBERS + "M9,12345,坏号码\n"


def _form(csrf: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": csrf, "kind": "members", "format": "", "source": "youzan", "mapping": "", **fields}


async def test_an_operator_uploads_follows_and_resumes_an_import(make_client: Any, tongcrm_db: Any) -> None:
    async with make_client(role=None) as api:
        csrf = await sign_in(api, "operator")
        empty = await api.get("/console/imports")
        assert empty.status_code == 200 and "还没有导入记录" in empty.text and "data-upload" in empty.text
        assert 'href="/console/imports"' in empty.text  # in the menu

        sent = await api.post(
            "/console/imports",
            data=_form(csrf),
            files={"file": ("members.csv", BAD.encode(), "text/csv")},
            follow_redirects=False,
        )
        assert sent.status_code == 303, sent.text
        location = sent.headers["location"]
        import_id = int(re.findall(r"/console/imports/(\d+)$", location)[0])
        detail = (await api.get(location)).text
        assert 'data-status="finished"' in detail
        assert 'data-figure="imported">7<' in detail and 'data-figure="failed">1<' in detail
        assert 'data-error-line="9"' in detail and "phone number" in detail
        assert "12345" not in detail.split('data-error-line="9"')[1].split("</tr>")[0] or "****" in detail
        listing = (await api.get("/console/imports")).text
        assert f'data-import="{import_id}" data-status="finished"' in listing
        assert f'data-figure="import.{import_id}.imported">7<' in listing and "members.csv" in listing

        # the same file again (a double submit too): the same import, nothing twice
        again = await api.post(
            "/console/imports",
            data=_form(csrf),
            files={"file": ("copy.csv", BAD.encode(), "text/csv")},
            follow_redirects=False,
        )
        assert again.headers["location"] == f"/console/imports/{import_id}?again=finished"
        shown = (await api.get(again.headers["location"])).text
        assert 'data-again="finished"' in shown and 'data-figure="imported">7<' in shown

        # a stopped import: the same file resumes after its checkpoint
        orders_like = "member_id,mobile,name\n" + "".join(
            f"N{i},1390013{8000 + i},新{i}\n" for i in range(1, 6)
        )
        first = await api.post(
            "/console/imports",
            data=_form(csrf),
            files={"file": ("more.csv", orders_like.encode(), "text/csv")},
            follow_redirects=False,
        )
        second_id = int(first.headers["location"].rsplit("/", 1)[1])
        async with tongcrm_db.sessions() as session, session.begin():
            await session.execute(
                sa.update(BulkImport)
                .where(BulkImport.id == second_id)
                .values(status="failed", error="ConnectionError: lost", line_reached=3, imported=2)
            )
            await session.execute(
                sa.delete(BulkImportKey).where(BulkImportKey.import_id == second_id, BulkImportKey.line > 3)
            )
        stopped = (await api.get(f"/console/imports/{second_id}")).text
        assert "ConnectionError: lost" in stopped and "续传" in stopped and "第 3 行" in stopped
        resumed = await api.post(
            "/console/imports",
            data=_form(csrf),
            files={"file": ("more.csv", orders_like.encode(), "text/csv")},
            follow_redirects=False,
        )
        assert resumed.headers["location"] == f"/console/imports/{second_id}?again=resumed"
        after = (await api.get(resumed.headers["location"])).text
        assert 'data-status="finished"' in after and 'data-figure="imported">5<' in after  # 2, then lines 4-6
        assert 'data-again="resumed"' in after

        # refusals: the list again, the form as typed, the reason above it
        bad_kind = await api.post(
            "/console/imports",
            data=_form(csrf, kind="coupons", source="my-crm", mapping='{"x": 1'),
            files={"file": ("m.csv", MEMBERS.encode(), "text/csv")},
        )
        assert bad_kind.status_code == 400 and "unknown import kind &#39;coupons&#39;" in bad_kind.text
        assert (
            "data-problem" in bad_kind.text
            and 'value="my-crm"' in bad_kind.text
            and "{&#34;x&#34;: 1" in bad_kind.text
        )
        no_file = await api.post("/console/imports", data=_form(csrf))
        assert no_file.status_code == 400 and "没有选择文件" in no_file.text
        empty_file = await api.post(
            "/console/imports", data=_form(csrf), files={"file": ("e.csv", b"", "text/csv")}
        )
        assert empty_file.status_code == 400 and "文件是空的" in empty_file.text
        header = await api.post(
            "/console/imports",
            data=_form(csrf),
            files={"file": ("w.csv", b"id,phone\n1,2\n", "text/csv")},
        )
        assert header.status_code == 400 and "no member_id column" in header.text
        forged = await api.post(
            "/console/imports", data=_form("nope"), files={"file": ("m.csv", MEMBERS.encode(), "text/csv")}
        )
        assert forged.status_code == 403

        english = (await api.get(f"/console/imports/{import_id}?lang=en")).text
        assert "Bad rows (quarantined)" in english and "Import again" in english

    async with make_client(role=None) as api:
        csrf = await sign_in(api, "analyst")
        page = (await api.get("/console/imports")).text
        assert "data-write" not in page and "data-upload" not in page and "members.csv" in page
        detail = (await api.get(f"/console/imports/{import_id}")).text
        assert "data-upload" not in detail and 'data-error-line="9"' in detail
        refused = await api.post(
            "/console/imports", data=_form(csrf), files={"file": ("x.csv", MEMBERS.encode(), "text/csv")}
        )
        assert refused.status_code == 403

    async with tongcrm_db.sessions() as session:
        starts = (
            (await session.execute(sa.select(AuditEntry).where(AuditEntry.action == "import.start")))
            .scalars()
            .all()
        )
        jobs = (await session.execute(sa.select(sa.func.count()).select_from(BulkImport))).scalar_one()
    assert len(starts) == 4 and jobs == 2  # four uploads, two files


async def test_a_stopped_import_resumes_or_is_discarded_from_its_page_without_the_file(
    make_client: Any, tongcrm_db: Any, monkeypatch: Any
) -> None:
    """The upload is kept until its import finished: a stopped import's page offers 继续导入 (no file chosen:
    the run goes on after its checkpoint, each row once) and 放弃 (its kept file deleted); a finished one or one
    without its file is refused in Chinese on the page."""
    real = imports._apply_members
    calls = 0

    async def crashing(*args: Any) -> Any:  # the second page of each run fails before its commit
        nonlocal calls
        calls += 1
        outcome = await real(*args)
        if calls % 2 == 0:
            raise RuntimeError("power cut")
        return outcome

    monkeypatch.setattr(imports, "PAGE_SIZE", 2)
    monkeypatch.setattr(imports, "_apply_members", crashing)
    async with make_client(role=None) as api:
        csrf = await sign_in(api, "operator")
        sent = await api.post(
            "/console/imports",
            data=_form(csrf),
            files={"file": ("members.csv", MEMBERS.encode(), "text/csv")},
            follow_redirects=False,
        )
        location = sent.headers["location"]
        import_id = int(location.rsplit("/", 1)[1])
        stopped = (await api.get(location)).text
        assert 'data-status="failed"' in stopped and "power cut" in stopped
        assert "继续导入" in stopped and "放弃" in stopped and "data-kept" in stopped
        assert "data-upload" not in stopped  # no file to choose again
        monkeypatch.setattr(imports, "_apply_members", real)

        resumed = await api.post(
            f"/console/imports/{import_id}/resume", data={"csrf_token": csrf}, follow_redirects=False
        )
        assert resumed.status_code == 303, resumed.text
        assert resumed.headers["location"] == f"/console/imports/{import_id}?again=continued"
        done = (await api.get(resumed.headers["location"])).text
        assert 'data-status="finished"' in done and 'data-figure="imported">7<' in done
        assert 'data-again="continued"' in done and "data-kept" not in done
        async with tongcrm_db.sessions() as session:
            assert (await session.execute(sa.select(sa.func.count()).select_from(Member))).scalar_one() == 7
        finished = await api.post(f"/console/imports/{import_id}/resume", data={"csrf_token": csrf})
        assert finished.status_code == 409 and "已完成，没有可继续导入的内容" in finished.text

        monkeypatch.setattr(imports, "_apply_members", crashing)
        other = await api.post(
            "/console/imports",
            data=_form(csrf),
            files={"file": ("more.csv", MEMBERS.replace("M", "N").encode(), "text/csv")},
            follow_redirects=False,
        )
        other_id = int(other.headers["location"].rsplit("/", 1)[1])
        monkeypatch.setattr(imports, "_apply_members", real)
        discarded = await api.post(
            f"/console/imports/{other_id}/discard", data={"csrf_token": csrf}, follow_redirects=False
        )
        assert discarded.headers["location"] == f"/console/imports/{other_id}?again=discarded"
        page = (await api.get(discarded.headers["location"])).text
        assert 'data-status="discarded"' in page and "已放弃" in page and "data-upload" in page
        async with tongcrm_db.sessions() as session:
            row = await imports.get_import(session, other_id)
        assert row.upload_path is None
        gone = await api.post(f"/console/imports/{other_id}/resume", data={"csrf_token": csrf})
        assert gone.status_code == 410 and "没有保留上传的文件" in gone.text
        forged = await api.post(f"/console/imports/{other_id}/discard", data={"csrf_token": "nope"})
        assert forged.status_code == 403

    async with make_client(role=None) as api:
        csrf = await sign_in(api, "analyst")
        assert "data-kept" not in (await api.get(f"/console/imports/{other_id}")).text
        refused = await api.post(f"/console/imports/{other_id}/resume", data={"csrf_token": csrf})
        assert refused.status_code == 403
