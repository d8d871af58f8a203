"""The tills' requests that find the store's account and its tills lapsed together read each once (issue #22,
branch till18): a served app's first lookups arrive together from every till, as do those after every TTL.
On SQLite the counter's reads run inline, without a wait another request could run in, so they never overlap;
on PostgreSQL each is a round trip, and without the shared read each of the eight read both itself."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.errors import NotFound
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm_offline_pos import stores
from tongcrm_offline_pos.models import TABLES
from tongcrm_offline_pos.plugin import OfflinePosPlugin


async def test_units_of_work_arriving_together_read_the_store_and_its_tills_once(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = PluginHost(autoload=False)
    host.register(OfflinePosPlugin(), "offline_pos")
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(session, host, tongcrm_settings.vault(), "offline_pos", "S1", {})
    counter = CounterService(tongcrm_db.sessions, tongcrm_db.read_sessions, host, tongcrm_settings)
    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        for till in ("T01", "T02"):
            await stores.add_till(uow, "S1", till)
    counter.forget_accounts()
    tills = stores.TillCache()

    reads = {"account": 0, "tills": 0}
    read_account, active_tills = CounterService._read_account, stores.active_tills

    async def counted_account(self: CounterService, *args: Any) -> Any:
        reads["account"] += 1
        return await read_account(self, *args)

    async def counted_tills(*args: Any) -> Any:
        reads["tills"] += 1
        return await active_tills(*args)

    monkeypatch.setattr(CounterService, "_read_account", counted_account)
    monkeypatch.setattr(stores, "active_tills", counted_tills)

    async def lookup(till: str) -> str:
        async with counter.unit_of_work(actor=SYSTEM, tables=TABLES, readonly=True) as uow:
            store = await stores.get_store(uow, "S1")
            await tills.require(uow, store, till)
            return store.code

    assert await asyncio.gather(*(lookup(till) for till in ("T01", "T02") * 4)) == ["S1"] * 8
    assert reads == {"account": 1, "tills": 1}
    # a till nobody registered is still refused, after a read of its own (the cached tills do not have it)
    with pytest.raises(NotFound, match="T99"):
        await lookup("T99")
    assert reads == {"account": 1, "tills": 2}
    await counter.close()
