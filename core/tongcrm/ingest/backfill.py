"""Windowed backfills: one long period of one account, cut into time windows that many workers sync at once.

``tongcrm sync --since`` over a year of a big shop is one sequential pull: one worker, one page after the other,
however many workers stand idle. A backfill cuts ``[since, until)`` into windows and enqueues one job per
window, so the in-process runner, broker workers (and the command itself, ``--parallel``) take different
windows at the same time:

- a window is worked under a lease of its own (``backfill-window:<id>``), renewed in every page's transaction,
  with the window's cursor committed together with the page's effects: a worker that dies leaves the window
  resumable; its lease lapses, its job's lock expires, and whoever claims it next continues from the cursor;
- the window's last page marks it done in the same transaction, and advances the backfill's ``through`` over
  the contiguous run of finished windows only (under a lock of the backfill row, so two windows finishing at
  once cannot leave it behind). ``through`` therefore always means "every change before this moment applied",
  whatever order the windows finish in;
- orders only move forward (see :mod:`tongcrm.ingest.apply`), so windows applied out of order, a replayed page
  or the periodic sync running beside a backfill change nothing twice. The account's own sync cursor is not
  touched: the periodic sync keeps following the present.

Only channels with the ``backfill_windows`` capability honour a window's end (:attr:`ChannelContext.until`);
for the others a backfill is one window, which runs to the live horizon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.channels import service as accounts
from tongcrm.channels.models import Backfill, BackfillWindow, ChannelAccount
from tongcrm.errors import BadRequest, NotFound
from tongcrm.ingest.apply import IngestContext, PageResult
from tongcrm.ingest.service import (
    MAX_PAGES_PER_RUN,
    PageSink,
    Source,
    SyncReport,
    fetch_recipe,
    pull_redoing_conflicts,
)
from tongcrm.jobs import leases
from tongcrm.jobs.queue import enqueue
from tongcrm.limits.gate import DatabaseCallGate
from tongcrm.logging import get_logger
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelCapability, OrderPage
from tongcrm.privacy.redact import redact

log = get_logger(__name__)

WINDOW_JOB = "ingest.backfill_window"
#: A window job that finds its window leased by another worker retries with backoff; enough attempts to
#: outlast a long window worked elsewhere (``tongcrm sync --parallel``) whose worker then dies.
WINDOW_JOB_ATTEMPTS = 20
MAX_WINDOWS = 10_000
#: ``tongcrm sync --window-hours`` ends its backfill this long before now: adapters leave the last moments to the
#: next poll (platforms index changes a little late), so a window ending at "now" could not reach its end.
PRESENT_MARGIN = timedelta(minutes=10)


def window_lease(window_id: int) -> str:
    return f"backfill-window:{window_id}"


def split(since: datetime, until: datetime, window: timedelta) -> list[tuple[datetime, datetime]]:
    """``[since, until)`` as consecutive half-open windows of ``window`` (the last one shorter).

    A refusal carries a code and params (``backfill.*``) beside its English message, so the console's form says
    it in Chinese; the times in the params are written in the zone the caller gave them in (the programme's,
    from the CLI and the console), to the minute."""
    if window <= timedelta(0):
        raise BadRequest("a backfill window must be longer than zero", code="backfill.window_not_positive")
    if since >= until:
        raise BadRequest(
            f"a backfill needs since < until (got {since.isoformat()} .. {until.isoformat()})",
            code="backfill.since_not_before_until",
            params={"since": f"{since:%Y-%m-%d %H:%M}", "until": f"{until:%Y-%m-%d %H:%M}"},
        )
    count = -(-(until - since) // window)
    if count > MAX_WINDOWS:
        raise BadRequest(
            f"{count} windows is too many (at most {MAX_WINDOWS}): choose longer windows",
            code="backfill.too_many_windows",
            params={"count": count, "max": MAX_WINDOWS, "hours": f"{window / timedelta(hours=1):g}"},
        )
    return [(since + window * i, min(until, since + window * (i + 1))) for i in range(count)]


async def create_backfill(
    session: AsyncSession,
    host: PluginHost,
    account_name: str,
    *,
    since: datetime,
    until: datetime,
    window: timedelta,
    actor: Actor,
) -> int:
    """Write the backfill, its windows and one job per window, and its audit record (who asked the platform for
    which days: the console's form and the CLI alike), in the caller's transaction."""
    account = await accounts.get_account(session, account_name)
    bounds = split(since, until, window)
    if ChannelCapability.BACKFILL_WINDOWS not in host.channel(account.channel).capabilities:
        bounds = [(since, until)]  # the adapter would not stop at a window's end
    backfill = Backfill(account_id=account.id, since=since, until=until, status="running", through=since)
    session.add(backfill)
    await session.flush()
    ids = (
        await session.execute(
            sa.insert(BackfillWindow).returning(BackfillWindow.id),
            [
                {
                    "backfill_id": backfill.id,
                    "seq": seq,
                    "start": start,
                    "end": end,
                    "status": "pending",
                    "pages": 0,
                    "orders": 0,
                    "quarantined": 0,
                    "attempts": 0,
                }
                for seq, (start, end) in enumerate(bounds)
            ],
        )
    ).scalars()
    for window_id in ids:
        await enqueue(
            session,
            WINDOW_JOB,
            {"window": window_id},
            unique_key=window_lease(window_id),
            max_attempts=WINDOW_JOB_ATTEMPTS,
        )
    audit.record(
        session,
        actor,
        "channel_account.backfill",
        "channel_account",
        account_name,
        after={
            "backfill": backfill.id,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "window_hours": window / timedelta(hours=1),
            "windows": len(bounds),
        },
    )
    return backfill.id


@dataclass(slots=True)
class WindowReport(SyncReport):
    window_id: int = 0
    #: The window was already finished: nothing was fetched.
    finished_before: bool = False
    #: Another worker holds the window's lease: nothing was fetched.
    busy: bool = False


async def work_window(
    sessions: async_sessionmaker[AsyncSession], ctx: IngestContext, window_id: int, *, holder: str
) -> WindowReport:
    """Sync one window from where it stands to its end (or to a platform error, in ``report.error``)."""
    async with sessions() as session, session.begin():
        row = await session.get(BackfillWindow, window_id)
        if row is None:
            raise NotFound(f"no backfill window {window_id}")
        backfill = await session.get_one(Backfill, row.backfill_id)
        account = await session.get_one(ChannelAccount, backfill.account_id)
        report = WindowReport(account=account.name, window_id=window_id)
        if row.status == "done":
            report.finished_before = report.caught_up = True
            return report
        if account.status != "active":
            report.error = f"account {account.name!r} is {account.status}"
            report.needs_reauth = account.status == "needs_reauth"
            return report
        if not await leases.acquire(session, window_lease(window_id), holder, ctx.lease_ttl, now=ctx.clock()):
            report.busy = True
            return report
        row.status, row.attempts, row.worked_by = "running", row.attempts + 1, holder
        cursor, backfill_id = row.cursor, backfill.id
        source = Source(account.id, account.channel, account.name, holder)
        channel_ctx = accounts.channel_context(
            account,
            ctx.vault,
            clock=ctx.clock,
            since=row.start,
            until=row.end,
            call_gate=DatabaseCallGate(sessions),
        )
    factory = ctx.host.channel(source.channel).factory
    adapter = factory(channel_ctx)
    fetch = fetch_recipe(ctx, factory, channel_ctx)

    async def advance(session: AsyncSession, page: OrderPage, result: PageResult) -> None:
        values: dict[str, object] = {
            "cursor": page.next_cursor,
            "pages": BackfillWindow.pages + 1,
            "orders": BackfillWindow.orders + result.applied,
            "quarantined": BackfillWindow.quarantined + result.quarantined,
        }
        if not page.has_more:
            values |= {"status": "done", "finished_at": ctx.clock(), "last_error": None}
        await session.execute(
            sa.update(BackfillWindow).where(BackfillWindow.id == window_id).values(**values)
        )
        if not page.has_more:
            await _advance_through(session, backfill_id, ctx.clock())

    async def record_error(session: AsyncSession, error: str, code: str) -> None:
        await session.execute(
            sa.update(BackfillWindow).where(BackfillWindow.id == window_id).values(last_error=redact(error))
        )

    sink = PageSink(window_lease(window_id), advance, record_error)
    try:
        # windows of one account apply pages at the same time: a page that loses a race is redone
        await pull_redoing_conflicts(
            sessions, ctx, adapter, source, cursor, sink, report, limit=MAX_PAGES_PER_RUN, fetch=fetch
        )
    finally:
        await adapter.aclose()
        async with sessions() as session, session.begin():
            await leases.release(session, window_lease(window_id), holder)
    return report


async def _advance_through(session: AsyncSession, backfill_id: int, now: datetime) -> None:
    """Move ``through`` to the start of the first unfinished window (or ``until``): under the backfill row's
    lock, so of two windows finishing at once the second sees the first's commit."""
    backfill = (
        await session.execute(sa.select(Backfill).where(Backfill.id == backfill_id).with_for_update())
    ).scalar_one()
    first_open: datetime | None = (
        await session.execute(
            sa.select(sa.func.min(BackfillWindow.start)).where(
                BackfillWindow.backfill_id == backfill_id, BackfillWindow.status != "done"
            )
        )
    ).scalar_one()
    backfill.through = max(backfill.through, first_open or backfill.until)
    if first_open is None:
        backfill.status, backfill.finished_at = "done", now


@dataclass(frozen=True, slots=True)
class BackfillView:
    id: int
    account: str
    since: datetime
    until: datetime
    status: str
    through: datetime
    #: windows by status: pending, running, done
    windows: dict[str, int]
    pages: int
    orders: int
    quarantined: int
    #: window attempts beyond the first (a worker died, a platform call failed, the lease was busy)
    retries: int
    errors: list[str] = field(default_factory=list)

    @property
    def total_windows(self) -> int:
        return sum(self.windows.values())


async def backfill_views(
    session: AsyncSession, backfill_id: int | None = None, *, account: str | None = None
) -> list[BackfillView]:
    """Progress of every backfill (newest first), of one, or of one account's (the console's page of an account
    reads only its own, not every account's to keep some)."""
    query = (
        sa.select(Backfill, ChannelAccount.name)
        .join(ChannelAccount, ChannelAccount.id == Backfill.account_id)
        .order_by(Backfill.id.desc())
    )
    if backfill_id is not None:
        query = query.where(Backfill.id == backfill_id)
    if account is not None:
        query = query.where(ChannelAccount.name == account)
    rows = (await session.execute(query)).all()
    if backfill_id is not None and not rows:
        raise NotFound(f"no backfill {backfill_id}")
    w = BackfillWindow
    stats = (
        await session.execute(
            sa.select(
                w.backfill_id,
                w.status,
                sa.func.count(),
                sa.func.sum(w.pages),
                sa.func.sum(w.orders),
                sa.func.sum(w.quarantined),
                sa.func.sum(sa.case((w.attempts > 1, w.attempts - 1), else_=0)),
            )
            .where(w.backfill_id.in_([b.id for b, _ in rows]))
            .group_by(w.backfill_id, w.status)
        )
    ).all()
    errors = (
        await session.execute(
            sa.select(w.backfill_id, w.last_error).where(
                w.backfill_id.in_([b.id for b, _ in rows]), w.last_error.is_not(None)
            )
        )
    ).all()
    views = []
    for backfill, name in rows:
        mine = [s for s in stats if s[0] == backfill.id]
        views.append(
            BackfillView(
                id=backfill.id,
                account=name,
                since=backfill.since,
                until=backfill.until,
                status=backfill.status,
                through=backfill.through,
                windows={"pending": 0, "running": 0, "done": 0} | {s[1]: s[2] for s in mine},
                pages=sum(s[3] or 0 for s in mine),
                orders=sum(s[4] or 0 for s in mine),
                quarantined=sum(s[5] or 0 for s in mine),
                retries=sum(s[6] or 0 for s in mine),
                errors=[e for b, e in errors if b == backfill.id and e is not None],
            )
        )
    return views


async def work_backfill(
    sessions: async_sessionmaker[AsyncSession],
    ctx: IngestContext,
    backfill_id: int,
    *,
    holder: str,
    parallel: int = 4,
    poll_seconds: float = 1.0,
    on_window: Callable[[WindowReport], None] | None = None,
) -> list[WindowReport]:
    """Work the backfill's unfinished windows, ``parallel`` at a time, beside any job workers doing the same,
    until every window is done. Stops early with the failed windows' reports when a platform error ends a
    window (its job retries it with backoff); waits while other workers hold the remaining windows."""
    if parallel < 1:
        raise BadRequest("parallel must be at least 1")
    while True:
        async with sessions() as session:
            open_ids = list(
                (
                    await session.execute(
                        sa.select(BackfillWindow.id)
                        .where(BackfillWindow.backfill_id == backfill_id, BackfillWindow.status != "done")
                        .order_by(BackfillWindow.seq)
                    )
                ).scalars()
            )
        if not open_ids:
            return []
        reports = await _work_round(sessions, ctx, open_ids, holder, parallel, on_window)
        failed = [r for r in reports if r.error is not None]
        if failed:
            return failed
        if all(r.busy for r in reports):  # the rest is in other workers' hands
            await asyncio.sleep(poll_seconds)


async def _work_round(
    sessions: async_sessionmaker[AsyncSession],
    ctx: IngestContext,
    window_ids: list[int],
    holder: str,
    parallel: int,
    on_window: Callable[[WindowReport], None] | None,
) -> list[WindowReport]:
    """Each window once, ``parallel`` at a time."""
    todo = list(window_ids)
    reports: list[WindowReport] = []

    async def take(slot: int) -> None:
        while todo:
            report = await work_window(sessions, ctx, todo.pop(0), holder=f"{holder}/{slot}")
            reports.append(report)
            if on_window is not None:
                on_window(report)

    await asyncio.gather(*(take(slot) for slot in range(parallel)))
    return reports
