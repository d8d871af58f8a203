"""Bulk import bookkeeping: one checkpoint row per imported file, one key per imported row, one error per bad row.

The checkpoint (``bulk_imports.line_reached``) is written in the same transaction as the page it covers, so a
crash resumes at the first line of the next page and a finished file imports nothing when run again. Rows are
made idempotent by their natural key (``bulk_import_keys``), not by the file: the same order in a second file is
not imported twice either.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column
from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class BulkImport(Base):
    """One file being (or having been) imported: what, from where, and how far it got."""

    __tablename__ = "bulk_imports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: members | orders | points
    kind: Mapped[str] = mapped_column(sa.String(16))
    #: The previous CRM's name; it namespaces member ids and row keys (``legacy`` unless told).
    source: Mapped[str] = mapped_column(sa.String(64))
    file_name: Mapped[str] = mapped_column(sa.String(300))
    #: SHA-256 of the file's bytes: the same file (under any name) finds its checkpoint again.
    digest: Mapped[str] = mapped_column(sa.String(64))
    #: csv | jsonl
    format: Mapped[str] = mapped_column(sa.String(8))
    #: queued | running | finished | failed | interrupted (its process stopped while it ran) | discarded (an
    #: operator gave up a stopped import: its kept upload is gone)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    #: Every line up to and including this one is done (imported, skipped or recorded as an error).
    line_reached: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Data lines in the file (counted before the first page, for progress and ETA).
    lines_total: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    imported: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Rows whose natural key an earlier import (of this or another file) already brought in.
    skipped: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    failed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: For orders: the channel account (channel ``import``) the imported orders belong to.
    account_id: Mapped[int | None] = mapped_column(BigId)
    created_by: Mapped[str] = mapped_column(sa.String(100), default="system")
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Where an upload through the API or the console waits until its import finished, relative to the
    #: installation's data folder (``imports/<id>-<digest>.<format>``, never the client's name); None when no
    #: file is kept (a file imported by ``tongcrm import``, a finished or discarded import).
    upload_path: Mapped[str | None] = mapped_column(sa.String(200))
    #: The column mapping the upload was imported with, so that a resume reads the kept file the same way.
    mapping: Mapped[dict[str, str] | None] = mapped_column(JSONType)

    __table_args__ = (sa.UniqueConstraint("kind", "digest"),)


class BulkImportKey(Base):
    """A row already imported, by natural key (``<source>/<member id>``, ``<source>/<order id>``…)."""

    __tablename__ = "bulk_import_keys"

    kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    import_id: Mapped[int] = mapped_column(sa.ForeignKey("bulk_imports.id", ondelete="CASCADE"), index=True)
    line: Mapped[int] = mapped_column(sa.BigInteger)


class BulkImportError(Base):
    """A row that could not be imported: its line in the file, why, and the row with personal data masked."""

    __tablename__ = "bulk_import_errors"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    import_id: Mapped[int] = mapped_column(sa.ForeignKey("bulk_imports.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(sa.BigInteger)
    key: Mapped[str | None] = mapped_column(sa.String(200))
    reason: Mapped[str] = mapped_column(sa.Text)
    #: The row as JSON, mobile and name masked.
    row: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.UniqueConstraint("import_id", "line"),)
