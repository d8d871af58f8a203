"""Hot routes: the few reads called often enough that litestar's per-request machinery is most of their cost,
answered by the app's outermost ASGI layer (:mod:`tongcrm.api.middleware`) before litestar sees the request —
but only in the plain case, and only as the litestar route itself would answer it.

A hot route is a litestar route like any other (documented in the OpenAPI, reachable, tested), plus a
:data:`HotAnswer` for its path: a function of the request's scope that returns the response for the plain case
(a cached key of an admitted role, the usual query, a found row) or ``None``, and then litestar serves the
request through the route, which checks the key, refuses bad input and writes the problem response. The answer
must have no side effect that the route's own answer would not have had, so that falling through after part of
the work is always correct.

What the shortcut skips is exactly what litestar would have run around the handler: routing (done here by exact
path), the request object, the keyword-argument and signature models and the ``before_request`` hook. So the
route must not rely on anything else litestar would run: :func:`hot_routes` refuses to build the app when a hot
route has guards, middleware, dependencies, ``after_request``/``after_response`` hooks, another
``before_request`` than :func:`tongcrm.api.security.authorize` or a limit on its callers
(:func:`tongcrm.api.security.limited_by`: the answer would skip it), or does not confirm its caller's key itself
(:func:`tongcrm.api.security.confirms_key_itself`), and it hands the answer the roles the route admits.
Nor may the route rely on what litestar applies around it from other layers or the app: layered response
headers or cookies (``cache_control`` and ``etag`` included), a response cache, the app's ``before_send`` hooks
(they do see a hot answer's messages, but with a scope that names no route handler), and the middleware the
app's config puts around the router or every route (CORS, CSRF, compression, allowed hosts, OpenTelemetry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from litestar import Litestar
from litestar._asgi.utils import is_valid_host
from litestar.response.base import ASGIResponse
from litestar.routes import HTTPRoute
from litestar.types import Scope

from tongcrm.api.security import CONFIRMS_KEY_OPT, LIMIT_OPT, ROLES_OPT, authorize
from tongcrm.auth.service import Role
from tongcrm.errors import ConfigError

#: The answer of a hot route: the response for the plain case, or None to let litestar serve the request.
HotAnswer = Callable[[Scope], Awaitable[ASGIResponse | None]]
#: Builds a route's :data:`HotAnswer` from the app and the roles its route admits.
HotRoute = Callable[[Litestar, frozenset[Role]], HotAnswer]


def hot_routes(app: Litestar, routes: Mapping[str, HotRoute]) -> dict[str, HotAnswer]:
    """The answers of ``routes`` (path → builder) for ``app``; :class:`ConfigError` when a path's GET route is
    missing or relies on more than the shortcut keeps (see the module's doc)."""
    answers: dict[str, HotAnswer] = {}
    for path, build in routes.items():
        handler = next(
            (
                h
                for route in app.routes
                if isinstance(route, HTTPRoute) and route.path == path
                for h in route.route_handlers
                if "GET" in h.http_methods
            ),
            None,
        )
        if handler is None:
            raise ConfigError(f"hot route {path}: the app has no GET route at this path")
        problems = [
            what
            for what, bad in (
                ("guards", bool(handler.resolve_guards())),
                ("middleware", bool(handler.resolve_middleware())),
                (
                    "dependencies",
                    bool(handler.parsed_fn_signature.parameters.keys() & handler.resolve_dependencies()),
                ),
                ("after_request", any(layer.after_request for layer in handler.ownership_layers)),
                ("after_response", handler.resolve_after_response() is not None),
                ("a before_request other than authorize", handler.resolve_before_request() is not authorize),
                ("no confirms_key_itself()", not handler.opt.get(CONFIRMS_KEY_OPT)),
                ("no roles", not handler.opt.get(ROLES_OPT)),
                ("a limit on its callers", handler.opt.get(LIMIT_OPT) is not None),
                (
                    "response headers or cookies",
                    bool(handler.resolve_response_headers() or handler.resolve_response_cookies()),
                ),
                ("a response cache", bool(handler.cache)),
                *_app_wide(app),
            )
            if bad
        ]
        if problems:
            raise ConfigError(f"hot route {path} cannot be answered outside litestar: {', '.join(problems)}")
        answers[path] = build(app, handler.opt[ROLES_OPT])
    return answers


def _app_wide(app: Litestar) -> list[tuple[str, bool]]:
    """What ``app`` applies to every route outside the route's own layers (see the module's doc)."""
    return [
        # run on a hot answer's messages too (they wrap the send the app's ASGI handler gets), but with a scope
        # that has no route handler or path parameters in it: a hook may read them
        ("app before_send hooks", bool(app.before_send)),
        # the middleware litestar puts around its router or around every route from the app's config
        ("CORS", app.cors_config is not None),
        ("CSRF", app.csrf_config is not None),
        ("compression", app.compression_config is not None),
        ("allowed hosts", bool(app.allowed_hosts)),
        ("OpenTelemetry", "OpenTelemetryPlugin" in {type(p).__name__ for p in app.plugins}),
    ]


def only_query(scope: Scope, names: frozenset[str]) -> tuple[str, str] | None:
    """The request's one query parameter as litestar decodes it, when it is one of ``names``, given once and
    without a NUL character, and the request's Host header is one litestar accepts; otherwise None."""
    host = _header(scope, b"host")
    if host is not None and not is_valid_host(host):
        return None
    query = scope["query_string"].decode("latin-1")
    if "&" in query or "%" in query or "+" in query:
        pairs = parse_qsl(query, keep_blank_values=True, separator="&")
        if len(pairs) != 1:
            return None
        name, value = pairs[0]
    elif query:
        # one parameter and nothing to unquote: what parse_qsl answers, without its cost (a tenth of the lookup's)
        name, _, value = query.partition("=")
    else:
        return None
    if name not in names or "\x00" in value:
        return None
    return name, value


def bearer(scope: Scope) -> str | None:
    """The key of a well-formed ``Authorization: Bearer <key>`` header (None: none, or malformed)."""
    header = _header(scope, b"authorization")
    if header is None:
        return None
    scheme, _, key = header.decode("latin-1").partition(" ")
    key = key.strip()
    return key if key and scheme.lower() == "bearer" else None


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case, as ASGI servers give it); a plain loop rather than
    ``next()`` over a generator, which cost several times as much per request."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None
