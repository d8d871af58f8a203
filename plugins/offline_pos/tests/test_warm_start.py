"""A served app's first till lookup compiles no statement: the start-up rehearsal (``tongcrm.warmup``, issue #22,
branch warm13) compiled the key check and the card read the lookup runs."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
from litestar.testing import AsyncTestClient
from tongcrm.app import create_app
from tongcrm.auth import service as auth_service
from tongcrm.auth.service import create_key
from tongcrm.config import Settings
from tongcrm.counter import _CARD_OR_NONE_READ, _CARD_READ
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.plans import spy_compiled_plans

from .conftest import add_store

#: the statements of a till's lookup by mobile; their plans are process-wide, so earlier tests compiled them
LOOKUP_STATEMENTS = (
    auth_service._LIVE_KEY,
    auth_service._GENERATION.one,
    auth_service._GENERATION.many,
    _CARD_READ,
    _CARD_OR_NONE_READ,
)


@pytest.mark.parametrize("warm", [True, False])
async def test_a_served_apps_first_till_lookup_compiles_nothing(
    tongcrm_db: TestDatabase,
    tongcrm_settings: Settings,
    pos_host: PluginHost,
    monkeypatch: pytest.MonkeyPatch,
    warm: bool,
) -> None:
    await add_store(SimpleNamespace(db=tongcrm_db), pos_host, tongcrm_settings, "S1", ("T01",))  # type: ignore[arg-type]
    async with tongcrm_db.sessions() as session, session.begin():
        key = (await create_key(session, "pos", store_code="S1")).key
    for query in LOOKUP_STATEMENTS:
        monkeypatch.setattr(query, "_plans", {})
    compiled = spy_compiled_plans(monkeypatch)
    app = create_app(tongcrm_settings, pos_host, run_jobs=False, configure_logs=False)
    app.state.warm_up = warm  # what settle_heap(app) sets in a serving process
    frozen = gc.get_freeze_count()
    try:
        async with AsyncTestClient(app) as client:
            compiled.clear()
            client.headers["Authorization"] = f"Bearer {key}"
            answer = await client.post(
                "/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138000"}
            )
            assert answer.status_code == 404, answer.text  # nobody holds it: the key checked, the card read
            # without the rehearsal the same lookup compiles them: the test sees what it claims to
            assert (compiled == []) is warm, compiled
    finally:
        if not frozen:  # the lifespan froze the heap after its rehearsal: give the test process it back
            gc.unfreeze()
