"""Rule-based tags on both databases: members entering a segment are tagged and leaving it untagged, with
history naming the rule; manual tags stay (on members the rule never tagged, and a tag already there); disabling
a rule untags only its members; the HTTP API checks rules and lists a member's tag history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import Actor
from tongcrm.crypto import Vault
from tongcrm.errors import Conflict, Unprocessable
from tongcrm.members import service as members
from tongcrm.members.models import Member, MemberTag
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import service as segments
from tongcrm.tagrules import service
from tongcrm.tagrules.models import TagRule
from tongcrm.testing.database import TestDatabase

ACTOR = Actor("ops-anna", "operator")
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
SHANGHAI = {"version": 1, "condition": {"field": "profile.city", "op": "eq", "value": "Shanghai"}}


async def _tags(db: TestDatabase) -> dict[int, set[str]]:
    async with db.sessions() as s:
        out: dict[int, set[str]] = {}
        for member_id, tag in await s.execute(sa.select(MemberTag.member_id, MemberTag.tag)):
            out.setdefault(member_id, set()).add(tag)
        return out


async def test_enter_leave_history_and_manual_tags_stay(tongcrm_db: TestDatabase) -> None:
    host = PluginHost(autoload=False)
    vault = Vault("tag-rule-test-secret-0123456789")
    async with tongcrm_db.sessions() as s, s.begin():
        rows = [Member(city=c) for c in ("Shanghai", "Shanghai", "Beijing", "Beijing")]
        s.add_all(rows)
        await s.flush()
        a, b, c, d = (r.id for r in rows)
        context = await segments.load_context(s, host, NOW)
        await segments.save(s, context, "shanghai", SHANGHAI, actor=ACTOR)
        # b had the tag before the rule existed; d carries it by hand outside the segment
        await members.tag_member(s, vault, b, ["sh"], ACTOR)
        await members.tag_member(s, vault, d, ["sh"], ACTOR)
        rule = await service.create_rule(s, {"tag": "sh", "segment": "shanghai"}, ACTOR)
    first = await service.run_all(tongcrm_db.sessions, host, NOW)
    assert [(r.added, r.removed) for r in first] == [(1, 0)]  # only a: b already had it
    assert await _tags(tongcrm_db) == {a: {"sh"}, b: {"sh"}, d: {"sh"}}
    assert [(r.added, r.removed) for r in await service.run_all(tongcrm_db.sessions, host, NOW)] == [(0, 0)]

    later = NOW + timedelta(hours=1)
    async with tongcrm_db.sessions() as s, s.begin():
        await s.execute(sa.update(Member).where(Member.id.in_([a, b])).values(city="Hangzhou"))
        await s.execute(sa.update(Member).where(Member.id == c).values(city="Shanghai"))
    second = await service.run_all(tongcrm_db.sessions, host, later)
    assert [(r.added, r.removed) for r in second] == [(1, 1)]
    # a left (the rule's tag goes), b left (its manual tag stays), c entered, d keeps its manual tag
    assert await _tags(tongcrm_db) == {b: {"sh"}, c: {"sh"}, d: {"sh"}}
    async with tongcrm_db.sessions() as s:
        got = [(h.action, h.at, h.rule_id, h.actor) for h in await service.history(s, a)]
        assert got == [("untagged", later, rule.id, None), ("tagged", NOW, rule.id, None)]
        manual = [(h.action, h.rule_id, h.actor) for h in await service.history(s, d)]
        assert manual == [("tagged", None, "ops-anna")]

    async with tongcrm_db.sessions() as s, s.begin():
        done = await service.disable_rule(s, rule.id, ACTOR, later)
    assert done.removed == 1  # c only
    assert await _tags(tongcrm_db) == {b: {"sh"}, d: {"sh"}}
    assert await service.run_all(tongcrm_db.sessions, host, later) == []  # disabled rules do not run
    async with tongcrm_db.sessions() as s:
        assert (await s.get(TagRule, rule.id)).enabled is False  # type: ignore[union-attr]


async def test_rules_are_checked(tongcrm_db: TestDatabase) -> None:
    host = PluginHost(autoload=False)
    async with tongcrm_db.sessions() as s, s.begin():
        await segments.save(s, await segments.load_context(s, host, NOW), "shanghai", SHANGHAI, actor=ACTOR)
        for bad, pointer in (
            ({"tag": "a,b", "segment": "shanghai"}, "/tag"),
            ({"tag": "x", "segment": "nowhere"}, "/segment"),
            ({"tag": "x", "segment": True}, "/segment"),
            ({"tag": "x", "segment": "shanghai", "when": "daily"}, "/when"),
        ):
            with pytest.raises(Unprocessable) as caught:
                await service.create_rule(s, bad, ACTOR)
            assert caught.value.extra["pointer"] == pointer
        await service.create_rule(s, {"tag": "sh", "segment": "shanghai"}, ACTOR)
        with pytest.raises(Conflict):
            await service.create_rule(s, {"tag": "sh", "segment": "shanghai"}, ACTOR)


async def test_http_rules_and_history(make_client: Any) -> None:
    async with make_client(role="operator") as api:
        created = await api.post("/api/members", json={"city": "Shanghai"})
        member_id = created.json()["id"]
        saved = await api.post("/api/segments", json={"name": "shanghai", "definition": SHANGHAI})
        assert saved.status_code in (200, 201), saved.text
        rule = await api.post("/api/tag-rules", json={"tag": "sh", "segment": "shanghai"})
        assert rule.status_code == 201, rule.text
        bad = await api.post("/api/tag-rules", json={"tag": "sh2", "segment": "nope"})
        assert bad.status_code == 422 and bad.json()["pointer"] == "/segment"
        dup = await api.post("/api/tag-rules", json={"tag": "sh", "segment": "shanghai"})
        assert dup.status_code == 409
        await service.run_all(api.db.sessions, PluginHost(autoload=False), NOW)
        history = (await api.get(f"/api/members/{member_id}/tag-history")).json()
        assert [(h["tag"], h["action"], h["rule_id"]) for h in history] == [
            ("sh", "tagged", rule.json()["id"])
        ]
        off = await api.delete(f"/api/tag-rules/{rule.json()['id']}")
        assert off.status_code == 200 and off.json()["untagged"] == 1
        assert [r["enabled"] for r in (await api.get("/api/tag-rules")).json()] == [False]


async def test_at_most_fifty_active_rules(tongcrm_db: TestDatabase) -> None:
    host = PluginHost(autoload=False)
    async with tongcrm_db.sessions() as s, s.begin():
        await segments.save(s, await segments.load_context(s, host, NOW), "shanghai", SHANGHAI, actor=ACTOR)
        rules = [
            await service.create_rule(s, {"tag": f"t{i}", "segment": "shanghai"}, ACTOR)
            for i in range(service.MAX_ACTIVE_RULES)
        ]
    async with tongcrm_db.sessions() as s, s.begin():
        with pytest.raises(
            Unprocessable, match="at most 50 rule-based tags can be active and 50 are"
        ) as caught:
            await service.create_rule(s, {"tag": "one-more", "segment": "shanghai"}, ACTOR)
        assert caught.value.extra == {"limit": 50, "active": 50}
    # a disabled rule frees its place
    async with tongcrm_db.sessions() as s, s.begin():
        await service.disable_rule(s, rules[0].id, ACTOR, NOW)
    async with tongcrm_db.sessions() as s, s.begin():
        extra = await service.create_rule(s, {"tag": "one-more", "segment": "shanghai"}, ACTOR)
    assert extra.enabled


async def test_http_refuses_the_51st_rule(make_client: Any) -> None:
    async with make_client(role="operator") as api:
        saved = await api.post("/api/segments", json={"name": "shanghai", "definition": SHANGHAI})
        assert saved.status_code in (200, 201), saved.text
        async with api.db.sessions() as s, s.begin():
            s.add_all(
                TagRule(tag=f"t{i}", segment_id=saved.json()["id"], enabled=True, created_by="test")
                for i in range(service.MAX_ACTIVE_RULES)
            )
        refused = await api.post("/api/tag-rules", json={"tag": "late", "segment": "shanghai"})
        assert refused.status_code == 422, refused.text
        assert "at most 50 rule-based tags can be active" in refused.json()["detail"]
        assert refused.json()["limit"] == 50
