"""Setting up a store's tills as the operator does (``tongcrm pos till …``), and what the till's consent is
kept as, on both databases."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.config import Settings
from tongcrm.consent.models import ConsentEvent
from tongcrm.counter import CounterService
from tongcrm.errors import NotFound
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos import stores
from tongcrm_offline_pos.models import TABLES

from .conftest import add_store


async def test_a_till_for_an_unknown_store_is_refused_naming_the_stores_there_are(
    pos: ApiClient, pos_host: PluginHost, tongcrm_settings: Settings
) -> None:
    """`pos till add --store X` for a store that does not exist said only "no store 'X'", where `apikey create
    --store` lists the stores: the operator saw no way to the right code."""
    await add_store(pos, pos_host, tongcrm_settings, "SH002", ())
    counter = CounterService(pos.db.sessions, pos.db.read_sessions, pos_host, tongcrm_settings)
    for call in (
        lambda uow: stores.add_till(uow, "SH9", "T01"),
        lambda uow: stores.disable_till(uow, "SH9", "T01"),
        lambda uow: stores.list_tills(uow, "SH9"),
    ):
        with pytest.raises(NotFound) as refused:
            async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
                await call(uow)
        assert refused.value.message == (
            "no store 'SH9': the active stores are 'S1', 'SH002'; add a store first with "
            "`tongcrm channel add offline_pos --name CODE`"
        )
    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        added = await stores.add_till(uow, "SH002", "T09")
    assert (added.store, added.till, added.status) == ("SH002", "T09", "active")


async def test_a_till_place_too_long_to_keep_as_the_consent_source_is_refused_not_cut(
    make_client, pos_host: PluginHost, tongcrm_settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """The consent's source (``pos:STORE:TILL``) was cut to 64 characters, which could name another store:
    the enrolment is refused with a 400 saying the bound, and nothing is kept."""
    code = "S" * 60
    async with make_client(host=pos_host, role="pos", store_code=code) as pos:
        await add_store(pos, pos_host, tongcrm_settings, code, ("T01",))
        refused = await pos.post(
            "/pos/v1/members", json={"till": "T01", "mobile": "13800138000", "consent": {"marketing": True}}
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"] == "source is longer than 64 characters (the longest kept)"
        async with pos.db.sessions() as session:
            assert (await session.execute(sa.select(sa.func.count()).select_from(ConsentEvent))).scalar() == 0
