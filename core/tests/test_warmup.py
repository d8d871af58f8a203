"""A serving app's start-up rehearsal (``tongcrm.warmup``, issue #22, branch warm13): after start-up the first
key check and member lookup compile no statement, and the start-up wrote nothing (no row, no sequence value)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from litestar.testing import AsyncTestClient
from tongcrm.app import create_app
from tongcrm.auth import service as auth_service
from tongcrm.auth.service import create_key
from tongcrm.config import Settings
from tongcrm.counter import _CARD_OR_NONE_READ, _CARD_READ
from tongcrm.members import service as members_service
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.plans import spy_compiled_plans, written_state

#: every statement the rehearsal covers; their plans are process-wide, so earlier tests have compiled them
REHEARSED = (
    auth_service._LIVE_KEY,
    auth_service._GENERATION.one,
    auth_service._GENERATION.many,
    members_service._LOOKUP.one,
    members_service._LOOKUP.many,
    members_service._LOOKUP.listed,
    _CARD_READ,
    _CARD_OR_NONE_READ,
)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL of every plan compiled from here on (the rehearsed statements' plans forgotten first). A served
    app's lifespan freezes the heap after its rehearsal: the test process is given it back unfrozen."""
    frozen = gc.get_freeze_count()
    for query in REHEARSED:
        if query is not None:
            monkeypatch.setattr(query, "_plans", {})
    yield spy_compiled_plans(monkeypatch)
    if not frozen:
        gc.unfreeze()


async def test_a_served_app_answers_its_first_lookup_with_nothing_to_compile(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, compiled: list[str]
) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        key = (await create_key(session, "operator")).key
    before = await written_state(tongcrm_db)
    app = create_app(tongcrm_settings, PluginHost(autoload=False), run_jobs=False, configure_logs=False)
    app.state.warm_up = True  # what settle_heap(app) sets in a serving process
    async with AsyncTestClient(app) as client:
        assert compiled, "the start-up rehearsal compiled nothing"
        assert await written_state(tongcrm_db) == before, "the start-up rehearsal wrote to the database"
        compiled.clear()
        client.headers["Authorization"] = f"Bearer {key}"
        answer = await client.get("/api/members/lookup", params={"mobile": "13912345678"})
        assert answer.status_code == 404, answer.text  # nobody holds it: the key checked, the lookup read
        assert compiled == []


async def test_an_app_not_served_rehearses_nothing(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, compiled: list[str]
) -> None:
    """Apps built for tests and tools start as before: only a serving process pays for the rehearsal."""
    app = create_app(tongcrm_settings, PluginHost(autoload=False), run_jobs=False, configure_logs=False)
    async with AsyncTestClient(app):
        assert compiled == []
