"""Rotating the secret key: everything stored under an old key moves to the current one, so the old can go."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm import rotation
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import SYSTEM
from tongcrm.channels.models import ChannelAccount
from tongcrm.channels.service import SECRETS_CONTEXT as CHANNEL_SECRETS
from tongcrm.cli import Context, build_cli
from tongcrm.crypto import Vault
from tongcrm.identity.models import Identity
from tongcrm.members import service as members
from tongcrm.members.phone import MOBILE_CONTEXT, MOBILE_INDEX_PURPOSE
from tongcrm.messaging import service as messaging
from tongcrm.messaging.models import MessengerAccount, SmsOptOut
from tongcrm.messaging.service import SECRETS_CONTEXT as MESSENGER_SECRETS
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase

OLD = "old-secret-key-0123456789abcdef"
NEW = "new-secret-key-0123456789abcdef"
AT = datetime(2026, 11, 11, tzinfo=UTC)
MOBILES = ("13800138000", "13900139000", "13700137000")


async def _seed_under(db: TestDatabase, vault: Vault) -> None:
    async with db.sessions() as session, session.begin():
        for i, mobile in enumerate(MOBILES):
            await members.create_member(session, vault, {"name": f"会员{i}", "mobile": mobile}, [], SYSTEM)
        session.add(
            ChannelAccount(
                channel="taobao",
                name="tmall-flagship",
                settings={},
                secrets=vault.encrypt(json.dumps({"app_secret": "s3cret"}), context=CHANNEL_SECRETS),
                secret_names=["app_secret"],
            )
        )
        session.add(
            MessengerAccount(
                messenger="aliyun_sms",
                name="sms",
                settings={},
                secrets=vault.encrypt(json.dumps({"access_key_secret": "k"}), context=MESSENGER_SECRETS),
                secret_names=["access_key_secret"],
            )
        )
        # opt-outs: of a member's number, of a number no member has, and one recorded before opt-outs kept
        # their number (revision 0004) of a number no member has
        await messaging.record_opt_out(session, vault, "+8613800138000", "品牌", "TD", AT, members=[])
        await messaging.record_opt_out(session, vault, "+8613600136000", "品牌", "TD", AT, members=[])
        await session.execute(
            sa.insert(SmsOptOut).values(
                mobile_index=vault.blind_index("+8613500135000", purpose=MOBILE_INDEX_PURPOSE),
                signature="品牌",
                keyword="TD",
                at=AT,
            )
        )


async def _usage(db: TestDatabase, vault: Vault) -> rotation.KeyUsage:
    async with db.read_sessions() as session, session.begin():
        return await rotation.key_usage(session, vault)


async def test_rotation_moves_everything_it_can_and_the_new_key_alone_then_reads_it(
    tongcrm_db: TestDatabase,
) -> None:
    old, new = Vault(OLD), Vault(NEW)
    both = Vault(NEW, [OLD])
    await _seed_under(tongcrm_db, old)
    before = await _usage(tongcrm_db, both)
    assert before.current == new.kid != old.kid
    assert before.by_store == {
        "member mobiles": {old.kid: 3},
        "channel account secrets": {old.kid: 1},
        "messenger account secrets": {old.kid: 1},
        "quarantined records": {},
        "sms inbound payloads": {},
        rotation.MOBILE_IDENTITIES: {old.kid: 3},
        rotation.OPT_OUTS: {old.kid: 3},
        rotation.MASKED_MOBILES: {old.kid: 3},
        rotation.MASKED_IDENTITIES: {old.kid: 3},
    }
    assert before.stranded_opt_outs == 1 and before.left_on_old_keys() == 17
    assert (
        before.unindexed_masked_mobiles == 6
    )  # their masked indexes (profiles, identities) are under the old key

    report = await rotation.rotate(tongcrm_db.sessions, both, batch=2)  # several batches of each
    assert report.moved == {
        "member mobiles": 3,
        "channel account secrets": 1,
        "messenger account secrets": 1,
        rotation.MOBILE_IDENTITIES: 3,
        rotation.OPT_OUTS: 2,
        rotation.MASKED_MOBILES: 3,
    }
    assert not report.unreadable and not report.conflicts
    after = await _usage(tongcrm_db, both)
    assert after.by_store[rotation.MOBILE_IDENTITIES] == {new.kid: 3}
    assert after.by_store[rotation.OPT_OUTS] == {new.kid: 2, old.kid: 1}
    assert after.by_store[rotation.MASKED_MOBILES] == {new.kid: 3} and after.unindexed_masked_mobiles == 0
    # the identities' masked indexes moved with their blind index, in the same statement
    assert after.by_store[rotation.MASKED_IDENTITIES] == {new.kid: 3}
    assert after.left_on_old_keys() == 1 and after.stranded_opt_outs == 1  # the old one nobody's number names

    # with the old key gone, the new one finds members by mobile, reads their numbers and the accounts'
    # secrets, and still honours the member's opt-out
    host = PluginHost(autoload=False)
    async with tongcrm_db.sessions() as session:
        member = await members.lookup(session, new, host, mobile=MOBILES[1])
        # and by the masked form a platform shows
        listed, _ = await members.list_members(
            session, new, members.MemberQuery(mobile="139****9000"), SYSTEM
        )
        assert [m.id for m in listed] == [member.id]
        assert member.mobile_enc is not None
        assert new.decrypt(member.mobile_enc, context=MOBILE_CONTEXT) == "+86" + MOBILES[1]
        account = (await session.execute(sa.select(ChannelAccount))).scalar_one()
        assert account.secrets is not None
        assert json.loads(new.decrypt(account.secrets, context=CHANNEL_SECRETS)) == {"app_secret": "s3cret"}
        for number in ("+8613800138000", "+8613600136000"):
            indexes = new.blind_indexes(number, purpose=MOBILE_INDEX_PURPOSE)
            assert await messaging.opted_out_indexes(session, indexes, "品牌") == set(indexes)
        actions = (await session.execute(sa.select(AuditEntry.action))).scalars().all()
    assert actions.count("keys.rotate") == 1

    again = await rotation.rotate(tongcrm_db.sessions, both)  # safe to run again: nothing left to move
    assert again.moved == {} and not again.unreadable


async def test_values_no_configured_key_reads_are_reported_and_left_as_they_are(
    tongcrm_db: TestDatabase,
) -> None:
    await _seed_under(tongcrm_db, Vault(OLD))
    report = await rotation.rotate(tongcrm_db.sessions, Vault(NEW))  # the old key dropped too early
    assert report.moved == {}
    assert report.unreadable == {
        "member mobiles": 3,
        "channel account secrets": 1,
        "messenger account secrets": 1,
        rotation.MOBILE_IDENTITIES: 3,
        rotation.OPT_OUTS: 2,
        rotation.MASKED_MOBILES: 3,
        rotation.MASKED_IDENTITIES: 3,
    }
    usage = await _usage(tongcrm_db, Vault(NEW, [OLD]))
    assert usage.by_store["member mobiles"] == {Vault(OLD).kid: 3}


def test_keys_commands_show_what_is_left_and_move_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", OLD)
    host = PluginHost(autoload=True, disabled=set())

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)

    assert invoke("db", "upgrade").exit_code == 0
    assert "nothing is left under old keys" in invoke("keys", "status").output
    monkeypatch.setenv("TONGCRM_SECRET_KEY", NEW)
    monkeypatch.setenv("TONGCRM_OLD_SECRET_KEYS", OLD)
    status = invoke("keys", "status")
    assert status.exit_code == 0 and "run `tongcrm keys rotate`" not in status.output  # nothing stored yet
    assert invoke("channel", "add", "taobao", "--name", "shop", "--app-key", "k", "--app-secret", "s",
                  "--session", "x").exit_code == 0  # fmt: skip
    monkeypatch.setenv("TONGCRM_SECRET_KEY", OLD)  # a value stored before the switch
    monkeypatch.delenv("TONGCRM_OLD_SECRET_KEYS")
    assert invoke("channel", "add", "taobao", "--name", "shop2", "--app-key", "k", "--app-secret", "s",
                  "--session", "x").exit_code == 0  # fmt: skip
    monkeypatch.setenv("TONGCRM_SECRET_KEY", NEW)
    monkeypatch.setenv("TONGCRM_OLD_SECRET_KEYS", OLD)
    assert "1 value(s) under old keys" in invoke("keys", "status").output
    rotated = invoke("keys", "rotate")
    assert rotated.exit_code == 0 and "1 channel account secrets" in rotated.output
    assert "nothing is left under old keys" in invoke("keys", "status").output


async def test_one_number_on_two_members_is_left_for_an_operator_and_its_opt_out_kept_once(
    tongcrm_db: TestDatabase,
) -> None:
    old, new = Vault(OLD), Vault(NEW)
    both = Vault(NEW, [OLD])
    number = "+86" + MOBILES[0]
    async with tongcrm_db.sessions() as session, session.begin():
        first = await members.create_member(session, old, {"name": "甲", "mobile": MOBILES[0]}, [], SYSTEM)
        await messaging.record_opt_out(session, old, number, "品牌", "TD", AT, members=[])
    async with tongcrm_db.sessions() as session, session.begin():
        second = await members.create_member(session, new, {"name": "乙", "mobile": MOBILES[1]}, [], SYSTEM)
        # the same number claimed for another member under the new key, and opted out under it too
        session.add(
            Identity(
                kind="mobile",
                value=new.blind_index(number, purpose=MOBILE_INDEX_PURPOSE),
                value_enc=new.encrypt(number, context=MOBILE_CONTEXT),
                member_id=second.id,
                evidence="test",
                first_seen_at=AT,
                last_seen_at=AT,
            )
        )
        await messaging.record_opt_out(session, new, number, "品牌", "TD", AT, members=[])
        stale = (
            await session.execute(
                sa.select(Identity.id).where(Identity.member_id == first.id, Identity.kind == "mobile")
            )
        ).scalar_one()

    report = await rotation.rotate(tongcrm_db.sessions, both)
    assert report.conflicts == [stale]
    assert report.moved.get(rotation.MOBILE_IDENTITIES, 0) == 0
    usage = await _usage(tongcrm_db, both)
    assert usage.by_store[rotation.MOBILE_IDENTITIES] == {old.kid: 1, new.kid: 2}
    assert usage.by_store[rotation.OPT_OUTS] == {new.kid: 1}  # the old copy gave way to the one already there


async def test_sealed_payloads_move_to_the_new_key_and_plain_ones_are_sealed(
    tongcrm_db: TestDatabase,
) -> None:
    """Quarantined records and SMS inbound payloads are ciphertexts like mobiles; those stored in plain text
    before they were sealed (issue #18) are counted as ``clear`` and sealed by the rotation."""
    from tongcrm.channels.models import QuarantinedRecord
    from tongcrm.messaging.models import InboundRecord
    from tongcrm.privacy.sealed import INBOUND_PAYLOAD, QUARANTINE_PAYLOAD, is_sealed, seal, unseal

    old, both = Vault(OLD), Vault(NEW, [OLD])
    await _seed_under(tongcrm_db, old)
    raw = '{"receiver_mobile": "13800138000"}'
    async with tongcrm_db.sessions() as session, session.begin():
        shop = (await session.execute(sa.select(ChannelAccount.id))).scalar_one()
        sms = (await session.execute(sa.select(MessengerAccount.id))).scalar_one()
        for i, payload in enumerate([seal(old, raw, context=QUARANTINE_PAYLOAD), raw]):
            session.add(QuarantinedRecord(account_id=shop, reason="r", payload=payload, fingerprint=f"f{i}"))
        for i, payload in enumerate([seal(old, "TD", context=INBOUND_PAYLOAD), "v1.2 plain reply", ""]):
            session.add(InboundRecord(account_id=sms, kind="reply", dedupe_key=f"k{i}", payload=payload))
    before = await _usage(tongcrm_db, both)
    assert before.by_store["quarantined records"] == {old.kid: 1, rotation.CLEAR: 1}
    assert before.by_store["sms inbound payloads"] == {old.kid: 1, rotation.CLEAR: 1}

    report = await rotation.rotate(tongcrm_db.sessions, both, batch=1)
    assert report.moved["quarantined records"] == 2 and report.moved["sms inbound payloads"] == 2
    after = await _usage(tongcrm_db, both)
    assert after.by_store["quarantined records"] == {both.kid: 2}
    assert after.by_store["sms inbound payloads"] == {both.kid: 2}
    new_alone = Vault(NEW)
    async with tongcrm_db.sessions() as session:
        records = (await session.execute(sa.select(QuarantinedRecord.payload))).scalars().all()
        replies = (
            (await session.execute(sa.select(InboundRecord.payload).order_by(InboundRecord.dedupe_key)))
            .scalars()
            .all()
        )
    assert all(is_sealed(p) for p in records)
    assert [unseal(new_alone, p, context=QUARANTINE_PAYLOAD) for p in records] == [raw, raw]
    assert [unseal(new_alone, p, context=INBOUND_PAYLOAD) for p in replies] == ["TD", "v1.2 plain reply", ""]
