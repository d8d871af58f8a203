"""Hot routes: the few requests called often enough that litestar's per-request machinery is most of their cost,
answered by the app's outermost ASGI layer (:mod:`tongcrm.api.middleware`) before litestar sees the request —
but only in the plain case, and only as the litestar route itself would answer it.

A hot route is a litestar route like any other (documented in the OpenAPI, reachable, tested), plus a
:data:`HotAnswer` for its method and path (a :class:`~tongcrm.plugin.types.HotRouteSpec`: core's in
``tongcrm.app.HOT_ROUTES``, a plugin's in the ``hot`` field of the :class:`~tongcrm.plugin.types.RouteSpec` its
``routes`` hook returns). The answer is a function of the request's scope and ``receive`` that returns the
response for the plain case (a cached key of an admitted role, the usual input, a found row) or ``None``, and
then litestar serves the request through the route, which checks the key, refuses bad input and writes the
problem response. Two rules keep falling through correct:

* **What the answer read is read again.** A ``POST`` answer reads the body from ``receive`` itself
  (:meth:`HotTarget.json`, bounded by the route's request-size limit); the layer records what it consumed and
  replays it to litestar when the answer falls through, so the route reads the same messages.
* **What the answer did is not done twice.** The caller's limit (:func:`tongcrm.api.security.limited_by`) is
  taken once per request, by whichever path comes first (:meth:`HotTarget.caller` runs it, and ``authorize``
  repeats its outcome instead of counting again). An answer that began work with effects (a unit of work) does
  not fall through to do it again: whatever that work raised is handed to the route
  (:func:`tongcrm.api.security.hand_over`), whose ``before_request`` raises it, so litestar writes the problem
  response the route would have written for it. An answer decides before it begins such work whether it can
  answer.

What the shortcut skips is exactly what litestar would have run around the handler: routing (done here by exact
method and path), the request object, the keyword-argument and signature models and the ``before_request``
hook. So the route must not rely on anything else litestar would run: :func:`hot_routes` refuses to build the
app when a hot route has guards, middleware, dependencies, ``after_request``/``after_response`` hooks, another
``before_request`` than :func:`tongcrm.api.security.authorize`, or does not confirm its caller's key itself
(:func:`tongcrm.api.security.confirms_key_itself`), or — for a plugin — is not one of the plugin's own routes;
and it hands the answer what the route admits (roles, limit, body size). Nor may the route rely on what litestar
applies around it from other layers or the app: layered response headers or cookies (``cache_control`` and
``etag`` included), a response cache, the app's ``before_send`` hooks (they do see a hot answer's messages, but
with a scope that names no route handler), and the middleware the app's config puts around the router or every
route (CORS, CSRF, compression, allowed hosts, OpenTelemetry).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from litestar import Litestar, Router
from litestar._asgi.utils import is_valid_host
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware._internal.exceptions.middleware import get_exception_handler
from litestar.response.base import ASGIResponse
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json, get_serializer
from litestar.types import ExceptionHandlersMap, Receive, ReceiveMessage, Scope, Serializer

from tongcrm.api.inputs import NUL_PER_ITEM_OPT, is_json_media_type, read_json
from tongcrm.api.problems import PROBLEM_JSON, handle_domain_error, problem_body
from tongcrm.api.responses import EncodedJSON
from tongcrm.api.security import CONFIRMS_KEY_OPT, LIMIT_OPT, ROLES_OPT, authorize, take_limit
from tongcrm.auth.service import CachedKey, KeyVerifier, Principal, Role
from tongcrm.errors import ConfigError, TongcrmError

if TYPE_CHECKING:
    from tongcrm.plugin.types import HotRouteSpec

#: The answer of a hot route: the response for the plain case, or None to let litestar serve the request.
HotAnswer = Callable[[Scope, Receive], Awaitable[ASGIResponse | None]]
#: Builds a route's :data:`HotAnswer` from what the route admits (see :class:`HotTarget`).
HotRoute = Callable[["HotTarget"], HotAnswer]


class Caller:
    """The caller of a hot answer: its key, cached by :class:`KeyVerifier` with a role the route admits, still
    to be confirmed under the revocation counter the answer's own statement reads (:meth:`confirm`)."""

    __slots__ = ("_confirmed", "cached", "key", "verifier")

    def __init__(self, key: str, cached: CachedKey, verifier: KeyVerifier) -> None:
        self.key = key
        self.cached = cached
        self.verifier = verifier
        self._confirmed = False

    @property
    def principal(self) -> Principal:
        return self.cached.principal

    async def confirm(self, generation: int | None) -> None:
        """As :func:`tongcrm.api.security.confirm_key` confirms a route's caller, once: under the counter read
        after the request arrived (``None``: read it now); 401 when the key was revoked meanwhile. A second call
        does nothing, as the route's (a refusal's path confirms again with ``None`` after a confirmed read)."""
        if self._confirmed:
            return
        self._confirmed = True
        if await self.verifier.confirm(self.key, self.cached, generation) is None:
            raise NotAuthorizedException("unknown or revoked API key")


@dataclass(frozen=True, slots=True)
class HotTarget:
    """What a hot answer is built from: its route's handler and what the route admits (roles, the limit on its
    callers, the body size), read from the handler, so the answer and the route cannot drift apart."""

    app: Litestar
    handler: HTTPRouteHandler
    method: str
    path: str
    roles: frozenset[Role]
    #: the route's limit on its callers (:func:`tongcrm.api.security.limited_by`), run by :meth:`caller`
    limit: Callable[[Principal], None] | None
    #: the route's request-size limit (litestar's ``request_max_body_size``, as the route resolves it)
    max_body: float
    serializer: Serializer
    #: the route's exception handlers (as litestar resolves them for it), for :meth:`refusal`
    exception_handlers: ExceptionHandlersMap
    #: the app's key verifier (``state.key_verifier``) when the app was built with one, taken once: litestar's
    #: ``State`` answers an attribute through a Python ``__getattr__`` (~0.5 us on every hot request)
    verifier: KeyVerifier | None = None

    async def caller(self, scope: Scope) -> Caller | None:
        """The request's caller when litestar would let it reach the handler as far as its key, role and limit
        go: a well-formed bearer key of an admitted role, a Host header litestar accepts, and the limit taken
        (once for the request: a refusal is left to the route, which repeats it). None otherwise.

        A key the verifier has not cached (its first request, or the first after its answer lapsed) is verified
        here, as the route's ``authorize`` would verify it (:meth:`KeyVerifier.verify`: read under the
        revocation counter, shared by the callers that arrive together), and then taken as cached. Why (issue
        #22, branch till18): every till's first request, and each one after the key's TTL (every 5 s), went
        through litestar only to have its key read there, and a served app's first requests through a route
        paid litestar's first-use costs besides; the eight tills' first lookups arrive together on one event
        loop. An unknown or revoked key is still the route's to refuse (it finds the answer cached), and so is a
        read that failed (the route reads again)."""
        host = _header(scope, b"host")
        if host is not None and not is_valid_host(host):
            return None
        key = bearer(scope)
        if key is None:
            return None
        verifier: KeyVerifier = self.verifier or self.app.state.key_verifier
        cached = verifier.cached(key)
        if cached is None:
            try:
                if await verifier.verify(key) is None:
                    return None
            except Exception:  # the read failed: the route verifies again and answers as it does
                return None
            cached = verifier.cached(key)
        if cached is None or cached.principal.role not in self.roles:
            return None
        if self.limit is not None:
            try:
                take_limit(scope, self.limit, cached.principal)
            except Exception:  # over the limit: the route answers the refusal, counted once
                return None
        return Caller(key, cached, verifier)

    async def json(self, scope: Scope, receive: Receive) -> Any:
        """The request's body converted to the route's body type exactly as the route converts it
        (:func:`tongcrm.api.inputs.read_json`), or None when litestar would not hand the handler a body: a query
        string (the hot routes read none), no body, one over the route's size limit, a client gone, or a body
        the route refuses (it then reads the replayed body and answers the problem)."""
        if scope["query_string"]:
            return None
        media_type = _header(scope, b"content-type")
        if media_type is not None and not is_json_media_type(media_type.decode("latin-1")):
            return None  # a body of another media type: the route refuses it (415)
        body = await read_body(scope, receive, self.max_body)
        if not body:
            return None
        try:
            _, typed = read_json(body, self.handler, nul=not self.handler.opt.get(NUL_PER_ITEM_OPT))
        except Exception:
            return None
        return typed

    def answer(self, content: Any, status: int = 200) -> EncodedJSON:
        """``content`` as the route answers it (``Response(content, status_code=status)``): the same bytes, by
        litestar's own encoder with the route's type encoders, and the same headers."""
        return EncodedJSON(encode_json(content, self.serializer), status=status)

    def refusal(self, scope: Scope, exc: Exception) -> EncodedJSON | None:
        """The problem response the route writes for ``exc`` when it is a plain refusal of the request — a
        :class:`~tongcrm.errors.TongcrmError` under 500, without a ``Retry-After``, that the route hands to
        :func:`tongcrm.api.problems.handle_domain_error` — as the route writes it (the same body, from
        :func:`~tongcrm.api.problems.problem_body`, encoded with the route's encoders, and the same headers);
        None otherwise, and the route answers it (:func:`tongcrm.api.security.hand_over`).

        Why: a till's lookup of a mobile nobody holds (every new customer's first receipt) is such a refusal,
        and handing it to litestar — routing, the request object, ``authorize``, the exception middleware —
        cost that request more CPU than the lookup itself (issue #22, branch tillserve). What the route would
        add is nothing: the key was confirmed by the work, the limit taken, and ``handle_domain_error`` logs
        nothing under 500."""
        if (
            not isinstance(exc, TongcrmError)
            or exc.status_code >= 500
            or "retry_after" in exc.extra
            or get_exception_handler(self.exception_handlers, exc) is not handle_domain_error
        ):
            return None
        body = problem_body(scope["path"], exc.status_code, exc.title, exc.message, exc.extra)
        return EncodedJSON(
            encode_json(body, self.serializer), status=exc.status_code, content_type=PROBLEM_JSON.encode()
        )


async def read_body(scope: Scope, receive: Receive, limit: float) -> bytes | None:
    """The request's body, read as litestar reads it, or None where litestar would refuse it: a
    ``Content-Length`` that is not a number or is over ``limit`` (nothing read then), more than ``limit``
    bytes, or the client gone."""
    announced = _header(scope, b"content-length")
    if announced is not None:
        try:
            if int(announced) > limit:
                return None
        except ValueError:
            return None
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect
        body = message.get("body", b"")
        total += len(body)
        if total > limit:
            return None
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Replay:
    """A request's ``receive`` that records what a hot answer consumed (:meth:`receive`), and gives litestar the
    same messages again, then the rest (:meth:`replay`), when the answer falls through."""

    __slots__ = ("_receive", "_seen")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._seen: list[ReceiveMessage] = []

    async def receive(self) -> ReceiveMessage:
        message = await self._receive()
        self._seen.append(message)
        return message

    async def replay(self) -> ReceiveMessage:
        if self._seen:
            return self._seen.pop(0)
        return await self._receive()


def hot_routes(
    app: Litestar,
    routes: Iterable[HotRouteSpec],
    *,
    plugin: str | None = None,
    mounted: Iterable[Any] = (),
) -> dict[tuple[str, str], HotAnswer]:
    """The answers of ``routes`` for ``app``, by (method, path); :class:`ConfigError` when a route is missing or
    relies on more than the shortcut keeps (see the module's doc). ``plugin``: the plugin the routes come from
    (named in the error), whose hot routes must be among the handlers it ``mounted`` (what its ``routes`` hook
    returned): a plugin answers its own routes, never core's or another plugin's."""
    who = f"plugin {plugin!r}: hot route" if plugin is not None else "hot route"
    own = _handler_functions(mounted) if plugin is not None else None
    answers: dict[tuple[str, str], HotAnswer] = {}
    for spec in routes:
        name = f"{who} {spec.method} {spec.path}"
        handler = _handler(app, spec.method, spec.path)
        if handler is None:
            raise ConfigError(f"{name}: the app has no {spec.method} route at this path")
        if own is not None and _function(handler.fn) not in own:
            raise ConfigError(f"{name}: the route at this path is not one the plugin mounts")
        problems = [what for what, bad in (*_route_problems(handler), *_app_wide(app)) if bad]
        if problems:
            raise ConfigError(f"{name} cannot be answered outside litestar: {', '.join(problems)}")
        if (spec.method, spec.path) in answers:
            raise ConfigError(f"{name} is declared twice")
        max_body = handler.resolve_request_max_body_size()
        target = HotTarget(
            app=app,
            handler=handler,
            method=spec.method,
            path=spec.path,
            roles=handler.opt[ROLES_OPT],
            limit=handler.opt.get(LIMIT_OPT),
            max_body=math.inf if max_body is None else max_body,
            serializer=get_serializer(handler.resolve_type_encoders()),
            exception_handlers=handler.resolve_exception_handlers(),
            verifier=app.state.get("key_verifier"),
        )
        answers[(spec.method, spec.path)] = spec.build(target)
    return answers


def merge_hot_routes(
    core: Mapping[tuple[str, str], HotAnswer],
    plugins: Iterable[tuple[str, Mapping[tuple[str, str], HotAnswer]]],
) -> dict[tuple[str, str], HotAnswer]:
    """Core's hot answers and each plugin's (by plugin name), refusing a method and path answered twice."""
    answers = dict(core)
    owners = dict.fromkeys(core, "tongcrm")
    for plugin, theirs in plugins:
        for route, answer in theirs.items():
            if route in owners:
                raise ConfigError(
                    f"plugin {plugin!r}: hot route {' '.join(route)} is already answered by {owners[route]!r}"
                )
            owners[route] = plugin
            answers[route] = answer
    return answers


def _handler(app: Litestar, method: str, path: str) -> HTTPRouteHandler | None:
    return next(
        (
            h
            for route in app.routes
            if isinstance(route, HTTPRoute) and route.path == path
            for h in route.route_handlers
            if method in h.http_methods
        ),
        None,
    )


def _route_problems(handler: HTTPRouteHandler) -> list[tuple[str, bool]]:
    """What ``handler`` relies on that a hot answer would skip (see the module's doc)."""
    return [
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
        (
            "response headers or cookies",
            bool(handler.resolve_response_headers() or handler.resolve_response_cookies()),
        ),
        ("a response cache", bool(handler.cache)),
    ]


def _handler_functions(handlers: Iterable[Any]) -> set[Any]:
    """The functions of the route handlers in ``handlers`` (routers, controllers, handlers), as mounted."""
    out: set[Any] = set()
    for item in handlers:
        if isinstance(item, Router):
            out |= {_function(h.fn) for route in item.routes for h in getattr(route, "route_handlers", ())}
        elif isinstance(item, HTTPRouteHandler):
            out.add(_function(item.fn))
        elif isinstance(item, type):  # a controller: its handlers are class attributes
            out |= {_function(v.fn) for v in vars(item).values() if isinstance(v, HTTPRouteHandler)}
    return out


def _function(fn: Any) -> Any:
    return getattr(fn, "__func__", fn)


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
    without a NUL character; otherwise None. (The Host header is :meth:`HotTarget.caller`'s to check.)"""
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
