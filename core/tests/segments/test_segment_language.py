"""The segment language without a database: every mistake reported at once with its JSON pointer, the catalogue
matching what the compiler builds, limits, and CSV cells that a spreadsheet will not execute."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tongcrm.members.service import MemberSummary
from tongcrm.segments import service
from tongcrm.segments.compiler import Context, compile_tree
from tongcrm.segments.schema import FIELDS, InvalidSegment, Leaf, catalogue, leaves, parse

NOW = datetime(2026, 11, 11, tzinfo=UTC)


def errors(document: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidSegment) as caught:
        parse(document)
    return [(p.pointer, p.detail) for p in caught.value.problems]


def test_every_mistake_is_reported_at_once_with_its_pointer() -> None:
    found = errors(
        {
            "version": 2,
            "extra": 1,
            "condition": {
                "any": [
                    {"field": "orders.spend", "op": "gte", "value": "1", "window_days": 90},
                    {"field": "orders.count", "op": "gte", "value": 1, "window": 90},
                    {"not": {"field": "tags", "op": "has_all", "value": []}},
                ]
            },
        }
    )
    assert [p for p, _ in found] == [
        "/version",
        "/extra",
        "/condition/any/0/value",
        "/condition/any/1/window",
        "/condition/any/2/not/value",
    ]
    assert "takes no 'window' (it takes window_days, channel, store)" in found[3][1]


def test_pointers_escape_slashes_and_tildes() -> None:
    found = errors({"version": 1, "condition": {"field": "tags", "op": "has", "value": "x", "a/b~c": 1}})
    assert found[0][0] == "/condition/a~1b~0c"


def test_not_an_object_and_missing_condition() -> None:
    assert errors([]) == [("", 'a segment is an object: {"version": 1, "condition": {...}}')]
    assert errors({"version": 1})[0] == ("", "a segment needs a 'condition'")
    assert errors({"version": 1, "condition": 3})[0][0] == "/condition"


def test_values_are_normalised_and_deduplicated() -> None:
    tree = parse({"version": 1, "condition": {"field": "profile.city", "op": "in", "value": ["a", "b", "a"]}})
    assert isinstance(tree, Leaf) and tree.value == ("a", "b")
    when = parse({"version": 1, "condition": {"field": "profile.joined_at", "op": "after",
                                               "value": "2026-11-11T00:00:00+08:00"}})  # fmt: skip
    assert isinstance(when, Leaf) and when.value == datetime(2026, 11, 10, 16, tzinfo=UTC)
    between = errors({"version": 1, "condition": {"field": "orders.count", "op": "between", "value": [3, 1]}})
    assert between == [("/condition/value", "'between' needs low <= high; got 3 > 1")]


def test_the_catalogue_lists_every_field_and_each_available_one_compiles() -> None:
    listed = {f["field"]: f for f in catalogue().fields}
    assert set(listed) == set(FIELDS)
    context = Context(now=NOW, channels=frozenset({"taobao"}), identity_kinds={"taobao": ("taobao.ouid",)},
                      tiers=("member", "gold"), segments={"s": {"version": 1, "condition": {
                          "field": "tags", "op": "has", "value": "x"}}})  # fmt: skip
    samples = {"string": "gold", "int": 1, "datetime": "2026-01-01T00:00:00+00:00", "bool": True, "tags": "x"}
    for name, spec in listed.items():
        op = spec["operators"][0]
        node: dict[str, Any] = {"field": name, "op": op, "value": samples[spec["type"]]}
        if name == "segment":
            node["value"] = "s"
        if op == "in":
            node["value"] = [node["value"]]
        for p in spec["parameters"]:
            if p["required"]:
                node[p["name"]] = {"channel": "taobao", "purpose": "marketing", "within_days": 30}[p["name"]]
        if name == "profile.gender":
            node["value"] = "female"
        if name == "lifecycle.stage":
            node["value"] = "dormant"
        if name == "rfm.cell":
            node["value"] = "important_value"
        if not spec["available"]:
            assert errors({"version": 1, "condition": node})[0][1].startswith(
                f"field {name!r} is not available"
            )
            continue
        tree = parse({"version": 1, "condition": node})
        assert leaves(tree)[0].field.name == name
        compile_tree(tree, context)  # names check out and SQL is built


def test_a_problem_inside_a_used_segment_is_reported_where_it_is_used() -> None:
    context = Context(now=NOW, segments={"old": {"version": 1, "condition": {"field": "tier.code", "op": "eq",
                                                                              "value": "gold"}}})  # fmt: skip
    tree = parse({"version": 1, "condition": {"all": [{"field": "segment", "op": "ne", "value": "old"}]}})
    with pytest.raises(InvalidSegment) as caught:
        compile_tree(tree, context)
    assert caught.value.problems[0].pointer == "/condition/all/0/value"
    assert "segment 'old': /condition/field: no tier ladder" in caught.value.problems[0].detail


def test_csv_cells_never_start_a_formula() -> None:
    member = MemberSummary(
        id=1, status="active", merged_into_id=None, version=1, name="=HYPERLINK(\"x\")", gender=None,
        birthday=None, province="@SUM(A1)", city="-2+3", mobile="+8613800138000", source_channel="-5",
        source_store=None, source_campaign=None, referrer_id=None, lifecycle_stage="new", tags=["a", "b"],
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    line = service.csv_rows([member]).strip().split(",")
    assert line[1] == '"\'=HYPERLINK(""x"")"'
    assert line[4:8] == ["'@SUM(A1)", "'-2+3", "+8613800138000", "-5"]
    assert line[11] == "a;b"
