"""A key whose cached answer lapsed is read once for all the requests that find it lapsed together (issue #22,
branch tillpg17): a till's key lapses for all its requests at once, and 8 tills each reading it on a connection
of their own took the PostgreSQL reader's connections beyond those opened ahead every TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from tongcrm.auth.service import _LIVE_KEY, KeyVerifier, create_key, revoke_key
from tongcrm.db.point_reads import PointQuery, PointReader, create_point_reader
from tongcrm.testing.database import TestDatabase


class CountingReader(PointReader):
    """The app's reader for the database, counting the reads of a live key."""

    def __init__(self, inner: PointReader) -> None:
        self.inner = inner
        self.key_reads = 0

    async def first(self, query: PointQuery, params: Mapping[str, Any]) -> Any | None:
        if query is _LIVE_KEY:
            self.key_reads += 1
        return await self.inner.first(query, params)

    async def first_by_keys(self, query: Any, group: Mapping[str, Any], keys: Any) -> Any | None:
        return await self.inner.first_by_keys(query, group, keys)


async def test_requests_that_find_a_key_lapsed_together_share_one_read_of_it(
    tongcrm_db: TestDatabase,
) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        created = await create_key(session, "admin", label="desk")
    inner = create_point_reader(tongcrm_db.url, tongcrm_db.engine)
    reader = CountingReader(inner)
    verifier = KeyVerifier(reader, ttl=0.0)  # every answer lapses at once
    try:
        first = await asyncio.gather(*(verifier.verify(created.key) for _ in range(8)))
        assert reader.key_reads == 1
        assert {p.key_id if p else None for p in first} == {created.id}
        # lapsed again: the next burst reads it once more (the cache is not kept past its TTL)
        again = await asyncio.gather(*(verifier.verify(created.key) for _ in range(8)))
        assert reader.key_reads == 2 and all(p is not None for p in again)
        # a key nobody holds, asked together: one read, refused for all
        stranger = created.key[:-4] + "AAAA"
        assert await asyncio.gather(*(verifier.verify(stranger) for _ in range(4))) == [None] * 4
        assert reader.key_reads == 3
        # revoked: the counter moved, so no answer read under the old counter is shared; refused for all
        async with tongcrm_db.sessions() as session, session.begin():
            await revoke_key(session, str(created.id))
        assert await asyncio.gather(*(verifier.verify(created.key) for _ in range(8))) == [None] * 8
        assert reader.key_reads == 4
        # one caller cancelled does not cancel the read the others wait for
        verifier.forget()
        callers = [asyncio.ensure_future(verifier.verify(created.key)) for _ in range(3)]
        await asyncio.sleep(0)
        callers[0].cancel()
        assert await asyncio.gather(*callers[1:]) == [None, None]
        assert callers[0].cancelled()
    finally:
        await inner.close()
