"""Gateway faults lose no message; the callback routes record receipts and opt-outs, idempotently."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from messaging_kit import SECRET_KEY, SIGN, Clock, World, beijing, dump, fake_gateway, sms_host
from tongcrm.config import Settings
from tongcrm.messaging import service
from tongcrm.plugin.types import DeliveryReceipt
from tongcrm.testing.database import TestDatabase

pytestmark = pytest.mark.asyncio

#: How long a timed-out request's permits stay taken (the product's default is a minute): the fake gateway
#: answers the delayed request 1.5 s after it was sent, so a hold of a few seconds still covers its late arrival,
#: and the run after the timeout waits this long rather than a minute for the window to open again.
IN_DOUBT_HOLD = timedelta(seconds=5)


def world(db: TestDatabase, clock: Clock) -> World:
    return World(db.sessions, Settings(database_url=db.url, secret_key=SECRET_KEY).vault(), sms_host(), clock)


@pytest.mark.slow(seconds=10)
async def test_flow_control_timeouts_and_balance_exhaustion_lose_nothing(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock, balance=5) as (fake, url):
        # requests of at most 4 messages, so that the timeout leaves only one request's messages in doubt
        await w.setup(url, timeout_seconds="0.5", max_send_rate="4")
        members = [await w.member(i, name=f"会员{i}") for i in range(12)]
        targets = [service.Target(m, await w.order(m, f"F{i}")) for i, m in enumerate(members)]
        async with w.sessions() as session, session.begin():
            notice = await service.get_template(session, "order_notice")
            await service.queue_messages(session, "flow.shipping_notice", notice, targets, now=clock())
        fake.inject_system_errors(1)
        fake.inject_delay(1.5, requests=1)
        for _ in range(6):
            await w.dispatcher(rate_in_flight=IN_DOUBT_HOLD).run()
            messages = await w.messages()
            # nothing is lost: each ends sent, in doubt (no answer in time), or waits queued to retry with the
            # gateway's code
            for m in messages:
                assert m.status in {"sent", "queued", "in_doubt"}, dump(messages)
                if m.status == "in_doubt":
                    assert (m.code, m.reason) == ("tongcrm.TIMEOUT", "no_answer") and m.sent_at, dump(
                        messages
                    )
                if m.status == "queued":
                    assert m.reason in {"retry_later", "account_paused"} and m.code, dump(messages)
            async with w.sessions() as session:
                (account,) = await service.list_accounts(session)
            if account.status == "paused":
                break
            clock.advance(minutes=10)
        assert account.status == "paused" and account.status_code == "isv.AMOUNT_NOT_ENOUGH"
        assert {"isp.SYSTEM_ERROR", "isv.AMOUNT_NOT_ENOUGH"} <= set(fake.refusals)
        assert sum(m.status == "sent" for m in messages) <= len(fake.accepted) <= 5

        # paused: nothing is claimed, nothing sent
        clock.advance(minutes=10)
        again = await w.dispatcher(rate_in_flight=IN_DOUBT_HOLD).run()
        assert again.claimed == 0

        # top up, resume: everything else goes; the timed-out request (accepted after all) is never sent again
        fake.balance = 100
        async with w.sessions() as session, session.begin():
            await service.resume_account(session, w.account)
        for _ in range(5):
            clock.advance(minutes=10)
            await w.dispatcher(rate_in_flight=IN_DOUBT_HOLD).run()
        messages = await w.messages()
        doubtful = [m for m in messages if m.status == "in_doubt"]
        assert doubtful and all(m.status in {"sent", "in_doubt"} for m in messages), dump(messages)
        accepted = [a.params["order_id"] for a in fake.accepted]
        assert len(set(accepted)) == len(accepted), accepted  # none twice
        # every sent message reached the gateway; an in-doubt one may or may not have (it arrived late)
        assert 12 - len(doubtful) <= len(accepted) <= 12, accepted

        # a delivery report naming our message id settles the doubt
        async with w.sessions() as session, session.begin():
            await service.record_receipts(
                session,
                w.vault,
                account.id,
                [DeliveryReceipt(str(doubtful[0].id), None, True, "DELIVERED", clock(), "r1")],
            )
        (settled,) = await w.messages(id=doubtful[0].id)
        assert (settled.status, settled.code) == ("delivered", "DELIVERED")


async def test_callback_routes_record_receipts_and_opt_outs_once(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        with fake_gateway(clock) as (fake, url):
            await w.setup(url)
            member = await w.member(1)
            order = await w.order(member, "R1")
            async with w.sessions() as session, session.begin():
                notice = await service.get_template(session, "order_notice")
                await service.queue_messages(
                    session, "flow.shipping_notice", notice, [service.Target(member, order)], now=clock()
                )
            await w.dispatcher().run()
            (accepted,) = fake.accepted

        listing = await api.get("/api/messenger-accounts")
        assert listing.status_code == 200, listing.text
        token = listing.json()[0]["callback_token"]
        assert listing.json()[0]["status"] == "active"
        report = [
            {
                "phone_number": accepted.phone,
                "send_time": "2024-05-01 10:00:00",
                "report_time": "2024-05-01 10:00:05",
                "success": True,
                "err_code": "DELIVERED",
                "err_msg": "用户接收成功",
                "sms_size": "1",
                "biz_id": accepted.biz_id,
                "out_id": accepted.out_id,
            },
            {"phone_number": "not-a-number"},
        ]
        bad = await api.post("/sms/aliyun/sms/report?token=wrong", json=report, headers={"Authorization": ""})
        assert bad.status_code == 401
        for _ in range(2):  # Aliyun retries the same push
            ok = await api.post(
                f"/sms/aliyun/sms/report?token={token}", json=report, headers={"Authorization": ""}
            )
            assert ok.status_code == 200 and ok.json() == {"code": 0, "msg": "接收成功"}
        messages = (await api.get(f"/api/messages?member_id={member}&flow=shipping_notice")).json()
        assert [m["status"] for m in messages] == ["delivered"]
        assert messages[0]["code"] == "DELIVERED"

        reply = [
            {
                "phone_number": accepted.phone,
                "send_time": "2024-05-01 10:01:00",
                "content": "ＴＤ",
                "sign_name": SIGN,
                "dest_code": "",
                "sequence_id": 77,
            }
        ]
        for _ in range(2):
            ok = await api.post(
                f"/sms/aliyun/sms/up?token={token}", json=reply, headers={"Authorization": ""}
            )
            assert ok.json() == {"code": 0, "msg": "接收成功"}
        async with w.sessions() as session, session.begin():
            promo = await service.get_template(session, "promo")
            await service.queue_messages(
                session, "campaign.after", promo, [service.Target(member)], now=clock()
            )
        await w.dispatcher().run()
        (refused,) = (await api.get("/api/messages?flow=campaign.after")).json()
        assert (refused["status"], refused["reason"]) == ("refused", "opted_out")
        from tongcrm.consent.service import consent_states

        async with w.sessions() as session:
            states = await consent_states(session, member)
        assert [(s.purpose, s.signature, s.status) for s in states if s.source == "sms_reply"] == [
            ("marketing", SIGN, "opt_out")
        ]
        reports = (await api.get("/api/care-flows")).json()
        shipping = next(r for r in reports if r["flow"] == "shipping_notice")
        assert shipping["statuses"]["delivered"] == 1


@pytest.mark.slow(seconds=10)
async def test_an_operator_settles_in_doubt_messages_as_sent_failed_or_resent(
    tongcrm_db: TestDatabase,
    make_client: Callable[..., Any],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timed-out batch request leaves its messages in doubt for good unless a report comes: the operator
    settles them (API and CLI), audited, all or none, and a resend only with the explicit confirmation."""
    from click.testing import CliRunner
    from tongcrm.cli import Context, build_cli

    clock = Clock(beijing(2024, 5, 1, 10))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        with fake_gateway(clock) as (fake, url):
            await w.setup(url, timeout_seconds="0.5", max_send_rate="4")
            members = [await w.member(i) for i in range(4)]
            targets = [service.Target(m, await w.order(m, f"D{i}")) for i, m in enumerate(members)]
            async with w.sessions() as session, session.begin():
                notice = await service.get_template(session, "order_notice")
                await service.queue_messages(session, "flow.shipping_notice", notice, targets, now=clock())
            fake.inject_delay(1.5, requests=1)  # one request of four recipients times out
            await w.dispatcher(rate_in_flight=IN_DOUBT_HOLD).run()
            doubtful = [m.id for m in await w.messages() if m.status == "in_doubt"]
            assert len(doubtful) == 4, dump(await w.messages())
            a, b, c, d = doubtful

            async def settle(ids: list[int], outcome: str, **more: Any) -> Any:
                body = {"message_ids": ids, "outcome": outcome, "note": "checked the Aliyun console", **more}
                return await api.post("/api/messages/settle", json=body)

            unconfirmed = await settle([c, d], "resend")
            assert unconfirmed.status_code == 422 and unconfirmed.json()["reason"] == "resend_not_confirmed"
            sent = await settle([a], "sent")
            assert sent.status_code == 200, sent.text
            assert [(m["id"], m["status"]) for m in sent.json()["messages"]] == [(a, "sent")]
            again = await settle([a, b], "failed")  # a is settled already: nothing changes, b included
            assert again.status_code == 409 and again.json()["not_in_doubt"] == [a]
            unknown = await settle([b, 2**40], "failed")
            assert unknown.status_code == 404
            assert [m.status for m in await w.messages(id=b)] == ["in_doubt"]

            # the CLI: the same service, as the cli actor
            monkeypatch.setenv("TONGCRM_DATABASE_URL", tongcrm_db.url)
            monkeypatch.setenv("TONGCRM_SECRET_KEY", SECRET_KEY)

            async def cli(*args: str) -> Any:  # the command runs its own event loop: in a thread
                return await asyncio.to_thread(
                    CliRunner().invoke, build_cli(host), list(args), obj=Context(host)
                )

            listed_ = await cli("messages", "in-doubt")
            # stdout alone: the command's data (a line another thread logs meanwhile goes to stderr)
            assert listed_.exit_code == 0 and [int(line.split()[0]) for line in listed_.stdout.splitlines()] == [
                b, c, d,
            ]  # fmt: skip
            failed = await cli(
                "messages", "settle", str(b), "--as", "failed", "--note", "the member never got it"
            )
            assert failed.exit_code == 0 and f"message {b}: failed" in failed.output, failed.output
            refused = await cli(
                "messages", "settle", str(c), str(d), "--as", "resend", "--note", "not in the console"
            )
            assert refused.exit_code != 0 and "--resend-confirmed" in str(
                refused.exception
            )  # main() prints it
            resent = await cli(
                "messages", "settle", str(c), str(d), "--as", "resend", "--note", "x", "--resend-confirmed"
            )
            assert resent.exit_code == 0, resent.output
            assert [m.status for m in await w.messages() if m.id in (c, d)] == ["queued", "queued"]
            for _ in range(
                100
            ):  # the timed-out request is answered late: the gateway took all four after all
                if len(fake.accepted) == 4:
                    break
                await asyncio.sleep(0.05)
            before = len(fake.accepted)
            assert before == 4
            # queued again at the wall clock's now (the CLI's): the dispatcher's clock moves past it
            from datetime import UTC, datetime

            clock.advance(seconds=(datetime.now(UTC) - clock()).total_seconds() + 60)
            await w.dispatcher(rate_in_flight=IN_DOUBT_HOLD).run()
            assert [m.status for m in await w.messages() if m.id in (c, d)] == ["sent", "sent"]
            assert len(fake.accepted) == before + 2  # sent twice: the duplicate the operator accepted
            none_left = await cli("messages", "in-doubt")
            # no message line, and the operator is told why (on stderr: stdout stays one line a message)
            assert none_left.exit_code == 0 and none_left.stdout == ""
            assert "no message is in doubt" in none_left.stderr

        audit = (await api.get("/api/audit", params={"object_type": "message"})).json()
        entries = audit["items"] if isinstance(audit, dict) else audit
        settled = sorted(
            (e["object_id"], e["after"]["outcome"]) for e in entries if e["action"] == "message.settle"
        )
        assert settled == sorted(
            [(str(a), "sent"), (str(b), "failed"), (str(c), "resend"), (str(d), "resend")]
        )
        notes = {e["object_id"]: e["after"]["note"] for e in entries if e["action"] == "message.settle"}
        assert notes[str(b)] == "the member never got it" and notes[str(a)] == "checked the Aliyun console"
