"""Helpers for the console tests: sign in through the real form, read the CSRF token a page carries."""

from __future__ import annotations

import re
from typing import Any

_HIDDEN = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_of(html: str) -> str:
    found = _HIDDEN.search(html)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


async def sign_in(api: Any, role: str = "admin", *, key: str | None = None) -> str:
    """Sign in to the console as ``role`` (a fresh key unless ``key``); returns the session's CSRF token."""
    key = key or await api.create_key(role)
    api.client.headers.pop("Authorization", None)
    form = await api.get("/console/sign-in")
    assert form.status_code == 200, form.text
    answer = await api.post(
        "/console/sign-in",
        data={"key": key, "csrf_token": csrf_of(form.text), "next": "/console/dashboard"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    page = await api.get("/console/dashboard")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)
