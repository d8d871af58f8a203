"""API keys over HTTP (admins only, audited) and revocation that every app instance honours at once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.auth.service import revoke_key
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.stores import add_store, store_plugin


def store_host() -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(store_plugin(), "test_store")
    return host


async def test_admins_create_list_and_revoke_keys_and_it_is_audited(make_client: Any) -> None:
    async with make_client(store_host(), role="admin") as api:
        await add_store(api.db.sessions, "S1")
        created = await api.post("/api/api-keys", json={"role": "pos", "store_code": "S1", "label": "till 1"})
        assert created.status_code == 201, created.text
        body = created.json()
        key = body["key"]
        assert (
            key.startswith(f"tck_{body['prefix']}_") and body["role"] == "pos" and body["store_code"] == "S1"
        )
        as_new = {"Authorization": f"Bearer {key}"}
        assert (
            await api.get("/api/plugins", headers=as_new)
        ).status_code == 403  # a till key: known, refused

        listed = (await api.get("/api/api-keys")).json()
        mine = next(k for k in listed if k["id"] == body["id"])
        assert mine["label"] == "till 1" and mine["revoked_at"] is None
        assert "key" not in mine and key.split("_")[2] not in (await api.get("/api/api-keys")).text

        revoked = await api.delete(f"/api/api-keys/{body['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        refused = await api.get("/api/plugins", headers=as_new)
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
        again = await api.delete(f"/api/api-keys/{body['id']}")  # idempotent, and audited once
        assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]

        async with api.db.sessions() as session:
            entries = (await session.execute(sa.select(AuditEntry).order_by(AuditEntry.id))).scalars().all()
        actions = [(e.action, e.object_id, e.role) for e in entries]
        assert actions == [
            ("api_key.create", str(body["id"]), "admin"),
            ("api_key.revoke", str(body["id"]), "admin"),
        ]
        assert all(key.split("_")[2] not in str(e.after) for e in entries)
        assert entries[1].after is not None and entries[1].after["store_code"] == "S1"


@pytest.mark.parametrize(
    ("payload", "status", "detail"),
    [
        ({"role": "root"}, 400, "unknown role 'root'"),
        ({"role": "pos"}, 400, "scoped to one store"),
        ({"role": "admin", "store_code": "S1"}, 400, "only pos keys"),
        ({"role": "admin", "label": "x" * 201}, 400, "label"),
        ({"role": "admin", "secret": "mine"}, 400, "secret"),
    ],
)
async def test_bad_key_requests_are_4xx_problems(
    make_client: Any, payload: dict[str, Any], status: int, detail: str
) -> None:
    async with make_client(role="admin") as api:
        response = await api.post("/api/api-keys", json=payload)
        missing = await api.delete("/api/api-keys/999999")
    assert response.status_code == status and response.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert detail in response.json()["detail"]
    assert missing.status_code == 404 and "no API key 999999" in missing.json()["detail"]


async def test_a_pos_key_for_a_store_tongcrm_does_not_know_is_refused_naming_the_known_ones(
    make_client: Any,
) -> None:
    """A key for store 'S1' that does not exist was created, and its till only ever heard "no store 'S1'"."""
    async with make_client(store_host(), role="admin") as api:
        await add_store(api.db.sessions, "SH001")
        await add_store(api.db.sessions, "SH002")
        refused = await api.post("/api/api-keys", json={"role": "pos", "store_code": "S1"})
        assert refused.status_code == 422 and refused.headers["content-type"].startswith(
            "application/problem+json"
        )
        problem = refused.json()
        assert problem["pointer"] == "/store_code"
        assert problem["detail"] == (
            "store_code: no store 'S1': the stores are the accounts of the test_store channel(s): 'SH001', 'SH002'; "
            "add the store first (tongcrm channel add test_store …)"
        )
        assert len((await api.get("/api/api-keys")).json()) == 1  # the test's own key only
        created = await api.post("/api/api-keys", json={"role": "pos", "store_code": "SH002"})
        assert created.status_code == 201 and created.json()["store_code"] == "SH002"
    async with make_client(role="admin") as api:  # no installed channel has stores
        refused = await api.post("/api/api-keys", json={"role": "pos", "store_code": "SH001"})
        assert refused.status_code == 422
        assert "no installed channel has stores" in refused.json()["detail"]


@pytest.mark.parametrize("role", ["operator", "analyst", "pos"])
async def test_only_admins_manage_keys(make_client: Any, role: str) -> None:
    async with make_client(role=role, store_code="S1" if role == "pos" else None) as api:
        assert (await api.get("/api/api-keys")).status_code == 403
        assert (await api.post("/api/api-keys", json={"role": "admin"})).status_code == 403
        assert (await api.delete("/api/api-keys/1")).status_code == 403


async def test_a_key_revoked_through_one_app_is_refused_by_another_at_the_next_request(
    make_client: Any,
) -> None:
    """Two app instances on one database stand for two processes: each has its own key cache."""
    async with make_client(role="admin") as first, make_client(role=None) as second:
        created = (await first.post("/api/api-keys", json={"role": "analyst"})).json()
        as_analyst = {"Authorization": f"Bearer {created['key']}"}
        # the second app has the key cached as good now
        for _ in range(3):
            assert (await second.get("/api/plugins", headers=as_analyst)).status_code == 200
        assert (await first.delete(f"/api/api-keys/{created['id']}")).status_code == 200
        assert (await second.get("/api/plugins", headers=as_analyst)).status_code == 401
        # and the revoking app's own admin key, cached in the second app too, still works there
        as_admin = {"Authorization": f"Bearer {first.key}"}
        assert (await second.get("/api/api-keys", headers=as_admin)).status_code == 200


async def test_a_key_revoked_from_the_command_line_is_refused_at_once(make_client: Any) -> None:
    async with make_client(role="admin") as api:
        assert (await api.get("/api/plugins")).status_code == 200
        async with api.db.sessions() as session, session.begin():
            await revoke_key(session, api.key.split("_")[1])
        assert (await api.get("/api/plugins")).status_code == 401


async def test_the_member_lookup_confirms_a_cached_key_in_its_own_read(make_client: Any) -> None:
    """The lookup trusts a cached key under the revocation counter its own statement reads: a key revoked in
    another process is refused at the next lookup, whether the mobile names a member, names none, or is bad."""
    async with make_client(role="admin") as first, make_client(role=None) as second:
        made = await first.post("/api/members", json={"name": "王小明", "mobile": "13800138000"})
        assert made.status_code == 201, made.text
        created = (await first.post("/api/api-keys", json={"role": "analyst"})).json()
        as_analyst = {"Authorization": f"Bearer {created['key']}"}
        found = "/api/members/lookup?mobile=13800138000"
        for _ in range(3):  # cached as good in the second app now
            assert (await second.get(found, headers=as_analyst)).status_code == 200
        assert (
            await second.get("/api/members/lookup?mobile=13900139000", headers=as_analyst)
        ).status_code == 404
        assert (await first.delete(f"/api/api-keys/{created['id']}")).status_code == 200
        for url in (found, "/api/members/lookup?mobile=13900139000", "/api/members/lookup?mobile=oops"):
            refused = await second.get(url, headers=as_analyst)
            assert refused.status_code == 401, (url, refused.text)
            assert "王" not in refused.text
        # another key cached in the second app is still good: the counter moved, the key is checked afresh
        as_admin = {"Authorization": f"Bearer {first.key}"}
        assert (await second.get(found, headers=as_admin)).status_code == 200


async def test_every_status_the_key_routes_answer_is_one_their_openapi_operation_declares(
    make_client: Any,
) -> None:
    """The walk saw the key routes answer statuses an integrator could not find in the OpenAPI document. Bad
    form is a 400 here as on every route (an unknown role, a missing or forbidden store, an unknown field, a
    label past its bound), and a well-formed code that names no store is a 422, as an unknown referral code or
    saved segment is: each answer below is checked against the operation's declared responses."""
    host = store_host()
    async with make_client(host, role="admin") as api:
        await add_store(api.db.sessions, "S1")
        document = (await api.get("/schema/openapi.json")).json()
        declared = {
            (method.upper(), path): set(operation["responses"])
            for path, operations in document["paths"].items()
            if path.startswith("/api/api-keys")
            for method, operation in operations.items()
        }
        tries: list[tuple[str, str, dict[str, Any], int]] = [
            ("POST", "/api/api-keys", {"json": {"role": "nope"}}, 400),
            ("POST", "/api/api-keys", {"json": {"role": "pos"}}, 400),
            ("POST", "/api/api-keys", {"json": {"role": "admin", "store_code": "S1"}}, 400),
            ("POST", "/api/api-keys", {"json": {"role": "admin", "label": "x" * 201}}, 400),
            ("POST", "/api/api-keys", {"json": {"role": "admin", "extra": 1}}, 400),
            ("POST", "/api/api-keys", {"json": {"role": "pos", "store_code": "S9"}}, 422),
            ("POST", "/api/api-keys", {"content": b"role=admin"}, 400),
            ("GET", "/api/api-keys?limit=5", {}, 400),
            ("DELETE", "/api/api-keys/0", {}, 400),
            ("DELETE", "/api/api-keys/999", {}, 404),
        ]
        for method, url, options, status in tries:
            answer = await api.client.request(method, url, **options)
            assert answer.status_code == status, (method, url, answer.text)
            path = (
                url.split("?")[0].rsplit("/", 1)[0] + "/{key_id}" if method == "DELETE" else url.split("?")[0]
            )
            assert str(status) in declared[(method, path)], (method, url, status)
            assert answer.headers["content-type"].startswith("application/problem+json")


async def test_the_last_live_admin_key_is_not_revoked_through_the_api_or_the_console(
    make_client: Any,
) -> None:
    """An admin revoking the only admin key left would lock everybody out of key management but the server's
    shell: the API answers 409 saying what to do, the console shows the keys page with the reason; once
    another admin key exists the same revocation goes through, and the shell is not held to it."""
    async with make_client(role="admin") as api:
        listed = (await api.get("/api/api-keys")).json()
        (mine,) = [k for k in listed if k["role"] == "admin" and k["revoked_at"] is None]
        refused = await api.delete(f"/api/api-keys/{mine['id']}")
        assert refused.status_code == 409, refused.text
        assert "last live admin key" in refused.json()["detail"]
        assert (await api.get("/api/plugins")).status_code == 200  # still signed in, nothing revoked
        async with api.db.sessions() as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == 0

        other = await api.post("/api/api-keys", json={"role": "admin", "label": "second admin"})
        assert other.status_code == 201, other.text
        as_other = {"Authorization": f"Bearer {other.json()['key']}"}
        revoked = await api.delete(f"/api/api-keys/{mine['id']}", headers=as_other)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        # the second is now the last: refused too, even revoking itself
        last = await api.delete(f"/api/api-keys/{other.json()['id']}", headers=as_other)
        assert last.status_code == 409
        async with api.db.sessions() as session, session.begin():
            await revoke_key(session, str(other.json()["id"]))  # the shell may
        assert (await api.get("/api/plugins", headers=as_other)).status_code == 401
