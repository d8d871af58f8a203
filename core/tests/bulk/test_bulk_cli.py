"""``tongcrm import`` and ``tongcrm export`` end to end on a SQLite file: progress, resume-by-rerun, mapping,
bad rows, masking, and an exported ledger that ``tongcrm verify`` agrees with."""

from __future__ import annotations

import csv
import gc
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tongcrm.bulk.cli import batch_collector
from tongcrm.cli import Context, build_cli
from tongcrm.plugin.host import PluginHost


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    host = PluginHost(autoload=False)

    def run(*args: str) -> Any:
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)

    assert run("db", "upgrade").exit_code == 0
    return run


def test_import_then_export_from_the_command_line(invoke: Any, tmp_path: Path) -> None:
    members = tmp_path / "会员.csv"
    members.write_text(
        "会员编号,手机号,姓名\nA1,13800138001,张三\nA2,13800138002,李四\nA3,bad,王五\nA4,13800138004,赵六\n",
        encoding="utf-8",
    )
    mapping = tmp_path / "mapping.json"
    mapping.write_text(
        json.dumps({"member_id": "会员编号", "mobile": "手机号", "name": "姓名"}), encoding="utf-8"
    )
    first = invoke("import", "members", str(members), "--mapping", str(mapping), "--page-size", "2")
    assert first.exit_code == 0, first.output
    assert "3 imported, 0 already there, 1 refused" in first.output
    assert "line 4: identity: mobile claim" in first.output and "rows/s" in first.output
    again = invoke("import", "members", str(members), "--mapping", str(mapping))
    assert "imported before; nothing to do" in again.output and "this run read 0 rows" in again.output

    points = tmp_path / "points.jsonl"
    points.write_text(
        '{"member_id": "A1", "points": 500}\n{"member_id": "A2", "points": 70}\n', encoding="utf-8"
    )
    assert "2 imported" in invoke("import", "points", str(points)).output
    # a changed file with the same rows plus one: only the new row is imported
    members.write_text(members.read_text(encoding="utf-8") + "A5,13800138005,孙七\n", encoding="utf-8")
    more = invoke("import", "members", str(members), "--mapping", str(mapping))
    assert "1 imported, 3 already there, 1 refused" in more.output
    assert "agree" in invoke("verify").output

    ledger = tmp_path / "ledger.csv"
    assert invoke("export", "ledger", "--output", str(ledger)).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(ledger.read_text(encoding="utf-8"))))
    assert sorted((r["kind"], int(r["amount"])) for r in rows) == [("opening", 70), ("opening", 500)]

    masked = invoke("export", "members", "--format", "jsonl")
    assert [json.loads(line)["mobile"] for line in masked.stdout.splitlines()] == [
        "138****8001", "138****8002", "138****8004", "138****8005",
    ]  # fmt: skip
    revealed = invoke("export", "members", "--reveal")
    assert "+8613800138001" in revealed.stdout and "张三" in revealed.stdout

    unknown = CliRunner().invoke(build_cli(PluginHost(autoload=False)), ["export", "segment"])
    assert unknown.exit_code != 0 and "Invalid value" in unknown.output


def test_a_refused_row_is_printed_with_its_line_number_once(invoke: Any, tmp_path: Path) -> None:
    """The reason stored for a row the reader refused names no line: the report puts the line beside it (the CLI
    printed "line 3: line 3: the mobile value contains a NUL character")."""
    members = tmp_path / "members.csv"
    members.write_text(
        "member_id,mobile,name\nA1,13800138001,张三\nA2,1380013\x008002,李四\nA3,13800138003\n",
        encoding="utf-8",
    )
    result = invoke("import", "members", str(members))
    assert result.exit_code == 0, result.output
    assert "  line 3: the mobile value contains a NUL character (U+0000)\n" in result.output
    assert "  line 4: the row has 2 fields where the header has 3\n" in result.output
    assert "line 3: line 3" not in result.output and "line 4 has" not in result.output

    jsonl = tmp_path / "members.jsonl"
    jsonl.write_text('{"member_id": "J1", "mobile": "13900139001"}\n{not json\n', encoding="utf-8")
    result = invoke("import", "members", str(jsonl))
    assert "  line 2: the row is not JSON (" in result.output and "line 2 is" not in result.output


def test_an_import_collects_garbage_for_a_batch_and_puts_the_collector_back() -> None:
    before = gc.get_threshold()
    if gc.get_freeze_count():
        pytest.skip("this process froze its heap before (the collector is then left frozen)")
    with batch_collector(5_000):
        assert gc.get_threshold() == (5_000, *before[1:])
        frozen = gc.get_freeze_count()
        assert (
            frozen > 10_000
        )  # the programme loaded so far (modules, classes, tests) is out of the collector's view
        cycle: list[Any] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # what the batch makes is still collected
        assert gc.get_freeze_count() == frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
