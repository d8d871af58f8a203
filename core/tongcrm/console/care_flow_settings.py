"""Console page for the care flows' settings (关怀流程设置): every flow the core runs
(:data:`tongcrm.messaging.flows.FLOWS`) with what triggers it, its default delay, and its configurations (the
default one and any per channel account: on or off, delay, message template); operators and admins change one.
Delays are entered and shown in minutes, hours or days (:func:`delay_of`, :func:`delay_shown`); the API and the
table keep whole seconds.

A change calls :func:`tongcrm.messaging.flows.configure`, the service behind ``PUT /api/care-flows/{flow}``,
with the session key as the actor, so it is audited as ``care_flow.configure`` exactly as the API's is. Roles
are the API's: every read role sees the page, writers get the forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import PathParameter
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels import service as channels
from tongcrm.console.forms import form_fields
from tongcrm.console.web import (
    PREFIX,
    ConsoleController,
    action,
    actor_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.db.engine import transaction
from tongcrm.errors import TongcrmError, Unprocessable
from tongcrm.messaging import flows
from tongcrm.messaging import service as messaging
from tongcrm.messaging.models import CareFlowConfig, MessageTemplate
from tongcrm.messaging.schemas import MAX_DELAY_SECONDS

SETTINGS = PREFIX + "/care-flows/settings"
FlowName = Annotated[str, PathParameter(max_length=64)]


@dataclass(frozen=True, slots=True)
class ConfigRow:
    config: CareFlowConfig
    #: The channel account's name, or None for the default configuration.
    account: str | None
    template: str


@dataclass(frozen=True, slots=True)
class FlowRow:
    flow: flows.CareFlow
    configs: list[ConfigRow]


@dataclass(frozen=True, slots=True)
class SettingsView:
    flows: list[FlowRow]
    templates: list[MessageTemplate]
    accounts: list[str]


async def settings_view(session: AsyncSession) -> SettingsView:
    templates = await messaging.list_templates(session)
    accounts = await channels.list_accounts(session)
    template_names = {t.id: t.name for t in templates}
    account_names = {a.id: a.name for a in accounts}
    configs: dict[str, list[ConfigRow]] = {}
    for c in await flows.list_configs(session):
        account = None if c.channel_account_id is None else account_names.get(c.channel_account_id, "?")
        configs.setdefault(c.flow, []).append(ConfigRow(c, account, template_names.get(c.template_id, "?")))
    return SettingsView(
        [
            FlowRow(f, sorted(configs.get(name, []), key=lambda r: (r.account is not None, r.account or "")))
            for name, f in flows.FLOWS.items()
        ],
        templates,
        [a.name for a in accounts],
    )


#: The units an operator enters a delay in, and their length in seconds (the API keeps whole seconds).
UNITS = {"minutes": 60, "hours": 3600, "days": 86400}
#: A delay stored through the API that is no whole number of minutes is shown back in seconds.
SECONDS = "seconds"


def delay_of(number: str, unit: str = "minutes") -> int | None:
    """The form's delay (a number and a unit: ``1.5`` ``hours``) in whole seconds, as the service takes it;
    empty: the flow's default (as when the API's body omits it)."""
    number = number.strip()
    if not number:
        return None
    size = {**UNITS, SECONDS: 1}.get(unit)
    if size is None:
        raise Unprocessable(f"delay: unknown unit {unit!r}; one of {', '.join(UNITS)}")
    try:
        amount = Decimal(number)
    except InvalidOperation as exc:
        raise Unprocessable(
            f"delay: {number!r} is not a number",
            code="form.not_number",
            params={"field": "delay", "value": number},
        ) from exc
    seconds = amount * size
    if not amount.is_finite() or seconds != seconds.to_integral_value():
        raise Unprocessable(
            f"delay: {number} {unit} is not a whole number of seconds",
            code="care_flow.delay_not_whole",
            params={"value": number},
        )
    if not 0 <= seconds <= MAX_DELAY_SECONDS:
        raise Unprocessable(
            f"delay: between 0 and {MAX_DELAY_SECONDS // UNITS['days']} days (a year)",
            code="care_flow.delay_range",
            params={"days": MAX_DELAY_SECONDS // UNITS["days"]},
        )
    return int(seconds)


def delay_shown(seconds: int) -> tuple[int, str]:
    """A stored delay in the largest unit that holds it whole (``7200`` → ``(2, "hours")``), so the page shows it
    back as it was entered; seconds only for a delay the API set to no whole number of minutes."""
    for unit, size in sorted(UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0 and (seconds or unit == "minutes"):
            return seconds // size, unit
    return seconds, SECONDS


async def _page(
    request: Request[Any, Any, Any], *, problem: str | None = None, status_code: int = 200
) -> Response[str]:
    async with request.app.state.read_sessions() as session:
        view = await settings_view(session)
    return render(
        request,
        "campaigns/care_flow_settings.html",
        {"v": view, "problem": problem, "delay_shown": delay_shown, "units": list(UNITS)},
        title="cfs.title",
        status_code=status_code,
    )


class CareFlowSettingsPage(ConsoleController):
    path = SETTINGS

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        return await _page(request)

    @post("/{flow:str}", opt=action())
    async def configure(self, request: Request[Any, Any, Any], flow: FlowName) -> Response[Any]:
        form = await form_fields(request)
        try:
            if "delay" in form:
                delay = delay_of(form.get("delay", ""), form.get("delay_unit", "minutes"))
            else:  # a form of an older page (or a script) that posts whole seconds
                delay = delay_of(form.get("delay_seconds", ""), SECONDS)
            async with transaction(request.app.state.sessions) as session:
                account = form.get("channel_account", "").strip()
                account_id = (await channels.get_account(session, account)).id if account else None
                await flows.configure(
                    session,
                    flow,
                    template=form.get("template", ""),
                    channel_account_id=account_id,
                    enabled=form.get("enabled") == "on",
                    delay_seconds=delay,
                    actor=actor_of(request),
                )
        except TongcrmError as exc:
            if exc.status_code >= 500:
                raise
            return await _page(
                request, problem=f"{flow}: {problem_text(request, exc)}", status_code=exc.status_code
            )
        return redirect(request, f"{SETTINGS}#flow-{flow}")
