"""The dispatcher: claims due messages, asks the contact policy, sends through the messengers, records results.

One dispatcher runs at a time (a lease, ``messaging.dispatch``), which keeps the fatigue budget exact without
per-message locking: budgets are read, decided and written in the batch's transaction. Each batch is:

0. let the send-log feeders (:mod:`.feed`) write their next page — a campaign run's messages are written as
   they are drained, not all at once when the run starts;
1. claim up to ``batch`` due messages of active accounts, service before marketing (``queued`` → ``sending``,
   with a lock that expires, so a dispatcher that dies leaves nothing stuck);
2. decide every message with the policy on facts loaded in bulk; refusals are final with their reason,
   marketing in quiet hours waits for the window; allowed messages charge the member's budget once;
3. send through each account's messenger (outside any transaction);
4. record results: ``sent``; ``retry_later`` → queued again with backoff (``failed`` after ``max_attempts``);
   ``failed_number``/``failed_message`` → failed; ``failed_account`` → the account pauses and the message waits;
   ``in_doubt`` → status ``in_doubt``, never sent again.

Nothing is lost: every claimed message ends sent, failed, refused or in doubt with a code or reason, or queued to
retry. A request that may have been accepted and got no answer (a read timeout) is *not* retried: a retry could
send the member the same SMS twice, and protocols.md §3 documents no API to ask the gateway about the first
attempt. The message stays ``in_doubt`` (its code says why) until a delivery report matched by its message id
(Aliyun echoes ``OutId``) or provider id settles it as delivered or failed, or the operator settles it as sent,
failed or to resend (:mod:`.settle`); see :mod:`tongcrm_sms_gateway.messenger`, "Timeouts".

The send rate a messenger account is configured with is one window for every run and process: the dispatcher
gives each messenger the account's :class:`~tongcrm.messaging.ratewindow.DatabaseRateGate`.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.consent import service as consent
from tongcrm.crypto import Vault
from tongcrm.db.dialect import insert
from tongcrm.jobs import leases
from tongcrm.jobs.runner import backoff
from tongcrm.logging import get_logger
from tongcrm.members.models import ERASED, Member
from tongcrm.members.phone import MOBILE_CONTEXT, MOBILE_INDEX_PURPOSE
from tongcrm.members.service import resolve_live_ids
from tongcrm.messaging import feed, service, variables
from tongcrm.messaging.holdout import HOLDOUT_REASON
from tongcrm.messaging.models import ContactBudget, Message, MessageTemplate, MessengerAccount
from tongcrm.messaging.policy import Decision, Facts, PolicyConfig, Verdict, decide, programme_day
from tongcrm.messaging.ratewindow import IN_FLIGHT, DatabaseRateGate
from tongcrm.messaging.templates import fill
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import Messenger, OutboundMessage, SendOutcome, SendResult
from tongcrm.privacy.redact import redact

log = get_logger(__name__)

LEASE = "messaging.dispatch"


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    refused: int = 0
    deferred: int = 0
    retrying: int = 0
    failed: int = 0
    in_doubt: int = 0
    paused_accounts: list[str] = field(default_factory=list)

    def add(self, other: DispatchStats) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.refused += other.refused
        self.deferred += other.deferred
        self.retrying += other.retrying
        self.failed += other.failed
        self.in_doubt += other.in_doubt
        self.paused_accounts.extend(other.paused_accounts)


@dataclass(frozen=True, slots=True)
class _ToSend:
    message_id: int
    member_id: int
    account_id: int
    attempts: int
    outbound: OutboundMessage


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        host: PluginHost,
        vault: Vault,
        config: PolicyConfig | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
        worker_id: str | None = None,
        batch: int = 1000,
        lock_ttl: timedelta = timedelta(minutes=5),
        max_attempts: int = 10,
        retry_base: float = 30.0,
        rate_in_flight: timedelta = IN_FLIGHT,
    ) -> None:
        self.sessions = sessions
        self.host = host
        self.vault = vault
        self.config = config or PolicyConfig()
        self.clock = clock
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.batch = batch
        self.lock_ttl = lock_ttl
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.rate_in_flight = rate_in_flight
        self._messengers: dict[int, tuple[datetime, Messenger]] = {}

    async def run(self, *, max_batches: int | None = None) -> DispatchStats:
        """Dispatch until nothing is due (or ``max_batches``). Returns at once if another dispatcher runs."""
        total = DispatchStats()
        async with self.sessions() as session, session.begin():
            if not await leases.acquire(session, LEASE, self.worker_id, self.lock_ttl, now=self.clock()):
                log.info("another dispatcher is running", worker=self.worker_id)
                return total
        try:
            batches = 0
            while max_batches is None or batches < max_batches:
                stats = await self.dispatch_batch()
                total.add(stats)
                batches += 1
                if stats.claimed == 0:
                    break
                async with self.sessions() as session, session.begin():
                    await leases.acquire(session, LEASE, self.worker_id, self.lock_ttl, now=self.clock())
        finally:
            async with self.sessions() as session, session.begin():
                await leases.release(session, LEASE, self.worker_id)
            await self.aclose()
        return total

    async def aclose(self) -> None:
        for _, messenger in self._messengers.values():
            try:
                await messenger.aclose()
            except Exception:  # closing must not hide the run's result
                log.exception("messenger failed to close")
        self._messengers.clear()

    # ---------------------------------------------------------------------------------------------------------

    async def dispatch_batch(self) -> DispatchStats:
        stats = DispatchStats()
        # sources written page by page (a campaign run's frozen audience) add their next page first
        await feed.top_up(self.sessions, self.clock(), self.batch)
        ids = await self._claim()
        stats.claimed = len(ids)
        if not ids:
            return stats
        to_send = await self._decide(ids, stats)
        by_account: dict[int, list[_ToSend]] = defaultdict(list)
        for item in to_send:
            by_account[item.account_id].append(item)
        for account_id, items in by_account.items():
            results = await self._send(account_id, items)
            await self._record(account_id, items, results, stats)
        return stats

    async def _claim(self) -> list[int]:
        now = self.clock()
        due = sa.or_(
            sa.and_(Message.status == "queued", Message.next_attempt_at <= now),
            sa.and_(Message.status == "sending", Message.locked_until < now),
        )
        active = sa.select(MessengerAccount.id).where(MessengerAccount.status == "active")
        pick = (
            sa.select(Message.id)
            .where(due, Message.account_id.in_(active))
            .order_by(Message.priority, Message.next_attempt_at, Message.id)
            .limit(self.batch)
            .with_for_update(skip_locked=True)
        )
        async with self.sessions() as session, session.begin():
            ids = list((await session.execute(pick)).scalars())
            if not ids:
                return []
            claimed = await session.execute(
                sa.update(Message)
                .where(Message.id.in_(ids), due)
                .values(status="sending", locked_by=self.worker_id, locked_until=now + self.lock_ttl)
                .returning(Message.id)
                .execution_options(synchronize_session=False)
            )
            return sorted(r[0] for r in claimed)

    async def _decide(self, ids: Sequence[int], stats: DispatchStats) -> list[_ToSend]:
        now = self.clock()
        today = programme_day(self.config, now)
        async with self.sessions() as session, session.begin():
            messages = list(
                (
                    await session.execute(
                        sa.select(Message).where(Message.id.in_(ids)).order_by(Message.priority, Message.id)
                    )
                ).scalars()
            )
            templates = {
                t.id: t
                for t in (
                    await session.execute(
                        sa.select(MessageTemplate).where(
                            MessageTemplate.id.in_({m.template_id for m in messages})
                        )
                    )
                ).scalars()
            }
            live = await resolve_live_ids(session, [m.member_id for m in messages])
            live_ids = sorted(set(live.values()))
            mobiles: dict[int, str | None] = {}
            erased: set[int] = set()
            for start in range(0, len(live_ids), 5000):
                rows = await session.execute(
                    sa.select(Member.id, Member.mobile_enc, Member.status).where(
                        Member.id.in_(live_ids[start : start + 5000])
                    )
                )
                for mid, enc, status in rows:
                    mobiles[mid] = self.vault.decrypt(enc, context=MOBILE_CONTEXT) if enc else None
                    if status == ERASED:
                        erased.add(mid)
            # consent, per (purpose, signature)
            groups: dict[tuple[str, str], set[int]] = defaultdict(set)
            for m in messages:
                groups[(m.purpose, templates[m.template_id].signature)].add(m.member_id)
            allowed: dict[tuple[str, str], dict[int, bool]] = {}
            opted: dict[str, set[str]] = {}
            index_of: dict[int, list[str]] = {}
            for (purpose, signature), members in groups.items():
                allowed[(purpose, signature)] = await consent.may_contact_many(
                    session, sorted(members), purpose, signature
                )
                if purpose == "marketing" and signature not in opted:
                    indexes: list[str] = []
                    for mid in members:
                        target = live.get(mid)
                        number = mobiles.get(target) if target is not None else None
                        if number and target is not None and target not in index_of:
                            index_of[target] = self.vault.blind_indexes(number, purpose=MOBILE_INDEX_PURPOSE)
                        if target is not None:
                            indexes.extend(index_of.get(target, []))
                    opted[signature] = await service.opted_out_indexes(session, indexes, signature)
            # template variables
            wanted = {v for t in templates.values() for v in t.variables}
            member_vals = await variables.member_values(session, live_ids, wanted, now)
            order_vals = await variables.order_values(
                session, [m.order_id for m in messages if m.order_id is not None], wanted
            )
            # budgets
            used: dict[int, int] = {}
            for start in range(0, len(live_ids), 5000):
                budget_rows = await session.execute(
                    sa.select(ContactBudget.member_id, ContactBudget.used).where(
                        ContactBudget.day == today,
                        ContactBudget.member_id.in_(live_ids[start : start + 5000]),
                    )
                )
                used.update({mid: int(u) for mid, u in budget_rows})
            charged: dict[int, int] = {}
            updates: list[dict[str, Any]] = []
            refused_events: list[tuple[int, int, str, str]] = []
            to_send: list[_ToSend] = []
            for m in messages:
                template = templates[m.template_id]
                target = live.get(m.member_id)
                number = mobiles.get(target) if target is not None else None
                if target is None or target in erased:
                    # no member is left to write to: the message's member (or the survivor its merges lead
                    # to) was erased, or the id names no member at all
                    facts = Facts(m.purpose, False, False, False, 0, gone=True)
                else:
                    params, missing = fill(
                        template.variables,
                        template.defaults,
                        member_vals.get(target, {}),
                        order_vals.get(m.order_id, {}) if m.order_id is not None else {},
                        m.params,
                    )
                    is_opted = any(
                        i in opted.get(template.signature, set()) for i in index_of.get(target, [])
                    )
                    facts = Facts(
                        purpose=m.purpose,
                        consent=allowed[(m.purpose, template.signature)].get(m.member_id, False),
                        opted_out=is_opted,
                        has_mobile=bool(number),
                        used_today=0 if m.budget_day == today else used.get(target, 0),
                        missing_variables=missing,
                    )
                decision = decide(self.config, facts, now)
                if m.held_out and decision.verdict is Verdict.SEND:
                    # the control group: eligible, and deliberately not sent (nor charged to the budget)
                    decision = Decision(Verdict.REFUSE, HOLDOUT_REASON)
                row: dict[str, Any] = {
                    "id": m.id,
                    "status": "sending",
                    "reason": m.reason,
                    "next_attempt_at": m.next_attempt_at,
                    "locked_by": self.worker_id,
                    "locked_until": m.locked_until,
                    "finished_at": None,
                    "budget_day": m.budget_day,
                    "params": m.params,
                    "updated_at": now,
                }
                if decision.verdict is Verdict.REFUSE:
                    row.update(
                        status="refused",
                        reason=str(decision.reason)[:200],
                        finished_at=now,
                        locked_by=None,
                        locked_until=None,
                    )
                    refused_events.append((m.id, m.member_id, "refused", str(decision.reason)))
                    stats.refused += 1
                elif decision.verdict is Verdict.DEFER:
                    row.update(
                        status="queued",
                        reason=str(decision.reason),
                        next_attempt_at=decision.not_before,
                        locked_by=None,
                        locked_until=None,
                    )
                    stats.deferred += 1
                else:
                    assert target is not None and number is not None
                    if m.budget_day != today:
                        used[target] = used.get(target, 0) + 1
                        charged[target] = used[target]
                        row["budget_day"] = today
                    row["params"] = params
                    row["reason"] = ""
                    to_send.append(
                        _ToSend(
                            m.id,
                            m.member_id,
                            m.account_id,
                            m.attempts,
                            OutboundMessage(
                                message_id=str(m.id),
                                mobile_e164=number,
                                signature=template.signature,
                                template_code=template.template_code,
                                params=params,
                            ),
                        )
                    )
                updates.append(row)
            if updates:
                await session.execute(sa.update(Message), updates)
            if charged:
                stmt = insert(session, ContactBudget.__table__)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["member_id", "day"], set_={"used": stmt.excluded.used}
                )
                await session.execute(
                    stmt, [{"member_id": k, "day": today, "used": v} for k, v in charged.items()]
                )
            await service.emit_status(session, refused_events, now)
        return to_send

    async def _messenger(self, account_id: int) -> Messenger | None:
        async with self.sessions() as session:
            account = await session.get(MessengerAccount, account_id)
        if account is None or account.status != "active":
            return None
        cached = self._messengers.get(account_id)
        if cached is not None and cached[0] == account.updated_at:
            return cached[1]
        if cached is not None:
            await cached[1].aclose()
        spec = service.ensure_messenger(self.host, account.messenger)
        # the account's send-rate window lives in the database: a new messenger (next run, other process)
        # continues it rather than starting an empty one
        gate = DatabaseRateGate(self.sessions, account_id, in_flight=self.rate_in_flight)
        messenger = spec.factory(service.messenger_context(account, self.vault, self.clock, rate_gate=gate))
        self._messengers[account_id] = (account.updated_at, messenger)
        return messenger

    async def _send(self, account_id: int, items: Sequence[_ToSend]) -> list[SendResult]:
        try:
            messenger = await self._messenger(account_id)
        except Exception as exc:  # a broken plugin or settings: pause, keep the messages
            log.exception("messenger could not be built", account_id=account_id)
            return [
                SendResult(
                    i.outbound.message_id,
                    SendOutcome.FAILED_ACCOUNT,
                    code="tongcrm.MESSENGER_SETUP",
                    detail=f"{type(exc).__name__}: {exc}",
                )
                for i in items
            ]
        if messenger is None:
            return [
                SendResult(i.outbound.message_id, SendOutcome.FAILED_ACCOUNT, code="tongcrm.ACCOUNT_PAUSED")
                for i in items
            ]
        results: dict[str, SendResult] = {}
        size = max(int(getattr(messenger, "max_batch", 100) or 100), 1)
        for start in range(0, len(items), size):
            chunk = [i.outbound for i in items[start : start + size]]
            try:
                got = await messenger.send(chunk)
            except Exception as exc:
                log.exception("messenger raised; its messages will be retried", account_id=account_id)
                got = [
                    SendResult(
                        o.message_id,
                        SendOutcome.RETRY_LATER,
                        code="tongcrm.MESSENGER_ERROR",
                        detail=f"{type(exc).__name__}: {exc}",
                    )
                    for o in chunk
                ]
            for result in got:
                results[result.message_id] = result
        # a messenger that forgot a message: retry it rather than lose it
        return [
            results.get(i.outbound.message_id)
            or SendResult(i.outbound.message_id, SendOutcome.RETRY_LATER, code="tongcrm.NO_RESULT")
            for i in items
        ]

    async def _record(
        self, account_id: int, items: Sequence[_ToSend], results: Sequence[SendResult], stats: DispatchStats
    ) -> None:
        now = self.clock()
        updates: list[dict[str, Any]] = []
        events: list[tuple[int, int, str, str]] = []
        sent_ids: list[str] = []
        pause: SendResult | None = None
        for item, result in zip(items, results, strict=True):
            attempts = item.attempts + 1
            row: dict[str, Any] = {
                "id": item.message_id,
                "status": "queued",
                "code": result.code[:100],
                # the gateway's words: an error may quote the number it refused
                "detail": redact(result.detail)[:2000],
                "provider_id": None,
                "attempts": attempts,
                "next_attempt_at": now,
                "sent_at": None,
                "finished_at": None,
                "reason": "",
                "locked_by": None,
                "locked_until": None,
                "updated_at": now,
            }
            outcome = result.outcome
            if outcome is SendOutcome.SENT:
                row.update(status="sent", provider_id=result.provider_id, sent_at=now)
                if result.provider_id:
                    sent_ids.append(result.provider_id)
                events.append((item.message_id, item.member_id, "sent", result.code))
                stats.sent += 1
            elif outcome is SendOutcome.RETRY_LATER:
                if attempts >= self.max_attempts:
                    row.update(
                        status="failed",
                        finished_at=now,
                        reason="retries_exhausted",
                        detail=redact(f"gave up after {attempts} attempts: {result.detail}")[:2000],
                    )
                    events.append((item.message_id, item.member_id, "failed", result.code))
                    stats.failed += 1
                else:
                    row.update(
                        next_attempt_at=now + backoff(attempts, base=self.retry_base, cap=3600.0),
                        reason="retry_later",
                    )
                    stats.retrying += 1
            elif outcome is SendOutcome.IN_DOUBT:
                # it may have been accepted: never sent again by us, settled by its delivery report
                row.update(status="in_doubt", sent_at=now, reason="no_answer")
                events.append((item.message_id, item.member_id, "in_doubt", result.code))
                stats.in_doubt += 1
            elif outcome is SendOutcome.FAILED_ACCOUNT:
                pause = pause or result
                row.update(reason="account_paused", attempts=item.attempts)
                stats.retrying += 1
            else:  # failed_number, failed_message
                row.update(status="failed", finished_at=now, reason=str(outcome))
                events.append((item.message_id, item.member_id, "failed", result.code))
                stats.failed += 1
            updates.append(row)
        async with self.sessions() as session, session.begin():
            if updates:
                await session.execute(sa.update(Message), updates)
            if pause is not None:
                account = await session.get(MessengerAccount, account_id)
                if await service.pause_account(session, account_id, pause.code, pause.detail, at=now):
                    stats.paused_accounts.append(account.name if account else str(account_id))
            await service.emit_status(session, events, now)
            await service.apply_pending_receipts(session, account_id, sent_ids)
