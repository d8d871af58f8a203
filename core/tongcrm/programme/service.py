"""Programme settings: read, validate, change (versioned and audited), and a short-lived cache for hot paths.

The settings are one document per programme (tongcrm has no brand notion: one installation is one programme):
the window in which marketing messages may go (every other hour is quiet), the daily fatigue budgets, the SMS
opt-out keywords and the programme's time zone, in which the window and the fatigue day are counted. Until an
operator saves a first version the defaults apply (version 0): the contact policy's built-in values and the
time zone of ``TONGCRM_TIMEZONE``.

Each change saves the whole document as a new version (the old ones stay as history) and is audited in the
same transaction. A change names the version it was made from, so a stale edit cannot overwrite a newer one.
"""

from __future__ import annotations

import time as clock
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, time
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.config import Settings
from tongcrm.db import txcache
from tongcrm.db.base import utcnow
from tongcrm.errors import NotFound, PreconditionFailed, Unprocessable
from tongcrm.messaging.policy import PolicyConfig
from tongcrm.programme.models import ProgrammeSettingsVersion

#: Settable fields, in the order the CLI and the API show them.
FIELDS = (
    "timezone",
    "marketing_window_start",
    "marketing_window_end",
    "daily_budget",
    "marketing_budget",
    "opt_out_keywords",
)
MAX_DAILY_BUDGET = 100
MAX_KEYWORDS = 50
MAX_KEYWORD_LENGTH = 20
_TX_KEY = "programme.settings"


@dataclass(frozen=True, slots=True)
class ProgrammeSettings:
    """One version of the settings. ``version`` 0 is the defaults, never saved."""

    version: int
    timezone: str
    marketing_window_start: time
    marketing_window_end: time
    daily_budget: int
    marketing_budget: int
    opt_out_keywords: tuple[str, ...]
    changed_at: datetime | None = None
    changed_by: str | None = None

    def policy(self) -> PolicyConfig:
        """The contact policy these settings describe."""
        return PolicyConfig(
            marketing_window_start=self.marketing_window_start,
            marketing_window_end=self.marketing_window_end,
            daily_budget=self.daily_budget,
            marketing_budget=self.marketing_budget,
            opt_out_keywords=self.opt_out_keywords,
            tz=ZoneInfo(self.timezone),
        )

    def document(self) -> dict[str, Any]:
        """The stored (and audited) form: JSON-ready, times as ``HH:MM``."""
        return {
            "timezone": self.timezone,
            "marketing_window_start": self.marketing_window_start.strftime("%H:%M"),
            "marketing_window_end": self.marketing_window_end.strftime("%H:%M"),
            "daily_budget": self.daily_budget,
            "marketing_budget": self.marketing_budget,
            "opt_out_keywords": list(self.opt_out_keywords),
        }


def defaults(settings: Settings) -> ProgrammeSettings:
    policy = PolicyConfig()
    return ProgrammeSettings(
        version=0,
        timezone=settings.timezone,
        marketing_window_start=policy.marketing_window_start,
        marketing_window_end=policy.marketing_window_end,
        daily_budget=policy.daily_budget,
        marketing_budget=policy.marketing_budget,
        opt_out_keywords=policy.opt_out_keywords,
    )


def _from_row(row: ProgrammeSettingsVersion) -> ProgrammeSettings:
    doc = row.values
    return ProgrammeSettings(
        version=row.version,
        timezone=doc["timezone"],
        marketing_window_start=time.fromisoformat(doc["marketing_window_start"]),
        marketing_window_end=time.fromisoformat(doc["marketing_window_end"]),
        daily_budget=int(doc["daily_budget"]),
        marketing_budget=int(doc["marketing_budget"]),
        opt_out_keywords=tuple(doc["opt_out_keywords"]),
        changed_at=row.changed_at,
        changed_by=row.changed_by,
    )


# -------------------------------------------------------------------------------------------------------------
# reading


async def current(session: AsyncSession, settings: Settings) -> ProgrammeSettings:
    """The settings in force: the newest saved version, else the defaults. Read once per transaction."""
    found, cached = txcache.get(session, _TX_KEY)
    if found:
        value: ProgrammeSettings = cached
        return value
    row = (
        await session.execute(
            sa.select(ProgrammeSettingsVersion).order_by(ProgrammeSettingsVersion.version.desc()).limit(1)
        )
    ).scalar_one_or_none()
    value = _from_row(row) if row is not None else defaults(settings)
    txcache.put(session, _TX_KEY, value)
    return value


async def history(
    session: AsyncSession, *, limit: int = 50, before: int | None = None
) -> list[ProgrammeSettings]:
    """Saved versions, newest first; ``before``: only versions older than this one."""
    stmt = sa.select(ProgrammeSettingsVersion).order_by(ProgrammeSettingsVersion.version.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(ProgrammeSettingsVersion.version < before)
    return [_from_row(r) for r in (await session.execute(stmt)).scalars()]


async def version(session: AsyncSession, number: int) -> ProgrammeSettings:
    row = await session.get(ProgrammeSettingsVersion, number)
    if row is None:
        raise NotFound(f"no programme settings version {number}")
    return _from_row(row)


# -------------------------------------------------------------------------------------------------------------
# validating and changing


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _time(name: str, value: Any, errors: dict[str, str]) -> time | None:
    if isinstance(value, time):
        return value.replace(second=0, microsecond=0)
    if not isinstance(value, str):
        errors[name] = "must be a time of day like 08:30"
        return None
    try:
        parsed = time.fromisoformat(value.strip())
    except ValueError:
        errors[name] = f"{value!r} is not a time of day like 08:30"
        return None
    if parsed.second or parsed.microsecond or parsed.tzinfo is not None:
        errors[name] = f"{value!r}: give hours and minutes only (HH:MM, programme time zone)"
        return None
    return parsed


def _int(name: str, value: Any, errors: dict[str, str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
        errors[name] = "must be a whole number"
        return None
    return value


def _keywords(value: Any, errors: dict[str, str]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(w, str) for w in value):
        errors["opt_out_keywords"] = "must be a list of words"
        return None
    words: list[str] = []
    seen: set[str] = set()
    for raw in value:
        word = raw.strip()
        if not word:
            errors["opt_out_keywords"] = "an opt-out keyword cannot be blank"
            return None
        if len(word) > MAX_KEYWORD_LENGTH:
            errors["opt_out_keywords"] = f"{word!r} is longer than {MAX_KEYWORD_LENGTH} characters"
            return None
        if word.casefold() not in seen:
            seen.add(word.casefold())
            words.append(word)
    if not words:
        errors["opt_out_keywords"] = "name at least one opt-out keyword (members must be able to unsubscribe)"
        return None
    if len(words) > MAX_KEYWORDS:
        errors["opt_out_keywords"] = f"at most {MAX_KEYWORDS} keywords"
        return None
    return tuple(words)


def validate(base: ProgrammeSettings, changes: Mapping[str, Any]) -> ProgrammeSettings:
    """``base`` with ``changes`` applied, checked as a whole; :class:`Unprocessable` names every bad field."""
    errors: dict[str, str] = {}
    unknown = sorted(set(changes) - set(FIELDS))
    for name in unknown:
        errors[name] = f"not a programme setting (settable: {', '.join(FIELDS)})"
    values: dict[str, Any] = {}
    if "timezone" in changes:
        tz = changes["timezone"]
        if not isinstance(tz, str) or tz.strip() not in _zones():
            errors["timezone"] = f"{tz!r} is not an IANA time zone (like Asia/Shanghai)"
        else:
            values["timezone"] = tz.strip()
    for name in ("marketing_window_start", "marketing_window_end"):
        if name in changes and (t := _time(name, changes[name], errors)) is not None:
            values[name] = t
    for name in ("daily_budget", "marketing_budget"):
        if name in changes and (n := _int(name, changes[name], errors)) is not None:
            values[name] = n
    if (
        "opt_out_keywords" in changes
        and (words := _keywords(changes["opt_out_keywords"], errors)) is not None
    ):
        values["opt_out_keywords"] = words
    merged = replace(base, **values)
    window_ok = "marketing_window_start" not in errors and "marketing_window_end" not in errors
    if window_ok and merged.marketing_window_start >= merged.marketing_window_end:
        errors["marketing_window_end"] = (
            f"the marketing window must end after it starts on the same day: "
            f"{merged.marketing_window_start:%H:%M}–{merged.marketing_window_end:%H:%M}"
        )
    if "daily_budget" not in errors and not 1 <= merged.daily_budget <= MAX_DAILY_BUDGET:
        errors["daily_budget"] = f"must be between 1 and {MAX_DAILY_BUDGET} messages a member a day"
    elif "marketing_budget" not in errors and not 0 <= merged.marketing_budget <= merged.daily_budget:
        errors["marketing_budget"] = (
            f"must be between 0 and the daily budget ({merged.daily_budget}), which also covers service messages"
        )
    if errors:
        raise Unprocessable(
            "; ".join(f"{name}: {message}" for name, message in errors.items()), extra={"errors": errors}
        )
    return merged


async def change(
    session: AsyncSession,
    settings: Settings,
    changes: Mapping[str, Any],
    *,
    expected_version: int,
    actor: Actor,
    now: datetime | None = None,
) -> ProgrammeSettings:
    """Save ``changes`` (fields not named keep their value) as a new version made from ``expected_version``.

    :class:`PreconditionFailed` when another change was saved since; the version's primary key catches two
    changes racing from the same version, so no lock is needed."""
    base = await current(session, settings)
    if expected_version != base.version:
        raise PreconditionFailed(
            f"the settings are at version {base.version}, not {expected_version}: read them again and reapply "
            "your change",
            extra={"current_version": base.version},
        )
    merged = validate(base, changes)
    at = now or utcnow()
    saved = replace(merged, version=base.version + 1, changed_at=at, changed_by=actor.name)
    session.add(
        ProgrammeSettingsVersion(
            version=saved.version, values=saved.document(), changed_at=at, changed_by=actor.name
        )
    )
    try:
        await session.flush()
    except IntegrityError as exc:
        raise PreconditionFailed(
            f"another change saved version {saved.version} first: read the settings again and reapply your change"
        ) from exc
    audit.record(
        session,
        actor,
        "programme_settings.change",
        "programme_settings",
        saved.version,
        before=base.document() | {"version": base.version},
        after=saved.document() | {"version": saved.version},
        at=at,
    )
    txcache.put(session, _TX_KEY, saved)
    return saved


# -------------------------------------------------------------------------------------------------------------
# a cache for hot paths outside a unit of work


class SettingsCache:
    """The settings in force, read at most once per ``ttl`` seconds (per process).

    For paths that would otherwise read the database on every call (each SMS reply push asks for the opt-out
    keywords). A change made through this process calls :meth:`invalidate`; other processes see it within
    ``ttl``.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], settings: Settings, *, ttl: float = 5.0
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._ttl = ttl
        self._value: ProgrammeSettings | None = None
        self._read_at = 0.0

    async def get(self) -> ProgrammeSettings:
        if self._value is not None and clock.monotonic() - self._read_at < self._ttl:
            return self._value
        async with self._sessions() as session, session.begin():
            value = await current(session, self._settings)
        self._value, self._read_at = value, clock.monotonic()
        return value

    def invalidate(self) -> None:
        self._value = None
