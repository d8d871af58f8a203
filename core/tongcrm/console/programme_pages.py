"""Console pages for the loyalty rules: points rule-set versions with a draft's backtest ("what a draft rule
would have paid"), and the tier ladder with its preview ("who moves").

Both previews write nothing, so whoever may read may run them, as with ``POST /api/points/rules/preview`` and
``POST /api/tiers/preview``; they are POSTs (a draft document is too long for a URL) carrying the session's
CSRF token. Storing or activating rules and applying a ladder stay admin calls of the API: these pages offer no
write control.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from litestar import Request, Response, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.console.forms import form_fields
from tongcrm.console.web import PREFIX, READ_ROLES, ConsoleController, action, page, render
from tongcrm.errors import BadRequest, TongcrmError, Unprocessable
from tongcrm.points import service as points
from tongcrm.points.schemas import BacktestReport, RuleSetOut
from tongcrm.tiers import service as tiers
from tongcrm.tiers.models import TierLadder

#: How far back a backtest replays orders unless asked otherwise.
BACKTEST_DAYS = 90


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the draft is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc


# -------------------------------------------------------------------------------------------------------------
# points rules


@dataclass(frozen=True, slots=True)
class RulesView:
    versions: list[RuleSetOut]
    active: RuleSetOut | None


async def rules_view(session: AsyncSession) -> RulesView:
    versions = await points.list_rule_sets(session)
    active = next((v for v in versions if v.status == "active"), None)
    return RulesView(versions, active)


async def backtest(session: AsyncSession, settings: Any, document: Any, since: date) -> BacktestReport:
    """``tongcrm points backtest``: replay paid orders since ``since`` (programme day) under the draft."""
    rules = points.draft_rules(document)
    ctx = points.PointsContext(clock=lambda: datetime.now(UTC), tz=settings.tz)
    start = datetime.combine(since, datetime.min.time(), tzinfo=settings.tz)
    return await points.backtest(session, ctx, rules, start)


async def _rules_page(
    request: Request[Any, Any, Any],
    *,
    draft: str | None = None,
    since: str | None = None,
    report: BacktestReport | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:
    state = request.app.state
    async with state.read_sessions() as session:
        view = await rules_view(session)
    today = datetime.now(UTC).astimezone(state.settings.tz).date()
    return render(
        request,
        "programme/points_rules.html",
        {
            "v": view,
            "json": _json,
            "draft": draft if draft is not None else (_json(view.active.document) if view.active else ""),
            "since": since or (today - timedelta(days=BACKTEST_DAYS)).isoformat(),
            "report": report,
            "problem": problem,
        },
        title="rules.title",
        status_code=status_code,
    )


class PointsRulesPage(ConsoleController):
    path = PREFIX + "/points/rules"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        return await _rules_page(request)

    @post("/backtest", opt=action(*READ_ROLES), status_code=200)
    async def backtest(self, request: Request[Any, Any, Any]) -> Response[str]:
        form = await form_fields(request)
        draft, since_text = form.get("document", ""), form.get("since", "")
        try:
            try:
                since = date.fromisoformat(since_text)
            except ValueError as exc:
                raise Unprocessable(f"since: {since_text!r} is not a date like 2026-01-31") from exc
            document = _document(draft)
            async with request.app.state.read_sessions() as session:
                report = await backtest(session, request.app.state.settings, document, since)
        except TongcrmError as exc:
            if exc.status_code >= 500:
                raise
            return await _rules_page(
                request, draft=draft, since=since_text, problem=exc.message, status_code=exc.status_code
            )
        return await _rules_page(request, draft=draft, since=since_text, report=report)


# -------------------------------------------------------------------------------------------------------------
# tiers


@dataclass(frozen=True, slots=True)
class TiersView:
    versions: list[TierLadder]
    #: What the ladder in force does at the members' reviews today (None without a ladder).
    review: tiers.Preview | None


async def tiers_view(session: AsyncSession, settings: Any) -> TiersView:
    versions = await tiers.ladder_versions(session)
    review = (
        await tiers.preview(session, tiers.TierContext.of(settings), versions[0].definition)
        if versions
        else None
    )
    return TiersView(versions, review)


async def _tiers_page(
    request: Request[Any, Any, Any],
    *,
    draft: str | None = None,
    preview: tiers.Preview | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:
    state = request.app.state
    async with state.read_sessions() as session:
        view = await tiers_view(session, state.settings)
    return render(
        request,
        "programme/tiers.html",
        {
            "v": view,
            "json": _json,
            "draft": draft
            if draft is not None
            else (_json(view.versions[0].definition) if view.versions else ""),
            "preview": preview,
            "problem": problem,
        },
        title="tiers.title",
        status_code=status_code,
    )


class TiersPage(ConsoleController):
    path = PREFIX + "/tiers"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        return await _tiers_page(request)

    @post("/preview", opt=action(*READ_ROLES), status_code=200)
    async def preview(self, request: Request[Any, Any, Any]) -> Response[str]:
        form = await form_fields(request)
        draft = form.get("ladder", "")
        try:
            document = _document(draft)
            async with request.app.state.read_sessions() as session:
                result = await tiers.preview(
                    session, tiers.TierContext.of(request.app.state.settings), document
                )
        except TongcrmError as exc:
            if exc.status_code >= 500:
                raise
            return await _tiers_page(request, draft=draft, problem=exc.message, status_code=exc.status_code)
        return await _tiers_page(request, draft=draft, preview=result)
