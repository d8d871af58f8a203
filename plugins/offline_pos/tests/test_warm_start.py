"""A served app's first till lookup compiles no statement: the start-up rehearsal (``tongcrm.warmup``, issue #22,
branch warm13) compiled the key check and the card read the lookup runs; nor do its first checkouts: on
PostgreSQL the quick checkout's statements are compiled ahead (branch till14), on SQLite the transactional
path's (branch till15), none run."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from tongcrm.app import create_app
from tongcrm.auth import service as auth_service
from tongcrm.auth.service import create_key
from tongcrm.config import Settings
from tongcrm.counter import _CARD_OR_NONE_READ, _CARD_READ
from tongcrm.db import direct
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.plans import spy_compiled_plans, written_state

from .conftest import TZ, add_store

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


@pytest.mark.parametrize("warm", [True, False])
async def test_a_served_apps_first_checkouts_compile_nothing(
    tongcrm_db: TestDatabase,
    tongcrm_settings: Settings,
    pos_host: PluginHost,
    clock: Any,
    monkeypatch: pytest.MonkeyPatch,
    warm: bool,
) -> None:
    """Issue #22 (branch till14): the start-up compiles the till's quick checkout (a new buyer's and a known
    member's: the read and the sale's statement) without running it, so on PostgreSQL a served app's first
    checkouts compile nothing, and the start-up wrote nothing (every table's rows, every sequence). On SQLite
    (no quick path; branch till15) it compiles the transactional path's statements instead — the receipt's
    claim and finish, the buyer's reads, the sale's member, order, lines, points and events — and the first
    checkouts compile nothing there either."""
    await add_store(SimpleNamespace(db=tongcrm_db), pos_host, tongcrm_settings, "S1", ("T01",))  # type: ignore[arg-type]
    async with tongcrm_db.sessions() as session, session.begin():
        key = (await create_key(session, "pos", store_code="S1")).key
    for query in LOOKUP_STATEMENTS:
        monkeypatch.setattr(query, "_plans", {})
    monkeypatch.setattr(
        direct, "_PLANS", weakref.WeakKeyDictionary()
    )  # every direct statement's plan forgotten
    compiled = spy_compiled_plans(monkeypatch)
    before = await written_state(tongcrm_db)
    app = create_app(tongcrm_settings, pos_host, run_jobs=False, configure_logs=False)
    app.state.warm_up = warm  # what settle_heap(app) sets in a serving process
    frozen = gc.get_freeze_count()
    postgres = tongcrm_db.backend == "postgresql"
    try:
        async with AsyncTestClient(app) as client:
            assert await written_state(tongcrm_db) == before, "the start-up wrote to the database"
            ahead = [sql for sql in compiled if "quick_ids" in sql or sql.startswith("WITH o AS")]
            assert len(ahead) == (3 if warm and postgres else 0), compiled  # the read, a sale of each kind
            claims = [
                sql for sql in compiled if sql.startswith(("INSERT INTO pos_receipts", "WITH order_figures"))
            ]
            assert len(claims) == (2 if warm and not postgres else 0), compiled  # the claim and the finish
            compiled.clear()
            client.headers["Authorization"] = f"Bearer {key}"
            day = clock.now.astimezone(TZ).date().isoformat()
            members = []
            for sequence, mobile in enumerate(("13800138000", "13800138000"), start=1):
                found = await client.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": mobile})
                member = found.json()["member_id"] if found.status_code == 200 else None
                body = {
                    "store": "S1", "till": "T01", "business_day": day, "sequence": sequence,
                    "occurred_at": clock.now.isoformat(), "total_fen": 12_800,
                    "lines": [{"line_no": 1, "title": "tea", "quantity": 1, "unit_price_fen": 12_800,
                               "amount_fen": 12_800}],
                    "payments": [{"method": "wechat", "amount_fen": 12_800}],
                    "member": {"member_id": member} if member else {"mobile": mobile},
                }  # fmt: skip
                answer = await client.post("/pos/v1/receipts", json=body)
                assert answer.status_code == 201, answer.text
                members.append((member, answer.json()["member_id"], answer.json()["points_earned"]))
            # a new buyer by mobile, then the same buyer found by the lookup and named by id
            assert members[0][0] is None and members[1][0] == members[0][1] == members[1][1], members
            assert members[0][2] == members[1][2] > 0, members
            # the path's statements were compiled at start-up; without it, the checkouts compile them
            assert (compiled == []) is warm, compiled
    finally:
        if not frozen:  # the lifespan froze the heap after its rehearsal: give the test process it back
            gc.unfreeze()
