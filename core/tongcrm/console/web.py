"""The console's framework: session guard, CSRF, roles, language, rendering, navigation.

How a page is added (see docs/console.md): write a :class:`ConsoleController` subclass whose handlers carry
``opt=page(*roles)`` (a read) or ``opt=action(*roles)`` (a state-changing POST: CSRF-checked), return
:func:`render` of a template that extends ``base.html``, list the controller in
:data:`tongcrm.console.pages.PAGES` and, for a menu entry, a :class:`NavItem` in :data:`tongcrm.console.pages.NAV`.

Console routes authenticate with the session cookie, not the bearer header: the app treats ``/console`` as a
public prefix for its API-key hook (:func:`tongcrm.api.security.authorize`), and :func:`console_guard` checks
the session, the role and the CSRF token of every console route instead. :func:`check_console_routes` refuses
to build an app with a ``/console`` route that skips the guard, as the API's own check does for API routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import jinja2
from litestar import Controller, MediaType, Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Redirect
from litestar.routes import BaseRoute
from litestar.status_codes import HTTP_303_SEE_OTHER
from litestar.types import ExceptionHandlersMap

from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.console import sessions
from tongcrm.console.i18n import CATALOGS, DEFAULT_LANG, translate
from tongcrm.console.ledger_zh import explain_zh
from tongcrm.console.problems import explain, run_reason
from tongcrm.errors import ConfigError, TongcrmError
from tongcrm.points.schemas import EntryOut

PREFIX = "/console"
SESSION_COOKIE = "tongcrm_console"
LANG_COOKIE = "tongcrm_lang"
#: The sign-in form's double-submit cookie (there is no session yet to tie its CSRF token to).
SIGN_IN_CSRF_COOKIE = "tongcrm_console_signin"
#: The form field (or ``X-CSRF-Token`` header) every state-changing console request carries.
CSRF_FIELD = "csrf_token"

#: The ``opt`` key naming who may open a console route (a frozenset of roles), or :data:`PUBLIC`.
CONSOLE_OPT = "tongcrm_console"
#: The ``opt`` key of a state-changing console route (its CSRF token is checked).
ACTION_OPT = "tongcrm_console_action"
PUBLIC = "public"
#: Scope key of the request's :class:`ConsoleContext`.
_CONTEXT = "tongcrm_console_context"

READ_ROLES = (Role.ADMIN, Role.OPERATOR, Role.ANALYST)
WRITE_ROLES = (Role.ADMIN, Role.OPERATOR)


def page(*roles: Role) -> dict[str, Any]:
    """``opt`` of a console page (GET) the given roles may open (default: every console role)."""
    return {CONSOLE_OPT: frozenset(roles or READ_ROLES)}


def action(*roles: Role) -> dict[str, Any]:
    """``opt`` of a state-changing console POST (default: admins and operators; analysts never write). The
    guard refuses it (403) without the session's CSRF token or from another origin."""
    return {CONSOLE_OPT: frozenset(roles or WRITE_ROLES), ACTION_OPT: True}


def public_page(*, is_action: bool = False) -> dict[str, Any]:
    """``opt`` of a console route open without a session (sign-in, static files)."""
    return {CONSOLE_OPT: PUBLIC, ACTION_OPT: is_action}


@dataclass(frozen=True, slots=True)
class NavItem:
    """A menu entry: a catalog key for its label, where it goes and who sees it."""

    label: str
    href: str
    roles: frozenset[Role] = field(default_factory=lambda: frozenset(READ_ROLES))


@dataclass(slots=True)
class ConsoleContext:
    """What a console request knows about its caller, set by :func:`console_guard`."""

    lang: str
    set_lang: bool
    principal: Principal | None = None
    session: sessions.ActiveSession | None = None

    def may(self, *roles: Role) -> bool:
        return self.principal is not None and self.principal.role in (roles or WRITE_ROLES)


def actor_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Actor:
    """The signed-in operator as the services' :class:`~tongcrm.audit.service.Actor` (audit records name the
    API key the session was opened with, as they do for API calls)."""
    principal = context_of(connection).principal
    if principal is None:
        raise SignInRequired("sign in to the console")
    return Actor.of(principal)


class CsrfRefused(PermissionDeniedException):
    """A forged or stale state-changing request (403)."""


class SignInRequired(NotAuthorizedException):
    """No live session: pages send the browser to the sign-in page, posts get a 401."""


def _lang_of(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[str, bool]:
    asked = connection.query_params.get("lang")
    if asked in CATALOGS:
        return str(asked), True
    cookie = connection.cookies.get(LANG_COOKIE, "")
    return (cookie if cookie in CATALOGS else DEFAULT_LANG), False


def _same_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """A browser names the page a POST came from (Origin, else Referer); when it does, it must be this host."""
    headers = connection.headers
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return source is None
    return urlsplit(source).netloc == headers.get("host", "")


def _cross_site_reveal(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """A ``?reveal=`` link followed from another site. The session cookie is ``SameSite=Lax``, so such a
    navigation carries it: without this check another site could make an admin's browser reveal, and so audit,
    personal data. Browsers name where a navigation came from (``Sec-Fetch-Site``); one that names none (an old
    browser, a script) is judged by Referer like a POST."""
    if "reveal" not in connection.query_params:
        return False
    site = connection.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    return not _same_origin(connection)


def context_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ConsoleContext:
    found = connection.state.get(_CONTEXT)
    if not isinstance(found, ConsoleContext):
        raise ConfigError("a console route ran without console_guard")
    return found


async def console_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Every console route: language, then (unless public) the session, the role and, for actions, the
    CSRF token and origin."""
    spec = handler.opt.get(CONSOLE_OPT)
    if spec is None:
        raise ConfigError(
            f"console route {handler.handler_name} names no roles: use page(), action() or public_page()"
        )
    lang, set_lang = _lang_of(connection)
    context = ConsoleContext(lang, set_lang)
    connection.state[_CONTEXT] = context
    is_action = bool(handler.opt.get(ACTION_OPT))
    if (is_action and not _same_origin(connection)) or _cross_site_reveal(connection):
        raise CsrfRefused("cross-origin request refused")
    if spec == PUBLIC:
        return
    token = connection.cookies.get(SESSION_COOKIE, "")
    active = await sessions.resume(connection.app.state.sessions, token) if token else None
    if active is None:
        raise SignInRequired("sign in to the console")
    context.principal = active.principal
    context.session = active
    connection.scope["user"] = active.principal
    if active.principal.role not in spec:
        names = ", ".join(sorted(r.value for r in spec))
        raise PermissionDeniedException(
            f"role {active.principal.role.value!r} may not do this (needs one of: {names})"
        )
    if is_action:
        given = connection.headers.get("x-csrf-token")
        if given is None and isinstance(connection, Request):
            form = await connection.form()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
        if not sessions.same_token(active.csrf_token, given):
            raise CsrfRefused("missing or wrong CSRF token")


class ConsoleController(Controller):
    """Base of console page controllers: guarded, out of the OpenAPI document (the console is not API)."""

    guards = [console_guard]
    include_in_schema = False


# -------------------------------------------------------------------------------------------------------------
# rendering

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("tongcrm.console", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_NAV: list[NavItem] = []
_TZ = ZoneInfo("Asia/Shanghai")


def set_nav(items: Iterable[NavItem]) -> None:
    _NAV[:] = list(items)


def yuan(fen: int | None) -> str:
    """Integer fen as ``¥1,234.50`` (no float on the way)."""
    if fen is None:
        return ""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"


def local_time(value: datetime | None) -> str:
    """An aware UTC time in the programme's zone, to the minute."""
    if value is None:
        return ""
    return value.astimezone(_TZ).strftime("%Y-%m-%d %H:%M")


_env.filters["yuan"] = yuan


def json_text(value: object) -> str:
    """A record's JSON as an operator reads it: Chinese as Chinese, not ``\\u674e`` escapes (Jinja's ``tojson``
    escapes every non-ASCII character, for a ``<script>``). Only for text in the page, which autoescape escapes."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


_env.filters["json_text"] = json_text


def entry_text(entry: EntryOut, lang: str) -> str:
    """A ledger entry's explanation in ``lang`` (the service's English one, or :mod:`tongcrm.console.ledger_zh`)."""
    return explain_zh(entry) if lang == "zh" else entry.explanation


_env.globals["entry_text"] = entry_text


def run_reason_text(run: Any, lang: str) -> str:
    """A campaign run's refusal reason in ``lang`` (its stored code in Chinese, the API's English sentence)."""
    return run_reason(lang, run.reason or "", run.reason_code or "", run.reason_params)


_env.globals["run_reason"] = run_reason_text
_env.filters["local"] = local_time


def render(
    request: Request[Any, Any, Any],
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    title: str | None = None,
) -> Response[str]:
    """A page: ``template`` (extending ``base.html``) with the labels, the caller, the CSRF token, the menu and
    ``context``. ``title`` is a catalog key."""
    console = context_of(request)
    lang = console.lang

    def t(key: str, **values: object) -> str:
        return translate(lang, key, **values)

    def label(group: str, code: str | None) -> str:
        """A stored code (a lifecycle stage, a tier change's reason) in the page's language where the catalog
        names it, else the code as stored (a code a plugin or a later version adds still shows)."""
        if code is None:
            return ""
        key = f"{group}.{code}"
        return translate(lang, key) if key in CATALOGS[lang] else code

    def channel_name(code: str | None) -> str:
        """A channel's code (``taobao``) as its plugin names it in the page's language (淘宝 / 天猫), else the
        code (a plugin no longer installed)."""
        if not code:
            return ""
        host = getattr(request.app.state, "host", None)
        spec = host.channels().get(code) if host is not None else None
        return spec.display_name_in(lang) if spec is not None else code

    def identity_kind(code: str) -> str:
        """An identity's kind (``taobao.open_uid``) as its plugin names it in the page's language (淘宝买家
        open_uid), else the kind as stored (a plugin no longer installed)."""
        host = getattr(request.app.state, "host", None)
        spec = host.identity_kinds().get(code) if host is not None else None
        return spec.label_in(lang) if spec is not None else code

    principal = console.principal
    nav = [n for n in _NAV if principal is not None and principal.role in n.roles]
    html = _env.get_template(template).render(
        {
            "t": t,
            "label": label,
            "channel_name": channel_name,
            "identity_kind": identity_kind,
            "lang": lang,
            "langs": sorted(CATALOGS),
            "principal": principal,
            "csrf_token": console.session.csrf_token if console.session else "",
            "csrf_field": CSRF_FIELD,
            "can_write": console.may(*WRITE_ROLES),
            "is_admin": console.may(Role.ADMIN),
            "nav": nav,
            "path": request.url.path,
            "title_key": title,
            "request": request,
            **(context or {}),
        }
    )
    response = Response(html, media_type=MediaType.HTML, status_code=status_code)
    _finish(request, response)
    return response


def _finish(request: Request[Any, Any, Any], response: Response[Any]) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    context = request.state.get(_CONTEXT)
    if isinstance(context, ConsoleContext) and context.set_lang:
        response.set_cookie(cookie(request, LANG_COOKIE, context.lang, max_age=365 * 86400, http_only=False))


def cookie(
    request: Request[Any, Any, Any],
    key: str,
    value: str,
    *,
    max_age: int | None = None,
    http_only: bool = True,
) -> Cookie:
    """A console cookie: Path=/console, SameSite=Lax, HttpOnly, Secure when the request came over https."""
    return Cookie(
        key=key,
        value=value,
        path=PREFIX,
        max_age=max_age,
        httponly=http_only,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def redirect(request: Request[Any, Any, Any], to: str) -> Redirect:
    """A 303 to another console page (after a POST, so a reload does not post again)."""
    response = Redirect(to, status_code=HTTP_303_SEE_OTHER)
    _finish(request, response)
    return response


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


# -------------------------------------------------------------------------------------------------------------
# errors: console routes answer pages, not problem documents


def problem_text(request: Request[Any, Any, Any], exc: TongcrmError) -> str:
    """A refusal as this request's page shows it: in its language (:mod:`tongcrm.console.problems`), a NUL the
    refused value carried shown as ␀ (a browser turns a raw one into U+FFFD, or drops it)."""
    return explain(context_of(request).lang, exc).replace("\x00", "\u2400")


def _error_page(request: Request[Any, Any, Any], status: int, message: str) -> Response[Any]:
    if request.state.get(_CONTEXT) is None:
        lang, set_lang = _lang_of(request)
        request.state[_CONTEXT] = ConsoleContext(lang, set_lang)
    if status == 401 and request.method in {"GET", "HEAD"}:
        return redirect(request, f"{PREFIX}/sign-in?next={quote(request.url.path)}")
    key = {403: "error.403", 404: "error.404"}.get(status)
    context = context_of(request)
    if isinstance(_pending_exc(request), CsrfRefused):
        key = "error.csrf"
    shown = translate(context.lang, key) if key else message
    return render(
        request,
        "error.html",
        {"status": status, "message": shown, "detail": message},
        status_code=status,
        title="app.error",
    )


def _pending_exc(request: Request[Any, Any, Any]) -> Exception | None:
    found = request.state.get("tongcrm_console_exc")
    return found if isinstance(found, Exception) else None


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    request.state["tongcrm_console_exc"] = exc
    return _error_page(request, exc.status_code, exc.detail)


def _on_domain(request: Request[Any, Any, Any], exc: TongcrmError) -> Response[Any]:
    request.state["tongcrm_console_exc"] = exc
    status = exc.status_code if exc.status_code < 500 else 500
    if request.state.get(_CONTEXT) is None:
        lang, set_lang = _lang_of(request)
        request.state[_CONTEXT] = ConsoleContext(lang, set_lang)
    return _error_page(request, status, problem_text(request, exc))


exception_handlers: ExceptionHandlersMap = {HTTPException: _on_http, TongcrmError: _on_domain}


def pages_for_unrouted(
    api_handler: Callable[[Request[Any, Any, Any], HTTPException], Response[Any]],
) -> Callable[[Request[Any, Any, Any], HTTPException], Response[Any]]:
    """The app's handler of HTTP errors, except for a console path no route matches (``/console/segments/vip``:
    segments are opened by id; a stale bookmark; a typo), which gets the console's error page in the reader's
    language instead of the API's JSON problem: no console handler ran, so the console router's own handlers
    never saw it. Everything else, and the static files' "no such file", stays the API's."""

    def handle(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        path = request.scope["path"]
        unrouted = request.scope.get("route_handler") is None
        if unrouted and exc.status_code == 404 and (path == PREFIX or path.startswith(PREFIX + "/")):
            request.state["tongcrm_console_exc"] = exc
            return _error_page(request, 404, "")  # the router's "Not Found" adds nothing to the page's words
        return api_handler(request, exc)

    return handle


def check_console_routes(routes: Iterable[BaseRoute]) -> None:
    """Refuse an app with a ``/console`` route that the console guard does not cover (it would be open to
    anyone, since the API-key hook leaves ``/console`` to the console)."""
    open_routes = [
        f"{route.path} ({handler.handler_name})"
        for route in routes
        if route.path == PREFIX or route.path.startswith(PREFIX + "/")
        for handler in getattr(route, "route_handlers", ())
        if set(getattr(handler, "http_methods", ())) != {"OPTIONS"}
        and (console_guard not in handler.resolve_guards() or handler.opt.get(CONSOLE_OPT) is None)
    ]
    if open_routes:
        raise ConfigError(
            "console routes without console_guard and page()/action(): " + "; ".join(sorted(open_routes))
        )
