"""API-key authentication and role guards.

Every route requires ``Authorization: Bearer <key>`` except ``/health``, ``/schema*`` and the paths a plugin
declares public (it then authenticates the caller itself, e.g. by a platform signature).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.routes import BaseRoute

from tongcrm.auth.service import KeyVerifier, Principal, Role
from tongcrm.errors import ConfigError

PUBLIC_PATHS = ("/health", "/schema")

READ_ROLES = (Role.ADMIN, Role.OPERATOR, Role.ANALYST)
WRITE_ROLES = (Role.ADMIN, Role.OPERATOR)


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller's :class:`Principal` from its bearer key (401 when there is none or it is not valid)."""
    user = connection.scope.get("user")
    if isinstance(user, Principal):
        return user
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
    return principal


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise NotAuthorizedException("not authenticated")
    return user


class RoleGuard:
    """The guard :func:`requires` returns: authenticates the caller, then lets only ``roles`` through."""

    __slots__ = ("roles",)

    def __init__(self, roles: Iterable[Role]) -> None:
        self.roles = frozenset(roles)

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        principal = await authenticate(connection)
        if principal.role not in self.roles:
            names = ", ".join(sorted(r.value for r in self.roles))
            raise PermissionDeniedException(
                f"role {principal.role.value!r} may not do this (needs one of: {names})"
            )


def requires(*roles: Role) -> RoleGuard:
    """The guard every non-public route carries: 401 without a valid key, 403 for the other roles.

    Authentication and the role check are one guard because litestar copies the route handler for each guard
    it calls, and a second guard cost an authenticated lookup more than its database read. That no route is
    left open by forgetting it is checked when the app is built (:func:`check_route_access`).
    """
    if not roles:
        raise ValueError("requires() needs at least one role")
    return RoleGuard(roles)


def is_public(path: str, public: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in public)


def check_route_access(routes: Iterable[BaseRoute], extra_public: Iterable[str] = ()) -> None:
    """Refuse to build an app with a route that is neither public nor guarded by :func:`requires`.

    A plugin route without a role guard would be open to anyone; failing at start names it instead. Handlers
    of OPTIONS alone (litestar answers those itself with the allowed methods) need none.
    """
    public = (*PUBLIC_PATHS, *extra_public)
    open_routes = sorted(
        f"{', '.join(sorted(getattr(handler, 'http_methods', ()) or ('*',)))} {route.path} "
        f"({handler.handler_name})"
        for route in routes
        if not is_public(route.path, public)
        for handler in getattr(route, "route_handlers", ())
        if set(getattr(handler, "http_methods", ())) != {"OPTIONS"}
        and not any(isinstance(guard, RoleGuard) for guard in handler.resolve_guards())
    )
    if open_routes:
        raise ConfigError(
            "routes without a role guard (add guards=[requires(...)], or list the path among the plugin's "
            "public paths if it authenticates callers itself): " + "; ".join(open_routes)
        )
