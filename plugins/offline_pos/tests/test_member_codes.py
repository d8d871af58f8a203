"""Dynamic member codes are opaque: nothing in a code tells who holds it; single use holds across app instances."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal

import sqlalchemy as sa
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos.models import PosMemberCode

from .conftest import FakeClock

#: Member ids whose encodings are long enough to be recognised in an 18-digit code (a one-digit id is in any).
MEMBER_IDS = (98_765_432_101, 4_294_967_311, 73_500_001, 1_234_567)


def _bytes(n: int, order: Literal["big", "little"]) -> list[bytes]:
    return [n.to_bytes((n.bit_length() + 7) // 8, order), n.to_bytes(8, order)]


def encodings(member_id: int) -> set[str]:
    """The member id as text in every encoding we could think of a code carrying it in."""
    found = {str(member_id), f"{member_id:011d}", f"{member_id:x}", f"{member_id:X}", f"{member_id:o}"}
    found.add(str(member_id)[::-1])
    for raw in _bytes(member_id, "big") + _bytes(member_id, "little"):
        found |= {
            raw.hex(),
            base64.b32encode(raw).decode().rstrip("="),
            base64.b32encode(raw).decode().rstrip("=").lower(),
            base64.b32hexencode(raw).decode().rstrip("="),
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            base64.b85encode(raw).decode(),
        }
    return {e for e in found if len(e) >= 5}


def reveals(code: str, member_id: int) -> list[str]:
    """Where ``member_id`` shows in ``code``, read as text or decoded from its digits as a number."""
    as_number = int(code)
    number_bytes = as_number.to_bytes((as_number.bit_length() + 7) // 8, "big")
    texts = [code, code.upper(), f"{as_number:x}", number_bytes.hex()]
    hits = [f"{e!r} in {t!r}" for e in encodings(member_id) for t in texts if e.lower() in t.lower()]
    hits += [
        f"id bytes {raw.hex()} in the code's bytes"
        for raw in _bytes(member_id, "big")[:1] + _bytes(member_id, "little")[:1]
        if raw in number_bytes
    ]
    return hits


def test_the_encodings_checked_would_catch_the_old_codes() -> None:
    """The old code, ``8`` + the member id in 11 digits + a 6-digit password, is caught by this check."""
    for member_id in MEMBER_IDS:
        assert reveals(f"8{member_id:011d}123456", member_id)
        assert reveals(f"8{member_id:011d}000000", member_id)


async def _members(api: ApiClient) -> None:
    async with api.db.sessions() as session, session.begin():
        session.add_all([Member(id=member_id) for member_id in MEMBER_IDS])


async def test_a_code_reveals_nothing_about_the_member(pos: ApiClient) -> None:
    await _members(pos)
    admin = {"Authorization": f"Bearer {await pos.create_key('admin')}"}
    issued: dict[int, list[str]] = {}
    for member_id in MEMBER_IDS:
        for _ in range(25):
            response = await pos.post("/pos/v1/member-codes", json={"member_id": member_id}, headers=admin)
            assert response.status_code == 201, response.text
            code = response.json()["code"]
            assert len(code) == 18 and code.isdigit() and code.startswith("8")  # a barcode as before
            assert reveals(code, member_id) == [], code
            issued.setdefault(member_id, []).append(code)
    # codes made at the same moment for the same member share nothing (the old ones were all the same)
    for codes in issued.values():
        assert len(set(codes)) == len(codes)
    # what is stored is no use to whoever reads the database: a hash, with no code in any column
    async with pos.db.sessions() as session:
        rows = (await session.execute(sa.select(PosMemberCode))).scalars().all()
    assert len(rows) == sum(len(c) for c in issued.values())
    stored = " ".join(f"{r.code_hash} {r.member_id} {r.till_code}" for r in rows)
    assert not any(code[1:] in stored for codes in issued.values() for code in codes)
    # and each code still finds its member, once
    member_id, codes = next(iter(issued.items()))
    found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": codes[-1]})
    assert found.status_code == 200 and found.json()["member_id"] == member_id


async def test_a_code_is_used_once_across_app_instances_and_concurrent_tills(
    pos: ApiClient,
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    pos_host: PluginHost,
    clock: FakeClock,
) -> None:
    await _members(pos)
    admin = {"Authorization": f"Bearer {await pos.create_key('admin')}"}

    async def code() -> str:
        response = await pos.post("/pos/v1/member-codes", json={"member_id": MEMBER_IDS[0]}, headers=admin)
        return str(response.json()["code"])

    first, second = await code(), await code()
    async with make_client(host=pos_host, role=None) as other:  # another process, with its own caches
        as_till = {"Authorization": f"Bearer {pos.key}"}
        used = await other.post(
            "/pos/v1/members/lookup", json={"till": "T02", "code": first}, headers=as_till
        )
        assert used.status_code == 200 and used.json()["member_id"] == MEMBER_IDS[0]
        again = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": first})
        assert again.status_code == 409 and "already used" in again.json()["detail"]
    both = await asyncio.gather(
        *(pos.post("/pos/v1/members/lookup", json={"till": till, "code": second}) for till in ("T01", "T02"))
    )
    assert sorted(r.status_code for r in both) == [200, 409]
    # a code is good for the rest of its step and the next: 30-60 s
    late = await code()
    clock.advance(54)  # the clock stands 5 s into a step: 59 s later is the last second of the next
    assert (await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": late})).status_code == 200
    expired = await code()
    clock.advance(60)
    refused = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": expired})
    assert refused.status_code == 404 and "expired" in refused.json()["detail"]
    malformed = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": "8abc"})
    assert malformed.status_code == 404
