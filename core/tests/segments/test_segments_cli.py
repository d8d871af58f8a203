"""``tongcrm segments``: preview, save (a new version on the second save), list, count and export from a
terminal, with one-line errors naming the bad node."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm.audit.models import AuditEntry
from tongcrm.cli import Context, build_cli
from tongcrm.consent.service import record_consent
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import BadRequest
from tongcrm.members.models import Member, MemberTag
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import activity
from tongcrm.segments.models import MemberActivity
from tongcrm.segments.schema import InvalidSegment
from tongcrm.testing.cluster import stamp_heads
from tongcrm.testing.database import TestDatabase


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("TONGCRM_DATABASE_URL", url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    host = PluginHost(autoload=False)

    def run(*args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(
            build_cli(host), list(args), obj=Context(host), catch_exceptions=False, input=input
        )

    run.url = url  # type: ignore[attr-defined]
    return run


async def _seed(url: str, n: int) -> None:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s, s.begin():
            rows = [Member(name=f"m{i}", city="Shanghai" if i % 2 else "Beijing") for i in range(n)]
            s.add_all(rows)
            await s.flush()
            s.add_all(MemberTag(member_id=r.id, tag="vip") for r in rows[:3])
    finally:
        await engine.dispose()


def test_segments_commands(invoke: Any, tmp_path: Path) -> None:
    assert invoke("db", "upgrade").exit_code == 0
    asyncio.run(_seed(invoke.url, 6))
    vip = tmp_path / "vip.json"
    vip.write_text(json.dumps({"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}))

    previewed = invoke("segments", "preview", str(vip), "--sample", "2")
    assert previewed.exit_code == 0 and "3 members" in previewed.output
    piped = invoke("segments", "preview", "-", input=json.dumps(
        {"version": 1, "condition": {"field": "profile.city", "op": "eq", "value": "Shanghai"}}))  # fmt: skip
    assert "3 members" in piped.output

    assert "version 1" in invoke("segments", "save", "vip", str(vip), "--description", "VIPs").output
    assert "version 2" in invoke("segments", "save", "vip", str(vip), "--note", "same again").output
    listed = invoke("segments", "list").output
    assert "vip" in listed and "VIPs" in listed
    assert invoke("segments", "count", "vip").output.strip() == "3"

    out = tmp_path / "vip.csv"
    exported = invoke("segments", "export", "vip", "--output", str(out))
    assert exported.exit_code == 0 and "exported 3 members" in exported.output
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["m*", "m*", "m*"] and rows[0]["tags"] == "vip"  # masked by default
    revealed = invoke("segments", "export", "vip", "--output", str(out), "--reveal", "name")
    assert revealed.exit_code == 0
    with out.open(encoding="utf-8") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["m0", "m1", "m2"]

    async def exports() -> list[Any]:
        engine = create_engine(invoke.url)
        try:
            async with session_factory(engine)() as s:
                stmt = sa.select(AuditEntry.actor, AuditEntry.after).where(
                    AuditEntry.action == "segment.export"
                )
                return list((await s.execute(stmt)).all())
        finally:
            await engine.dispose()

    assert [(a, e["members"], e["revealed"]) for a, e in asyncio.run(exports())] == [
        ("cli", 3, []),
        ("cli", 3, ["mobile", "name"]),
    ]
    assert "fields" in invoke("segments", "--help").output
    assert "orders.spend" in invoke("segments", "fields").output


def test_a_bad_definition_names_the_node(invoke: Any, tmp_path: Path) -> None:
    invoke("db", "upgrade")
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"version": 1, "condition": {"all": [{"field": "tag", "op": "has", "value": "x"}]}})
    )
    with pytest.raises(InvalidSegment, match="/condition/all/0/field: unknown field 'tag'"):
        invoke("segments", "preview", str(bad))


def test_a_definition_that_is_not_json_says_where(invoke: Any, tmp_path: Path) -> None:
    """The JSON reader the segment and campaign commands share (:func:`tongcrm.cli_run.load_json`): a file or
    standard input that is not JSON is refused naming the source and the place, before anything is done."""
    invoke("db", "upgrade")
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1,\n  "condition": }', encoding="utf-8")
    with pytest.raises(BadRequest, match=r"broken\.json: not JSON \(Expecting value at line 2, column 16\)"):
        invoke("segments", "preview", str(broken))
    with pytest.raises(BadRequest, match=r"^-: not JSON \(Expecting value at line 1, column 1\)"):
        invoke("segments", "save", "vip", "-", input="vip")
    with pytest.raises(BadRequest, match=r"broken\.json: not JSON"):
        invoke("campaigns", "create", "c", "--segment", "s", "--template", "t", "--response", str(broken))
    assert "vip" not in invoke("segments", "list").output


def test_verify_checks_the_member_activity_summary(invoke: Any) -> None:
    """``tongcrm verify`` refreshes the summary, then compares it with a recomputation: a row written behind its
    back is reported (and fails the command) until ``segments rebuild-activity`` recomputes it."""
    assert invoke("db", "upgrade").exit_code == 0
    asyncio.run(_seed(invoke.url, 2))
    good = invoke("verify")
    assert good.exit_code == 0 and "member activity summary: equals" in good.output

    async def drift() -> int:
        engine = create_engine(invoke.url)
        try:
            async with session_factory(engine)() as s, s.begin():
                member = (await s.execute(sa.select(sa.func.min(Member.id)))).scalar_one()
                s.add(MemberActivity(member_id=member, orders=3, spend=100, store_orders=0))
                return int(member)
        finally:
            await engine.dispose()

    member = asyncio.run(drift())
    bad = invoke("verify")
    assert bad.exit_code != 0 and f"for members {member}" in bad.output
    assert "rebuilt" in invoke("segments", "rebuild-activity").output
    assert invoke("verify").exit_code == 0


async def test_verify_waits_for_a_refresh_in_progress_instead_of_reporting_its_rows(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a running cluster the periodic job may be refreshing the summary when ``verify`` runs: comparing then
    would report every member that refresh is about to bring up to date (the full system test saw it)."""
    if not tongcrm_db.url.startswith("postgresql"):
        pytest.skip("the refresh lock is PostgreSQL's (SQLite has one writer)")
    host = PluginHost(autoload=True, disabled=set())  # every plugin's revisions: others may have stamped them
    await stamp_heads(tongcrm_db, host)
    async with tongcrm_db.sessions() as s, s.begin():
        await activity.refresh(s)
        member = Member(name="m")
        s.add(member)
        await s.flush()
        await record_consent(s, member.id, "marketing", "opt_in", source="test")  # the summary is behind
    monkeypatch.setenv("TONGCRM_DATABASE_URL", tongcrm_db.url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    async with tongcrm_db.sessions() as s, s.begin():
        await s.execute(sa.select(sa.func.pg_advisory_xact_lock(activity._LOCK_KEY)))  # a refresh under way
        verifying = asyncio.create_task(
            asyncio.to_thread(CliRunner().invoke, build_cli(host), ["verify"], obj=Context(host))
        )
        await asyncio.sleep(1.5)
    result = await verifying
    assert result.exit_code == 0, result.output
