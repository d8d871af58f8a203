"""The import's reader thread: pages prepared one ahead of the writer, at most two held, in order, in the caller's
log context, and the file closed as soon as the writer stops (by an error or a cancellation too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from tongcrm.bulk import service
from tongcrm.bulk.mapping import Record, count_records, read_records


class _Source:
    """Pages of one record each, counting what was read and whether the reader closed it."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.read = 0
        self.closed = False
        self.threads: set[str] = set()

    def __iter__(self) -> Iterator[list[Record]]:
        try:
            for n in range(1, self.pages + 1):
                self.read += 1
                self.threads.add(threading.current_thread().name)
                yield [Record(n, {"member_id": f"M{n}"})]
        finally:
            self.closed = True


def _prepare(page: list[Record]) -> service._Page:
    return service._Page(page, [], [])


async def test_pages_come_in_order_prepared_off_the_event_loop() -> None:
    source = _Source(5)
    overlap = service._Overlap()
    lines = [page.records[0].line async for page in service._prepared_pages(iter(source), _prepare, overlap)]
    assert lines == [1, 2, 3, 4, 5]
    assert source.closed
    assert threading.current_thread().name not in source.threads
    assert all(name.startswith("import-reader") for name in source.threads)


async def test_the_reader_holds_one_page_ahead_and_stops_with_the_writer() -> None:
    source = _Source(100)
    pages = service._prepared_pages(iter(source), _prepare, service._Overlap())
    read_while_writing: list[int] = []

    async def write() -> None:
        async with contextlib.aclosing(pages):
            async for page in pages:
                read_while_writing.append(source.read)
                if page.records[0].line == 2:
                    raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        await write()
    # while the writer held page n, the reader had read at most page n + 1
    assert all(read <= n + 1 for n, read in enumerate(read_while_writing, start=1))
    assert source.read <= 3
    assert source.closed


async def test_a_cancellation_while_waiting_for_a_page_closes_the_file_before_the_writer_ends() -> None:
    gate = threading.Event()
    source = _Source(100)
    records = iter(source)  # held here, so only an explicit close can close it (not the garbage collector)
    loop = asyncio.get_running_loop()
    preparing_second = asyncio.Event()

    def prepare(page: list[Record]) -> service._Page:
        if page[0].line == 2:
            loop.call_soon_threadsafe(preparing_second.set)
            gate.wait(10)  # the writer waits for this page when it is cancelled
        return _prepare(page)

    pages = service._prepared_pages(records, prepare, service._Overlap())
    got: list[int] = []

    async def write() -> None:
        async with contextlib.aclosing(pages):
            async for page in pages:
                got.append(page.records[0].line)

    task = asyncio.create_task(write())
    await asyncio.wait_for(preparing_second.wait(), 10)
    await asyncio.sleep(0.05)  # the writer is waiting for page 2
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the page in preparation finishes first: the file is not closed under the thread
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got == [1]
    assert source.closed
    assert source.read == 2


async def test_the_reader_thread_logs_in_the_callers_context() -> None:
    seen: list[dict[str, object]] = []

    def prepare(page: list[Record]) -> service._Page:
        seen.append(dict(structlog.contextvars.get_contextvars()))
        return _prepare(page)

    with structlog.contextvars.bound_contextvars(request_id="req-22", job="import"):
        pages = [p async for p in service._prepared_pages(iter(_Source(3)), prepare, service._Overlap())]
    assert len(pages) == 3
    assert seen == [{"request_id": "req-22", "job": "import"}] * 3
    assert structlog.contextvars.get_contextvars() == {}


def _open_fds(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_closing_the_pages_closes_the_file_while_its_records_are_still_referenced(tmp_path: Path) -> None:
    path = tmp_path / "members.csv"
    path.write_text("member_id\n" + "".join(f"M{n}\n" for n in range(10)), encoding="utf-8")
    records = read_records(path, "csv")
    pages = service._pages(records, 0, 3)
    assert [r.line for r in next(pages)] == [2, 3, 4]
    assert _open_fds(path) == 1
    pages.close()
    assert _open_fds(path) == 0  # `records` is still referenced: it was closed, not collected


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("csv", 'member_id,name\nM1,"two\nlines"\n\n , \nM2\nM3,a,b\n"",""\nM4,x'),
        ("csv", "\ufeffmember_id\n"),
        ("csv", "\n\nM1\nM2\n"),  # a blank first line is the header, as the reader takes it
        ("jsonl", '{"member_id": "M1"}\n\n   \nnot json\n[1]\n{"member_id": "M2"}'),
        ("jsonl", ""),
    ],
)
def test_the_record_count_is_the_number_of_records_read(tmp_path: Path, fmt: str, text: str) -> None:
    path = tmp_path / f"f.{fmt}"
    path.write_text(text, encoding="utf-8")
    assert count_records(path, fmt) == len(list(read_records(path, fmt)))


def test_a_csv_file_reads_as_records_with_their_lines_values_and_bad_rows(tmp_path: Path) -> None:
    """What the CSV reader gives row by row (its values built in one step from the cells): a mapping's names, the
    identity columns, blank rows skipped, a row of another width bad, a NUL bad only in a column an import reads."""
    path = tmp_path / "m.csv"
    path.write_text(
        "\ufeff编号 , mobile,identity.jd.open_id,notes\n"
        " M1 ,13800138001,, \n"
        " , ,,\n"
        "M2,13800138002,jd-2\n"
        "M3,,jd-3,a\x00b\n"
        'M4,"138\x0000",,\n'
        '"M5\nstill M5",13800138005,jd-5,x\n',
        encoding="utf-8",
    )
    records = list(read_records(path, "csv", {"member_id": "编号"}))
    names = ("member_id", "mobile", "identity.jd.open_id", "notes")
    assert [(r.line, r.error) for r in records] == [
        (2, None),
        (4, "the row has 3 fields where the header has 4"),
        (5, None),
        (6, "the mobile value contains a NUL character (U+0000)"),
        (7, None),
    ]
    assert records[0].values == dict(zip(names, ("M1", "13800138001", None, None), strict=True))
    assert records[2].values["notes"] == "a\x00b"  # a column no import reads: ignored, not a bad row
    assert records[2].identities() == [("jd.open_id", "jd-3")]
    assert records[3].values["mobile"] == "138\ufffd00"
    assert records[4].values["member_id"] == "M5\nstill M5" and records[4].identity_names == (
        "identity.jd.open_id",
    )
