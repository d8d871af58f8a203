"""What the operations pages read from a request: the signed-in caller, and form fields. (The caller as an
audit actor is :func:`tongcrm.console.web.actor_of`.)"""

from __future__ import annotations

from typing import Any

from litestar import Request

from tongcrm.auth.service import Principal
from tongcrm.console.web import context_of
from tongcrm.errors import Forbidden


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The caller; the guard signs everyone in before a page()/action() handler runs, so None is a bug."""
    principal = context_of(request).principal
    if principal is None:
        raise Forbidden("sign in to the console")
    return principal


async def form_fields(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A posted form's text fields (the first value of each; uploads ignored)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def form_lists(request: Request[Any, Any, Any]) -> dict[str, list[str]]:
    """A posted form's text fields with every value (checkbox groups)."""
    form = await request.form()
    out: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            out.setdefault(key, []).append(value)
    return out
