"""Values kept for one transaction: never seen by the next one on the same session."""

from __future__ import annotations

from tongcrm.db import txcache
from tongcrm.testing.database import TestDatabase


async def test_a_value_lives_as_long_as_its_transaction(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as session:
        async with session.begin():
            assert txcache.get(session, "k") == (False, None)
            txcache.put(session, "k", None)  # None is a value too (no ladder configured)
            assert txcache.get(session, "k") == (True, None)
            txcache.put(session, "k", 7)
            assert txcache.get(session, "k") == (True, 7)
            txcache.forget(session, "k")
            assert txcache.get(session, "k") == (False, None)
            txcache.put(session, "k", 8)
        async with session.begin():
            assert txcache.get(session, "k") == (False, None)  # a new transaction reads afresh
