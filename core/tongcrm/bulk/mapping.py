"""Reading import files: CSV or JSON Lines, one record at a time, with the file line each record starts on.

Columns have documented names (:data:`COLUMNS`, described in docs/bulk.md); a brand whose previous CRM names
them differently passes a mapping (``{"our name": "their name"}``) instead of rewriting a million-row file.
Any ``identity.<kind>`` column (``identity.taobao.ouid``…) is an identity claim of that kind. Values reach the
import service as stripped strings (``None`` when blank); parsing them is the service's business, so a bad value
becomes a bad row with a reason, never a failed file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tongcrm.errors import BadRequest, listed
from tongcrm.errors import shown as shown  # re-exported: the import's messages quote values by it

IDENTITY_PREFIX = "identity."
FORMATS = ("csv", "jsonl")

#: The documented columns of each kind of import file (docs/bulk.md describes each).
COLUMNS: dict[str, tuple[str, ...]] = {
    "members": ("member_id", "mobile", "name", "province", "city"),
    "orders": (
        "order_id", "member_id", "mobile", "name", "status", "placed_at", "paid_at", "completed_at",
        "modified_at", "total_fen", "paid_fen", "refunded_fen", "post_fee_fen", "discount_fen", "store_code",
        "sku", "category", "title", "quantity", "lines",
    ),
    "points": ("entry_id", "member_id", "mobile", "points", "occurred_at", "expires_at", "note"),
}  # fmt: skip
KINDS = tuple(COLUMNS)
_DOCUMENTED = frozenset(name for names in COLUMNS.values() for name in names)


def imported_column(name: str) -> bool:
    """Whether an import reads the column ``name`` (the rest of a file's columns are ignored)."""
    return name in _DOCUMENTED or name.startswith("identity.")


#: Columns without which no row of the kind can be imported: a CSV header lacking one is refused up front.
REQUIRED: dict[str, tuple[str, ...]] = {
    "members": ("member_id",),
    "orders": ("order_id", "placed_at", "total_fen"),
    "points": ("points",),
}


@dataclass(slots=True)
class Record:
    """One record of an import file: where it starts, and its values under the documented names. Not frozen (a
    frozen dataclass sets each field through ``object.__setattr__``, one a row; it could not be hashed anyway,
    its values being a dict): nothing changes a record after the reader made it (#22)."""

    line: int
    values: dict[str, str | None]
    #: Set when the record could not even be read (broken JSON): the row is bad, the file goes on.
    error: str | None = None
    #: The ``identity.<kind>`` names among ``values``, when the reader knows them (once per header, not per row).
    identity_names: tuple[str, ...] | None = None

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def identities(self) -> list[tuple[str, str]]:
        """``(kind, value)`` of every non-blank ``identity.<kind>`` column."""
        names = self.identity_names
        if names is None:
            names = tuple(name for name in self.values if name.startswith(IDENTITY_PREFIX))
        return [(name[len(IDENTITY_PREFIX) :], value) for name in names if (value := self.values.get(name))]


def check_kind(kind: str) -> str:
    if kind not in COLUMNS:
        raise BadRequest(f"unknown import kind {shown(kind)}; kinds: {', '.join(KINDS)}")
    return kind


def file_format(path: Path, given: str | None) -> str:
    """The format the caller named, else the one the file name says (``.csv``; ``.jsonl``/``.ndjson``)."""
    if given is not None:
        if given not in FORMATS:
            raise BadRequest(f"unknown file format {shown(given)}; formats: {', '.join(FORMATS)}")
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise BadRequest(f"cannot tell the format of {path.name!r} from its name: say csv or jsonl")


def parse_mapping(raw: Any, kind: str) -> dict[str, str]:
    """Validate a mapping document: an object from documented column names to the file's column names."""
    if not isinstance(raw, dict):
        raise BadRequest('a column mapping is a JSON object {"documented column": "column in the file"}')
    known = set(COLUMNS[check_kind(kind)])
    problems = []
    mapping: dict[str, str] = {}
    for ours, theirs in raw.items():
        if ours not in known and not (ours.startswith(IDENTITY_PREFIX) and len(ours) > len(IDENTITY_PREFIX)):
            problems.append(f"{shown(ours)} is not a column of {kind} files")
        elif not isinstance(theirs, str) or not theirs:
            problems.append(f"{shown(ours)} must map to a column name")
        else:
            mapping[ours] = theirs
    if problems:  # each key quoted by its start, and the first few only: a mapping may have any number
        raise BadRequest(
            f"bad column mapping: {listed(problems)} (columns: {', '.join(COLUMNS[kind])}, identity.<kind>)"
        )
    return mapping


def load_mapping(path: Path, kind: str) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read the mapping file {path}: {exc}") from None
    return parse_mapping(raw, kind)


def digest(path: Path) -> str:
    """SHA-256 of the file's bytes: the same file finds its checkpoint again, whatever it is called."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def count_records(path: Path, fmt: str) -> int:
    """Records in the file (for progress): one pass, constant memory. The records :func:`read_records` gives,
    counted without making them: a CSV row with a non-blank cell (the header aside), a non-blank JSON Lines
    line (a line that is not JSON is a record too: a bad row)."""
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                if next(reader, None) is None:  # the header
                    return 0
                return sum(1 for cells in reader if any(c.strip() for c in cells))
        with path.open(encoding="utf-8-sig") as f:
            return sum(1 for text in f if text.strip())
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"{path.name} is not UTF-8 text (byte {exc.start} of a block): save it as UTF-8"
        ) from None


def check_header(path: Path, fmt: str, kind: str, mapping: Mapping[str, str] | None = None) -> None:
    """Refuse a CSV file whose header lacks a column every row needs (rather than refusing each row)."""
    if fmt != "csv":
        return  # JSON Lines objects may each carry their own keys: checked row by row
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError:
        raise BadRequest(f"{path.name} is not UTF-8 text: save the export as UTF-8") from None
    names = {h.strip() for h in header or []}
    rename = _renamer(mapping or {})
    clashes = _clashes([h.strip() for h in header or []], rename)
    if clashes:
        raise BadRequest(f"the header of {path.name} {clashes}: which one holds the value is ambiguous")
    present = {rename.get(n, n) for n in names}
    missing = [c for c in REQUIRED[kind] if c not in present]
    if missing:
        raise BadRequest(
            f"the header of {path.name} has no {', '.join(missing)} column (it has: {', '.join(sorted(names))}); "
            f"name it so, or map it with a mapping file"
        )


def _renamer(mapping: Mapping[str, str]) -> dict[str, str]:
    """Their column name → ours."""
    return {theirs: ours for ours, theirs in mapping.items()}


def _clashes(names: list[str], rename: Mapping[str, str]) -> str | None:
    """Why the columns ``names`` are ambiguous: the same column twice, or two columns that mean one documented
    column (a mapped column beside one under the documented name), silently keeping the last would lose data."""
    seen: dict[str, str] = {}
    for name in names:
        if not name:
            continue
        ours = rename.get(name, name)
        if ours not in seen:
            seen[ours] = name
        elif seen[ours] == name:
            return f"has the column {name!r} twice"
        else:
            return f"has both {seen[ours]!r} and {name!r}, which both mean the {ours!r} column"
    return None


def _text(value: Any) -> str | None:
    if type(value) is str:  # every CSV cell, most JSON values
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, dict | list)
        else str(value)
    )
    text = text.strip()
    return text or None


def _raw(path: Path, fmt: str) -> Generator[tuple[int, dict[str, Any] | None, str | None]]:
    try:
        yield from _raw_records(path, fmt)
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"{path.name} is not UTF-8 text (byte {exc.start} of a block): save it as UTF-8"
        ) from None


def _raw_records(path: Path, fmt: str) -> Generator[tuple[int, dict[str, Any] | None, str | None]]:
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            names = [h.strip() for h in header]
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(names):
                    yield line, None, f"has {len(cells)} fields where the header has {len(names)}"
                    continue
                yield line, dict(zip(names, cells, strict=True)), None
        return
    with path.open(encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, None, f"is not JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(obj, dict):
                yield number, None, "is not a JSON object"
                continue
            yield number, obj, None


def read_records(path: Path, fmt: str, mapping: Mapping[str, str] | None = None) -> Generator[Record]:
    """Every record of the file in order, mapped columns under their documented names. Columns no import reads
    are kept under their own names (dropping them would cost every row a filter); the imports ignore them and
    the error report leaves them out (:func:`imported_column`). Closing the records closes the file (not the
    garbage collector)."""
    rename = _renamer(mapping or {})
    if fmt == "csv":
        with contextlib.closing(_csv_records(path, rename)) as records:
            yield from records
        return
    shapes: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
    with contextlib.closing(_raw(path, fmt)) as raws:
        for line, raw, error in raws:
            if raw is None:
                yield Record(line, {}, f"the row {error}")
                continue
            clash = _clashes(list(raw), rename) if fmt != "csv" else None
            if clash is not None:
                yield Record(line, {}, f"the row {clash}")
                continue
            names, identity_names = _shape(shapes, rename, tuple(raw))
            values: dict[str, str | None] = dict(zip(names, map(_text, raw.values()), strict=True))
            nul = next(
                (
                    n
                    for n, text in values.items()
                    if text is not None and "\x00" in text and imported_column(n)
                ),
                None,
            )
            if nul is not None:
                # No database text column can hold U+0000 (PostgreSQL refuses it): the row is bad, not the file, and it
                # is kept for the report with each NUL shown as U+FFFD.
                visible = {k: None if v is None else v.replace("\x00", "\ufffd") for k, v in values.items()}
                yield Record(line, visible, f"the {nul} value contains a NUL character (U+0000)")
                continue
            yield Record(line, values, identity_names=identity_names)


def _csv_records(path: Path, rename: Mapping[str, str]) -> Generator[Record]:
    """:func:`read_records` of a CSV file: every row has the header's shape, so the names are renamed once, and
    a row's cells become its values in one step (no dict of the raw cells first, no shape looked up per row, the
    NUL check one search of the row's text; per row, #22). What a row gives is the same as through
    :func:`_raw_records`: a blank row is skipped, a row of another width is bad."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            names, identity_names = _shape({}, rename, tuple(h.strip() for h in header))
            width = len(names)
            start = reader.line_num + 1
            text = _text
            for cells in reader:
                line, start = start, reader.line_num + 1
                if len(cells) != width:
                    if any(c.strip() for c in cells):
                        yield Record(
                            line, {}, f"the row has {len(cells)} fields where the header has {width}"
                        )
                    continue
                values: dict[str, str | None] = dict(zip(names, map(text, cells), strict=True))
                if not any(values.values()):
                    continue  # a blank row
                if "\x00" in "".join(cells):
                    nul = next(
                        (
                            n
                            for n, v in values.items()
                            if v is not None and "\x00" in v and imported_column(n)
                        ),
                        None,
                    )
                    if nul is not None:
                        visible = {
                            k: None if v is None else v.replace("\x00", "\ufffd") for k, v in values.items()
                        }
                        yield Record(line, visible, f"the {nul} value contains a NUL character (U+0000)")
                        continue
                yield Record(line, values, identity_names=identity_names)
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"{path.name} is not UTF-8 text (byte {exc.start} of a block): save it as UTF-8"
        ) from None


#: Record shapes (column names in order) :func:`read_records` keeps renamed: a CSV file has one, JSON Lines objects
#: may each have their own keys, so only so many are kept.
_SHAPES_KEPT = 64


def _shape(
    shapes: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]],
    rename: Mapping[str, str],
    names: tuple[str, ...],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The record's column names under the documented names, and the ``identity.<kind>`` ones among them: worked
    out once per shape of record, not once per row (a tenth of the reading thread's time on an orders file)."""
    found = shapes.get(names)
    if found is None:
        ours = tuple(rename.get(name, name) for name in names)
        found = (ours, tuple(name for name in ours if name.startswith(IDENTITY_PREFIX)))
        if len(shapes) < _SHAPES_KEPT:
            shapes[names] = found
    return found


def parse_int(record: Record, name: str, *, default: int | None = None, minimum: int = 0) -> int:
    """An integer column (fen, points, quantity). Raises ``ValueError`` with a message for the row's reason."""
    raw = record.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"{name} is missing")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def parse_time(record: Record, name: str, tz: ZoneInfo, *, required: bool = False) -> datetime | None:
    """An ISO 8601 time; one without a zone is read in the programme's time zone (what a Chinese CRM exports)."""
    raw = record.get(name)
    if raw is None:
        if required:
            raise ValueError(f"{name} is missing")
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not an ISO 8601 time (e.g. 2025-03-01T10:00:00+08:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value
