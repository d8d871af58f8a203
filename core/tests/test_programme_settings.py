"""Programme settings: stored in the database, versioned with history, validated, audited, changed through the
API (admins, If-Match) and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import SYSTEM
from tongcrm.cli import Context, build_cli
from tongcrm.config import Settings
from tongcrm.errors import PreconditionFailed, Unprocessable
from tongcrm.plugin.host import PluginHost
from tongcrm.programme import service
from tongcrm.testing.database import TestDatabase

SETTINGS = Settings(
    database_url="unused", secret_key="test-secret-key-0123456789abcdef", timezone="Asia/Urumqi"
)


async def test_defaults_until_a_first_change_then_versions_with_history(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        current = await service.current(session, SETTINGS)
    assert current.version == 0 and current.timezone == "Asia/Urumqi"  # TONGCRM_TIMEZONE is the default
    assert (current.marketing_window_start, current.marketing_window_end) == (time(8), time(20))
    assert current.opt_out_keywords == ("T", "TD", "R", "退订")

    async with tongcrm_db.sessions() as session, session.begin():
        first = await service.change(
            session, SETTINGS, {"daily_budget": 6, "marketing_budget": 3}, expected_version=0, actor=SYSTEM
        )
    async with tongcrm_db.sessions() as session, session.begin():
        second = await service.change(
            session,
            SETTINGS,
            {"marketing_window_start": "09:30", "opt_out_keywords": ["STOP", " 退订 ", "stop"]},
            expected_version=1,
            actor=SYSTEM,
        )
    assert (first.version, second.version) == (1, 2)
    assert second.daily_budget == 6  # fields not named keep their value
    assert second.opt_out_keywords == ("STOP", "退订")  # trimmed, duplicates (any case) dropped
    async with tongcrm_db.sessions() as session, session.begin():
        assert await service.current(session, SETTINGS) == second
        assert [v.version for v in await service.history(session)] == [2, 1]
        assert (await service.version(session, 1)).marketing_window_start == time(8)
        audits = list(
            (
                await session.execute(
                    sa.select(AuditEntry)
                    .where(AuditEntry.action == "programme_settings.change")
                    .order_by(AuditEntry.id)
                )
            ).scalars()
        )
    assert [a.object_id for a in audits] == ["1", "2"]
    assert audits[1].before is not None and audits[1].after is not None
    assert audits[1].before["marketing_window_start"] == "08:00"
    assert audits[1].after["marketing_window_start"] == "09:30"
    assert audits[1].after["version"] == 2


async def test_a_stale_change_is_refused(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        await service.change(session, SETTINGS, {"daily_budget": 5}, expected_version=0, actor=SYSTEM)
    with pytest.raises(PreconditionFailed, match="at version 1, not 0"):
        async with tongcrm_db.sessions() as session, session.begin():
            await service.change(session, SETTINGS, {"daily_budget": 7}, expected_version=0, actor=SYSTEM)


async def test_two_changes_racing_from_one_version_save_one(tongcrm_db: TestDatabase) -> None:
    async def change(budget: int) -> int:
        async with tongcrm_db.sessions() as session, session.begin():
            saved = await service.change(
                session, SETTINGS, {"daily_budget": budget}, expected_version=0, actor=SYSTEM
            )
            await asyncio.sleep(0.05)  # both have read version 0 before either commits (PostgreSQL)
            return saved.daily_budget

    results = await asyncio.gather(change(5), change(9), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["PreconditionFailed", "int"]
    async with tongcrm_db.sessions() as session, session.begin():
        assert [v.version for v in await service.history(session)] == [1]


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "not an IANA time zone"),
        ({"timezone": ""}, "timezone", "not an IANA time zone"),
        ({"marketing_window_start": "25:00"}, "marketing_window_start", "not a time of day"),
        ({"marketing_window_start": "08:00:30"}, "marketing_window_start", "hours and minutes only"),
        ({"marketing_window_start": "21:00"}, "marketing_window_end", "must end after it starts"),
        ({"marketing_window_end": "08:00"}, "marketing_window_end", "must end after it starts"),
        ({"daily_budget": 0}, "daily_budget", "between 1 and 100"),
        ({"daily_budget": "many"}, "daily_budget", "whole number"),
        ({"marketing_budget": 5}, "marketing_budget", "between 0 and the daily budget (4)"),
        ({"marketing_budget": -1}, "marketing_budget", "between 0 and the daily budget"),
        ({"opt_out_keywords": []}, "opt_out_keywords", "at least one"),
        ({"opt_out_keywords": ["T", "  "]}, "opt_out_keywords", "cannot be blank"),
        ({"opt_out_keywords": ["x" * 21]}, "opt_out_keywords", "longer than 20"),
        ({"quiet": "yes"}, "quiet", "not a programme setting"),
    ],
)
def test_validation_names_the_bad_field(changes: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(Unprocessable) as raised:
        service.validate(service.defaults(SETTINGS), changes)
    assert says in raised.value.extra["errors"][field]


async def test_api_reads_for_analysts_changes_for_admins_with_if_match(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    async with make_client(role="analyst") as analyst:
        shown = await analyst.get("/api/programme-settings")
        assert shown.status_code == 200 and shown.headers["etag"] == '"v0"'
        assert shown.json()["version"] == 0 and shown.json()["marketing_window_start"] == "08:00"
        denied = await analyst.put("/api/programme-settings", json={"daily_budget": 5, "version": 0})
        assert denied.status_code == 403
    async with make_client(role="operator") as operator:
        denied = await operator.put("/api/programme-settings", json={"daily_budget": 5, "version": 0})
        assert denied.status_code == 403
    async with make_client() as admin:
        missing = await admin.put("/api/programme-settings", json={"daily_budget": 5})
        assert missing.status_code == 428 and "If-Match" in missing.json()["detail"]
        saved = await admin.put(
            "/api/programme-settings",
            json={"daily_budget": 5, "timezone": "Europe/London"},
            headers={"If-Match": '"v0"'},
        )
        assert saved.status_code == 200, saved.text
        assert saved.headers["etag"] == '"v1"'
        assert saved.json()["timezone"] == "Europe/London" and saved.json()["changed_by"].startswith("key:")
        stale = await admin.put(
            "/api/programme-settings", json={"daily_budget": 6}, headers={"If-Match": '"v0"'}
        )
        assert stale.status_code == 412 and stale.json()["current_version"] == 1
        bad = await admin.put(
            "/api/programme-settings",
            json={"marketing_window_start": "22:00", "daily_budget": 0},
            headers={"If-Match": '"v1"'},
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert set(bad.json()["errors"]) == {"marketing_window_end", "daily_budget"}
        typo = await admin.put("/api/programme-settings", json={"daily_budgets": 6, "version": 1})
        assert typo.status_code == 400
        history = (await admin.get("/api/programme-settings/history")).json()
        assert [v["version"] for v in history["items"]] == [1]
        assert (await admin.get("/api/programme-settings/history/1")).json()["daily_budget"] == 5
        assert (await admin.get("/api/programme-settings/history/7")).status_code == 404
        assert (await admin.get("/api/programme-settings")).json()["daily_budget"] == 5


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    host = PluginHost(autoload=True, disabled=set())

    def run(*args: str) -> Any:
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)

    return run


def test_cli_settings_show_and_set(invoke: Callable[..., Any]) -> None:
    assert invoke("db", "upgrade").exit_code == 0
    shown = invoke("settings", "show")
    assert "defaults: nothing saved yet" in shown.output and "Asia/Shanghai" in shown.output
    changed = invoke("settings", "set", "marketing_window_start=09:00", "opt_out_keywords=T,TD,退订,STOP")
    assert changed.exit_code == 0, changed.output
    assert "version 1" in changed.output and "STOP" in changed.output and "by cli" in changed.output
    with pytest.raises(Unprocessable, match="daily_budget: must be between 1 and 100"):
        invoke("settings", "set", "daily_budget=0")
    with pytest.raises(PreconditionFailed):
        invoke("settings", "set", "daily_budget=3", "--if-version", "0")
    assert invoke("settings", "set", "daily_budget=3", "--if-version", "1").exit_code == 0
    history = invoke("settings", "show", "--history").output
    assert "version 2" in history and "version 1" in history
    assert invoke("audit", "verify").exit_code == 0  # the changes were audited, and the chain holds
