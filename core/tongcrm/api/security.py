"""API-key authentication and role checks.

Every route requires ``Authorization: Bearer <key>`` except ``/health``, ``/schema*`` and the paths a plugin
declares public (it then authenticates the caller itself, e.g. by a platform signature).

Till keys (role ``pos``) are kept to the till API of their channel, structurally rather than route by route: a
route either admits tills alone or no tills at all (:func:`requires` refuses a mix), and the app refuses to
start with a till route outside ``/pos/`` (:func:`check_route_access`), the namespace of till APIs (a channel
mounts its own there, e.g. ``/pos/v1``), so the admin API under ``/api`` never admits one. A till key is scoped
to one store, while the admin API is brand-wide (any member's statement, redemptions, unmasked lookups); a till
that could reach it would be a key to every store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.routes import BaseRoute
from litestar.types import Scope

from tongcrm.api.inputs import reject_unknown_query
from tongcrm.auth.service import KeyVerifier, Principal, Role
from tongcrm.errors import ConfigError

PUBLIC_PATHS = ("/health", "/schema")
#: Where till APIs live: only routes under it may admit till keys (so none of the admin API under /api does).
TILL_API_PREFIX = "/pos"

READ_ROLES = (Role.ADMIN, Role.OPERATOR, Role.ANALYST)
WRITE_ROLES = (Role.ADMIN, Role.OPERATOR)


#: The ``opt`` key of a handler that confirms its caller's key itself (see :func:`confirms_key_itself`).
CONFIRMS_KEY_OPT = "tongcrm_confirms_key"
#: Scope key: the cached key (:class:`~tongcrm.auth.service.CachedKey`: the revocation counter it was trusted
#: under), still to be confirmed by the handler.
_UNCONFIRMED = "tongcrm_unconfirmed_key_generation"


def confirms_key_itself() -> dict[str, bool]:
    """``opt`` of a hot read that reads the API keys' revocation counter in its own statement
    (:data:`tongcrm.auth.service.GENERATION_COLUMN`) and calls :func:`confirm_key` with it before it answers,
    on every path, errors included: :func:`authenticate` then trusts a cached key without a round trip of its
    own. Checked by ``core/tests/test_api_keys.py`` (a key revoked elsewhere is refused at the next request)."""
    return {CONFIRMS_KEY_OPT: True}


async def confirm_key(connection: ASGIConnection[Any, Any, Any, Any], generation: int | None) -> None:
    """For a handler with :func:`confirms_key_itself`: confirm the caller's key under the revocation counter
    read after the request arrived (``None``: read it now); 401 when it was revoked meanwhile."""
    seen = connection.scope.pop(_UNCONFIRMED, None)  # type: ignore[misc]
    if seen is None:
        return
    verifier: KeyVerifier = connection.app.state.key_verifier
    if await verifier.confirm(_bearer(connection), seen, generation) is None:
        connection.scope.pop("user", None)  # type: ignore[misc]
        raise NotAuthorizedException("unknown or revoked API key")


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    # read from the raw headers: building litestar's Headers for one lookup cost more than checking the key
    header = next((v.decode("latin-1") for k, v in connection.scope["headers"] if k == b"authorization"), "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthorizedException("malformed Authorization header: expected 'Bearer <key>'")
    return key.strip()


async def authenticate(
    connection: ASGIConnection[Any, Any, Any, Any], *, deferred: bool = False
) -> Principal:
    """The caller's :class:`Principal` from its bearer key (401 when there is none or it is not valid).

    ``deferred``: the handler confirms the key itself (:func:`confirms_key_itself`), so a key cached within its
    TTL is trusted here under the revocation counter it was read with, left for :func:`confirm_key`."""
    user = connection.scope.get("user")
    if isinstance(user, Principal):
        return user
    key = _bearer(connection)
    verifier: KeyVerifier = connection.app.state.key_verifier
    if deferred:
        cached = verifier.cached(key)
        if cached is not None:
            connection.scope[_UNCONFIRMED] = cached  # type: ignore[literal-required]
            connection.scope["user"] = cached.principal
            return cached.principal
    principal = await verifier.verify(key)
    if principal is None:
        raise NotAuthorizedException("unknown or revoked API key")
    connection.scope["user"] = principal
    return principal


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise NotAuthorizedException("not authenticated")
    return user


#: The ``opt`` key of a route handler that names the roles allowed to call it (see :func:`requires`).
ROLES_OPT = "tongcrm_roles"


def requires(*roles: Role) -> dict[str, frozenset[Role]]:
    """Who may call a route: ``@get(..., opt=requires(Role.ADMIN, Role.OPERATOR))`` (or a controller's ``opt``).

    :func:`authorize`, the app's ``before_request`` hook, then answers 401 without a valid key and 403 for other
    roles. Roles are handler options rather than a guard because litestar copies the whole route handler for
    every guard it calls, which cost an authenticated lookup more than its database read did. That no route is
    left open by forgetting this is checked when the app is built (:func:`check_route_access`).
    """
    if not roles:
        raise ValueError("requires() needs at least one role")
    if Role.POS in roles and len(set(roles)) > 1:
        raise ValueError(
            "a route admits till keys (pos) alone or not at all: a till route is scoped to the till's store, "
            "an admin route is not"
        )
    return {ROLES_OPT: frozenset(roles)}


#: The ``opt`` key of a route's limit on its callers (see :func:`limited_by`).
LIMIT_OPT = "tongcrm_limit"


def limited_by(check: Callable[[Principal], None]) -> dict[str, Callable[[Principal], None]]:
    """A limit on a route's callers (``opt=limited_by(check)`` on a handler, controller or router):
    :func:`authorize` calls ``check(principal)`` once the caller's key and role passed, before anything else
    of the request is read; ``check`` raises to refuse the request (a rate limit's 429). Not a guard, because
    litestar copies the whole route handler for every guard it calls (see :func:`requires`); and run after the
    role check, so a key of another role is refused for its role, never counted against the limit. A hot
    answer of the route (:mod:`tongcrm.api.hot`) runs it too, and a request is counted once whichever path
    serves it (:func:`take_limit`)."""
    return {LIMIT_OPT: check}


#: Scope key: the outcome of the route's limit, once taken for the request (None: passed; else the exception
#: that refused it), so that a request a hot answer counted and left to the route is not counted again.
_LIMIT_TAKEN = "tongcrm_limit_taken"
#: Scope key: what a hot answer's work raised, for the route to answer (see :func:`hand_over`).
_HANDED_OVER = "tongcrm_handed_over"


def take_limit(scope: Scope, check: Callable[[Principal], None], principal: Principal) -> None:
    """Run a route's limit on its callers once for the request: the first run (a hot answer's, see
    :mod:`tongcrm.api.hot`, or :func:`authorize`'s) counts it and keeps its outcome in the scope; a later one
    repeats that outcome — the same refusal, or nothing — without counting the request again."""
    if _LIMIT_TAKEN in scope:
        refused = scope[_LIMIT_TAKEN]  # type: ignore[literal-required]
        if refused is not None:
            raise refused
        return
    try:
        check(principal)
    except Exception as exc:
        scope[_LIMIT_TAKEN] = exc  # type: ignore[literal-required]
        raise
    scope[_LIMIT_TAKEN] = None  # type: ignore[literal-required]


def hand_over(scope: Scope, exc: Exception) -> None:
    """For a hot answer whose work (a unit of work, which may have written) raised ``exc``: let the route answer
    it rather than run the work again. :func:`authorize` raises it once the caller passed, so litestar writes the
    problem response the route's handler would have written had it raised ``exc`` itself."""
    scope[_HANDED_OVER] = exc  # type: ignore[literal-required]


async def authorize(request: Request[Any, Any, Any]) -> None:
    """Before every handler: authenticate the caller and check its role, when the route names roles, and its
    limit (:func:`limited_by`, counted once per request: :func:`take_limit`); then refuse query parameters the
    route does not read (see :mod:`tongcrm.api.inputs`), and raise what a hot answer handed over
    (:func:`hand_over`)."""
    principal = await check_access(request, request.route_handler)
    if principal is not None:
        limit = request.route_handler.opt.get(LIMIT_OPT)
        if limit is not None:
            take_limit(request.scope, limit, principal)
        reject_unknown_query(request)
        handed = request.scope.pop(_HANDED_OVER, None)  # type: ignore[misc]
        if handed is not None:
            raise handed


async def check_access(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> Principal | None:
    """Authenticate the caller and check its role against ``handler``'s (None for a public route).

    :func:`authorize` calls it before every handler; a guard that must know the caller (e.g. a rate limit per
    key) calls it first, since litestar runs guards before the ``before_request`` hook: a key of another role
    is then refused for its role, never counted against a limit meant for the keys the route admits.
    """
    roles: frozenset[Role] | None = handler.opt.get(ROLES_OPT)
    if roles is None:  # a public path (check_route_access made sure of it)
        return None
    principal = await authenticate(connection, deferred=bool(handler.opt.get(CONFIRMS_KEY_OPT)))
    if principal.role not in roles:
        names = ", ".join(sorted(r.value for r in roles))
        raise PermissionDeniedException(
            f"role {principal.role.value!r} may not do this (needs one of: {names})"
        )
    return principal


def is_public(path: str, public: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in public)


def check_route_access(
    routes: Iterable[BaseRoute], extra_public: Iterable[str] = (), *, exact_public: Iterable[str] = ()
) -> None:
    """Refuse to build an app with a route that is neither public nor protected by :func:`requires`.

    A plugin route that names no roles, or that replaces the app's ``before_request`` hook with its own,
    would be open to anyone, and one outside ``/pos/`` that admits till keys (say under ``/api``) would give a
    store's till more than its till API; failing at start names it instead. ``exact_public`` are paths public
    themselves but not below them (``/``, which redirects to the console). Handlers of OPTIONS alone (litestar answers
    those itself with the allowed methods) need neither.
    """
    public = (*PUBLIC_PATHS, *extra_public)
    exact = set(exact_public)
    handlers = [
        (route.path, handler)
        for route in routes
        if not is_public(route.path, public) and route.path not in exact
        for handler in getattr(route, "route_handlers", ())
        if set(getattr(handler, "http_methods", ())) != {"OPTIONS"}
    ]

    def name(path: str, handler: Any) -> str:
        return f"{', '.join(sorted(getattr(handler, 'http_methods', ()) or ('*',)))} {path} ({handler.handler_name})"

    problems = (
        [
            f"{name(path, h)} names no roles: add opt=requires(...), or list the path among the plugin's public "
            "paths if it authenticates callers itself"
            for path, h in handlers
            if not h.opt.get(ROLES_OPT)
        ]
        + [
            f"{name(path, h)} replaces the app's before_request hook, which checks API keys and roles"
            for path, h in handlers
            if h.resolve_before_request() is not authorize
        ]
        + [
            f"{name(path, h)} admits till keys (pos) outside {TILL_API_PREFIX}/: tills work through their "
            f"channel's till API, mounted under {TILL_API_PREFIX}/"
            for path, h in handlers
            if Role.POS in h.opt.get(ROLES_OPT, ()) and not path.startswith(TILL_API_PREFIX + "/")
        ]
    )
    if problems:
        raise ConfigError("routes open to anyone: " + "; ".join(sorted(problems)))
