"""Admin pages: the audit log (filters, keyset pages) and API keys (list, create shown once, revoke), through
the same services as ``/api/audit`` and ``/api/api-keys``, so console actions are audited as API calls are."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import QueryParameter

from tongcrm.api.inputs import MAX_ID, PathId
from tongcrm.audit.service import AuditQuery, search
from tongcrm.auth import audited
from tongcrm.auth import service as keys
from tongcrm.auth.service import Role
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
from tongcrm.errors import BadRequest, Conflict, Forbidden, TongcrmError

AUDIT_PAGE = 50
Text = Annotated[str | None, QueryParameter(max_length=64)]


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


class AuditPage(ConsoleController):
    path = PREFIX + "/audit"

    @get("/", opt=page(Role.ADMIN))
    async def index(
        self,
        request: Request[Any, Any, Any],
        action: Text = None,
        object_type: Text = None,
        object_id: Text = None,
        before: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)] = None,
    ) -> Response[str]:
        query = AuditQuery(action or None, object_type or None, object_id or None, None, before, AUDIT_PAGE)
        async with request.app.state.read_sessions() as session, session.begin():
            rows = await search(session, query)
        filters = {"action": action or "", "object_type": object_type or "", "object_id": object_id or ""}
        more = rows[-1].id if len(rows) == AUDIT_PAGE else None
        return render(
            request, "audit.html", {"rows": rows, "filters": filters, "more": more}, title="audit.title"
        )


class KeyPages(ConsoleController):
    path = PREFIX + "/keys"

    @get("/", opt=page(Role.ADMIN))
    async def index(self, request: Request[Any, Any, Any]) -> Response[str]:
        return await _keys_page(request, created=None)

    @post("/", opt=action(Role.ADMIN))
    async def create(self, request: Request[Any, Any, Any]) -> Response[str]:
        """Create a key and show it in this answer only (never in a URL, never again)."""
        form = await request.form()
        role, store, label = _field(form, "role"), _field(form, "store_code"), _field(form, "label")
        typed = {"role": role, "store_code": store, "label": label}
        try:
            if len(store) > 64 or len(label) > 200:
                raise BadRequest("store code at most 64 characters, label at most 200")
            async with request.app.state.sessions() as session, session.begin():
                created, _ = await audited.create(
                    session,
                    actor_of(request),
                    role,
                    host=request.app.state.host,
                    store_code=store or None,
                    label=label,
                )
        except TongcrmError as exc:
            # a refusal (a store for a role that has none, a store tongcrm does not know) is the page again
            # with the reason above the form as typed, not the bare error page that loses what was typed
            if not 400 <= exc.status_code < 500 or isinstance(exc, Forbidden):
                raise
            return await _keys_page(
                request,
                created=None,
                problem=problem_text(request, exc),
                typed=typed,
                status_code=exc.status_code,
            )
        return await _keys_page(request, created=created.key)

    @post("/{key_id:int}/revoke", opt=action(Role.ADMIN))
    async def revoke(self, request: Request[Any, Any, Any], key_id: PathId) -> Response[Any]:
        try:
            async with request.app.state.sessions() as session, session.begin():
                await audited.revoke(session, actor_of(request), key_id, keep_an_admin=True)
        except Conflict as exc:  # the last live admin key: the keys page again, saying why
            return await _keys_page(
                request, created=None, problem=problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, PREFIX + "/keys")


async def _keys_page(
    request: Request[Any, Any, Any],
    *,
    created: str | None,
    problem: str | None = None,
    typed: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[str]:
    async with request.app.state.read_sessions() as session, session.begin():
        rows = await keys.list_keys(session)
    return render(
        request,
        "keys.html",
        {
            "rows": rows,
            "created": created,
            "roles": [r.value for r in Role],
            "problem": problem,
            "typed": typed or {},
        },
        title="keys.title",
        status_code=status_code,
    )
