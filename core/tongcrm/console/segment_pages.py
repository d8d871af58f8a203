"""Console pages for segments (人群): the list, the condition-tree editor with a live count, a segment's
versions, its daily counts as a chart, its masked members, "why is this member in it" and the CSV export.

Every page calls :mod:`tongcrm.segments.service`, the service behind ``/api/segments``, with the roles of that
API: analysts read, preview and export masked; operators and admins save; only admins export mobiles, and every
export is audited exactly as the API audits it. The live count is a POST of the draft tree (it carries the
session's CSRF token like every console POST) that saves nothing, so analysts may use it as they may use
``POST /api/segments/preview``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from litestar import MediaType, Request, Response, get, post
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.api.inputs import MAX_ID, PathId
from tongcrm.console.charts import DailyPoint, daily_counts
from tongcrm.console.forms import form_fields, principal_of
from tongcrm.console.i18n import translate
from tongcrm.console.money import MONEY_FIELDS, definition_to_fen, definition_to_yuan, fen_to_yuan
from tongcrm.console.problems import segment_problem
from tongcrm.console.segment_fields_zh import in_chinese
from tongcrm.console.web import (
    PREFIX,
    READ_ROLES,
    WRITE_ROLES,
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
from tongcrm.errors import BadRequest, Forbidden, TongcrmError
from tongcrm.members.service import REVEAL_ROLES, MemberSummary, check_reveal
from tongcrm.segments import service
from tongcrm.segments.models import Segment, SegmentVersion
from tongcrm.segments.schema import OPERATORS, InvalidSegment, Problem, catalogue

#: Every operator of the segment language, for the editor's labels (``seg.op.<op>`` in both catalogs).
OPERATOR_NAMES: tuple[str, ...] = tuple(dict.fromkeys(op for ops in OPERATORS.values() for op in ops))


def shown_value(field: str, value: Any) -> str:
    """A condition's value as the "why" page prints it: money in yuan (``"299.00"``), the rest as JSON."""
    if field in MONEY_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return fen_to_yuan(value)
    if field in MONEY_FIELDS and isinstance(value, list | tuple):
        return "[" + ", ".join(shown_value(field, v) for v in value) + "]"
    return json_text(value)


SEGMENTS = PREFIX + "/segments"
#: Days of daily counts the chart shows.
CHART_DAYS = 90
#: Members per page of the masked list.
PAGE_SIZE = 25
#: What the editor starts from: one condition a brand can count at once.
STARTER: dict[str, Any] = {
    "version": 1,
    "condition": {"all": [{"field": "orders.count", "op": "gte", "value": 1, "window_days": 90}]},
}


# -------------------------------------------------------------------------------------------------------------
# view models (no HTTP here)


@dataclass(frozen=True, slots=True)
class DraftResult:
    """What the editor shows for a draft: a count, or every mistake with its JSON pointer."""

    count: int | None
    warnings: list[dict[str, str]]
    errors: list[dict[str, str]]


def json_text(value: Any, indent: int | None = None) -> str:
    """A JSON value as operators read it (Chinese as written, not ``\\u`` escapes); templates escape it."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def parse_definition(text: str) -> Any:
    """The editor's JSON text as a document (money in yuan, as the console writes it); a 400 saying where the
    JSON breaks. A number with a fraction is read as a :class:`~decimal.Decimal`, so ``299.99`` yuan reaches
    :func:`tongcrm.console.money.definition_to_fen` exactly; one left elsewhere (no field takes one) goes on
    as a float, which the service refuses as it refuses it from the API."""
    try:
        document = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the definition is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            code="segment.not_json",
            params={"line": exc.lineno, "column": exc.colno},
        ) from exc
    return _floats(definition_to_fen(document))


def _floats(value: Any) -> Any:
    """``value`` with every Decimal left by :func:`parse_definition` back as the float ``json.loads`` makes."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


def _problems(lang: str, problems: list[Problem]) -> list[dict[str, str]]:
    """A draft's mistakes or warnings as the editor lists them: each pointer, its detail in ``lang``."""
    return [segment_problem(lang, {**p.as_dict(), "code": p.code, "params": p.params}) for p in problems]


async def count_draft(session: AsyncSession, request: Request[Any, Any, Any], definition: Any) -> DraftResult:
    """Count a draft the way ``POST /api/segments/preview`` does (no sample: the editor shows only the count).
    ``definition`` is in fen (the API's document); mistakes and warnings are in the page's language."""
    state = request.app.state
    lang = context_of(request).lang
    try:
        context = await service.load_context(session, state.host, utcnow())
        result = await service.preview(session, state.vault, context, definition, sample=0)
    except InvalidSegment as exc:
        return DraftResult(None, [], _problems(lang, exc.problems))
    return DraftResult(result.count, _problems(lang, list(result.warnings)), [])


@dataclass(frozen=True, slots=True)
class SegmentDetail:
    segment: Segment
    definition: dict[str, Any]
    versions: list[SegmentVersion]
    live_count: int
    daily: list[DailyPoint]
    members: list[MemberSummary]
    next_cursor: int | None


async def segment_detail(
    session: AsyncSession, request: Request[Any, Any, Any], segment_id: int, *, after: int | None
) -> SegmentDetail:
    state = request.app.state
    segment = await service.get_segment(session, segment_id)
    context = await service.load_context(session, state.host, utcnow())
    prepared = await service.prepared_segment(session, context, segment)
    members, cursor = await service.member_page(
        session, state.vault, prepared, after_id=after, limit=PAGE_SIZE
    )
    since = utcnow().astimezone(state.settings.tz).date() - timedelta(days=CHART_DAYS - 1)
    daily = [DailyPoint(r.on, r.members) for r in await service.counts(session, segment.id, since=since)]
    return SegmentDetail(
        segment,
        await service.current_definition(session, segment),
        await service.versions(session, segment.id),
        await service.count(session, prepared),
        daily,
        members,
        cursor,
    )


def editor_config(lang_labels: Mapping[str, str], lang: str = "en") -> str:
    """The catalogue and the editor's labels as JSON for ``segment-editor.js`` (read from a
    ``<script type="application/json">``: data, not code, so the page's CSP allows it); in zh the fields'
    and parameters' descriptions are Chinese (:mod:`tongcrm.console.segment_fields_zh`)."""
    fields = [f for f in catalogue().fields if f["available"]]
    if lang == "zh":
        fields = [in_chinese(f) for f in fields]
    # money fields are typed in yuan here (tongcrm.console.money): the editor keeps their values as text
    fields = [
        {**f, "unit": "yuan", "description": f["description"].replace("in fen", "in yuan")}
        if f["field"] in MONEY_FIELDS
        else f
        for f in fields
    ]
    operators = {op: translate(lang, f"seg.op.{op}") for op in OPERATOR_NAMES}
    return json.dumps(
        {"fields": fields, "labels": dict(lang_labels), "operators": operators}, ensure_ascii=False
    ).replace("</", "<\\/")


# -------------------------------------------------------------------------------------------------------------
# pages

_EDITOR_LABELS = (
    "seg.ed.match_all", "seg.ed.match_any", "seg.ed.negate", "seg.ed.add_condition", "seg.ed.add_group",
    "seg.ed.remove", "seg.ed.field", "seg.ed.operator", "seg.ed.value", "seg.ed.value_low", "seg.ed.value_high",
    "seg.ed.list_hint", "seg.ed.yes", "seg.ed.no", "seg.ed.group", "seg.ed.counting", "seg.ed.members",
    "seg.ed.invalid", "seg.ed.json_error", "seg.ed.json_at", "seg.ed.json_check", "seg.ed.failed",
    "seg.ed.condition", "seg.ed.yuan_hint",
)  # fmt: skip


def _editor(
    request: Request[Any, Any, Any],
    *,
    segment: Segment | None,
    text: str,
    description: str,
    note: str,
    name: str = "",
    result: DraftResult | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:
    lang = context_of(request).lang
    labels = {key: translate(lang, key) for key in _EDITOR_LABELS}
    return render(
        request,
        "segments/editor.html",
        {
            "segment": segment,
            "text": text,
            "name": name,
            "description": description,
            "note": note,
            "result": result,
            "problem": problem,
            "config": editor_config(labels, lang),
        },
        title="seg.edit_title" if segment else "seg.new_title",
        status_code=status_code,
    )


class SegmentPages(ConsoleController):
    path = SEGMENTS

    @get("/", opt=page())
    async def list_page(self, request: Request[Any, Any, Any]) -> Response[str]:
        async with request.app.state.read_sessions() as session:
            rows = await service.list_segments(session)
        return render(request, "segments/list.html", {"rows": rows}, title="seg.title")

    @get("/new", opt=page())
    async def new_page(self, request: Request[Any, Any, Any]) -> Response[str]:
        return _editor(request, segment=None, text=json.dumps(STARTER, indent=2), description="", note="")

    @post("/preview", opt=action(*READ_ROLES), status_code=200)
    async def preview(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """The live count: the editor posts its tree as JSON ``{"definition": …}`` on every edit (money in
        yuan, converted to fen here)."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "definition" not in body:
            return Response(
                {"errors": [{"pointer": "", "detail": 'send {"definition": …}'}]}, status_code=400
            )
        try:
            definition = definition_to_fen(body["definition"])
        except InvalidSegment as exc:
            result = DraftResult(None, [], _problems(context_of(request).lang, exc.problems))
        else:
            async with request.app.state.read_sessions() as session:
                result = await count_draft(session, request, definition)
        return Response(
            {"count": result.count, "warnings": result.warnings, "errors": result.errors},
            status_code=200 if result.count is not None else 422,
            media_type=MediaType.JSON,
            headers={"Cache-Control": "no-store"},
        )

    @post("/check", opt=action(*READ_ROLES), status_code=200)
    async def check(self, request: Request[Any, Any, Any]) -> Response[str]:
        """The editor without JavaScript: count the draft in the form and show the editor again."""
        form = await form_fields(request)
        text = form.get("definition", "")
        segment_id = form.get("segment_id", "")
        async with request.app.state.read_sessions() as session:
            known = segment_id.isdigit() and 0 < int(segment_id) <= MAX_ID
            segment = await service.get_segment(session, int(segment_id)) if known else None
            try:
                result: DraftResult | None = await count_draft(session, request, parse_definition(text))
                problem = None
            except InvalidSegment as exc:  # an amount that is not one (money in yuan)
                result, problem = (
                    DraftResult(None, [], _problems(context_of(request).lang, exc.problems)),
                    None,
                )
            except BadRequest as exc:
                result, problem = None, problem_text(request, exc)
        return _editor(
            request, segment=segment, text=text, name=form.get("name", ""), description=form.get("description", ""),
            note=form.get("note", ""), result=result, problem=problem,
        )  # fmt: skip

    @post("/", opt=action(*WRITE_ROLES))
    async def create(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await form_fields(request)
        return await _save(request, form, segment=None)

    @get("/{segment_id:int}", opt=page())
    async def show(
        self,
        request: Request[Any, Any, Any],
        segment_id: PathId,
        after: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)] = None,
    ) -> Response[str]:
        async with request.app.state.read_sessions() as session:
            detail = await segment_detail(session, request, segment_id, after=after)
        lang = context_of(request).lang
        chart = daily_counts(detail.daily, label=translate(lang, "seg.chart_label", name=detail.segment.name))
        return render(
            request,
            "segments/detail.html",
            {
                "d": detail,
                "chart": chart,
                "definition_text": json_text(definition_to_yuan(detail.definition), 2),
                "json": json_text,
                "may_reveal": principal_of(request).role.value in REVEAL_ROLES,
            },
            title="seg.detail_title",
        )

    @get("/{segment_id:int}/edit", opt=page(*WRITE_ROLES))
    async def edit_page(self, request: Request[Any, Any, Any], segment_id: PathId) -> Response[str]:
        async with request.app.state.read_sessions() as session:
            segment = await service.get_segment(session, segment_id)
            definition = await service.current_definition(session, segment)
        text = json.dumps(definition_to_yuan(definition), ensure_ascii=False, indent=2)
        return _editor(request, segment=segment, text=text, description=segment.description, note="")

    @post("/{segment_id:int}", opt=action(*WRITE_ROLES))
    async def new_version(self, request: Request[Any, Any, Any], segment_id: PathId) -> Response[Any]:
        form = await form_fields(request)
        async with request.app.state.read_sessions() as session:
            segment = await service.get_segment(session, segment_id)
        return await _save(request, form, segment=segment)

    @get("/{segment_id:int}/why", opt=page())
    async def why(
        self,
        request: Request[Any, Any, Any],
        segment_id: PathId,
        member_id: Annotated[int, QueryParameter(ge=1, le=MAX_ID)],
    ) -> Response[str]:
        state = request.app.state
        async with state.read_sessions() as session:
            segment = await service.get_segment(session, segment_id)
            context = await service.load_context(session, state.host, utcnow())
            prepared = await service.prepared_segment(session, context, segment)
            explained = await service.why(session, context, prepared, member_id)
        return render(
            request,
            "segments/why.html",
            {
                "segment": segment,
                "member_id": member_id,
                "why": explained,
                "json": json_text,
                "shown": shown_value,
            },
            title="seg.why_title",
        )

    @get("/{segment_id:int}/export", opt=page())
    async def export(
        self,
        request: Request[Any, Any, Any],
        segment_id: PathId,
        reveal: Annotated[
            str | None,
            QueryParameter(description="`mobile` or `name` (either reveals both: admins; audited)"),
        ] = None,
    ) -> Stream:
        """The same CSV as ``GET /api/segments/{s}/export``, audited the same way (``segment.export``), behind a
        UTF-8 byte order mark so that spreadsheets read it as UTF-8."""
        # the console's download is opened by people in a spreadsheet, and Excel reads a CSV without a BOM in the
        # system's code page (GBK on a Chinese Windows): every name was mojibake. The API's CSV has none.
        state = request.app.state
        actor = actor_of(request)
        revealing = check_reveal([f.strip() for f in (reveal or "").split(",") if f.strip()], actor)
        export = await service.start_export(
            state.sessions, state.read_sessions, state.host, state.vault, actor, segment_id, reveal=revealing
        )
        return Stream(
            _with_bom(export.body),
            media_type="text/csv",  # litestar adds "; charset=utf-8" to a text/* type
            headers={
                "Content-Disposition": f'attachment; filename="{export.filename}"',
                "X-Total-Count": str(export.total),
                "Cache-Control": "no-store",
            },
        )


async def _with_bom(body: AsyncIterator[str]) -> AsyncIterator[str]:
    """``body`` after a UTF-8 byte order mark (U+FEFF), which spreadsheets take as "this file is UTF-8"."""
    yield "\ufeff"
    async for chunk in body:
        yield chunk


async def _save(
    request: Request[Any, Any, Any], form: dict[str, str], *, segment: Segment | None
) -> Response[Any]:
    """Save a new segment or its next version (audited by the service); a refusal shows the editor again with
    what is wrong, the draft kept."""
    state = request.app.state
    text = form.get("definition", "")
    name = segment.name if segment else form.get("name", "").strip()
    description = form.get("description", "")
    note = form.get("note", "")
    try:
        definition = parse_definition(text)
        async with transaction(state.sessions) as session:
            context = await service.load_context(session, state.host, utcnow())
            saved = await service.save(
                session, context, name, definition, actor_of(request),
                description=description, note=note, create=segment is None,
            )  # fmt: skip
            saved_id = saved.id
    except InvalidSegment as exc:
        result = DraftResult(None, [], _problems(context_of(request).lang, exc.problems))
        return _editor(
            request, segment=segment, text=text, name=name, description=description, note=note, result=result,
            status_code=422,
        )  # fmt: skip
    except TongcrmError as exc:
        if exc.status_code >= 500 or isinstance(exc, Forbidden):
            raise
        return _editor(
            request, segment=segment, text=text, name=name, description=description, note=note,
            problem=problem_text(request, exc), status_code=exc.status_code,
        )  # fmt: skip
    return redirect(request, f"{SEGMENTS}/{saved_id}?saved=1")
