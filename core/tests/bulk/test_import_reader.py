"""The import's reader thread: pages prepared one ahead of the writer, at most two held, in order, and the file
closed as soon as the writer stops (by an error too)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
from tongcrm.bulk import service
from tongcrm.bulk.mapping import Record


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
