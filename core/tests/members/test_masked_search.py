"""Member search by a platform's masked mobile (``138****8000``): through the API, after ingest, edits,
merges and their undo, erasure, and the backfill of members written before the index existed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm.cli import Context, build_cli
from tongcrm.crypto import Vault
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.identity.models import Identity
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve_many
from tongcrm.members import masked
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, InvalidMobile
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import BuyerProfile, IdentityClaim

from .conftest import make_host

# two numbers with one masked form, and a third with another
SAME_A, SAME_B, OTHER = "13800138000", "13811118000", "13900139000"


async def create(api: Any, **body: Any) -> int:
    response = await api.post("/api/members", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def found(api: Any, pattern: str, **params: Any) -> list[int]:
    response = await api.get("/api/members", params={"mobile": pattern, **params})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_patterns_are_read_as_people_type_them() -> None:
    for typed in ("138****8000", "138 **** 8000", "138＊＊＊＊8000", "１３８＊＊＊＊８０００", "+86 138****8000",
                  "0086-138-****-8000", "138xxxx8000", "138∗∗∗∗8000"):  # fmt: skip
        assert masked.looks_masked(typed)
        assert masked.parse_masked(typed) == "138****8000", typed
    assert masked.parse_masked("+1 650***0000") == "+1 650***0000"
    assert not masked.looks_masked("13800138000")
    for bad in ("138***8000", "13*****8000", "138****800", "****8000", "abc****8000"):
        with pytest.raises(InvalidMobile):
            masked.parse_masked(bad)


async def test_a_masked_pattern_finds_every_member_it_fits_and_a_full_number_one(make_client: Any) -> None:
    async with make_client(host=make_host()) as api:
        a = await create(api, mobile=SAME_A)
        b = await create(api, mobile="+86 " + SAME_B)
        c = await create(api, mobile=OTHER)
        await create(api, name="无号码")
        for pattern in ("138****8000", "138 **** 8000", "138＊＊＊＊8000", "+86 138****8000"):
            assert await found(api, pattern) == [a, b], pattern
        assert await found(api, "139****9000") == [c]
        assert await found(api, "137****8000") == []
        assert await found(api, SAME_A) == [a]  # a whole number still matches exactly
        assert await found(api, "138****8000", limit=1) == [a]  # and pages like every list
        listed = (await api.get("/api/members", params={"mobile": "138****8000"})).json()
        assert [item["mobile"] for item in listed["items"]] == ["138****8000", "138****8000"]
        assert SAME_A not in str(listed) and SAME_B not in str(listed)
        bad = await api.get("/api/members", params={"mobile": "138***8000"})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
        assert "hides exactly 4 digits" in bad.json()["detail"]
        # the index is a keyed hash, never the masked text
        async with api.db.sessions() as session:
            stored = (
                await session.execute(sa.select(Member.mobile_masked_index).where(Member.id == a))
            ).scalar()
        assert stored is not None and "8000" not in stored and stored.startswith(Vault(_secret(api)).kid)


def _secret(api: Any) -> str:
    return str(api.app.state.settings.secret_key)


async def test_edits_keep_the_index_with_the_number(make_client: Any) -> None:
    async with make_client(host=make_host()) as api:
        a = await create(api, mobile=SAME_A)
        changed = await api.patch(f"/api/members/{a}", json={"mobile": OTHER}, headers={"If-Match": '"v1"'})
        assert changed.status_code == 200, changed.text
        assert await found(api, "139****9000") == [a]
        # the old number stays the member's (a mobile identity, as the whole-number search shows): still found
        assert await found(api, SAME_A) == [a] and await found(api, "138****8000") == [a]
        assert all(i is not None for i in await _identity_indexes(api, a))  # each identity has its index
        cleared = await api.patch(f"/api/members/{a}", json={"mobile": None}, headers={"If-Match": '"v2"'})
        assert cleared.status_code == 200, cleared.text
        async with api.db.sessions() as session:
            profile = (
                await session.execute(sa.select(Member.mobile_masked_index).where(Member.id == a))
            ).scalar()
        assert profile is None  # the profile's index goes with its number
        assert await found(api, "139****9000") == await found(api, OTHER) == [a]  # the identities stay


async def test_members_made_by_ingest_are_found_by_their_masked_mobile(
    make_client: Any, vault: Vault
) -> None:
    async with make_client(host=make_host()) as api:
        ctx = ResolutionContext(host=make_host(), vault=vault, clock=lambda: datetime.now(UTC))
        async with api.db.sessions() as session, session.begin():
            claimed, hinted = await resolve_many(
                session,
                ctx,
                [
                    ClaimSet((IdentityClaim("mobile", SAME_A), IdentityClaim("shop.uid", "U-1"))),
                    # a profile mobile the channel reports without claiming it
                    ClaimSet((IdentityClaim("shop.uid", "U-2"),), profile=BuyerProfile(mobile=SAME_B)),
                ],
            )
            # an existing member without a mobile gets one filled in from a later claim set
            (blank,) = await resolve_many(session, ctx, [ClaimSet((IdentityClaim("shop.uid", "U-3"),))])
            await resolve_many(
                session, ctx, [ClaimSet((IdentityClaim("shop.uid", "U-3"), IdentityClaim("mobile", OTHER)))]
            )
        assert await found(api, "138****8000") == sorted([claimed.member_id, hinted.member_id])
        assert await found(api, "139****9000") == [blank.member_id]


async def test_a_merge_carries_the_index_and_its_undo_takes_it_back(make_client: Any) -> None:
    async with make_client(host=make_host()) as api:
        survivor = await create(api, name="甲")
        absorbed = await create(api, mobile=SAME_A)
        merged = await api.post(
            "/api/merges", json={"survivor_id": survivor, "absorbed_id": absorbed, "reason": "same customer"}
        )
        assert merged.status_code == 201, merged.text
        assert await found(api, "138****8000") == [survivor]
        undone = await api.post(f"/api/merges/{merged.json()['id']}/undo")
        assert undone.status_code == 200, undone.text
        assert await found(api, "138****8000") == [absorbed]
        async with api.db.sessions() as session:
            index = (
                await session.execute(sa.select(Member.mobile_masked_index).where(Member.id == survivor))
            ).scalar()
        assert index is None


async def test_an_erased_member_is_not_found_by_its_masked_mobile(make_client: Any) -> None:
    async with make_client(host=make_host()) as api:
        a = await create(api, mobile=SAME_A)
        erased = await api.post(f"/api/members/{a}/erasure", json={"reason": "request #7"})
        assert erased.status_code == 200, erased.text
        assert await found(api, "138****8000") == []
        assert await found(api, "138****8000", status="erased") == []
        async with api.db.sessions() as session:
            index = (
                await session.execute(sa.select(Member.mobile_masked_index).where(Member.id == a))
            ).scalar()
        assert index is None


async def test_the_backfill_indexes_what_lacks_an_index_in_batches_and_can_run_again(
    make_client: Any,
) -> None:
    async with make_client(host=make_host()) as api:
        ids = [await create(api, mobile=f"138{n:04d}8000") for n in range(5)]
        await create(api, name="无号码")
        vault = Vault(_secret(api))
        # as the rows were before revision 0024, plus a stale index left on a member without a mobile
        async with api.db.sessions() as session, session.begin():
            await session.execute(sa.update(Member).values(mobile_masked_index=None))
            await session.execute(sa.update(Identity).values(masked_index=None))  # and before 0033
            await session.execute(
                sa.update(Member).where(Member.mobile_enc.is_(None)).values(mobile_masked_index="x.y")
            )
        assert await found(api, "138****8000") == []
        async with api.db.read_sessions() as session:
            assert await masked.count_unindexed(session, vault) == 10  # 5 profiles, 5 mobile identities
        batches: list[int] = []
        report = await masked.index_masked_mobiles(api.db.sessions, vault, batch=2, progress=batches.append)
        assert (report.indexed, report.identities, report.cleared, report.unreadable) == (5, 5, 1, 0)
        assert batches == [2, 2, 1, 2, 2, 1]
        assert await found(api, "138****8000") == ids
        # a run stopped halfway is finished by the next one, which touches only what is left
        async with api.db.sessions() as session, session.begin():
            await session.execute(
                sa.update(Member).where(Member.id.in_(ids[3:])).values(mobile_masked_index=None)
            )
        again = await masked.index_masked_mobiles(api.db.sessions, vault, batch=2)
        assert (again.indexed, again.cleared) == (2, 0)
        assert (await masked.index_masked_mobiles(api.db.sessions, vault)).indexed == 0
        assert await found(api, "138****8000") == ids


async def test_the_periodic_job_fills_the_index_in_shares(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgraded installation finds its members by masked mobile without anyone running the command."""
    from types import SimpleNamespace

    from tongcrm.config import Settings
    from tongcrm.members import jobs

    async with make_client(host=make_host()) as api:
        ids = [await create(api, mobile=f"139{n:04d}7000") for n in range(3)]
        async with api.db.sessions() as session, session.begin():
            await session.execute(sa.update(Member).values(mobile_masked_index=None))
            await session.execute(sa.update(Identity).values(masked_index=None))
        settings = Settings(database_url=api.db.url, secret_key=_secret(api))
        ctx: Any = SimpleNamespace(sessions=api.db.sessions, services={"settings": settings})
        monkeypatch.setattr(jobs, "PER_RUN", 2)
        await jobs.index_masked(ctx, {})  # a share: two of the three
        assert len(await found(api, "139****7000")) == 2
        await jobs.index_masked(ctx, {})  # the third profile, then the identities' turn
        assert await found(api, "139****7000") == ids
        await jobs.index_masked(ctx, {})
        async with api.db.read_sessions() as session:
            assert await masked.count_unindexed(session, Vault(_secret(api))) == 0
        await jobs.index_masked(SimpleNamespace(sessions=api.db.sessions, services={}), {})  # no key: nothing


def test_the_backfill_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'masked.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "masked-secret-key-0123456789abcdef")
    host = PluginHost(autoload=True, disabled=set())

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)

    upgraded = invoke("db", "upgrade")
    assert upgraded.exit_code == 0 and "index-masked" not in upgraded.output  # a new database: nothing to do

    async def old_member() -> None:  # a member as written before revision 0024
        vault = Vault("masked-secret-key-0123456789abcdef")
        engine = create_engine(f"sqlite:///{tmp_path / 'masked.sqlite3'}")
        try:
            async with session_factory(engine)() as session, session.begin():
                session.add(Member(mobile_enc=vault.encrypt("+8613800138000", context=MOBILE_CONTEXT)))
        finally:
            await engine.dispose()

    asyncio.run(old_member())
    hinted = invoke("db", "upgrade")
    assert hinted.exit_code == 0 and "1 member mobile(s) have no masked-mobile index" in hinted.output
    first = invoke("member", "index-masked", "--batch", "10")
    assert first.exit_code == 0 and "masked mobiles indexed: 1" in first.output
    assert "index-masked" not in invoke("db", "upgrade").output
    assert "masked mobiles indexed: 0" in invoke("member", "index-masked").output  # a second run: nothing


# -------------------------------------------------------------------------------------------------------------
# a member's other numbers: every mobile identity keeps its own masked index (revision 0033)


async def _identity_indexes(api: Any, member_id: int) -> list[str | None]:
    async with api.db.sessions() as session:
        rows = await session.execute(
            sa.select(Identity.masked_index)
            .where(Identity.member_id == member_id, Identity.kind == "mobile")
            .order_by(Identity.id)
        )
        return list(rows.scalars())


async def test_a_second_mobile_identity_is_found_by_its_masked_form(make_client: Any, vault: Vault) -> None:
    async with make_client(host=make_host()) as api:
        ctx = ResolutionContext(host=make_host(), vault=vault, clock=lambda: datetime.now(UTC))
        async with api.db.sessions() as session, session.begin():
            (first,) = await resolve_many(
                session, ctx, [ClaimSet((IdentityClaim("shop.uid", "U-9"), IdentityClaim("mobile", SAME_A)))]
            )
            # the same buyer later shows another number: a second mobile identity, the profile keeps the first
            (again,) = await resolve_many(
                session, ctx, [ClaimSet((IdentityClaim("shop.uid", "U-9"), IdentityClaim("mobile", OTHER)))]
            )
        member = first.member_id
        assert again.member_id == member
        assert await found(api, "139****9000") == [member]  # the second number
        assert await found(api, "138****8000") == [member]  # the profile's, found once
        assert await found(api, OTHER) == [member]  # as the whole number always was
        indexes = await _identity_indexes(api, member)
        assert len(indexes) == 2 and all(i is not None and "9000" not in i for i in indexes)


async def test_merge_undo_and_erasure_carry_the_other_numbers(make_client: Any) -> None:
    async with make_client(host=make_host()) as api:
        survivor = await create(api, mobile=SAME_A)
        absorbed = await create(api, mobile=OTHER)
        merged = await api.post(
            "/api/merges", json={"survivor_id": survivor, "absorbed_id": absorbed, "reason": "same customer"}
        )
        assert merged.status_code == 201, merged.text
        # the survivor keeps its profile number and is found by the one the merge brought
        assert await found(api, "139****9000") == [survivor]
        assert await found(api, "138****8000") == [survivor]
        undone = await api.post(f"/api/merges/{merged.json()['id']}/undo")
        assert undone.status_code == 200, undone.text
        assert await found(api, "139****9000") == [absorbed]
        assert await found(api, "138****8000") == [survivor]
        erased = await api.post(f"/api/members/{absorbed}/erasure", json={"reason": "request #8"})
        assert erased.status_code == 200, erased.text
        assert await found(api, "139****9000") == []
        assert await found(api, "139****9000", status="erased") == []


async def test_the_backfill_indexes_mobile_identities_too(make_client: Any) -> None:
    async with make_client(host=make_host()) as api:
        a = await create(api, mobile=SAME_A)
        changed = await api.patch(f"/api/members/{a}", json={"mobile": OTHER}, headers={"If-Match": '"v1"'})
        assert changed.status_code == 200, changed.text
        vault = Vault(_secret(api))
        async with api.db.sessions() as session, session.begin():  # as the rows were before revision 0033
            await session.execute(sa.update(Identity).values(masked_index=None))
        assert await found(api, "138****8000") == []  # the old number is on no profile any more
        async with api.db.read_sessions() as session:
            assert await masked.count_unindexed(session, vault) == 2
        report = await masked.index_masked_mobiles(api.db.sessions, vault, batch=1)
        assert (report.indexed, report.identities, report.unreadable_identities) == (0, 2, 0)
        assert await found(api, "138****8000") == [a]
        assert (await masked.index_masked_mobiles(api.db.sessions, vault)).identities == 0
