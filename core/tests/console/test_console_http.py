"""The console's framework over HTTP (no browser): sign-in and sessions, CSRF, roles, language, the root
redirect, and that console routes stay out of the API's OpenAPI document. Every test runs on each backend."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import get
from tongcrm.audit.models import AuditEntry
from tongcrm.auth.models import ApiKey
from tongcrm.auth.service import Role
from tongcrm.console import web
from tongcrm.console.i18n import EN, ZH
from tongcrm.console.models import ConsoleSession
from tongcrm.console.pages import STATIC
from tongcrm.console.sessions import ABSOLUTE, IDLE
from tongcrm.dashboard.service import MESSAGE_WINDOWS
from tongcrm.db.base import utcnow
from tongcrm.errors import ConfigError

from .conftest import csrf_of, sign_in


def test_both_catalogs_have_the_same_keys_and_no_empty_label() -> None:
    assert set(ZH) == set(EN)
    assert all(v.strip() for v in (*ZH.values(), *EN.values()))
    # and every label a template names is in them (a missing one would fail the page); ``t(`` alone, not the
    # end of ``typed.get("role")``
    templates = Path(web.__file__).parent / "templates"
    named = {
        key
        for page in templates.glob("*.html")
        for key in re.findall(r"(?<![\w.])t\(['\"]([\w.]+)['\"]\s*[,)]", page.read_text())
    }
    assert named and named - set(ZH) == set()
    # labels a template builds from a value: roles and message windows
    assert {f"role.{r.value}" for r in Role} | {f"dash.last_{d}" for d in MESSAGE_WINDOWS} <= set(ZH)


async def test_root_redirects_to_the_console_and_pages_need_a_session(make_client: Any) -> None:
    async with make_client(role=None) as api:
        root = await api.get("/", follow_redirects=False)
        assert root.status_code == 303 and root.headers["location"] == "/console/"
        page = await api.get("/console/dashboard", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/console/sign-in?next=/console/dashboard"
        # a bearer key is not a console session
        key = await api.create_key("admin")
        page = await api.get(
            "/console/dashboard", headers={"Authorization": f"Bearer {key}"}, follow_redirects=False
        )
        assert page.status_code == 303


async def test_sign_in_sets_a_hardened_session_cookie_without_the_key(make_client: Any) -> None:
    async with make_client(role=None) as api:
        key = await api.create_key("operator")
        form = await api.get("/console/sign-in")
        answer = await api.post(
            "/console/sign-in", data={"key": key, "csrf_token": csrf_of(form.text)}, follow_redirects=False
        )
        assert answer.status_code == 303
        cookie = next(
            v for k, v in answer.headers.multi_items() if k == "set-cookie" and "tongcrm_console=" in v
        )
        assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain http in the test; https requests get Secure
        assert key not in cookie and key.split("_")[2] not in answer.text
        dashboard = await api.get("/console/dashboard")
        assert dashboard.status_code == 200 and "概览" in dashboard.text  # Chinese by default
        async with api.db.sessions() as session:
            stored = (await session.execute(sa.select(ConsoleSession.token_hash))).scalars().all()
        token = cookie.split("tongcrm_console=")[1].split(";")[0]
        assert stored and token not in stored  # only a digest is kept


async def test_a_wrong_key_a_till_key_and_a_forged_sign_in_are_refused(make_client: Any) -> None:
    async with make_client(role=None) as api:
        form = await api.get("/console/sign-in")
        token = csrf_of(form.text)
        bad = await api.post("/console/sign-in", data={"key": "tck_nope_nope", "csrf_token": token})
        assert bad.status_code == 401 and "密钥无效" in bad.text
        till = await api.create_key("pos", store_code="S1")
        token = csrf_of(bad.text)  # each form carries a fresh token
        refused = await api.post("/console/sign-in", data={"key": till, "csrf_token": token})
        assert refused.status_code == 403 and "收银密钥不能登录" in refused.text
        token = csrf_of(refused.text)
        admin = await api.create_key("admin")
        forged = await api.post("/console/sign-in", data={"key": admin, "csrf_token": "guess"})
        assert forged.status_code == 403
        other_site = await api.post(
            "/console/sign-in",
            data={"key": admin, "csrf_token": token},
            headers={"Origin": "https://evil.example"},
        )
        assert other_site.status_code == 403
        async with api.db.sessions() as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(ConsoleSession)) == 0


async def test_posts_need_the_sessions_csrf_token_and_the_same_origin(make_client: Any) -> None:
    async with make_client(role=None) as api:
        csrf = await sign_in(api, "admin")
        assert (await api.post("/console/sign-out", data={})).status_code == 403
        assert (await api.post("/console/sign-out", data={"csrf_token": "x" + csrf})).status_code == 403
        cross = await api.post(
            "/console/sign-out", data={"csrf_token": csrf}, headers={"Origin": "http://evil.example"}
        )
        assert cross.status_code == 403
        assert (await api.get("/console/dashboard")).status_code == 200  # still signed in
        out = await api.post("/console/sign-out", data={"csrf_token": csrf}, follow_redirects=False)
        assert out.status_code == 303
        assert (await api.get("/console/dashboard", follow_redirects=False)).status_code == 303


async def test_a_reveal_link_followed_from_another_site_is_refused(make_client: Any) -> None:
    """The session cookie is SameSite=Lax: a link on another site would carry it, so a ``?reveal=`` GET must
    come from the console itself (Sec-Fetch-Site, else Referer), or nothing is revealed or audited."""
    async with make_client(role=None) as api:
        await sign_in(api, "admin")
        path = "/console/quarantine?reveal=payload"
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Referer": "http://evil.example/page"},
        ):
            assert (await api.get(path, headers=headers)).status_code == 403, headers
        async with api.db.sessions() as session:
            audited = await session.scalar(
                sa.select(sa.func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.action == "quarantine.reveal")
            )
        assert audited == 0
        for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
            assert (await api.get(path, headers=headers)).status_code == 200, headers
        # pages without a reveal open from anywhere, as links to them should
        assert (
            await api.get("/console/quarantine", headers={"Sec-Fetch-Site": "cross-site"})
        ).status_code == 200


async def test_a_revoked_key_ends_its_sessions_at_the_next_request(make_client: Any) -> None:
    async with make_client(role=None) as api:
        await sign_in(api, "operator")
        async with api.db.sessions() as session, session.begin():
            await session.execute(sa.update(ApiKey).values(revoked_at=utcnow()))
        assert (await api.get("/console/dashboard", follow_redirects=False)).status_code == 303
        async with api.db.sessions() as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(ConsoleSession)) == 0


async def test_an_idle_session_expires_and_so_does_an_old_one(make_client: Any) -> None:
    async with make_client(role=None) as api:
        await sign_in(api, "analyst")
        async with api.db.sessions() as session, session.begin():
            await session.execute(sa.update(ConsoleSession).values(last_seen_at=utcnow() - IDLE))
        assert (await api.get("/console/dashboard", follow_redirects=False)).status_code == 303
        await sign_in(api, "analyst")
        async with api.db.sessions() as session, session.begin():
            # busy all along, but signed in longer ago than the absolute bound
            await session.execute(sa.update(ConsoleSession).values(created_at=utcnow() - ABSOLUTE))
        assert (await api.get("/console/dashboard", follow_redirects=False)).status_code == 303


async def test_language_switches_by_query_and_sticks_in_a_cookie(make_client: Any) -> None:
    async with make_client(role=None) as api:
        sign_in_page = await api.get("/console/sign-in?lang=en")
        assert "Sign in" in sign_in_page.text and 'lang="en"' in sign_in_page.text
        await sign_in(api, "admin")
        assert "Dashboard" in (await api.get("/console/dashboard")).text
        assert "概览" in (await api.get("/console/dashboard?lang=zh")).text
        assert "概览" in (await api.get("/console/dashboard")).text


async def test_console_routes_are_not_in_the_openapi_document(make_client: Any) -> None:
    async with make_client() as api:
        paths = (await api.get("/schema/openapi.json")).json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/console")]
    assert "/api/dashboard" in paths


async def test_static_files_are_served_without_a_session(make_client: Any) -> None:
    async with make_client(role=None) as api:
        css = await api.get("/console/static/console.css")
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]
        missing = await api.get("/console/static/nope.css")
        assert missing.status_code == 404
        assert missing.json()["detail"] == "no such file: GET /console/static/nope.css"
        assert str(STATIC) not in missing.text  # the server's directory is not echoed (litestar's detail did)
        page = await api.get("/console/sign-in")
        assert '<link rel="icon" href="/favicon.ico"' in page.text
        assert (await api.get("/favicon.ico")).status_code == 200


async def test_over_https_the_session_cookie_is_secure(make_client: Any) -> None:
    async with make_client(role=None) as api:
        api.client.base_url = "https://console.example"
        key = await api.create_key("admin")
        form = await api.get("/console/sign-in")
        answer = await api.post(
            "/console/sign-in", data={"key": key, "csrf_token": csrf_of(form.text)}, follow_redirects=False
        )
        cookie = next(
            v for k, v in answer.headers.multi_items() if k == "set-cookie" and "tongcrm_console=" in v
        )
        assert "Secure" in cookie and "HttpOnly" in cookie


@get("/console/forgotten", include_in_schema=False)
async def _forgotten() -> str:
    return "open to anyone"


async def test_the_app_refuses_a_console_route_without_the_console_guard(make_client: Any) -> None:
    """/console is left to the console by the API-key hook, so a route there must carry console_guard."""
    with pytest.raises(ConfigError, match=r"/console/forgotten"):
        async with make_client(role=None, extra_handlers=[_forgotten]):
            pass


async def test_a_console_path_no_route_matches_is_the_consoles_page_not_the_apis_json(
    make_client: Any,
) -> None:
    """``/console/segments/vip`` (segments open by id), a stale bookmark, a typo: the console's error page in
    the reader's language, as for any other missing page; the API's paths keep their JSON problem."""
    async with make_client(role=None) as api:
        await sign_in(api, "operator")
        for path in ("/console/segments/vip", "/console/nosuch", "/console/members/12/nosuch"):
            answer = await api.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"].startswith("text/html"), path
            assert '<p role="alert" class="error">404 — 找不到该页面或对象。</p>' in answer.text, path
            assert "openapi" not in answer.text and "Not Found" not in answer.text
        english = await api.get("/console/nosuch?lang=en")
        assert "404 — No such page or object." in english.text
        api_answer = await api.get("/api/nosuch")
        assert api_answer.status_code == 404
        assert api_answer.headers["content-type"].startswith("application/problem+json")
