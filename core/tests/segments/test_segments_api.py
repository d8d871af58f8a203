"""The segments HTTP API: preview, bad definitions as problems with JSON pointers, saved segments with versions
and cycles refused, roles, the member list, "why", the audited CSV export and the daily counts."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import service
from tongcrm.segments.models import SegmentCount
from tongcrm.tiers import testing as kit

VIP = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}


def doc(condition: Any) -> dict[str, Any]:
    return {"version": 1, "condition": condition}


def problem(response: Any, status: int, pointer: str, text: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["pointer"] == pointer, body
    assert text in body["detail"], body
    return body


async def _members(api: Any) -> list[int]:
    """Three members: a VIP Shanghai buyer with a mobile, a VIP without orders, and a plain one."""
    ids = []
    for body in (
        {"name": "Li Lei", "city": "Shanghai", "mobile": "+86 138 0013 8000", "tags": ["vip"]},
        {"name": "Han Meimei", "city": "Beijing", "tags": ["vip"]},
        {"name": "Wang", "city": "Shanghai"},
    ):
        created = await api.post("/api/members", json=body)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    now = datetime.now(UTC)
    async with api.db.sessions() as s, s.begin():
        await kit.order(s, ids[0], 30_000, now - timedelta(days=10))
        await kit.order(s, ids[2], 500, now - timedelta(days=200))
    return ids


async def test_preview_counts_and_samples_masked_members(make_client: Any, memory_host: PluginHost) -> None:
    async with make_client(host=memory_host) as api:
        ids = await _members(api)
        preview = await api.post("/api/segments/preview", json={"definition": VIP})
        assert preview.status_code == 200, preview.text
        body = preview.json()
        assert body["count"] == 2
        assert [m["id"] for m in body["sample"]] == ids[:2]
        assert body["sample"][0]["mobile"] == "138****8000"

        spend = doc({"all": [
            {"field": "tags", "op": "has", "value": "vip"},
            {"field": "orders.spend", "op": "gte", "value": 10_000, "window_days": 90, "channel": "test"},
        ]})  # fmt: skip
        assert (await api.post("/api/segments/preview", json={"definition": spend, "sample": 0})).json() == {
            "count": 1,
            "sample": [],
            "warnings": [],
        }
        # a typo in a free-text value is valid but matches nobody: the preview says where
        typo = doc({"any": [{"field": "tags", "op": "has_any", "value": ["vip", "vpi"]},
                            {"field": "profile.city", "op": "eq", "value": "Shanghia"}]})  # fmt: skip
        warned = (await api.post("/api/segments/preview", json={"definition": typo})).json()
        assert warned["count"] == 2
        assert warned["warnings"] == [
            {"pointer": "/condition/any/0/value/1", "detail": "no member has tags 'vpi'"},
            {"pointer": "/condition/any/1/value", "detail": "no member has profile.city 'Shanghia'"},
        ]
        sleeping = doc({"not": {"field": "orders.last_at", "op": "within_days", "value": 90}})
        got = (await api.post("/api/segments/preview", json={"definition": sleeping})).json()
        assert sorted(m["id"] for m in got["sample"]) == ids[1:]

        fields = (await api.get("/api/segments/fields")).json()
        assert fields["version"] == 1
        by_name = {f["field"]: f for f in fields["fields"]}
        assert by_name["orders.spend"]["operators"][:2] == ["eq", "ne"]
        assert by_name["identity.membership_bound"]["available"] is True
        assert (
            by_name["rfm.cell"]["available"] is True and "important_value" in by_name["rfm.cell"]["choices"]
        )


async def test_bad_definitions_name_the_node(make_client: Any, memory_host: PluginHost) -> None:
    async with make_client(host=memory_host, role="analyst") as api:

        async def bad(definition: Any, pointer: str, text: str) -> dict[str, Any]:
            return problem(
                await api.post("/api/segments/preview", json={"definition": definition}), 422, pointer, text
            )

        cond = {"field": "orders.spend", "op": "gte", "value": 1}
        await bad({"condition": cond}, "/version", "language version is 1")
        body = await bad(doc({"all": [cond, {"field": "orders.spnd", "op": "gte", "value": 1}]}),
                         "/condition/all/1/field", "did you mean 'orders.spend'")  # fmt: skip
        assert body["errors"] == [
            {"pointer": "/condition/all/1/field", "detail": body["errors"][0]["detail"]}
        ]
        await bad(doc({"any": [cond, {**cond, "op": "like"}]}), "/condition/any/1/op", "got 'like'")
        await bad(doc({**cond, "value": "100"}), "/condition/value", "whole numbers")
        await bad(doc({**cond, "value": True}), "/condition/value", "whole numbers")
        await bad(doc({**cond, "windw_days": 90}), "/condition/windw_days", "takes no 'windw_days'")
        await bad(doc({**cond, "window_days": 0}), "/condition/window_days", "from 1 to 3650")
        await bad(doc({"field": "orders.spend", "op": "gte"}), "/condition", "needs a 'value'")
        await bad(doc({"all": []}), "/condition/all", "non-empty list")
        await bad(doc({"not": cond, "all": [cond]}), "/condition", "no other keys")
        await bad(doc({**cond, "channel": "tmall"}), "/condition/channel", "no channel named 'tmall'")
        await bad(
            doc({"field": "identity.membership_bound", "op": "is", "value": True, "channel": "nowhere"}),
            "/condition/channel",
            "declares no identity kinds",
        )
        await bad(
            doc({"field": "lifecycle.stage", "op": "eq", "value": "zombie"}), "/condition/value", "not one of"
        )
        await bad(
            doc({"field": "tier.code", "op": "eq", "value": "gold"}), "/condition/field", "no tier ladder"
        )
        await bad(
            doc({"field": "segment", "op": "eq", "value": "nope"}), "/condition/value", "no saved segment"
        )
        await bad(doc({"field": "profile.joined_at", "op": "after", "value": "2026-01-01T00:00:00"}),
                  "/condition/value", "with an offset")  # fmt: skip
        await bad(
            doc({"field": "profile.gender", "op": "eq", "value": "m"}), "/condition/value", "not one of"
        )
        await bad(doc({"field": "identity.has", "op": "is", "value": True}), "/condition", "needs 'channel'")
        await bad(doc({"field": "identity.has", "channel": "test", "op": "is", "value": True}),
                  "/condition/channel", "declares no identity kinds")  # fmt: skip
        await bad(
            doc({"field": "tags", "op": "has_any", "value": ["ok", "a,b"]}), "/condition/value/1", "tag"
        )
        deep: dict[str, Any] = cond
        for _ in range(12):
            deep = {"not": deep}
        await bad(doc(deep), "/condition" + "/not" * 12, "deeper than 12")
        await bad(doc({"any": [cond] * 301}), "/condition/any/299", "more than 300 nodes")
        # a good identity condition, for contrast: the memory channel declares its kinds
        ok = doc({"field": "identity.has", "channel": "memory", "op": "is", "value": False})
        assert (await api.post("/api/segments/preview", json={"definition": ok})).status_code == 200


async def test_saved_segments_versions_cycles_and_roles(make_client: Any, memory_host: PluginHost) -> None:
    async with make_client(host=memory_host, role="operator") as api:
        ids = await _members(api)
        analyst = await api.create_key("analyst")
        as_analyst = {"Authorization": f"Bearer {analyst}"}
        denied = await api.post("/api/segments", json={"name": "vip", "definition": VIP}, headers=as_analyst)
        assert denied.status_code == 403

        created = await api.post(
            "/api/segments", json={"name": "vip", "definition": VIP, "description": "VIPs"}
        )
        assert created.status_code == 201, created.text
        vip_id = created.json()["id"]
        assert created.json()["version"] == 1
        assert (await api.post("/api/segments", json={"name": "vip", "definition": VIP})).status_code == 409
        problem(
            await api.post("/api/segments", json={"name": "Bad Name", "definition": VIP}),
            422,
            "/name",
            "invalid",
        )
        problem(
            await api.post("/api/segments", json={"name": "2024", "definition": VIP}),
            422,
            "/name",
            "digits only",
        )

        shanghai_vip = doc({"all": [{"field": "segment", "op": "eq", "value": "vip"},
                                    {"field": "profile.city", "op": "eq", "value": "Shanghai"}]})  # fmt: skip
        made = await api.post("/api/segments", json={"name": "sh-vip", "definition": shanghai_vip})
        assert made.status_code == 201, made.text
        count = await api.get("/api/segments/sh-vip/count", headers=as_analyst)
        assert count.json()["members"] == 1

        # vip may not start using sh-vip: sh-vip uses vip
        cycle = doc({"any": [VIP["condition"], {"field": "segment", "op": "eq", "value": "sh-vip"}]})
        body = problem(await api.put("/api/segments/vip", json={"definition": cycle}), 422, "/condition/any/1/value",
                       "cycle: vip -> sh-vip -> vip")  # fmt: skip
        assert body["status"] == 422
        # nor refer to itself
        problem(await api.put(f"/api/segments/{vip_id}", json={"definition": doc(
            {"field": "segment", "op": "eq", "value": "vip"})}), 422, "/condition/value", "cycle: vip -> vip")  # fmt: skip
        # nor change so that sh-vip breaks... a new version that is valid is fine
        v2 = doc({"field": "tags", "op": "has_any", "value": ["vip", "svip"]})
        saved = await api.put(f"/api/segments/{vip_id}", json={"definition": v2, "note": "svip too"})
        assert saved.status_code == 200, saved.text
        assert saved.json()["version"] == 2
        versions = (await api.get("/api/segments/vip/versions", headers=as_analyst)).json()
        assert [(v["version"], v["note"]) for v in versions] == [(2, "svip too"), (1, "")]
        assert (await api.get("/api/segments/vip")).json()["definition"] == v2
        assert [s["name"] for s in (await api.get("/api/segments")).json()] == ["sh-vip", "vip"]
        assert (await api.get("/api/segments/nope")).status_code == 404
        assert (await api.put("/api/segments/nope", json={"definition": VIP})).status_code == 404
        async with api.db.sessions() as s:
            actions = await s.execute(sa.select(AuditEntry.action).where(AuditEntry.object_type == "segment"))
            assert list(actions.scalars()) == ["segment.save"] * 3
        assert ids


async def test_members_why_export_and_daily_counts(make_client: Any, memory_host: PluginHost) -> None:
    async with make_client(host=memory_host, role="admin") as api:
        ids = await _members(api)
        definition = doc({"all": [
            {"field": "tags", "op": "has", "value": "vip"},
            {"any": [{"field": "orders.count", "op": "gte", "value": 1},
                     {"field": "profile.city", "op": "eq", "value": "Beijing"}]},
        ]})  # fmt: skip
        assert (
            await api.post("/api/segments", json={"name": "buyers", "definition": definition})
        ).status_code == 201

        first = (await api.get("/api/segments/buyers/members", params={"limit": 1})).json()
        assert [m["id"] for m in first["items"]] == [ids[0]] and first["items"][0]["mobile"] == "138****8000"
        second = await api.get(
            "/api/segments/buyers/members", params={"limit": 1, "after": first["next_cursor"]}
        )
        assert [m["id"] for m in second.json()["items"]] == [ids[1]] and second.json()["next_cursor"] is None

        why = (await api.get(f"/api/segments/buyers/members/{ids[1]}/why")).json()
        assert why["member"] is True
        tree = why["conditions"]
        assert tree["node"] == "all" and [c["met"] for c in tree["children"]] == [True, True]
        assert [(c["node"], c["met"]) for c in tree["children"][1]["children"]] == [
            ("orders.count", False),
            ("profile.city", True),
        ]
        out = (await api.get(f"/api/segments/buyers/members/{ids[2]}/why")).json()
        assert out["member"] is False and out["conditions"]["children"][0]["met"] is False
        assert (await api.get("/api/segments/buyers/members/999999/why")).status_code == 404

        # export: masked by default, revealed for an admin who asks; both audited
        exported = await api.get("/api/segments/buyers/export")
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [int(r["id"]) for r in rows] == ids[:2] and rows[0]["mobile"] == "138****8000"
        revealed = list(
            csv.DictReader(io.StringIO((await api.get("/api/segments/buyers/export?reveal=mobile")).text))
        )
        assert revealed[0]["mobile"] == "+8613800138000"
        operator = await api.create_key("operator")
        refused = await api.get(
            "/api/segments/buyers/export?reveal=mobile", headers={"Authorization": f"Bearer {operator}"}
        )
        assert refused.status_code == 403
        async with api.db.sessions() as s:
            exports = (
                await s.execute(
                    sa.select(AuditEntry.after)
                    .where(AuditEntry.action == "segment.export")
                    .order_by(AuditEntry.id)
                )
            ).scalars()
            assert [(e["members"], e["revealed"]) for e in exports] == [(2, []), (2, ["mobile", "name"])]

        # the daily snapshot: once a day, whatever how often the job runs
        now = datetime.now(UTC)
        today = now.date()
        assert await service.snapshot(api.db.sessions, memory_host, now, today) == 1
        assert await service.snapshot(api.db.sessions, memory_host, now, today) == 0
        counts = (await api.get("/api/segments/buyers/counts")).json()
        assert [(c["version"], c["members"]) for c in counts] == [(1, 2)]
        async with api.db.sessions() as s:
            assert (await s.execute(sa.select(sa.func.count()).select_from(SegmentCount))).scalar_one() == 1


async def test_a_segment_broken_elsewhere_blocks_neither_saves_nor_the_other_counts(
    make_client: Any, memory_host: PluginHost
) -> None:
    """A stored definition that no longer compiles (here: it names a segment that is gone, as a tier taken
    out of the ladder would) is reported where it is used, and leaves other saves and the daily counts alone."""
    from tongcrm.segments.models import Segment, SegmentVersion

    async with make_client(host=memory_host, role="operator") as api:
        await _members(api)
        async with api.db.sessions() as s, s.begin():
            broken = Segment(name="broken", description="", version=1, created_by="test")
            s.add(broken)
            await s.flush()
            s.add(SegmentVersion(segment_id=broken.id, version=1, created_by="test",
                                 definition=doc({"field": "segment", "op": "eq", "value": "gone"})))  # fmt: skip
        saved = await api.post("/api/segments", json={"name": "vip", "definition": VIP})
        assert saved.status_code == 201, saved.text
        assert (await api.put("/api/segments/vip", json={"definition": VIP})).status_code == 200
        problem(
            await api.get("/api/segments/broken/count"),
            422,
            "/condition/value",
            "no saved segment named 'gone'",
        )
        now = datetime.now(UTC)
        assert await service.snapshot(api.db.sessions, memory_host, now, now.date()) == 1
        assert [c["members"] for c in (await api.get("/api/segments/vip/counts")).json()] == [2]
        assert (await api.get("/api/segments/broken/counts")).json() == []
