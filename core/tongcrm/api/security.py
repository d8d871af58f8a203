"""API-key authentication and role guards.

Every route requires ``Authorization: Bearer <key>`` except ``/health``, ``/schema*`` and the paths a plugin
declares public (it then authenticates the caller itself, e.g. by a platform signature).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from tongcrm.auth.service import KeyVerifier, Principal, Role

PUBLIC_PATHS = ("/health", "/schema")

READ_ROLES = (Role.ADMIN, Role.OPERATOR, Role.ANALYST)
WRITE_ROLES = (Role.ADMIN, Role.OPERATOR)


def authenticator(
    extra_public: Iterable[str] = (),
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Any]:
    """An app-level guard that turns the bearer key into a :class:`Principal` (401 when it cannot).

    A guard rather than a middleware so that its failures are rendered inside the request's own handling
    (problem details with the request id), like every other error.
    """
    public = tuple((*PUBLIC_PATHS, *extra_public))

    async def authenticate(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        path = connection.scope["path"]
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in public):
            return
        header = connection.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>'")
        if scheme.lower() != "bearer" or not key.strip():
            raise NotAuthorizedException("malformed Authorization header: expected 'Bearer <key>'")
        verifier: KeyVerifier = connection.app.state.key_verifier
        principal = await verifier.verify(key.strip())
        if principal is None:
            raise NotAuthorizedException("unknown or revoked API key")
        connection.scope["user"] = principal

    return authenticate


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise NotAuthorizedException("not authenticated")
    return user


def requires(
    *roles: Role,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Coroutine[Any, Any, None]]:
    """A guard that lets only the given roles through (403 for the others).

    A coroutine function although it never awaits: litestar runs synchronous guards in a worker thread, and
    that hand-off cost more than everything else an authenticated lookup does.
    """
    allowed = frozenset(roles)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        principal = principal_of(connection)
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDeniedException(
                f"role {principal.role.value!r} may not do this (needs one of: {names})"
            )

    return guard
