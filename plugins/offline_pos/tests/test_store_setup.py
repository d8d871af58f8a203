"""Setting up a store's tills as the operator does (``tongcrm pos till …``), and what the till's consent is
kept as, on both databases."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.consent.models import ConsentEvent
from tongcrm.counter import CounterService
from tongcrm.errors import NotFound, Unprocessable, shown
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos import stores
from tongcrm_offline_pos.models import TABLES, PosTill
from tongcrm_offline_pos.schemas import STORE_CODE_MAX, TILL_CODE_MAX

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


async def test_a_store_code_longer_than_a_receipt_carries_is_refused_when_the_store_is_made(
    make_client, pos_host: PluginHost, tongcrm_settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """A store code of 60 characters was accepted (an account name takes 100), then every enrolment at its
    tills was a 400 about ``source`` and every receipt a 400 about ``store``: the store is refused where it is
    made (the API route and `tongcrm channel add` alike), and the longest code works at the longest till."""
    longest = "S" * STORE_CODE_MAX
    async with make_client(host=pos_host, role="admin") as admin:
        refused = await admin.post(
            "/api/channel-accounts", json={"channel": "offline_pos", "name": longest + "X"}
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"] == (
            f"account name {longest + 'X'!r} is {STORE_CODE_MAX + 1} characters: a offline_pos account's name "
            f"is at most {STORE_CODE_MAX} (the channel writes it into bounded places)"
        )
        async with admin.db.sessions() as session:
            names = (await session.execute(sa.select(ChannelAccount.name))).scalars().all()
        assert names == []
    till = "T" * TILL_CODE_MAX
    async with make_client(host=pos_host, role="pos", store_code=longest) as pos:
        await add_store(pos, pos_host, tongcrm_settings, longest, (till,))
        enrolled = await pos.post(
            "/pos/v1/members", json={"till": till, "mobile": "13800138000", "consent": {"marketing": True}}
        )
        assert enrolled.status_code == 201, enrolled.text
        async with pos.db.sessions() as session:
            sources = set((await session.execute(sa.select(ConsentEvent.source))).scalars())
        assert sources == {f"pos:{longest}:{till}"}


async def test_a_store_made_before_the_bound_is_refused_for_tills_saying_what_to_do(
    make_client, pos_host: PluginHost, tongcrm_settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """A store whose code is longer than a till's store code (migration-era data) cannot take receipts; setting
    up a till for it, and an enrolment whose consent source ``pos:STORE:TILL`` would not fit, are a 422 naming
    the store and the bound (an enrolment was a 400 about the till's ``source``, which the till never sent)."""
    code = "S" * 60
    async with make_client(host=pos_host, role="pos", store_code=code) as pos:
        async with pos.db.sessions() as session, session.begin():  # as a migration left it: no bound applied
            account = ChannelAccount(
                channel="offline_pos",
                name=code,
                settings={},
                secret_names=[],
                status="active",
                status_detail="",
            )
            session.add(account)
            await session.flush()
            session.add(PosTill(account_id=account.id, till_code="T01", label="", status="active"))
        counter = CounterService(pos.db.sessions, pos.db.read_sessions, pos_host, tongcrm_settings)
        with pytest.raises(Unprocessable) as refused:
            async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
                await stores.add_till(uow, code, "T02")
        words = (
            f"store {shown(code)} has a code of 60 characters, too long for its tills: a store code is at most "
            f"{STORE_CODE_MAX} (a receipt carries it, and a till's consent is kept as pos:STORE:TILL); add the "
            "store under a shorter code (`tongcrm channel add offline_pos --name CODE`) and give its tills a key "
            "for that one"
        )
        assert refused.value.message == words
        enrol = await pos.post(
            "/pos/v1/members", json={"till": "T01", "mobile": "13800138000", "consent": {"marketing": True}}
        )
        assert enrol.status_code == 422, enrol.text
        assert enrol.json()["detail"] == words
        async with pos.db.sessions() as session:
            assert (await session.execute(sa.select(sa.func.count()).select_from(ConsentEvent))).scalar() == 0
            tills = (await session.execute(sa.select(PosTill.till_code))).scalars().all()
        assert tills == ["T01"]
