"""The call gate's window (tongcrm.limits.gate): a finished call counts from the moment it finished, a call in
doubt (no answer: a timeout, a cancelled request) keeps counting as in flight, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from tongcrm.limits.gate import IN_FLIGHT, POLL_SECONDS, DatabaseCallGate
from tongcrm.limits.models import CallGrant
from tongcrm.plugin.grants import holding
from tongcrm.testing.database import TestDatabase

KEY = "jos:test-app"
#: Long enough that nothing in a test leaves the window by the passing of time, however loaded the machine.
WINDOW = 30.0


async def _dated(db: TestDatabase, grant_id: int) -> datetime:
    async with db.sessions() as session:
        at = (
            await session.execute(sa.select(CallGrant.granted_at).where(CallGrant.id == grant_id))
        ).scalar_one()
    assert isinstance(at, datetime)
    return at


async def test_a_finished_call_leaves_the_window_a_window_after_it_finished(tongcrm_db: TestDatabase) -> None:
    gate = DatabaseCallGate(tongcrm_db.sessions)
    grant = await gate.acquire(KEY, rate=1, window=WINDOW)
    assert await _dated(tongcrm_db, grant.grant_id) > datetime.now(UTC) + IN_FLIGHT / 2  # in flight
    assert await gate._try(KEY, 1, timedelta(seconds=WINDOW)) == (None, POLL_SECONDS)
    before = datetime.now(UTC)
    await grant.release()
    finished = await _dated(tongcrm_db, grant.grant_id)
    assert before - timedelta(seconds=1) <= finished <= datetime.now(UTC) + timedelta(seconds=1)
    granted, wait = await gate._try(KEY, 1, timedelta(seconds=WINDOW))
    assert granted is None and 0 < wait <= WINDOW  # it leaves the window WINDOW after it finished


async def test_a_call_in_doubt_keeps_counting_as_in_flight(tongcrm_db: TestDatabase) -> None:
    """A request that got no answer may still reach the platform, which counts it on arrival: releasing it as
    finished "now" would let the next window's calls arrive together with it."""
    gate = DatabaseCallGate(tongcrm_db.sessions)
    grant = await gate.acquire(KEY, rate=1, window=WINDOW)
    before = datetime.now(UTC)
    await grant.release(in_doubt=True)
    assert await _dated(tongcrm_db, grant.grant_id) >= before + IN_FLIGHT - timedelta(seconds=1)
    assert await gate._try(KEY, 1, timedelta(seconds=WINDOW)) == (None, POLL_SECONDS)  # no telling when
    await grant.release()  # a second release changes nothing
    assert await gate._try(KEY, 1, timedelta(seconds=WINDOW)) == (None, POLL_SECONDS)


async def test_holding_a_grant_releases_it_in_doubt_unless_answered_or_never_sent(
    tongcrm_db: TestDatabase,
) -> None:
    import httpx

    gate = DatabaseCallGate(tongcrm_db.sessions)
    outcomes: list[bool] = []
    for failure in (None, httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), TimeoutError()):
        grant = await gate.acquire(f"{KEY}:{len(outcomes)}", rate=1, window=WINDOW)
        try:
            async with holding(grant):
                if failure is not None:
                    raise failure
        except (httpx.HTTPError, TimeoutError):
            pass
        in_flight = await _dated(tongcrm_db, grant.grant_id) > datetime.now(UTC) + IN_FLIGHT / 2
        outcomes.append(in_flight)
    assert outcomes == [False, True, False, True]
