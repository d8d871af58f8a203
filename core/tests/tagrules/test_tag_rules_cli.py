"""``tongcrm tags rules``: create (applied at once), list, run and disable from a terminal; the limit of active
rules and an unknown segment are one-line errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm.audit.models import AuditEntry
from tongcrm.cli import Context, build_cli
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import Unprocessable
from tongcrm.members.models import Member, MemberTag
from tongcrm.plugin.host import PluginHost
from tongcrm.tagrules.models import TagRule


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("TONGCRM_DATABASE_URL", url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    host = PluginHost(autoload=False)

    def run(*args: str) -> Any:
        result = CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)
        return result

    run.url = url  # type: ignore[attr-defined]
    return run


async def _query(url: str, stmt: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s, s.begin():
            if isinstance(stmt, list):
                s.add_all(stmt)
                return []
            return list((await s.execute(stmt)).all())
    finally:
        await engine.dispose()


def test_tag_rules_commands(invoke: Any, tmp_path: Path) -> None:
    assert invoke("db", "upgrade").exit_code == 0
    asyncio.run(_query(invoke.url, [Member(city="Shanghai" if i < 2 else "Beijing") for i in range(3)]))
    definition = tmp_path / "sh.json"
    definition.write_text(
        '{"version": 1, "condition": {"field": "profile.city", "op": "eq", "value": "Shanghai"}}'
    )
    assert invoke("segments", "save", "shanghai", str(definition)).exit_code == 0

    created = invoke("tags", "rules", "create", "sh", "shanghai")
    assert created.exit_code == 0, created.output
    assert "rule 1: tag 'sh' follows segment 'shanghai'" in created.output
    assert "rule 1 (sh): 2 tagged, 0 untagged" in created.output
    tagged = asyncio.run(_query(invoke.url, sa.select(MemberTag.member_id).where(MemberTag.tag == "sh")))
    assert sorted(r[0] for r in tagged) == [1, 2]

    listed = invoke("tags", "rules", "list").output
    assert "sh" in listed and "shanghai" in listed and "1 of at most 50 active" in listed
    assert "rule 1 (sh): 0 tagged, 0 untagged" in invoke("tags", "rules", "run").output

    disabled = invoke("tags", "rules", "disable", "1")
    assert disabled.exit_code == 0 and "taken off 2 members" in disabled.output
    assert invoke("tags", "rules", "run").output == ""  # nothing enabled
    actions = asyncio.run(_query(invoke.url, sa.select(AuditEntry.action, AuditEntry.actor)))
    assert ("tag_rule.create", "cli") in actions and ("tag_rule.disable", "cli") in actions

    with pytest.raises(Unprocessable, match="no saved segment 'nowhere'"):
        invoke("tags", "rules", "create", "x", "nowhere")
    asyncio.run(
        _query(
            invoke.url, [TagRule(tag=f"t{i}", segment_id=1, enabled=True, created_by="t") for i in range(50)]
        )
    )
    with pytest.raises(Unprocessable, match="at most 50 rule-based tags can be active"):
        invoke("tags", "rules", "create", "late", "shanghai", "--no-run")
