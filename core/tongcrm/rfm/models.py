"""The RFM policy (window and channel scope, versioned), each recompute run with the edges it scored against,
and one score row per scored member."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class RfmPolicy(Base):
    """One version of the RFM settings; the highest version is in force (none: the defaults)."""

    __tablename__ = "rfm_policies"

    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    window_days: Mapped[int] = mapped_column(sa.Integer)
    #: Channel names whose orders count; empty: every channel.
    channels: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RfmRun(Base):
    """A recompute: a full one derives the quintile edges and means; an incremental one re-scores the members
    whose orders changed since ``since`` against the edges of the last full run (``edges_run_id``)."""

    __tablename__ = "rfm_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: full | incremental
    kind: Mapped[str] = mapped_column(sa.String(16))
    policy_version: Mapped[int] = mapped_column(sa.Integer)
    #: The moment scores are computed at (window end, recency counted from it).
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Wall-clock start: order changes at or after it (less a margin) are the next incremental run's work.
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The full run whose edges and means scored this one (itself for a full run).
    edges_run_id: Mapped[int | None] = mapped_column(BigId)
    #: ``{"r": [edge2..edge5], "f": [...], "m": [...]}``: the lowest value that scored 2, 3, 4, 5 (None: nobody).
    edges: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: ``{"r": mean, "f": mean, "m": mean}`` of the scores in the full run: a score at or above it is "high".
    means: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    members: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class RfmScore(Base):
    """A member's scores. Only members with a counted order in the window and scope have a row."""

    __tablename__ = "rfm_scores"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    #: Local calendar days since the latest counted order (0: today).
    recency_days: Mapped[int] = mapped_column(sa.Integer)
    frequency: Mapped[int] = mapped_column(sa.Integer)
    monetary_fen: Mapped[int] = mapped_column(sa.BigInteger)
    r: Mapped[int] = mapped_column(sa.SmallInteger)
    f: Mapped[int] = mapped_column(sa.SmallInteger)
    m: Mapped[int] = mapped_column(sa.SmallInteger)
    cell: Mapped[str] = mapped_column(sa.String(24))
    run_id: Mapped[int] = mapped_column(BigId)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (sa.Index(None, "cell"),)
