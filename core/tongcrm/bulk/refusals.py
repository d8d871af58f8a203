"""How the import's two doors — ``tongcrm import FILE`` and ``POST /api/imports`` — refuse a file they cannot read,
in the words of the file's own name.

Opening an import reads the whole file (header, digest, record count) before anything is written, so a file the
CSV reader gives up on is refused there, whole, with nothing imported: a cell longer than the reader's limit
(128 KiB; most often a quote that is never closed, which runs the rest of the file into one cell) raises the
``csv`` module's own error, which is not the caller's mistake in a form either door could show.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager

from tongcrm.errors import BadRequest


@contextmanager
def refusing_unreadable(name: str) -> Iterator[None]:
    """Turn the CSV reader's refusal of file ``name`` into a :class:`BadRequest` (a 400 problem over HTTP, an
    ``error:`` line from the CLI) that says what to look at."""
    try:
        yield
    except csv.Error as exc:
        raise BadRequest(
            f"{name} cannot be read as CSV ({exc}): a cell that long is most often a quote that is never closed; "
            "check the file's quoting"
        ) from None
