"""The demo's clock: set to moments of the past while the story plays, then the wall clock while it serves.

Every party of the story reads it — the fake platforms, the ingest engine, the job runner, the dispatcher — so
three weeks of life happen in seconds with believable timestamps, and the live system afterwards carries on
from the present.
"""

from __future__ import annotations

from datetime import UTC, datetime


class DemoClock:
    def __init__(self) -> None:
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at if self.at is not None else datetime.now(UTC)

    def set(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("the demo clock takes aware datetimes")
        self.at = at.astimezone(UTC)

    def release(self) -> None:
        """From now on, the wall clock."""
        self.at = None
