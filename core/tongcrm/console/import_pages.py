"""Console pages for bulk imports: the list with status, progress and rate, an import's page with its bad rows
(line and reason), and the upload form that starts an import or resumes one.

An upload goes through :func:`tongcrm.bulk.api.receive_upload`, the function behind ``POST /api/imports``: the
same checks, the same import found again by the file's digest (so uploading a stopped file again resumes it from
its checkpoint, a finished one imports nothing, and a double submit starts nothing twice), the same
``import.start`` audit record and the same run after the answer. The browser sends the file as a form part; the
guard reads the form (litestar spools a part over 1 MB to a temporary file, never the whole upload in memory) and
the handler copies the part to where the API writes its body. The upload is kept until its import finished (as
over the API, :mod:`tongcrm.bulk.kept`): a stopped import's page offers 继续导入 (resume from the checkpoint on the
kept file) and 放弃 (discard it); only an import that keeps no file asks for the file again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import QueryParameter

from tongcrm.api.inputs import MAX_ID, PathId
from tongcrm.bulk import kept
from tongcrm.bulk import service as imports
from tongcrm.bulk.api import ImportAsked, discard_upload, receive_upload, resume_upload
from tongcrm.bulk.mapping import FORMATS, KINDS
from tongcrm.bulk.models import BulkImport
from tongcrm.console.i18n import translate
from tongcrm.console.web import (
    PREFIX,
    ConsoleController,
    action,
    actor_of,
    context_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.errors import NotFound, TongcrmError

PAGE_SIZE = 50
ERRORS_PAGE = 50
#: A running import whose row has not moved for this long was most likely stopped with its process (the run's
#: lease lasts as long: :attr:`tongcrm.bulk.service.ImportContext.lease_ttl`).
STALLED_AFTER = timedelta(minutes=5)
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ImportRow:
    """An import as the pages show it: its row, how far it got and at what rate."""

    job: BulkImport
    done: int
    percent: int
    #: Records a second, averaged from the upload to the last page written (a resumed import's pause counts).
    rate: float | None
    eta_s: float | None
    stalled: bool
    #: Stopped with its upload kept: it may be resumed (继续导入) or discarded (放弃) without a file.
    resumable: bool

    @classmethod
    def of(cls, job: BulkImport, now: datetime) -> ImportRow:
        done = job.imported + job.skipped + job.failed
        total = job.lines_total
        percent = 100 if job.status == "finished" else (min(99, done * 100 // total) if total else 0)
        end = job.finished_at or job.updated_at
        seconds = (end - job.created_at).total_seconds()
        rate = done / seconds if done and seconds > 0 else None
        left = max(total - done, 0)
        eta = left / rate if rate and job.status == "running" else None
        stalled = job.status in kept.UNDER_WAY and now - job.updated_at > STALLED_AFTER
        resumable = job.upload_path is not None and (job.status in kept.STOPPED or stalled)
        return cls(job, done, percent, rate, eta, stalled, resumable)


def _form_of(
    kind: str = "members", fmt: str = "", source: str = "legacy", mapping: str = ""
) -> dict[str, str]:
    return {"kind": kind, "format": fmt, "source": source, "mapping": mapping}


class ImportPages(ConsoleController):
    path = PREFIX + "/imports"

    @get("/", opt=page())
    async def index(
        self,
        request: Request[Any, Any, Any],
        kind: Annotated[str | None, QueryParameter(max_length=16)] = None,
        before: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)] = None,
    ) -> Response[str]:
        return await _index(request, kind if kind in KINDS else None, before, _form_of(), None)

    @post("/", opt=action(), request_max_body_size=None)
    async def upload(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Start an import (or resume one: the same file finds its import again) from the upload form."""
        form = await request.form()

        def text(name: str, default: str = "") -> str:
            value = form.get(name)
            return value.strip()[:2000] if isinstance(value, str) else default

        fields = _form_of(
            text("kind", "members"), text("format"), text("source") or "legacy", text("mapping")
        )
        upload = form.get("file")
        try:
            if not isinstance(upload, UploadFile) or not upload.filename or _empty(upload):
                raise _NoFile()
            asked = ImportAsked.of(
                fields["kind"],
                fields["format"] or None,
                fields["source"],
                upload.filename,
                fields["mapping"] or None,
            )
            job, run = await receive_upload(request.app.state, actor_of(request), asked, _chunks(upload))
        except _NoFile:
            problem = translate(context_of(request).lang, "imp.no_file")
            return await _index(request, None, None, fields, problem, status_code=400)
        except TongcrmError as exc:
            return await _index(
                request, None, None, fields, problem_text(request, exc), status_code=exc.status_code
            )
        finally:
            if isinstance(upload, UploadFile):
                await upload.close()
        again = "finished" if job.status == "finished" else ("resumed" if job.line_reached else "")
        response = redirect(request, f"{PREFIX}/imports/{job.id}" + (f"?again={again}" if again else ""))
        response.background = run
        return response

    @get("/{import_id:int}", opt=page())
    async def detail(
        self,
        request: Request[Any, Any, Any],
        import_id: PathId,
        after_line: Annotated[int, QueryParameter(ge=0, le=MAX_ID)] = 0,
        again: Annotated[str | None, QueryParameter(max_length=16)] = None,
    ) -> Response[str]:
        return await _detail(request, import_id, after_line, again if again in AGAIN else None, None)

    @post("/{import_id:int}/resume", opt=action())
    async def resume(self, request: Request[Any, Any, Any], import_id: PathId) -> Response[Any]:
        """继续导入: a stopped import runs again from its checkpoint on its kept upload, no file sent
        (:func:`tongcrm.bulk.api.resume_upload`, the function behind ``POST /api/imports/{id}/resume``)."""
        try:
            job, run = await resume_upload(request.app.state, actor_of(request), import_id)
        except NotFound:
            raise
        except TongcrmError as exc:
            return await _detail(
                request, import_id, 0, None, problem_text(request, exc), status_code=exc.status_code
            )
        response = redirect(request, f"{PREFIX}/imports/{job.id}?again=continued")
        response.background = run
        return response

    @post("/{import_id:int}/discard", opt=action())
    async def discard(self, request: Request[Any, Any, Any], import_id: PathId) -> Response[Any]:
        """放弃: a stopped import's kept upload is deleted (:func:`tongcrm.bulk.api.discard_upload`)."""
        try:
            job = await discard_upload(request.app.state, actor_of(request), import_id)
        except NotFound:
            raise
        except TongcrmError as exc:
            return await _detail(
                request, import_id, 0, None, problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, f"{PREFIX}/imports/{job.id}?again=discarded")


#: The notes an import's page shows after what was just done to it (``?again=``).
AGAIN = ("finished", "resumed", "continued", "discarded")


async def _detail(
    request: Request[Any, Any, Any],
    import_id: int,
    after_line: int,
    again: str | None,
    problem: str | None,
    *,
    status_code: int = 200,
) -> Response[str]:
    """An import's page: its state, its bad rows from ``after_line``, and what an operator may do with it —
    resume or discard it when it stopped and its upload is kept, else upload its file (again)."""
    async with request.app.state.read_sessions() as session, session.begin():
        job = await imports.get_import(session, import_id)
        errors = await imports.import_errors(session, import_id, limit=ERRORS_PAGE, after_line=after_line)
    row = ImportRow.of(job, datetime.now(UTC))
    more = errors[-1].line if len(errors) == ERRORS_PAGE else None
    return render(
        request,
        "imports/detail.html",
        {
            "r": row,
            "errors": errors,
            "after_line": after_line,
            "more": more,
            "again": again,
            "problem": problem,
            "form": _form_of(job.kind, job.format, job.source),
            "kinds": KINDS,
            "formats": FORMATS,
        },
        status_code=status_code,
        title="imp.detail_title",
    )


class _NoFile(Exception):
    """The form came without a file, or with an empty one (a browser sends an empty part when none was chosen)."""


def _empty(upload: UploadFile) -> bool:
    """Whether the spooled part holds no byte (a seek, no read: the part may be large and on disk)."""
    end = upload.file.seek(0, os.SEEK_END)
    upload.file.seek(0)
    return end == 0


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    await upload.seek(0)
    while chunk := await upload.read(CHUNK):
        yield chunk


async def _index(
    request: Request[Any, Any, Any],
    kind: str | None,
    before: int | None,
    form: dict[str, str],
    problem: str | None,
    *,
    status_code: int = 200,
) -> Response[str]:
    """The list (a keyset page, newest first) and the upload form, with the form as typed and the reason above
    it when an upload was refused."""
    async with request.app.state.read_sessions() as session, session.begin():
        jobs = await imports.list_imports(session, kind=kind, before=before, limit=PAGE_SIZE)
    now = datetime.now(UTC)
    return render(
        request,
        "imports/list.html",
        {
            "rows": [ImportRow.of(j, now) for j in jobs],
            "cursor": jobs[-1].id if len(jobs) == PAGE_SIZE else None,
            "kind": kind,
            "kinds": KINDS,
            "formats": FORMATS,
            "form": form,
            "problem": problem,
        },
        status_code=status_code,
        title="imp.title",
    )
