"""``tongcrm tags rules list|create|disable|run``: rule-based tags from a terminal.

The CLI acts as ``cli`` with the admin role, like ``tongcrm segments``; creating and disabling are audited as
through the API. ``run`` applies the rules at once (the ``tags.rules`` job does the same every hour) and prints
how many members each rule tagged and untagged.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.api.inputs import id_named
from tongcrm.cli_run import CLI_ACTOR, CliObj, Sessions, read, run_with_sessions, write
from tongcrm.db.base import utcnow
from tongcrm.segments.models import Segment
from tongcrm.tagrules import service


@click.group("tags")
def tags_group() -> None:
    """Member tags: the rules that put them on and take them off."""


@tags_group.group("rules")
def rules_group() -> None:
    """Rule-based tags: a tag carried by exactly the members of a saved segment."""


@rules_group.command("list")
@click.pass_obj
def list_rules(obj: CliObj) -> None:
    """Every rule, enabled or not, with its segment and last run."""

    async def listed(session: AsyncSession) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for rule in await service.list_rules(session):
            segment = await session.get(Segment, rule.segment_id)
            rows.append(
                (
                    str(rule.id), rule.tag, segment.name if segment else str(rule.segment_id),
                    "yes" if rule.enabled else "no",
                    rule.last_run_at.isoformat() if rule.last_run_at else "never",
                )
            )  # fmt: skip
        return rows

    table = Table("id", "tag", "segment", "enabled", "last run")
    rows = read(obj, listed)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    click.echo(f"{sum(1 for r in rows if r[3] == 'yes')} of at most {service.MAX_ACTIVE_RULES} active")


@rules_group.command("create")
@click.argument("tag")
@click.argument("segment")
@click.option("--run/--no-run", "run_now", default=True, show_default=True, help="apply the rule at once")
@click.pass_obj
def create(obj: CliObj, tag: str, segment: str, run_now: bool) -> None:
    """Create a rule: TAG is carried by the members of SEGMENT (a saved segment's name or id)."""
    segment_id = id_named(segment)
    ref: str | int = segment if segment_id is None else segment_id

    async def body(sessions: Sessions) -> tuple[int, str, list[service.RuleRun]]:
        async with sessions() as session, session.begin():
            rule = await service.create_rule(session, {"tag": tag, "segment": ref}, CLI_ACTOR)
            rule_id, rule_tag = rule.id, rule.tag
        runs = await service.run_all(sessions, obj.host, utcnow(), rule_id=rule_id) if run_now else []
        return rule_id, rule_tag, runs

    rule_id, rule_tag, runs = run_with_sessions(obj, body)
    click.echo(f"rule {rule_id}: tag {rule_tag!r} follows segment {segment!r}")
    _report(runs)


@rules_group.command("disable")
@click.argument("rule_id", type=click.IntRange(1, 2**62))
@click.pass_obj
def disable(obj: CliObj, rule_id: int) -> None:
    """Stop a rule and take its tag off the members it tagged (tags put on by hand stay)."""

    async def change(session: AsyncSession) -> service.RuleRun:
        return await service.disable_rule(session, rule_id, CLI_ACTOR, utcnow())

    done = write(obj, change)
    click.echo(f"rule {done.rule_id} disabled: tag {done.tag!r} taken off {done.removed} members")


@rules_group.command("run")
@click.option("--rule", "rule_id", type=click.IntRange(1, 2**62), help="only this rule")
@click.pass_obj
def run(obj: CliObj, rule_id: int | None) -> None:
    """Apply the enabled rules now: tag members who entered their segments, untag those who left."""

    async def body(sessions: Sessions) -> list[service.RuleRun]:
        return await service.run_all(sessions, obj.host, utcnow(), rule_id=rule_id)

    _report(run_with_sessions(obj, body))


def _report(runs: list[service.RuleRun]) -> None:
    for done in runs:
        click.echo(f"rule {done.rule_id} ({done.tag}): {done.added} tagged, {done.removed} untagged")
