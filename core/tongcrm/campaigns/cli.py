"""``tongcrm campaigns create|list|show|schedule|cancel|report``, ``tongcrm campaigns journeys …`` and
``tongcrm calendar``: the campaign service
from a terminal.

The CLI acts as ``cli`` with the admin role (whoever runs it can read the database anyway); its changes are
audited like the API's. ``report --svg FILE`` writes the chart too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.campaigns import calendar, chart, evaluation, journeys, service
from tongcrm.campaigns.api import OutcomeOut, campaign_out, journey_out, outcome_out, programme_tz, run_out
from tongcrm.cli_run import CLI_ACTOR, CliObj, load_json, read, write
from tongcrm.db.base import utcnow
from tongcrm.errors import BadRequest


def _report_command(group: click.Group) -> Callable[[Callable[..., None]], click.Command]:
    """``report NAME [--svg FILE]`` of campaigns and of journeys: the command's shape, declared once."""
    svg = click.option("--svg", "svg_path", type=click.Path(dir_okay=False, writable=True), default=None)

    def declare(handler: Callable[..., None]) -> click.Command:
        return group.command("report")(click.argument("name")(svg(click.pass_obj(handler))))

    return declare


def _json(value: Any) -> str:
    import msgspec

    return json.dumps(msgspec.to_builtins(value), ensure_ascii=False, indent=2)


@click.group("campaigns")
def campaigns_group() -> None:
    """Campaigns: create, schedule, cancel, runs and reports."""


@campaigns_group.command("create")
@click.argument("name")
@click.option("--segment", required=True, help="The saved segment of the audience.")
@click.option("--template", required=True, help="The marketing message template.")
@click.option("--response", "response_source", required=True, help="Response definition: a JSON file or '-'.")
@click.option("--goal", default="")
@click.option("--control-percent", default=10.0, show_default=True, type=float)
@click.option("--control-seed", default="")
@click.option("--budget-messages", type=int, default=None)
@click.option("--message-cost-fen", type=int, default=0, show_default=True)
@click.option("--benefit-points", type=int, default=0, show_default=True, help="Points per treated member.")
@click.option("--budget-points", type=int, default=None, help="Most points all runs together may grant.")
@click.option(
    "--budget-entitlements",
    type=int,
    default=None,
    help="Most entitlement grants all runs together may make.",
)
@click.option(
    "--benefit-entitlement", "entitlement_source", default=None,
    help="An entitlement per treated member: a JSON file or '-' ({\"kind\", \"value\", \"validity_days\", \"cost_fen\"}).",
)  # fmt: skip
@click.pass_obj
def create(
    obj: CliObj, name: str, segment: str, template: str, response_source: str, goal: str,
    control_percent: float, control_seed: str, budget_messages: int | None, message_cost_fen: int,
    benefit_points: int, budget_points: int | None, budget_entitlements: int | None,
    entitlement_source: str | None,
) -> None:  # fmt: skip
    """Create a campaign as a draft."""
    draft = service.Draft(
        name, segment, template, load_json(response_source), goal, control_percent, control_seed, budget_messages,
        message_cost_fen, benefit_points, budget_points,
        None if entitlement_source is None else load_json(entitlement_source), budget_entitlements,
    )  # fmt: skip

    async def change(session: AsyncSession) -> int:
        return (await service.create(session, draft, CLI_ACTOR)).id

    click.echo(f"created campaign {name!r} (#{write(obj, change)}) as a draft")


@campaigns_group.command("list")
@click.pass_obj
def list_command(obj: CliObj) -> None:
    """Campaigns with their status and next run."""

    async def query(session: AsyncSession) -> list[tuple[str, str, str]]:
        return [
            (c.name, c.status, c.next_run_at.isoformat() if c.next_run_at else "-")
            for c in await service.list_all(session)
        ]

    for name, status, next_run in read(obj, query):
        click.echo(f"{name}\t{status}\tnext run {next_run}")


@campaigns_group.command("show")
@click.argument("name")
@click.pass_obj
def show(obj: CliObj, name: str) -> None:
    """One campaign and its runs, as JSON."""

    async def query(session: AsyncSession) -> str:
        c = await service.get(session, name)
        runs = [run_out(r) for r in await service.runs(session, c.id)]
        return _json({"campaign": campaign_out(c), "runs": runs})

    click.echo(read(obj, query))


@campaigns_group.command("schedule")
@click.argument("name")
@click.argument("source")
@click.pass_obj
def schedule(obj: CliObj, name: str, source: str) -> None:
    """Schedule a campaign: SOURCE is a schedule document (a JSON file or '-')."""
    document = load_json(source)

    async def change(session: AsyncSession) -> str:
        tz = await programme_tz(session, obj.settings)
        c = await service.schedule(session, obj.host, CLI_ACTOR, name, document, now=utcnow(), tz=tz)
        return c.next_run_at.isoformat() if c.next_run_at else "-"

    click.echo(f"scheduled {name!r}; first run at {write(obj, change)}")


@campaigns_group.command("cancel")
@click.argument("name")
@click.pass_obj
def cancel(obj: CliObj, name: str) -> None:
    """Cancel a campaign: no further run starts."""

    async def change(session: AsyncSession) -> None:
        await service.cancel(session, CLI_ACTOR, name, now=utcnow())

    write(obj, change)
    click.echo(f"cancelled {name!r}")


def _uplift(o: OutcomeOut) -> str:
    return (
        f"uplift {o.uplift * 100:+.2f} pts, 95% CI [{o.uplift_low * 100:+.2f}, {o.uplift_high * 100:+.2f}]"
        f" ({o.conclusion})"
    )


def _close_report(o: OutcomeOut, svg_path: str | None, draw: Callable[[], str]) -> None:
    """The end of a campaign's or a journey's report: why it cannot conclude, and the chart (``--svg``)."""
    if o.too_small:
        click.echo(f"too small to conclude: {o.too_small}")
    if svg_path:
        if not svg_path.endswith(".svg"):
            raise BadRequest("--svg names a file ending in .svg")
        Path(svg_path).write_text(draw(), encoding="utf-8")
        click.echo(f"chart written to {svg_path}")


@_report_command(campaigns_group)
def report(obj: CliObj, name: str, svg_path: str | None) -> None:
    """The evaluation, per run and in total; with --svg, the chart written to a file."""

    async def query(session: AsyncSession) -> evaluation.Report:
        return await evaluation.report(session, await service.get(session, name))

    result = read(obj, query)
    total = outcome_out(result.total)
    for i, r in enumerate(result.runs, 1):
        o = outcome_out(r.outcome)
        click.echo(
            f"run {i} {r.run.scheduled_for.isoformat()} {r.run.status}{' (' + r.run.reason + ')' if r.run.reason else ''}:"
            f" audience {o.audience}, sent {o.sent}, treated {o.treated.responders}/{o.treated.eligible},"
            f" control {o.control_group.responders}/{o.control_group.eligible}"
        )
    click.echo(
        f"total: {_uplift(total)}, incremental orders {total.incremental_orders},"
        f" incremental revenue {total.incremental_revenue_fen} fen, cost {total.cost_fen} fen"
        f" and {total.points_granted} points, {total.entitlements_granted} entitlements granted"
    )
    _close_report(total, svg_path, lambda: chart.render(result))


@click.command("calendar")
@click.option("--from", "start", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First local day.")
@click.option(
    "--to", "end", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last local day (inclusive)."
)
@click.pass_obj
def calendar_command(obj: CliObj, start: datetime, end: datetime) -> None:
    """Campaign runs (past and planned), marked days and clashes, by local day."""

    async def query(session: AsyncSession) -> calendar.Calendar:
        tz = await programme_tz(session, obj.settings)
        return await calendar.build(session, start.date(), end.date(), tz=tz)

    result = read(obj, query)
    for e in result.entries:
        when = e.at.astimezone(ZoneInfo(result.timezone)).strftime("%H:%M") if e.at else "     "
        extra = f" ({e.status}{': ' + e.detail if e.detail and e.kind == 'run' else ''})" if e.status else ""
        click.echo(f"{e.day.isoformat()} {when} {e.kind:<11} {e.name}{extra}")
    for clash in result.clashes:
        click.echo(
            f"clash {clash.day.isoformat()}: {', '.join(clash.campaigns)} send to segment #{clash.segment_id}"
        )
    if result.care_flows:
        click.echo(f"care flows running: {', '.join(result.care_flows)}")


@campaigns_group.group("journeys")
def journeys_group() -> None:
    """Journeys: triggered campaigns (create, list, show, pause, resume, report)."""


@journeys_group.command("create")
@click.argument("name")
@click.option("--trigger", "trigger_source", required=True, help="Trigger document: a JSON file or '-'.")
@click.option("--steps", "steps_source", required=True, help="Steps document: a JSON file or '-'.")
@click.option("--response", "response_source", required=True, help="Response definition: a JSON file or '-'.")
@click.option("--goal", default="")
@click.option("--control-percent", default=10.0, show_default=True, type=float)
@click.option("--control-seed", default="")
@click.option("--budget-messages", type=int, default=None)
@click.option("--budget-points", type=int, default=None)
@click.option("--message-cost-fen", type=int, default=0, show_default=True)
@click.option("--budget-entitlements", type=int, default=None, help="Most entitlement grants in all.")
@click.pass_obj
def journey_create(
    obj: CliObj, name: str, trigger_source: str, steps_source: str, response_source: str, goal: str,
    control_percent: float, control_seed: str, budget_messages: int | None, budget_points: int | None,
    message_cost_fen: int, budget_entitlements: int | None,
) -> None:  # fmt: skip
    """Create a journey; it is active at once."""
    draft = journeys.Draft(
        name, load_json(trigger_source), load_json(steps_source), load_json(response_source), goal, control_percent,
        control_seed, budget_messages, budget_points, message_cost_fen, budget_entitlements,
    )  # fmt: skip

    async def change(session: AsyncSession) -> int:
        return (await journeys.create(session, draft, CLI_ACTOR, now=utcnow())).id

    click.echo(f"created journey {name!r} (#{write(obj, change)}), active")


@journeys_group.command("list")
@click.pass_obj
def journey_list(obj: CliObj) -> None:
    """Journeys with their status, trigger and participants by state."""

    async def query(session: AsyncSession) -> list[str]:
        out = []
        for j in await journeys.list_all(session):
            states = await journeys.participant_states(session, j.id)
            counts = ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "no participant"
            out.append(f"{j.name}\t{j.status}\t{j.trigger['kind']}\t{counts}")
        return out

    for line in read(obj, query):
        click.echo(line)


@journeys_group.command("show")
@click.argument("name")
@click.pass_obj
def journey_show(obj: CliObj, name: str) -> None:
    """One journey, as JSON."""

    async def query(session: AsyncSession) -> str:
        j = await journeys.get(session, name)
        return _json(journey_out(j, await journeys.participant_states(session, j.id)))

    click.echo(read(obj, query))


def _set_status(obj: CliObj, name: str, status: str) -> None:
    async def change(session: AsyncSession) -> None:
        await journeys.set_status(session, CLI_ACTOR, name, status, now=utcnow())

    write(obj, change)
    click.echo(f"journey {name!r} is {status}")


@journeys_group.command("pause")
@click.argument("name")
@click.pass_obj
def journey_pause(obj: CliObj, name: str) -> None:
    """Pause a journey: nobody enters; members already waiting still act when due."""
    _set_status(obj, name, "paused")


@journeys_group.command("resume")
@click.argument("name")
@click.pass_obj
def journey_resume(obj: CliObj, name: str) -> None:
    """Resume a paused journey."""
    _set_status(obj, name, "active")


@_report_command(journeys_group)
def journey_report(obj: CliObj, name: str, svg_path: str | None) -> None:
    """A journey's evaluation against its control group; with --svg, the chart written to a file."""

    async def query(session: AsyncSession) -> journeys.JourneyReport:
        return await journeys.report(session, await journeys.get(session, name))

    r = read(obj, query)
    o = outcome_out(r.total)
    click.echo(
        f"participants {dict(sorted(r.states.items()))}, branches {dict(sorted(r.branches.items()))}:"
        f" treated {o.treated.responders}/{o.treated.eligible}, control {o.control_group.responders}/"
        f"{o.control_group.eligible}; {_uplift(o)}; sent {o.sent}, cost {o.cost_fen} fen and"
        f" {o.points_granted} points"
    )
    _close_report(o, svg_path, lambda: chart.render_journey(r))
