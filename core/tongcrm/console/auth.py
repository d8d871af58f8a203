"""Signing in and out of the console, and ``/`` sending visitors to it."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import QueryParameter
from litestar.response import Redirect
from litestar.status_codes import HTTP_303_SEE_OTHER

from tongcrm.console import sessions
from tongcrm.console.web import (
    CSRF_FIELD,
    PREFIX,
    READ_ROLES,
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    ConsoleController,
    CsrfRefused,
    action,
    context_of,
    cookie,
    page,
    public_page,
    redirect,
    render,
    safe_next,
)
from tongcrm.errors import Forbidden, Unauthorized


@get("/", include_in_schema=False, status_code=HTTP_303_SEE_OTHER)
async def root() -> Redirect:
    """The root has nothing of its own: a browser that opens the server lands on the console."""
    return Redirect(PREFIX + "/", status_code=HTTP_303_SEE_OTHER)


def _form_text(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


class SignInPages(ConsoleController):
    path = PREFIX

    @get("/sign-in", opt=public_page())
    async def sign_in_form(
        self,
        request: Request[Any, Any, Any],
        target: Annotated[str | None, QueryParameter(name="next")] = None,
    ) -> Response[str]:
        return _sign_in_page(request, safe_next(target), message=None)

    @post("/sign-in", opt=public_page(is_action=True))
    async def sign_in(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await request.form()
        # no session yet to tie a token to: the form's token must equal the cookie set with the form
        expected = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
        if not expected or not sessions.same_token(expected, _form_text(form, CSRF_FIELD)):
            raise CsrfRefused("missing or wrong sign-in form token")
        target = safe_next(_form_text(form, "next"))
        try:
            opened = await sessions.sign_in(
                request.app.state.sessions, request.app.state.key_verifier, _form_text(form, "key")
            )
        except Unauthorized:
            return _sign_in_page(request, target, message="signin.bad_key", status_code=401)
        except Forbidden:
            return _sign_in_page(request, target, message="signin.bad_role", status_code=403)
        response = redirect(request, target)
        response.set_cookie(
            cookie(request, SESSION_COOKIE, opened.token, max_age=int(sessions.ABSOLUTE.total_seconds()))
        )
        response.delete_cookie(SIGN_IN_CSRF_COOKIE, path=PREFIX)
        return response

    @post("/sign-out", opt=action(*READ_ROLES))
    async def sign_out(self, request: Request[Any, Any, Any]) -> Response[Any]:
        await sessions.sign_out(request.app.state.sessions, request.cookies.get(SESSION_COOKIE, ""))
        response = redirect(request, f"{PREFIX}/sign-in?signed_out=1")
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    @get("/", opt=page())
    async def home(self, request: Request[Any, Any, Any]) -> Response[Any]:
        return redirect(request, f"{PREFIX}/dashboard")


def _sign_in_page(
    request: Request[Any, Any, Any], target: str, *, message: str | None, status_code: int = 200
) -> Response[str]:
    token = secrets.token_urlsafe(24)
    if request.query_params.get("signed_out"):
        message = "signin.signed_out"
    context_of(request)  # the guard ran (language known)
    response = render(
        request,
        "sign_in.html",
        {"form_token": token, "next": target, "message": message},
        status_code=status_code,
        title="signin.title",
    )
    response.set_cookie(cookie(request, SIGN_IN_CSRF_COOKIE, token))
    return response
