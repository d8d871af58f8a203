"""Console pages for the loyalty rules: points rule-set versions with a draft's backtest ("what a draft rule
would have paid") and their activation, and the tier ladder with its preview ("who moves") and its application.

Both previews write nothing, so whoever may read may run them, as with ``POST /api/points/rules/preview`` and
``POST /api/tiers/preview``; they are POSTs (a draft document is too long for a URL) carrying the session's
CSRF token. Storing a rule set, activating one and applying a ladder are admin calls of the API
(``POST /api/points/rules``, ``POST /api/points/rules/{v}/activate``, ``PUT /api/tiers/ladder``), and so they
are here: the same service functions with the session key as the actor, audited as the API audits them. Each
write comes after what it changes was shown: a version is activated from its review page, which backtests it
against the orders paid since a day; a ladder is applied from the result of its preview, which carries the
previewed document unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.api.inputs import PathInt32
from tongcrm.auth.service import Role
from tongcrm.console import ladder_form, rules_form
from tongcrm.console.forms import form_fields, principal_of
from tongcrm.console.i18n import translate
from tongcrm.console.problems import explain
from tongcrm.console.web import (
    PREFIX,
    READ_ROLES,
    ConsoleController,
    action,
    actor_of,
    context_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.db.base import utcnow
from tongcrm.db.engine import transaction
from tongcrm.db.lengths import column_length
from tongcrm.entitlements.catalogue import CATALOGUE
from tongcrm.errors import BadRequest, NotFound, TongcrmError, Unprocessable
from tongcrm.points import service as points
from tongcrm.points.rules import DEFAULT_DOCUMENT
from tongcrm.points.schemas import BacktestReport, RuleSetOut
from tongcrm.tiers import service as tiers
from tongcrm.tiers.ladder import METRICS
from tongcrm.tiers.models import TierLadder

#: How far back a backtest replays orders unless asked otherwise.
BACKTEST_DAYS = 90


_Form = TypeVar("_Form")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _draft_and_form(
    draft: str | None,
    form: _Form | None,
    stored: Any,
    starter: Callable[[], Any],
    from_document: Callable[[Any], _Form | None],
) -> tuple[str, _Form | None]:
    """A programme page's draft, shown twice: the JSON text (empty when nothing is stored yet) and the form of
    it. With no draft, the stored document (or the starter one) fills the form unless the request brought one;
    a draft that is not JSON has no form (its page opens the JSON view, which says what is wrong)."""
    if draft is None:
        return (_json(stored) if stored is not None else ""), form or from_document(
            stored if stored is not None else starter()
        )
    if form is None:
        try:
            form = from_document(json.loads(draft))
        except json.JSONDecodeError:
            form = None
    return draft, form


def _document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the draft is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            code="draft.not_json",
            params={"line": exc.lineno, "column": exc.colno},
        ) from exc


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
    ctx = points.PointsContext(clock=utcnow, tz=settings.tz)
    start = datetime.combine(since, datetime.min.time(), tzinfo=settings.tz)
    return await points.backtest(session, ctx, rules, start)


async def _rules_page(
    request: Request[Any, Any, Any],
    *,
    draft: str | None = None,
    form: rules_form.RulesForm | None = None,
    mistakes: Mapping[str, TongcrmError] | None = None,
    since: str | None = None,
    report: BacktestReport | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:
    """The rules page. The draft is shown as the form (``form``, or the form of the JSON ``draft``, or of the
    active rule set) and as JSON (the advanced view, open when the form cannot show the draft)."""
    state = request.app.state
    async with state.read_sessions() as session:
        view = await rules_view(session)
    draft, form = _draft_and_form(
        draft,
        form,
        view.active.document if view.active else None,
        lambda: msgspec.to_builtins(DEFAULT_DOCUMENT),
        rules_form.from_document,
    )
    lang = context_of(request).lang
    return render(
        request,
        "programme/points_rules.html",
        {
            "v": view,
            "json": _json,
            "draft": draft,
            "form": form,
            "mistakes": {name: explain(lang, exc) for name, exc in (mistakes or {}).items()},
            "lists": rules_form.LISTS,
            "events": rules_form.EVENTS,
            "periods": rules_form.PERIODS,
            "expiry_kinds": rules_form.EXPIRY_KINDS,
            "rules_text": rules_form.rules_text,
            "since": since or _default_since(state.settings),
            "report": report,
            "problem": problem,
        },
        title="rules.title",
        status_code=status_code,
    )


def _posted_rules(
    request: Request[Any, Any, Any], fields: Mapping[str, str]
) -> tuple[str, rules_form.RulesForm | None, dict[str, TongcrmError]]:
    """The draft a rules page posted: from its form (``source=form``) as the API's document in JSON, with the
    form and the mistakes of its fields; else the JSON view's text as it is."""
    if fields.get("source") != "form":
        return fields.get("document", ""), None, {}
    form = rules_form.from_fields(fields)
    document, mistakes = rules_form.to_document(form)
    return _json(document), form, mistakes


def _form_refused(request: Request[Any, Any, Any], count: int) -> str:
    return translate(context_of(request).lang, "tiers.form_mistakes", count=count)


def _since(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise Unprocessable(
            f"since: {text!r} is not a date like 2026-01-31",
            code="form.not_date",
            params={"field": "since", "value": text},
        ) from exc


def _default_since(settings: Any) -> str:
    return (datetime.now(UTC).astimezone(settings.tz).date() - timedelta(days=BACKTEST_DAYS)).isoformat()


class PointsRulesPage(ConsoleController):
    path = PREFIX + "/points/rules"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        return await _rules_page(request)

    @post("/", opt=action(Role.ADMIN))
    async def store(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Store the draft as a new version (``POST /api/points/rules`` without ``activate``); it earns
        nothing until it is activated from its review page, which this answer opens."""
        fields = await form_fields(request)
        note = fields.get("note", "").strip()
        draft, edited, mistakes = _posted_rules(request, fields)
        if mistakes:
            return await _rules_page(
                request,
                draft=draft,
                form=edited,
                mistakes=mistakes,
                problem=_form_refused(request, len(mistakes)),
                status_code=422,
            )
        if len(note) > 500:
            raise BadRequest(
                "note: at most 500 characters", code="form.too_long", params={"field": "note", "max": 500}
            )
        try:
            document = _document(draft)
            async with transaction(request.app.state.sessions) as session:
                stored = await points.create_rule_set(
                    session,
                    document,
                    now=datetime.now(UTC),
                    note=note,
                    actor=f"apikey:{principal_of(request).key_id}",
                    auditor=actor_of(request),
                )
        except TongcrmError as exc:
            if exc.status_code >= 500:
                raise
            return await _rules_page(
                request,
                draft=draft,
                form=edited,
                problem=problem_text(request, exc),
                status_code=exc.status_code,
            )
        return redirect(request, f"{PREFIX}/points/rules/{stored.version}")

    @get("/{version:int}", opt=page())
    async def review(
        self,
        request: Request[Any, Any, Any],
        version: PathInt32,
        since: Annotated[str | None, QueryParameter(max_length=10)] = None,
    ) -> Response[str]:
        """One version: its document, the backtest of it against what was paid since ``since``, and (for
        admins, when it is not the active one) the button that activates it."""
        settings = request.app.state.settings
        since_text = since or _default_since(settings)
        problem, report, status_code = None, None, 200
        async with request.app.state.read_sessions() as session:
            view = await rules_view(session)
            chosen = next((v for v in view.versions if v.version == version), None)
            if chosen is None:
                raise NotFound(f"no rule set version {version}")
            try:
                report = await backtest(session, settings, chosen.document, _since(since_text))
            except TongcrmError as exc:
                if exc.status_code >= 500:
                    raise
                problem, status_code = problem_text(request, exc), exc.status_code
        return render(
            request,
            "programme/rule_version.html",
            {"r": chosen, "active": view.active, "json": _json, "since": since_text, "report": report,
             "problem": problem, "rules_text": rules_form.rules_text},
            title="rules.review_title",
            status_code=status_code,
        )  # fmt: skip

    @post("/{version:int}/activate", opt=action(Role.ADMIN))
    async def activate(self, request: Request[Any, Any, Any], version: PathInt32) -> Response[Any]:
        """``POST /api/points/rules/{version}/activate``: the version earns from now on, audited."""
        async with transaction(request.app.state.sessions) as session:
            await points.activate_rule_set(session, version, now=datetime.now(UTC), actor=actor_of(request))
        return redirect(request, f"{PREFIX}/points/rules")

    @post("/backtest", opt=action(*READ_ROLES), status_code=200)
    async def backtest(self, request: Request[Any, Any, Any]) -> Response[str]:
        fields = await form_fields(request)
        since_text = fields.get("since", "")
        if fields.get("source") == "form" and fields.get("edit"):
            changed = rules_form.apply_edit(rules_form.from_fields(fields), fields["edit"])
            built, _ = rules_form.to_document(changed)
            return await _rules_page(request, draft=_json(built), form=changed, since=since_text)
        draft, edited, mistakes = _posted_rules(request, fields)
        if mistakes:
            return await _rules_page(
                request,
                draft=draft,
                form=edited,
                mistakes=mistakes,
                since=since_text,
                problem=_form_refused(request, len(mistakes)),
                status_code=422,
            )
        try:
            since = _since(since_text)
            document = _document(draft)
            async with request.app.state.read_sessions() as session:
                report = await backtest(session, request.app.state.settings, document, since)
        except TongcrmError as exc:
            if exc.status_code >= 500:
                raise
            return await _rules_page(
                request,
                draft=draft,
                form=edited,
                since=since_text,
                problem=problem_text(request, exc),
                status_code=exc.status_code,
            )
        return await _rules_page(request, draft=draft, form=edited, since=since_text, report=report)


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
    form: ladder_form.LadderForm | None = None,
    mistakes: Mapping[str, TongcrmError] | None = None,
    preview: tiers.Preview | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:
    """The tiers page. The draft is shown twice: as the form (``form``, or the form of the JSON ``draft``, or of
    the ladder in force) and as JSON (the advanced view, open when the form cannot show the draft)."""
    state = request.app.state
    async with state.read_sessions() as session:
        view = await tiers_view(session, state.settings)
    draft, form = _draft_and_form(
        draft,
        form,
        view.versions[0].definition if view.versions else None,
        lambda: STARTER_LADDER,
        ladder_form.from_document,
    )
    lang = context_of(request).lang
    return render(
        request,
        "programme/tiers.html",
        {
            "v": view,
            "json": _json,
            "draft": draft,
            "form": form,
            "mistakes": {name: explain(lang, exc) for name, exc in (mistakes or {}).items()},
            "metrics": METRICS,
            "kinds": sorted(CATALOGUE),
            "money_kind": ladder_form.is_money_kind,
            "presence_kind": ladder_form.is_presence_kind,
            "rule_text": ladder_form.rule_text,
            "entitlement_text": ladder_form.entitlement_text,
            "preview": preview,
            "problem": problem,
        },
        title="tiers.title",
        status_code=status_code,
    )


#: What the form starts from when no ladder was ever applied: one base tier.
STARTER_LADDER: dict[str, Any] = {
    "window_months": 12,
    "review": {"mode": "anniversary", "one_step": False},
    "tiers": [{"code": "member", "name": "会员"}],
}


class TiersPage(ConsoleController):
    path = PREFIX + "/tiers"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        return await _tiers_page(request)

    @post("/preview", opt=action(*READ_ROLES), status_code=200)
    async def preview(self, request: Request[Any, Any, Any]) -> Response[str]:
        """The draft's preview. The draft comes from the form (``source=form``: its fields, money in yuan) or
        from the JSON view (``ladder``); a form's ``edit`` button adds or removes a row and previews nothing."""
        fields = await form_fields(request)
        edited: ladder_form.LadderForm | None = None
        if fields.get("source") == "form":
            edited = ladder_form.from_fields(fields)
            if fields.get("edit"):
                ladder_form.apply_edit(edited, fields["edit"])
                built, _ = ladder_form.to_document(edited)
                return await _tiers_page(request, draft=_json(built), form=edited)
            built, mistakes = ladder_form.to_document(edited)
            draft = _json(built)
            if mistakes:
                return await _tiers_page(
                    request,
                    draft=draft,
                    form=edited,
                    mistakes=mistakes,
                    problem=translate(context_of(request).lang, "tiers.form_mistakes", count=len(mistakes)),
                    status_code=422,
                )
        else:
            draft = fields.get("ladder", "")
        try:
            document = _document(draft)
            async with request.app.state.read_sessions() as session:
                result = await tiers.preview(
                    session, tiers.TierContext.of(request.app.state.settings), document
                )
        except TongcrmError as exc:
            if exc.status_code >= 500:
                raise
            return await _tiers_page(
                request,
                draft=draft,
                form=edited,
                problem=problem_text(request, exc),
                status_code=exc.status_code,
            )
        return await _tiers_page(request, draft=draft, form=edited, preview=result)

    @post("/apply", opt=action(Role.ADMIN))
    async def apply(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """``PUT /api/tiers/ladder``: the previewed draft becomes the ladder in force (upgrades follow at once
        through ``tiers.upgrade_all``, drops wait for each member's review), audited as
        ``tiers.ladder.apply``. The form that posts here is shown only under a preview of the same text."""
        form = await form_fields(request)
        draft, reason = form.get("ladder", ""), form.get("reason", "").strip()
        if len(reason) > (limit := column_length(TierLadder.reason)):
            raise BadRequest(
                f"reason: at most {limit} characters",
                code="form.too_long",
                params={"field": "reason", "max": limit},
            )
        settings = request.app.state.settings
        try:
            document = _document(draft)
            async with transaction(request.app.state.sessions) as session:
                await tiers.apply_ladder(
                    session,
                    tiers.TierContext.of(settings, actor=f"key:{principal_of(request).key_id}"),
                    document,
                    reason=reason,
                    actor=actor_of(request),
                )
        except TongcrmError as exc:
            if exc.status_code >= 500:
                raise
            # refused (no reason given, say): the preview and its apply form again, with the reason why
            return await _tiers_page(
                request,
                draft=draft,
                preview=await _preview_of(request, draft),
                problem=problem_text(request, exc),
                status_code=exc.status_code,
            )
        return redirect(request, f"{PREFIX}/tiers")


async def _preview_of(request: Request[Any, Any, Any], draft: str) -> tiers.Preview | None:
    """The draft's preview, or None when the draft itself is what is wrong."""
    try:
        document = _document(draft)
        async with request.app.state.read_sessions() as session:
            return await tiers.preview(session, tiers.TierContext.of(request.app.state.settings), document)
    except TongcrmError as exc:
        if exc.status_code >= 500:
            raise
        return None
