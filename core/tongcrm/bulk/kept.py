"""An upload kept until its import finished, so that a stopped import resumes without the file being sent again.

An upload through ``POST /api/imports`` or the console waits in the installation's data folder
(:attr:`tongcrm.config.Settings.data_folder`) under ``imports/<id>-<digest>.<format>`` — named by the import, never
by the client's file name — and ``bulk_imports.upload_path`` records it with the mapping it was read with. A
finished import deletes it; a failed or interrupted one keeps it, and ``POST /api/imports/{id}/resume`` runs the
import again from its checkpoint on it (the rows' natural keys make that as idempotent as the command's resume);
``POST /api/imports/{id}/discard`` gives a stopped import up and deletes its file.

An import is *live* while its run's lease is held (or, queued, its run has had no time to take it yet). A
process that died mid-import left its row ``running``: :func:`mark_interrupted`, called when a server starts,
turns every such row whose lease is not live — lapsed, or held by a process of this host that is gone — into
``interrupted``, so it shows as stopped and can be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tongcrm.bulk.models import BulkImport
from tongcrm.errors import Conflict, Gone
from tongcrm.jobs import leases
from tongcrm.logging import get_logger

log = get_logger(__name__)

#: The data folder's sub-folder of kept uploads.
FOLDER = "imports"
#: A stopped import: its run ended without finishing; it may be resumed or discarded.
STOPPED = ("failed", "interrupted")
#: The statuses an import has while a run may be at work on it.
UNDER_WAY = ("queued", "running")


def kept_name(job: BulkImport) -> str:
    """Where ``job``'s upload waits, relative to the data folder: its id and the first 16 hex digits of its
    digest (two installations sharing a folder never meet on a name), and its format."""
    return f"{FOLDER}/{job.id}-{job.digest[:16]}.{job.format}"


def lease_key(import_id: int) -> str:
    """The lease a run of the import holds (:func:`tongcrm.bulk.service.run_import`)."""
    return f"import:{import_id}"


def _holder_alive(holder: str) -> bool:
    """Whether the process a lease names (``host:pid``) may still be running: a process of this host that no longer
    exists is not, nor this very process started anew (its earlier run is gone); another host's is assumed to."""
    host, _, pid_text = holder.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


#: How long a queued import counts as about to run without holding its lease (its run takes it right after the
#: answer; a row queued longer and holding none was left by a process that stopped). An operator who asks to
#: resume or discard it within this time is told how long is left (409); a server that stops cancels its runs
#: and marks them interrupted itself (tongcrm.bulk.api.ImportRuns), so only a process killed between its 202
#: and its run's first statement leaves a queued row for this grace to judge. 60 s is far beyond that gap
#: (milliseconds) even under load, and short against an operator's retry.
QUEUED_GRACE_S = 60.0


async def is_live(
    session: AsyncSession, job: BulkImport, now: datetime, *, grace_s: float = QUEUED_GRACE_S
) -> bool:
    """Whether a run may be at work on ``job``: its lease is held by a process that may still run, or it was
    queued less than ``grace_s`` ago (its run takes the lease right after the answer)."""
    if job.status not in UNDER_WAY:
        return False
    holder = await leases.holder_of(session, lease_key(job.id), now=now)
    if holder is not None:
        return _holder_alive(holder)
    return job.status == "queued" and (now - job.updated_at).total_seconds() < grace_s


async def mark_interrupted(
    sessions: async_sessionmaker[AsyncSession], now: datetime, *, grace_s: float = QUEUED_GRACE_S
) -> list[int]:
    """Turn the imports left ``queued`` or ``running`` by a process that stopped into ``interrupted`` (a server
    calls this when it starts); the ids turned. A run still at work elsewhere (its lease held by a live process)
    is left alone, so a server started beside another one's import does not touch it."""
    async with sessions() as session, session.begin():
        jobs = (
            await session.execute(sa.select(BulkImport).where(BulkImport.status.in_(UNDER_WAY)))
        ).scalars()
        stopped = [job.id for job in list(jobs) if not await is_live(session, job, now, grace_s=grace_s)]
        for import_id in stopped:
            await release_dead_lease(session, import_id, now)
        if stopped:
            await session.execute(
                sa.update(BulkImport)
                .where(BulkImport.id.in_(stopped), BulkImport.status.in_(UNDER_WAY))
                .values(
                    status="interrupted",
                    error="the process running this import stopped; resume it to go on from its checkpoint",
                    updated_at=now,
                )
            )
    for import_id in stopped:
        log.warning("import interrupted with its process; it can be resumed", import_id=import_id)
    return stopped


async def check_stopped(
    session: AsyncSession, job: BulkImport, now: datetime, *, grace_s: float = QUEUED_GRACE_S
) -> None:
    """Refuse (409) what only a stopped import allows (a resume, a discard) when ``job`` is finished or a run is
    at work on it. A ``running`` row whose process is gone counts as stopped (no server start marked it yet)."""
    if job.status == "finished":
        raise Conflict(
            f"import {job.id} is finished: there is nothing left to import",
            code="import.finished",
            params={"id": job.id},
        )
    if await is_live(session, job, now, grace_s=grace_s):
        if job.status == "queued" and await leases.holder_of(session, lease_key(job.id), now=now) is None:
            left = max(1, math.ceil(grace_s - (now - job.updated_at).total_seconds()))
            raise Conflict(
                f"import {job.id} is queued: its run starts within seconds; if it still shows queued in {left} s,"
                " the process that queued it stopped and it can be resumed or discarded",
                code="import.running",
                params={"id": job.id},
            )
        raise Conflict(
            f"import {job.id} is {job.status}: wait for it to stop",
            code="import.running",
            params={"id": job.id},
        )


async def release_dead_lease(session: AsyncSession, import_id: int, now: datetime) -> None:
    """Drop the lease of a run whose process is gone (it lapses only after its time-to-live), so that the run a
    resume starts can take it at once instead of being refused as a second run."""
    holder = await leases.holder_of(session, lease_key(import_id), now=now)
    if holder is not None and not _holder_alive(holder):
        await leases.release(session, lease_key(import_id), holder)


def kept_file(folder: Path, job: BulkImport) -> Path:
    """The kept upload of a stopped ``job``; 410 when there is none any more (discarded, imported before uploads
    were kept, or through ``tongcrm import``) or it was deleted from the data folder."""
    if job.upload_path is None:
        raise Gone(
            f"import {job.id} has no kept file (discarded, or not uploaded through the API or the console): "
            "upload the same file again to resume it from its checkpoint",
            code="import.no_file",
            params={"id": job.id},
        )
    path = folder / job.upload_path
    if not path.is_file():
        raise Gone(
            f"the kept file of import {job.id} is not in the data folder any more ({path}): upload the same "
            "file again to resume it from its checkpoint",
            code="import.file_missing",
            params={"id": job.id},
        )
    return path


def delete_file(folder: Path, relative: str | None) -> None:
    """Delete a kept upload (gone already is fine)."""
    if relative is not None:
        with contextlib.suppress(FileNotFoundError):
            (folder / relative).unlink()


async def drop_finished_file(
    sessions: async_sessionmaker[AsyncSession], folder: Path, import_id: int
) -> None:
    """Once ``import_id`` finished, whoever ran it (the API's run, or ``tongcrm import`` on the same file): forget
    and delete the upload the API kept for it, if any, so that no file outlives its import in the data folder."""
    async with sessions() as session, session.begin():
        job = await session.get(BulkImport, import_id)
        if job is None or job.status != "finished" or job.upload_path is None:
            return
        relative = job.upload_path
        await forget_file(session, import_id)
    await asyncio.to_thread(delete_file, folder, relative)


async def forget_file(session: AsyncSession, import_id: int, **values: object) -> None:
    """Record that ``import_id`` keeps no file any more (with other ``values`` of its row)."""
    table = cast(sa.Table, BulkImport.__table__)
    await session.execute(sa.update(table).where(table.c.id == import_id).values(upload_path=None, **values))
