"""``tongcrm campaigns …`` against a file database: create, list, schedule, show, report (with the SVG), the calendar, cancel,
and refusals with a non-zero exit and their reason."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from tongcrm.audit.service import SYSTEM
from tongcrm.cli import Context, build_cli
from tongcrm.config import Settings
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.members.models import MemberTag
from tongcrm.members.service import create_member
from tongcrm.messaging import service as messaging
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import service as segments


async def _world(url: str, host: PluginHost) -> None:
    settings = Settings(database_url=url, secret_key="cli-test-secret-0123456789")
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session, session.begin():
            vault = settings.vault()
            await messaging.create_account(
                session, host, vault, "aliyun_sms", "sms",
                {"access_key_id": "k", "access_key_secret": "s", "endpoint": "http://127.0.0.1:9/"},
            )  # fmt: skip
            await messaging.create_template(
                session, name="promo", account="sms", purpose="marketing", signature="通通会员",
                template_code="SMS_1", text="春季上新，拒收请回复R",
            )  # fmt: skip
            for i in range(5):
                member = await create_member(
                    session, vault, {"name": "王", "mobile": f"+86139{i:08d}"}, [], SYSTEM
                )
                session.add(MemberTag(member_id=member.id, tag="vip"))
            await session.flush()
            context = await segments.load_context(session, host, datetime.now(UTC))
            definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
            await segments.save(session, context, "vip", definition, SYSTEM)
    finally:
        await engine.dispose()


def test_campaigns_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("TONGCRM_DATABASE_URL", url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    host = PluginHost(autoload=True, disabled=set())

    def invoke(*args: str, ok: bool = True) -> str:
        result = CliRunner().invoke(build_cli(host), list(args), obj=Context(host))
        assert (result.exit_code == 0) is ok, result.output
        # a refusal leaves as the domain error (``main`` prints its message as one line and exits 1)
        return result.output if ok else str(result.exception)

    invoke("db", "upgrade")
    asyncio.run(_world(url, host))
    response = tmp_path / "response.json"
    response.write_text(json.dumps({"kind": "order", "within_days": 7}))
    out = invoke("campaigns", "create", "spring", "--segment", "vip", "--template", "promo", "--response",
                 str(response), "--control-percent", "20")  # fmt: skip
    assert "created campaign 'spring'" in out and "draft" in out
    refused = invoke("campaigns", "create", "autumn", "--segment", "vip", "--template", "promo", "--response",
                     str(response), "--control-percent", "75", ok=False)  # fmt: skip
    assert "between 0 and 50" in refused
    schedule = tmp_path / "schedule.json"
    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    schedule.write_text(json.dumps({"kind": "once", "at": at.isoformat()}))
    assert f"first run at {at.isoformat()}" in invoke("campaigns", "schedule", "spring", str(schedule))
    assert "spring\tscheduled" in invoke("campaigns", "list")
    shown = json.loads(invoke("campaigns", "show", "spring"))
    assert shown["campaign"]["control_percent"] == 20 and shown["runs"] == []
    svg = tmp_path / "spring.svg"
    report = invoke("campaigns", "report", "spring", "--svg", str(svg))
    assert "too small to conclude" in report and svg.read_text().startswith("<svg")
    day = at.astimezone(ZoneInfo("Asia/Shanghai")).date().isoformat()
    calendar = invoke("calendar", "--from", day, "--to", day)
    assert f"{day} " in calendar and "planned_run spring (scheduled)" in calendar
    assert "care flows" not in calendar  # none configured in this database
    assert "cancelled 'spring'" in invoke("campaigns", "cancel", "spring")
    assert "spring" not in invoke("calendar", "--from", day, "--to", day)
    assert "already cancelled" in invoke("campaigns", "cancel", "spring", ok=False)
    # journeys
    trigger, steps = tmp_path / "trigger.json", tmp_path / "steps.json"
    trigger.write_text(json.dumps({"kind": "birthday"}))
    steps.write_text(
        json.dumps({"wait_hours": 0, "condition": None, "then": {"template": "promo", "points": 88}})
    )
    out = invoke("campaigns", "journeys", "create", "bday", "--trigger", str(trigger), "--steps", str(steps),
                 "--response", str(response), "--control-percent", "10", "--budget-points", "10000")  # fmt: skip
    assert "created journey 'bday'" in out
    assert "bday\tactive\tbirthday\tno participant" in invoke("campaigns", "journeys", "list")
    assert json.loads(invoke("campaigns", "journeys", "show", "bday"))["steps"]["then"]["points"] == 88
    assert "is paused" in invoke("campaigns", "journeys", "pause", "bday")
    assert "already paused" in invoke("campaigns", "journeys", "pause", "bday", ok=False)
    assert "is active" in invoke("campaigns", "journeys", "resume", "bday")
    assert "too small to conclude" in invoke("campaigns", "journeys", "report", "bday")
    journey_svg = tmp_path / "bday.svg"
    drawn = invoke("campaigns", "journeys", "report", "bday", "--svg", str(journey_svg))
    assert "uplift +0.00 pts" in drawn and journey_svg.read_text().startswith("<svg")
    not_svg = invoke("campaigns", "journeys", "report", "bday", "--svg", str(tmp_path / "bday.png"), ok=False)
    assert "ending in .svg" in not_svg
    trigger.write_text(json.dumps({"kind": "moonrise"}))
    bad = invoke("campaigns", "journeys", "create", "moon", "--trigger", str(trigger), "--steps", str(steps),
                 "--response", str(response), ok=False)  # fmt: skip
    assert "trigger kind 'moonrise' is unknown" in bad
