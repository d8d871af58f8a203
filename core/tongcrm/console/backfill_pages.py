"""Console page for one channel account's backfills (补拉订单): their progress, and a form that starts one.

A backfill pulls an account's orders again over a stretch of the past — after an outage, a re-authorisation that
came days late, a shop added with more history than the first sync reaches — cut into windows that the job
workers sync in parallel (:mod:`tongcrm.ingest.backfill`, the same as ``tongcrm sync --since … --window-hours
…``). The form asks for the stretch in the programme's time zone (from; to, empty for "up to now", which stops
:data:`~tongcrm.ingest.backfill.PRESENT_MARGIN` short of now as the CLI does) and the window in hours, and calls
:func:`~tongcrm.ingest.backfill.create_backfill` in one transaction: the backfill, its windows and one job per
window, audited as ``channel_account.backfill`` (operators and admins). Every read role sees the progress
(:func:`~tongcrm.ingest.backfill.backfill_views`).

A refusal — a window of zero hours, "from" not before "to", more windows than a backfill may have — is the
service's, with a ``backfill.*`` code the page says in its language; the CLI keeps the English message. The form
keeps what was typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from litestar import Request, Response, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.campaigns.api import programme_tz
from tongcrm.channels import service as channels
from tongcrm.console.channel_pages import AccountName, pulls_orders
from tongcrm.console.forms import form_fields
from tongcrm.console.web import (
    PREFIX,
    ConsoleController,
    action,
    actor_of,
    context_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.errors import NotFound, PluginError, TongcrmError, Unprocessable
from tongcrm.ingest import backfill
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelCapability, ChannelSpec

#: The window the form proposes: a day, as ``docs/operating.md`` suggests for a long backfill.
DEFAULT_WINDOW_HOURS = "24"
#: The longest window the form takes (a year of hours); past it a window is no window, and a number far larger
#: would overflow a ``timedelta``.
MAX_WINDOW_HOURS = 24 * 366


@dataclass(frozen=True, slots=True)
class BackfillPage:
    account: channels.AccountView
    channel_title: str
    #: The channel's orders can be pulled again (:func:`~tongcrm.console.channel_pages.pulls_orders`).
    can_fetch: bool
    #: The adapter stops at a window's end; without it a backfill is one window up to now.
    windowed: bool
    backfills: list[backfill.BackfillView]
    timezone: str


def _spec(host: PluginHost, channel: str) -> ChannelSpec | None:
    """The channel's spec; None when its plugin is not installed (nothing can pull its orders)."""
    try:
        return host.channel(channel)
    except PluginError:
        return None


async def backfill_page(
    session: AsyncSession, host: PluginHost, name: str, lang: str, tz: ZoneInfo
) -> BackfillPage:
    account = await channels.get_account(session, name)
    spec = _spec(host, account.channel)
    return BackfillPage(
        channels.view(account, None),
        spec.display_name_in(lang) if spec else account.channel,
        pulls_orders(spec),
        spec is not None and ChannelCapability.BACKFILL_WINDOWS in spec.capabilities,
        await backfill.backfill_views(session, account=account.name),
        str(tz),
    )


def _local_time(form: dict[str, str], field: str, tz: ZoneInfo) -> datetime | None:
    """A ``datetime-local`` value (or ``2026-11-01 08:00``, or a bare date: its midnight) in the programme's time
    zone, None when left empty; an offset typed with it is kept."""
    text = form.get(field, "").strip()
    if not text:
        return None
    try:
        if "\x00" in text:  # Python's fromisoformat stops at a NUL: "2026-11-01T00:00\x00" read as a time
            raise ValueError("a NUL byte")
        local = datetime.fromisoformat(text)
        at = local if local.tzinfo else local.replace(tzinfo=tz)
        at.astimezone(UTC)  # year 1 at +08:00 is before anything a datetime holds
    except (ValueError, OverflowError) as exc:
        raise Unprocessable(
            f"{field}: {text!r} is not a date and time",
            code="form.not_datetime",
            params={"field": field, "value": text},
        ) from exc
    return at


def _window(form: dict[str, str]) -> timedelta:
    text = form.get("window_hours", "").strip().replace(",", "") or DEFAULT_WINDOW_HOURS
    try:
        hours = float(text)
        if not math.isfinite(hours):
            raise ValueError(text)
    except ValueError as exc:
        raise Unprocessable(
            f"window_hours: {text!r} is not a number",
            code="form.not_number",
            params={"field": "window_hours", "value": text},
        ) from exc
    if hours > MAX_WINDOW_HOURS:
        raise Unprocessable(
            f"window_hours: at most {MAX_WINDOW_HOURS}",
            code="form.too_large",
            params={"field": "window_hours", "value": text, "max": MAX_WINDOW_HOURS},
        )
    return timedelta(hours=hours)  # zero or less: the service refuses it (backfill.window_not_positive)


async def _page(
    request: Request[Any, Any, Any],
    name: str,
    *,
    typed: dict[str, str] | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:
    state = request.app.state
    async with state.read_sessions() as session:
        tz = await programme_tz(session, state.settings)
        view = await backfill_page(session, state.host, name, context_of(request).lang, tz)
    return render(
        request,
        "channels/backfill.html",
        {
            "v": view,
            "typed": typed or {"window_hours": DEFAULT_WINDOW_HOURS},
            "problem": problem,
            "started": request.query_params.get("started"),
        },
        title="bf.title",
        status_code=status_code,
    )


class BackfillPages(ConsoleController):
    path = PREFIX + "/channels/{name:str}/backfill"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any], name: AccountName) -> Response[str]:
        return await _page(request, name)

    @post("/", opt=action())
    async def start(self, request: Request[Any, Any, Any], name: AccountName) -> Response[Any]:
        """Write the backfill, its windows and their jobs in one transaction; the job workers sync them."""
        form = await form_fields(request)
        state = request.app.state
        try:
            async with state.sessions() as session, session.begin():
                tz = await programme_tz(session, state.settings)
                account = await channels.get_account(session, name)
                if not pulls_orders(_spec(state.host, account.channel)):
                    raise Unprocessable(
                        f"channel account {name!r} does not fetch its orders: there is nothing to pull again",
                        code="backfill.cannot_fetch",
                    )
                since = _local_time(form, "since", tz)
                if since is None:
                    raise Unprocessable("since: required", code="form.required", params={"field": "since"})
                until = _local_time(form, "until", tz)
                window = _window(form)
                if until is None:  # up to now, short of the last minutes the platforms index late
                    until = datetime.now(UTC).astimezone(tz) - backfill.PRESENT_MARGIN
                backfill_id = await backfill.create_backfill(
                    session,
                    state.host,
                    name,
                    since=since,
                    until=until,
                    window=window,
                    actor=actor_of(request),
                )
        except TongcrmError as exc:
            if exc.status_code >= 500 or isinstance(exc, NotFound):
                raise
            return await _page(
                request, name, typed=form, problem=problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, f"{PREFIX}/channels/{name}/backfill?started={backfill_id}")
