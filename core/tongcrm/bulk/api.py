"""``/api/imports`` (upload a file to import, then follow its status) and ``/api/exports/{kind}`` (streamed).

An upload is written to disk as it arrives (never held in memory), its checkpoint row is created, and the import
runs after the 202 answer; ``GET /api/imports/{id}`` shows its progress and its first bad rows. Uploading the
same file again resumes it (or, finished, imports nothing). Exports stream page by page; ``reveal=true`` shows
mobiles and names in full, for admins only, and is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from litestar import Controller, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tongcrm.api.inputs import MAX_ID, PathId, problems
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, principal_of, requires
from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.bulk import export, kept
from tongcrm.bulk import service as imports
from tongcrm.bulk.mapping import check_kind, file_format, parse_mapping
from tongcrm.bulk.models import BulkImport, BulkImportError
from tongcrm.bulk.refusals import refusing_unreadable
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.db.lengths import check_fits, column_length
from tongcrm.errors import BadRequest, UnsupportedMediaType
from tongcrm.logging import get_logger

log = get_logger(__name__)
Sessions = async_sessionmaker[AsyncSession]
#: Where an upload is written as it arrives, under the data folder: a folder per upload, until its import is
#: opened and the file moves to the name of its import (:func:`tongcrm.bulk.kept.kept_name`).
INCOMING = f"{kept.FOLDER}/incoming"


def _upload_path(folder: Path, file_name: str, fmt: str) -> Path:
    """Where an upload is written as it arrives: a folder of its own under ``folder`` (the data folder), the file
    under the caller's ``file_name`` (its last part, printable characters, at most 200 bytes), so that what the
    checks say of the file names the file the caller sent rather than a temporary name. An accepted upload then
    waits under its import's name (:func:`tongcrm.bulk.kept.kept_name`), never the client's."""
    name = "".join(c for c in Path(file_name.replace("\\", "/")).name if c.isprintable()).strip()
    name = name.encode()[:200].decode(errors="ignore")
    if name in ("", ".", ".."):
        name = f"upload.{fmt}"
    return folder / INCOMING / uuid.uuid4().hex / name


def _discard(path: Path) -> None:
    """Remove an incoming upload and its folder."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # gone already
        path.parent.rmdir()


def _keep(incoming: Path, folder: Path, relative: str) -> None:
    """Move an accepted upload to where it waits for its import (replacing a file of the same bytes) and remove
    its incoming folder."""
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    incoming.replace(target)
    _discard(incoming)


class ImportErrorOut(msgspec.Struct, frozen=True):
    line: int
    key: str | None
    reason: str


class ImportSummaryOut(msgspec.Struct, frozen=True):
    """An import's checkpoint: lines done of the file's records, what was imported, skipped and refused."""

    id: int
    kind: str
    source: str
    file_name: str
    format: str
    status: str
    lines_total: int
    line_reached: int
    imported: int
    skipped: int
    failed: int
    error: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: Whether its upload is kept (until it finished): a stopped import with one resumes by
    #: ``POST /api/imports/{id}/resume``; without one, by uploading the same file again.
    file_kept: bool


class ImportOut(ImportSummaryOut, frozen=True):
    """An import's checkpoint and its first bad rows."""

    #: The first bad rows (up to 100), by line.
    errors: list[ImportErrorOut]


class ImportPage(msgspec.Struct, frozen=True):
    """Imports, newest first; ``next_cursor`` (``before=``) asks for the next page, ``null`` on the last."""

    items: list[ImportSummaryOut]
    next_cursor: int | None


def _summary(job: BulkImport) -> ImportSummaryOut:
    return ImportSummaryOut(**_fields(job))


def _fields(job: BulkImport) -> dict[str, Any]:
    return dict(
        id=job.id,
        kind=job.kind,
        source=job.source,
        file_name=job.file_name,
        format=job.format,
        status=job.status,
        lines_total=job.lines_total,
        line_reached=job.line_reached,
        imported=job.imported,
        skipped=job.skipped,
        failed=job.failed,
        error=job.error,
        created_by=job.created_by,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        file_kept=job.upload_path is not None,
    )


def _out(job: BulkImport, errors: list[BulkImportError]) -> ImportOut:
    return ImportOut(**_fields(job), errors=[ImportErrorOut(e.line, e.key, e.reason) for e in errors])


class ImportRuns:
    """The imports this process runs after their answers (``app.state.import_runs``).

    A server that begins to stop cancels them (:meth:`interrupt`, a ``tongcrm.serving`` stopping hook) rather
    than waiting for a long import to end: uvicorn would wait for it as for any request in flight, and the
    supervisor kills a worker still busy after its grace, which left the row ``running`` until the next start.
    Cancelled, a run marks its import ``interrupted`` (:func:`tongcrm.bulk.service.run_import`) and keeps its
    upload, so ``POST /api/imports/{id}/resume`` goes on from its checkpoint.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``start()`` as a task this registry can cancel; a cancellation from :meth:`interrupt` ends here
        (the answer was sent long ago: nothing is left to tell the client), one of the caller propagates."""
        task = asyncio.ensure_future(start())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await task
        except asyncio.CancelledError:
            if task.cancelled() and not _cancelling():
                return
            raise

    async def interrupt(self) -> None:
        """Cancel every run under way and wait until each has recorded that it stopped."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _run_in_background(
    sessions: Sessions,
    ctx: imports.ImportContext,
    folder: Path,
    import_id: int,
    relative: str,
    mapping: dict[str, str],
) -> None:
    """The import after the answer was sent, on its kept upload (``relative`` to the data ``folder``). A finished
    import deletes the file; a failure is recorded on the import row (and logged) by :func:`run_import` and the
    file stays for ``POST /api/imports/{id}/resume``, as it does when another run is at work on the import."""
    try:
        # pages of 1,000 on both databases: in the server a SQLite page's write lock is also what a till's receipt
        # and a channel sync wait for, and a command's 10,000-row page holds it ~10 times as long
        await imports.run_import(
            sessions, ctx, import_id, folder / relative, mapping=mapping, page_size=imports.PAGE_SIZE
        )
    except Exception:
        log.warning("background import stopped; its upload is kept to resume it", import_id=import_id)
        return
    await kept.drop_finished_file(sessions, folder, import_id)


#: Content types of an HTML form: their body wraps the file (boundaries, part headers), so it is not the file.
FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def refuse_form_upload(content_type: str | None) -> None:
    """Refuse (415) a form upload: the import reads the request body as the file, so ``curl -F file=@m.csv``
    was read as a CSV whose header was the multipart boundary ("the header of upload has no member_id column
    (it has: --------------------------8000…)"), which does not say what is wrong."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in FORM_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"the import reads the request body as the file itself, not a form ({kind}): send the file's bytes"
            " as the body, e.g. curl --data-binary @members.csv -H 'Content-Type: text/csv'"
        )


@dataclass(frozen=True, slots=True)
class ImportAsked:
    """What an upload asks for, checked before its bytes are read: the kind, the file's format (named, else
    told by ``file_name``), the source, the name shown in the status and the column mapping."""

    kind: str
    fmt: str
    source: str
    file_name: str
    columns: dict[str, str]

    @classmethod
    def of(cls, kind: str, fmt: str | None, source: str, file_name: str, mapping: str | None) -> ImportAsked:
        check_kind(kind)
        check_fits(file_name, "file_name", BulkImport.file_name, refuse=BadRequest)  # before a byte is read
        found = file_format(Path(file_name), fmt)
        try:
            columns = parse_mapping(json.loads(mapping), kind) if mapping else {}
        except ValueError as exc:
            raise BadRequest(f"mapping is not JSON: {exc}") from None
        return cls(kind, found, source, file_name, columns)


async def receive_upload(
    state: State, actor: Actor, asked: ImportAsked, chunks: AsyncIterable[bytes]
) -> tuple[BulkImport, BackgroundTask]:
    """Write an upload to disk as it arrives, open (or find again, by its digest) its import, audit
    ``import.start``, and give the task that runs it after the answer. Shared by ``POST /api/imports`` and the
    console's upload form, so both doors check, resume and audit alike. A refused or broken upload is not kept."""
    ctx = _context(state, actor)
    sessions: Sessions = state.sessions
    folder: Path = state.settings.data_folder
    path = _upload_path(folder, asked.file_name, asked.fmt)
    path.parent.mkdir(parents=True)
    try:  # whatever stops the upload or its checks (a client gone mid-body too), the upload is not kept
        size = 0
        with path.open("wb") as f:
            async for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
        if size == 0:
            raise BadRequest("the request body is empty: send the file's bytes as the body")
        with refusing_unreadable(path.name):
            job = await imports.open_import(
                sessions,
                ctx,
                asked.kind,
                path,
                asked.fmt,
                source=asked.source,
                file_name=asked.file_name,
                created_by=actor.name,
                mapping=asked.columns,
            )
        relative = job.upload_path or kept.kept_name(job)
        if job.status == "finished":
            await asyncio.to_thread(_discard, path)  # nothing left to import from it
        else:  # kept under its import's name until the import finished (the same bytes as a file kept before)
            await asyncio.to_thread(_keep, path, folder, relative)
    except BaseException:
        await asyncio.to_thread(_discard, path)
        raise
    async with sessions() as session, session.begin():
        if job.status != "finished":
            await session.execute(
                sa.update(BulkImport)
                .where(BulkImport.id == job.id)
                .values(upload_path=relative, mapping=asked.columns or None)
            )
            job.upload_path, job.mapping = relative, asked.columns or None
        audit.record(
            session,
            actor,
            "import.start",
            "import",
            job.id,
            after={
                "kind": asked.kind,
                "source": asked.source,
                "file_name": asked.file_name,
                "digest": job.digest,
            },
        )
    work = functools.partial(_run_in_background, sessions, ctx, folder, job.id, relative, asked.columns)
    return job, BackgroundTask(_runs(state).run, work)


def _runs(state: State) -> ImportRuns:
    runs: ImportRuns = state.import_runs
    return runs


def _context(state: State, actor: Actor) -> imports.ImportContext:
    return imports.ImportContext(
        host=state.host,
        vault=state.vault,
        clock=utcnow,
        tz=state.settings.tz,
        actor=actor.name,
    )


async def resume_upload(state: State, actor: Actor, import_id: int) -> tuple[BulkImport, BackgroundTask]:
    """Run a stopped import again from its checkpoint on its kept upload (no upload): 404 unknown, 409 finished
    or at work, 410 when its file is not kept. The import shows ``queued`` until its run starts; the rows done
    before are not imported twice (the checkpoint, then the rows' natural keys). Audited as ``import.resume``.
    Shared by ``POST /api/imports/{id}/resume`` and the console's 继续导入."""
    sessions: Sessions = state.sessions
    folder: Path = state.settings.data_folder
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        job = await imports.get_import(session, import_id)
        await kept.check_stopped(session, job, now)
        path = kept.kept_file(folder, job)
        await kept.release_dead_lease(session, job.id, now)
        relative = str(job.upload_path)
        was = job.status
        job.status, job.error, job.updated_at = "queued", None, now
        audit.record(
            session,
            actor,
            "import.resume",
            "import",
            job.id,
            before={"status": was, "line_reached": job.line_reached},
            after={"file": path.name},
        )
        await session.flush()
        session.expunge(job)
    mapping = dict(job.mapping or {})
    work = functools.partial(
        _run_in_background, sessions, _context(state, actor), folder, job.id, relative, mapping
    )
    return job, BackgroundTask(_runs(state).run, work)


async def discard_upload(state: State, actor: Actor, import_id: int) -> BulkImport:
    """Give up a stopped import: its kept upload is deleted and it shows ``discarded`` (404 unknown, 409 finished
    or at work). Its rows imported so far stay (their keys too: uploading the file again resumes it). Audited
    as ``import.discard``. Shared by ``POST /api/imports/{id}/discard`` and the console's 放弃."""
    sessions: Sessions = state.sessions
    folder: Path = state.settings.data_folder
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        job = await imports.get_import(session, import_id)
        await kept.check_stopped(session, job, now)
        relative = job.upload_path
        was = job.status
        job.status, job.upload_path, job.updated_at = "discarded", None, now
        audit.record(
            session,
            actor,
            "import.discard",
            "import",
            job.id,
            before={"status": was, "line_reached": job.line_reached},
            after={"status": "discarded"},
        )
        await session.flush()
        session.expunge(job)
    await asyncio.to_thread(kept.delete_file, folder, relative)
    return job


#: How ``POST /api/imports`` takes the file: its bytes are the whole request body (no form around them).
IMPORT_BODY = RequestBody(
    required=True,
    description=(
        "The file itself, byte for byte, as the whole request body: a CSV (UTF-8, a header row) or JSON Lines"
        " file. Not a form: a multipart/form-data or urlencoded body is refused with 415. Any size; it is written"
        " to disk as it arrives. Example: curl --data-binary @members.csv -H 'Content-Type: text/csv'."
    ),
    content={
        "text/csv": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)),
        "application/x-ndjson": OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        ),
        "application/octet-stream": OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        ),
    },
)


@dataclass
class _ImportOperation(Operation):
    """``POST /api/imports`` in the OpenAPI document with its body: the handler reads the raw stream, so litestar
    finds no body parameter to describe and the document said nothing of how to send the file."""

    def __post_init__(self) -> None:
        self.request_body = IMPORT_BODY


class ImportController(Controller):
    path = "/api/imports"
    tags = ["bulk"]

    @post(
        "/",
        opt={**requires(*WRITE_ROLES), **problems(415)},  # a form upload (see refuse_form_upload)
        status_code=202,
        request_max_body_size=None,
        summary="Import a CSV or JSON Lines file (the request body) of members, orders or points",
        operation_class=_ImportOperation,
    )
    async def create_import(
        self,
        request: Request[Any, Any, State],
        kind: Annotated[str, QueryParameter(description="members, orders or points")],
        format: Annotated[str, QueryParameter(description="csv or jsonl")],
        source: Annotated[str, QueryParameter(description="the previous CRM's name")] = "legacy",
        file_name: Annotated[
            str,
            QueryParameter(description="shown in the status", max_length=column_length(BulkImport.file_name)),
        ] = "upload",
        mapping: Annotated[
            str | None, QueryParameter(description='JSON {"documented column": "column in the file"}')
        ] = None,
    ) -> Response[ImportOut]:
        check_kind(kind)
        refuse_form_upload(request.headers.get("content-type"))
        asked = ImportAsked.of(kind, format, source, file_name, mapping)
        job, run = await receive_upload(
            request.app.state, Actor.of(principal_of(request)), asked, request.stream()
        )
        return Response(
            _out(job, []), status_code=202, headers={"Location": f"/api/imports/{job.id}"}, background=run
        )

    @get("/", opt=requires(*READ_ROLES), summary="Imports, newest first (keyset pagination)")
    async def list_imports(
        self,
        read_sessions: NamedDependency[Sessions],
        kind: Annotated[
            str | None, QueryParameter(description="only imports of this kind: members, orders or points")
        ] = None,
        before: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="next_cursor of the previous page")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> ImportPage:
        if kind is not None:
            check_kind(kind)
        async with read_sessions() as session, session.begin():
            jobs = await imports.list_imports(session, kind=kind, before=before, limit=limit)
        return ImportPage([_summary(j) for j in jobs], jobs[-1].id if len(jobs) == limit else None)

    @get("/{import_id:int}", opt=requires(*READ_ROLES), summary="An import's progress and its bad rows")
    async def get_import(self, import_id: PathId, read_sessions: NamedDependency[Sessions]) -> ImportOut:
        async with read_sessions() as session, session.begin():
            job = await imports.get_import(session, import_id)
            return _out(job, await imports.import_errors(session, import_id))

    @post(
        "/{import_id:int}/resume",
        opt={**requires(*WRITE_ROLES), **problems(404, 409, 410)},
        status_code=202,
        summary="Resume a stopped import from its checkpoint on its kept upload (no upload)",
    )
    async def resume_import(
        self, request: Request[Any, Any, State], import_id: PathId
    ) -> Response[ImportOut]:
        """409 when the import is finished or a run is at work on it; 410 when its file is not kept (discarded,
        or not uploaded through the API or the console): upload the same file again then."""
        job, run = await resume_upload(request.app.state, Actor.of(principal_of(request)), import_id)
        return Response(
            _out(job, []), status_code=202, headers={"Location": f"/api/imports/{job.id}"}, background=run
        )

    @post(
        "/{import_id:int}/discard",
        opt={**requires(*WRITE_ROLES), **problems(404, 409)},
        status_code=200,
        summary="Give up a stopped import: its kept upload is deleted (the rows imported stay)",
    )
    async def discard_import(self, request: Request[Any, Any, State], import_id: PathId) -> ImportOut:
        job = await discard_upload(request.app.state, Actor.of(principal_of(request)), import_id)
        return _out(job, [])


class ExportController(Controller):
    path = "/api/exports"
    tags = ["bulk"]

    @get(
        "/{kind:str}",
        opt=requires(*READ_ROLES),
        summary="Stream members, orders or the points ledger as CSV or JSON Lines (masked unless revealed)",
    )
    async def export_kind(
        self,
        request: Request[Any, Any, State],
        kind: FromPath[str],
        sessions: NamedDependency[Sessions],
        read_sessions: NamedDependency[Sessions],
        vault: NamedDependency[Vault],
        format: Annotated[str, QueryParameter(description="csv or jsonl")] = "csv",
        reveal: Annotated[
            bool, QueryParameter(description="full mobiles and names (admins; audited)")
        ] = False,
    ) -> Stream:
        export.check_kind(kind)
        export.check_format(format)
        actor = Actor.of(principal_of(request))
        if export.check_reveal(reveal, actor):
            async with sessions() as session, session.begin():
                audit.record(session, actor, "export.reveal", "export", kind, after={"format": format})
        extension = "csv" if format == "csv" else "jsonl"
        return Stream(
            export.stream(read_sessions, kind, format, vault, reveal=reveal),
            media_type=export.MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="{kind}.{extension}"'},
        )
