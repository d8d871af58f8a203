"""Rule-based tags.

A tag rule names a tag and a saved segment. Each run (the ``tags.rules`` job, hourly, or on demand) compares
the segment's members (its latest version, compiled to SQL as everywhere else) with the members carrying the tag:

- a member in the segment without the tag gets it, and the rule remembers it put it on;
- a member the rule tagged who left the segment loses it;
- a tag a member already had (put on by an operator) is never taken off by the rule, and a member outside the
  segment who carries the tag manually keeps it: manual tags stay.

Every change is written to ``member_tag_history`` with the rule's id (manual tag and untag record the actor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.members.models import Member, MemberTag
from tongcrm.members.service import normalise_tag
from tongcrm.members.tag_history import TagHistory
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import service as segments
from tongcrm.segments.compiler import Context
from tongcrm.tagrules.models import TagRule, TagRuleMember

members = sa.inspect(Member).local_table
_CHUNK = 1_000
#: Active (enabled) rules at most. Every rule is a segment evaluated over the whole base on each hourly run; past
#: a few dozen the run no longer fits its hour on a large base, and so many machine tags stop meaning anything.
MAX_ACTIVE_RULES = 50


async def create_rule(session: AsyncSession, raw: Any, actor: Actor) -> TagRule:
    """A new rule ``{"tag": ..., "segment": name or id}``; one rule per tag (two rules fighting over one tag
    would add and remove it in turn)."""
    if not isinstance(raw, dict):
        raise Unprocessable('a tag rule is {"tag": ..., "segment": ...}', extra={"pointer": ""})
    unknown = sorted(set(raw) - {"tag", "segment"})
    if unknown:
        raise Unprocessable(f"unknown key {unknown[0]!r}", extra={"pointer": f"/{unknown[0]}"})
    if not isinstance(raw.get("tag"), str):
        raise Unprocessable("tag is a string", extra={"pointer": "/tag"})
    try:
        tag = normalise_tag(raw["tag"])
    except Unprocessable as exc:
        raise Unprocessable(exc.message, extra={"pointer": "/tag"}) from exc
    ref = raw.get("segment")
    if not isinstance(ref, (str, int)) or isinstance(ref, bool):
        raise Unprocessable("segment is a saved segment's name or id", extra={"pointer": "/segment"})
    try:
        segment = await segments.get_segment(session, ref)
    except NotFound as exc:
        raise Unprocessable(f"no saved segment {ref!r}", extra={"pointer": "/segment"}) from exc
    taken = (await session.execute(sa.select(TagRule.id).where(TagRule.tag == tag))).scalar()
    if taken is not None:
        raise Conflict(f"tag {tag!r} already has a rule ({taken})", extra={"rule_id": taken})
    active = int(
        (await session.execute(sa.select(sa.func.count()).where(TagRule.enabled.is_(True)))).scalar_one()
    )
    if active >= MAX_ACTIVE_RULES:
        raise Unprocessable(
            f"at most {MAX_ACTIVE_RULES} rule-based tags can be active and {active} are: disable one first",
            extra={"limit": MAX_ACTIVE_RULES, "active": active},
        )
    rule = TagRule(tag=tag, segment_id=segment.id, enabled=True, created_by=actor.name)
    session.add(rule)
    await session.flush()
    audit.record(
        session, actor, "tag_rule.create", "tag_rule", rule.id, after={"tag": tag, "segment": segment.name}
    )
    return rule


async def list_rules(session: AsyncSession) -> list[TagRule]:
    return list((await session.execute(sa.select(TagRule).order_by(TagRule.id))).scalars())


@dataclass(frozen=True, slots=True)
class RuleRun:
    rule_id: int
    tag: str
    added: int
    removed: int


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


async def _untag(session: AsyncSession, rule: TagRule, ids: Sequence[int], now: datetime) -> int:
    """Take the rule's tag off ``ids`` (members it tagged); history only where a tag was really there."""
    removed = 0
    for chunk in _chunks(ids):
        had = sorted(
            set(
                (
                    await session.execute(
                        sa.select(MemberTag.member_id).where(
                            MemberTag.member_id.in_(chunk), MemberTag.tag == rule.tag
                        )
                    )
                ).scalars()
            )
        )
        await session.execute(
            sa.delete(MemberTag).where(MemberTag.member_id.in_(chunk), MemberTag.tag == rule.tag)
        )
        await session.execute(
            sa.delete(TagRuleMember).where(
                TagRuleMember.rule_id == rule.id, TagRuleMember.member_id.in_(chunk)
            )
        )
        if had:
            await session.execute(
                sa.insert(TagHistory),
                [{"member_id": m, "tag": rule.tag, "action": "untagged", "at": now, "rule_id": rule.id,
                  "actor": None} for m in had],
            )  # fmt: skip
            removed += len(had)
    return removed


async def run_rule(session: AsyncSession, context: Context, rule: TagRule, now: datetime) -> RuleRun:
    """Bring one rule's tag in line with its segment, in the caller's transaction."""
    segment = await segments.get_segment(session, rule.segment_id)
    prepared = await segments.prepared_segment(session, context, segment)
    has_tag = (
        sa.exists().where(MemberTag.member_id == members.c.id, MemberTag.tag == rule.tag).correlate(members)
    )
    entering = list(
        (
            await session.execute(
                sa.select(members.c.id).where(prepared.condition, sa.not_(has_tag)).order_by(members.c.id)
            )
        ).scalars()
    )
    for chunk in _chunks(entering):
        await session.execute(
            sa.delete(TagRuleMember).where(
                TagRuleMember.rule_id == rule.id, TagRuleMember.member_id.in_(chunk)
            )
        )
        await session.execute(
            sa.insert(MemberTag), [{"member_id": m, "tag": rule.tag, "created_at": now} for m in chunk]
        )
        await session.execute(
            sa.insert(TagRuleMember), [{"rule_id": rule.id, "member_id": m, "tagged_at": now} for m in chunk]
        )
        await session.execute(
            sa.insert(TagHistory),
            [{"member_id": m, "tag": rule.tag, "action": "tagged", "at": now, "rule_id": rule.id, "actor": None}
             for m in chunk],
        )  # fmt: skip
    leaving = sorted(
        set(
            (
                await session.execute(
                    sa.select(TagRuleMember.member_id)
                    .join(members, members.c.id == TagRuleMember.member_id)
                    .where(TagRuleMember.rule_id == rule.id, sa.not_(prepared.condition))
                )
            ).scalars()
        )
    )
    removed = await _untag(session, rule, leaving, now)
    rule.last_run_at = now
    return RuleRun(rule.id, rule.tag, len(entering), removed)


async def run_all(
    sessions: async_sessionmaker[AsyncSession], host: PluginHost, now: datetime, *, rule_id: int | None = None
) -> list[RuleRun]:
    """Run every enabled rule (or one), each in its own transaction so one broken segment stops only its rule."""
    async with sessions() as session:
        stmt = sa.select(TagRule.id).where(TagRule.enabled.is_(True)).order_by(TagRule.id)
        if rule_id is not None:
            stmt = stmt.where(TagRule.id == rule_id)
        ids = list((await session.execute(stmt)).scalars())
    done = []
    for rid in ids:
        async with sessions() as session, session.begin():
            rule = await session.get(TagRule, rid, with_for_update=True)
            if rule is None or not rule.enabled:
                continue
            context = await segments.load_context(session, host, now)
            done.append(await run_rule(session, context, rule, now))
    return done


async def disable_rule(session: AsyncSession, rule_id: int, actor: Actor, now: datetime) -> RuleRun:
    """Stop a rule and take its tag off the members it tagged (manual ones stay)."""
    rule = await session.get(TagRule, rule_id, with_for_update=True)
    if rule is None:
        raise NotFound(f"no tag rule {rule_id}")
    ids = sorted(
        set(
            (
                await session.execute(
                    sa.select(TagRuleMember.member_id).where(TagRuleMember.rule_id == rule.id)
                )
            ).scalars()
        )
    )
    removed = await _untag(session, rule, ids, now)
    rule.enabled = False
    audit.record(session, actor, "tag_rule.disable", "tag_rule", rule.id, after={"untagged": removed})
    return RuleRun(rule.id, rule.tag, 0, removed)


async def history(session: AsyncSession, member_id: int, *, limit: int = 100) -> list[TagHistory]:
    stmt = (
        sa.select(TagHistory)
        .where(TagHistory.member_id == member_id)
        .order_by(TagHistory.id.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())
