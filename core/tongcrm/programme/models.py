"""Programme settings, one row per version. Rows are only inserted: the newest is in force, the rest are the
history an operator can read back."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, JSONType, UTCDateTime, utcnow


class ProgrammeSettingsVersion(Base):
    """The whole settings document as saved by one change. ``version`` is the primary key, so two changes made
    from the same version cannot both be saved: the second fails and is answered 412."""

    __tablename__ = "programme_settings"

    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    values: Mapped[dict[str, Any]] = mapped_column(JSONType)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: ``key:<id>`` for an API key, ``cli`` for ``tongcrm settings set``.
    changed_by: Mapped[str] = mapped_column(sa.String(64))
