"""The contact policy: the one place that decides whether a message may go now.

In order: a recipient still there (a member erased after its message was queued is refused ``member_gone``;
one merged into another is written to at the survivor); consent for the purpose and signature
(:func:`tongcrm.consent.service.may_contact_many`); SMS opt-outs by reply (marketing only — a member who replied
``R`` still gets the shipping notice for an order they placed, unless they also withdrew service consent); quiet
hours in the programme's time zone (marketing only: outside the window the message waits for the window to
open); and one fatigue budget per member per programme day across every flow and campaign, where marketing may
use only part of it so that service messages always find room. Operators set the window, budgets, opt-out
keywords and time zone as programme settings (:mod:`tongcrm.programme`), which build the :class:`PolicyConfig`.

The decisions are pure functions over facts loaded in bulk, so the dispatcher asks once per batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from tongcrm.errors import ConfigError

BEIJING = ZoneInfo("Asia/Shanghai")


class Verdict(enum.StrEnum):
    SEND = "send"
    REFUSE = "refuse"
    DEFER = "defer"


class Reason(enum.StrEnum):
    NO_CONSENT = "no_consent"
    OPTED_OUT = "opted_out"
    QUIET_HOURS = "quiet_hours"
    FATIGUE = "fatigue"
    NO_MOBILE = "no_mobile"
    MEMBER_GONE = "member_gone"
    MISSING_VARIABLES = "missing_variables"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """``marketing_window_start``–``marketing_window_end`` is the window (in ``tz``, the programme's time zone)
    in which marketing may go; every other hour is quiet. ``daily_budget`` caps all messages to a member per
    day in ``tz``; ``marketing_budget`` caps the marketing share of it, leaving
    ``daily_budget - marketing_budget`` for service messages."""

    marketing_window_start: time = time(8, 0)
    marketing_window_end: time = time(20, 0)
    daily_budget: int = 4
    marketing_budget: int = 2
    opt_out_keywords: tuple[str, ...] = ("T", "TD", "R", "退订")
    tz: ZoneInfo = BEIJING

    def __post_init__(self) -> None:
        if self.marketing_window_start >= self.marketing_window_end:
            raise ConfigError("the marketing window must start before it ends (same day)")
        if not 0 <= self.marketing_budget <= self.daily_budget:
            raise ConfigError("the marketing budget must lie between 0 and the daily budget")


def programme_day(config: PolicyConfig, at: datetime) -> str:
    """The day (ISO date in the programme's time zone) a fatigue budget is counted in."""
    return at.astimezone(config.tz).date().isoformat()


def in_marketing_window(config: PolicyConfig, at: datetime) -> bool:
    local = at.astimezone(config.tz).time()
    return config.marketing_window_start <= local < config.marketing_window_end


def next_window_open(config: PolicyConfig, at: datetime) -> datetime:
    """The next moment (aware UTC-comparable) at which marketing may go, ``at`` itself when it may go now."""
    if in_marketing_window(config, at):
        return at
    local = at.astimezone(config.tz)
    start = datetime.combine(local.date(), config.marketing_window_start, config.tz)
    if local >= start:  # after the window today: tomorrow's opening
        start = datetime.combine(local.date() + timedelta(days=1), config.marketing_window_start, config.tz)
    return start


@dataclass(frozen=True, slots=True)
class Facts:
    """What the policy needs to know about one message's recipient, loaded in bulk by the dispatcher."""

    purpose: str
    consent: bool
    opted_out: bool
    has_mobile: bool
    used_today: int
    missing_variables: tuple[str, ...] = ()
    #: No live member is left to write to: the recipient was erased (PIPL art. 47) after the message was
    #: queued, or the merges from the member it was queued for end at an erased one. A member merged into
    #: another is not gone: the message goes to the survivor, the same person.
    gone: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    not_before: datetime | None = None


def decide(config: PolicyConfig, facts: Facts, now: datetime) -> Decision:
    """The verdict for one message now. Refusals are final and carry their reason; a deferral names when."""
    marketing = facts.purpose == "marketing"
    if facts.gone:  # before the mobile: an erased member has none, and "no mobile" would send someone to look
        return Decision(Verdict.REFUSE, Reason.MEMBER_GONE)
    if not facts.has_mobile:
        return Decision(Verdict.REFUSE, Reason.NO_MOBILE)
    if marketing and facts.opted_out:
        return Decision(Verdict.REFUSE, Reason.OPTED_OUT)
    if not facts.consent:
        return Decision(Verdict.REFUSE, Reason.NO_CONSENT)
    if facts.missing_variables:
        return Decision(Verdict.REFUSE, f"{Reason.MISSING_VARIABLES}:{','.join(facts.missing_variables)}")
    if marketing and not in_marketing_window(config, now):
        return Decision(Verdict.DEFER, Reason.QUIET_HOURS, next_window_open(config, now))
    limit = config.marketing_budget if marketing else config.daily_budget
    if facts.used_today >= limit:
        return Decision(Verdict.REFUSE, Reason.FATIGUE)
    return Decision(Verdict.SEND)
