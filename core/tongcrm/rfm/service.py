"""RFM scores, computed set-based in the database.

For each live member with at least one counted order (paid, not refunded in full: :func:`counted_order`) placed
in the policy's window and channel scope:

- **recency** is the number of local calendar days since the latest such order (0: today; days are counted in
  the programme's time zone, so an order at 23:59 in Shanghai is a day old at 00:00 whatever the UTC time);
- **frequency** is the number of such orders;
- **monetary** is their spend in fen, net of refunds.

Scores are 1-5 by quintiles over the members scored: a member's score is ``1 + floor(5 * lower / n)`` where
``lower`` is the number of scored members with a strictly worse value (more days, fewer orders, less spend) and
``n`` the number of members scored. Equal values therefore always get the same score (ties at a quintile edge
all go to the lower quintile's score, deterministically), and a value shared by many members can leave a score
unused (when most members bought once, F is 1 for all of them and the next F value is 4 or 5).

A full run first derives, in one window-function query, the *edges* — for each score 2-5 the worst value that
still got it — and the mean of each score; then writes every member's row batch by batch, scoring each value
against the edges. Scoring against the edges gives exactly the quintile scores of the population the edges
came from. An incremental run re-scores only the members whose orders changed (``orders.updated_at``) or who
took part in a merge or merge undo since the previous run began, against the edges and means of the last full
run; members nobody touched keep their scores until the next full run.

The eight classic cells compare each score to the mean of that score over the full run: a score at or above the
mean is high. The mean (not the median) is used because with heavily tied values the median score is often 1
and "high" would then mean "anything at all".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.channels.models import ChannelAccount
from tongcrm.db.base import UTCDateTime, utcnow
from tongcrm.db.dialect import dialect_name
from tongcrm.errors import NotFound, Unprocessable
from tongcrm.identity.models import Merge
from tongcrm.jobs.queue import enqueue
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.rfm.models import RfmPolicy, RfmRun, RfmScore
from tongcrm.segments.compiler import counted_order
from tongcrm.segments.schema import RFM_CELLS
from tongcrm.tiers.ladder import local_midnight

members = cast(sa.Table, Member.__table__)
scores = cast(sa.Table, RfmScore.__table__)
MAX_DAYS = 3650
MAX_CHANNELS = 50
#: Order changes this long before the previous run began are looked at again: a transaction that stamped
#: ``updated_at`` before the run started may commit after it.
MARGIN = timedelta(minutes=5)
_DAY = 86_400

#: (R high, F high, M high) -> (code, name). The classic eight RFM cells.
CELLS: Mapping[tuple[bool, bool, bool], tuple[str, str]] = {
    (True, True, True): ("important_value", "重要价值客户"),
    (False, True, True): ("important_retain", "重要保持客户"),
    (True, False, True): ("important_develop", "重要发展客户"),
    (False, False, True): ("important_winback", "重要挽留客户"),
    (True, True, False): ("general_value", "一般价值客户"),
    (False, True, False): ("general_retain", "一般保持客户"),
    (True, False, False): ("general_develop", "一般发展客户"),
    (False, False, False): ("general_winback", "一般挽留客户"),
}
CELL_NAMES: Mapping[str, str] = dict(CELLS.values())
CELL_CODES: tuple[str, ...] = tuple(code for code, _ in CELLS.values())
assert CELL_CODES == RFM_CELLS  # the segment language offers exactly these


@dataclass(frozen=True, slots=True)
class Policy:
    window_days: int = 365
    #: Channel names whose orders count; empty: every channel.
    channels: tuple[str, ...] = ()
    version: int = 0  # 0: the defaults, never saved

    def as_dict(self) -> dict[str, Any]:
        return {"window_days": self.window_days, "channels": list(self.channels)}


DEFAULT = Policy()


def parse_policy(raw: Mapping[str, Any], known_channels: Iterable[str], *, version: int = 0) -> Policy:
    """Check settings: a window of 1 to 3650 days and channels this programme knows (a typo would score
    nobody, silently)."""
    unknown = sorted(set(raw) - {"window_days", "channels"})
    if unknown:
        raise Unprocessable(f"unknown setting {unknown[0]!r}", extra={"pointer": f"/{unknown[0]}"})
    window = raw.get("window_days", DEFAULT.window_days)
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= MAX_DAYS:
        raise Unprocessable(
            f"window_days is a whole number of days from 1 to {MAX_DAYS}", extra={"pointer": "/window_days"}
        )
    channels = raw.get("channels", [])
    if not isinstance(channels, list) or len(channels) > MAX_CHANNELS:
        raise Unprocessable(
            f"channels is a list of at most {MAX_CHANNELS} channel names (empty: every channel)",
            extra={"pointer": "/channels"},
        )
    known = set(known_channels)
    for i, name in enumerate(channels):
        if not isinstance(name, str) or name not in known:
            raise Unprocessable(
                f"no channel named {name!r} (known: {', '.join(sorted(known)) or 'none'})",
                extra={"pointer": f"/channels/{i}"},
            )
    return Policy(window, tuple(sorted(set(channels))), version)


async def known_channels(session: AsyncSession, host: PluginHost) -> frozenset[str]:
    accounts = (await session.execute(sa.select(ChannelAccount.channel).distinct())).scalars()
    return frozenset(host.channels()) | frozenset(accounts)


async def current_policy(session: AsyncSession) -> Policy:
    row = (
        await session.execute(sa.select(RfmPolicy).order_by(RfmPolicy.version.desc()).limit(1))
    ).scalar_one_or_none()
    if row is None:
        return DEFAULT
    return Policy(row.window_days, tuple(row.channels), row.version)


async def set_policy(session: AsyncSession, host: PluginHost, raw: Mapping[str, Any], actor: Actor) -> Policy:
    """Save a new policy version (audited) and enqueue a full recompute under it."""
    current = await current_policy(session)
    policy = parse_policy(raw, await known_channels(session, host), version=current.version + 1)
    session.add(
        RfmPolicy(
            version=policy.version,
            window_days=policy.window_days,
            channels=list(policy.channels),
            created_by=actor.name,
        )
    )
    audit.record(
        session,
        actor,
        "rfm.policy",
        "rfm_policy",
        policy.version,
        before=current.as_dict(),
        after=policy.as_dict(),
    )
    await enqueue(session, "rfm.recompute", {"full": True, "policy_version": policy.version})
    return policy


# -------------------------------------------------------------------------------------------------------------
# SQL building blocks


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a run looks: the window's first instant, the run's moment and the local midnight after it (the
    anchor days are counted back from)."""

    start: datetime
    as_of: datetime
    anchor: datetime

    @classmethod
    def of(cls, policy: Policy, as_of: datetime, tz: ZoneInfo) -> Frame:
        today = as_of.astimezone(tz).date()
        return cls(
            start=local_midnight(today - timedelta(days=policy.window_days - 1), tz),
            as_of=as_of,
            anchor=local_midnight(today + timedelta(days=1), tz),
        )


def _epoch(dialect: str, column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """Whole seconds since 1970 (the fraction dropped) of a stored UTC time."""
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)
    return sa.cast(sa.func.strftime("%s", column), sa.BigInteger)


def _aggregate(policy: Policy, frame: Frame, dialect: str, *where: sa.ColumnElement[bool]) -> sa.Subquery:
    """Per live member in ``where``: recency in local days, frequency and monetary, over the window and scope.

    Days: with ``A`` the local midnight after ``as_of`` and ``d = A - floor(last)`` in whole seconds, the latest
    order is ``(d - 1) // 86400`` local days old (exact for zones without daylight saving, such as
    Asia/Shanghai; ``floor`` keeps an order in the first second after midnight on its own day)."""
    net = Order.paid_fen - Order.refunded_fen
    conditions: list[sa.ColumnElement[bool]] = [
        members.c.status == "active",
        counted_order(),
        Order.placed_at >= frame.start,
        Order.placed_at <= frame.as_of,
        *where,
    ]
    if policy.channels:
        conditions.append(Order.channel.in_(policy.channels))
    inner = (
        sa.select(
            members.c.id.label("member_id"),
            sa.func.max(Order.placed_at).label("last"),
            sa.func.count().label("frequency"),
            sa.cast(sa.func.sum(sa.case((net > 0, net), else_=0)), sa.BigInteger).label("monetary"),
        )
        .select_from(members.join(Order.__table__, Order.member_id == members.c.id))
        .where(*conditions)
        .group_by(members.c.id)
        .subquery("rfm_agg")
    )
    anchor = int(frame.anchor.timestamp())
    days = (sa.literal(anchor, sa.BigInteger) - _epoch(dialect, inner.c["last"]) - 1) // _DAY
    return sa.select(
        inner.c.member_id,
        sa.cast(days, sa.Integer).label("days"),
        inner.c.frequency,
        inner.c.monetary,
    ).subquery("rfm_values")


@dataclass(frozen=True, slots=True)
class Edges:
    """For scores 2, 3, 4, 5: the worst value that got at least that score in the full run (None: nobody did).
    Recency edges are day counts (fewer is better); frequency and monetary edges are lower bounds."""

    r: tuple[int | None, ...]
    f: tuple[int | None, ...]
    m: tuple[int | None, ...]

    def as_dict(self) -> dict[str, list[int | None]]:
        return {"r": list(self.r), "f": list(self.f), "m": list(self.m)}

    @classmethod
    def of(cls, raw: Mapping[str, Sequence[int | None]]) -> Edges:
        return cls(tuple(raw["r"]), tuple(raw["f"]), tuple(raw["m"]))


@dataclass(frozen=True, slots=True)
class Means:
    r: float
    f: float
    m: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "f": self.f, "m": self.m}


def score_of(value: int, edges: Sequence[int | None], *, lower_is_better: bool = False) -> int:
    """The score of one value against the edges (the Python twin of :func:`_score_sql`)."""
    return 1 + sum(1 for e in edges if e is not None and (value <= e if lower_is_better else value >= e))


def cell_of(r: int, f: int, m: int, means: Means) -> str:
    return CELLS[(r >= means.r, f >= means.f, m >= means.m)][0]


def _score_sql(
    value: sa.ColumnElement[Any], edges: Sequence[int | None], *, lower_is_better: bool = False
) -> sa.ColumnElement[int]:
    score: sa.ColumnElement[int] = sa.literal(1, sa.Integer)
    for e in edges:
        if e is not None:
            reached = value <= e if lower_is_better else value >= e
            score = score + sa.case((reached, 1), else_=0)
    return score


def _cell_sql(
    r: sa.ColumnElement[int], f: sa.ColumnElement[int], m: sa.ColumnElement[int], means: Means
) -> sa.ColumnElement[str]:
    # scores are whole numbers: a score is at or above the mean exactly when it is at or above its ceiling
    hr, hf, hm = (sa.literal(math.ceil(x), sa.Integer) for x in (means.r, means.f, means.m))
    return sa.case(
        *(
            (sa.and_(r >= hr if high_r else r < hr, f >= hf if high_f else f < hf,
                     m >= hm if high_m else m < hm), code)
            for (high_r, high_f, high_m), (code, _) in CELLS.items()
        ),
    )  # fmt: skip


async def derive_edges(session: AsyncSession, policy: Policy, frame: Frame) -> tuple[Edges, Means, int]:
    """The quintile edges and mean scores of the whole scored population, in one query."""
    values = _aggregate(policy, frame, dialect_name(session))
    n = sa.func.count().over()

    def quintile(order: Any) -> sa.ColumnElement[int]:
        return 1 + (5 * (sa.func.rank().over(order_by=order) - 1)) // n

    ranked = sa.select(
        values.c.days,
        values.c.frequency,
        values.c.monetary,
        quintile(values.c.days.desc()).label("r"),
        quintile(values.c.frequency).label("f"),
        quintile(values.c.monetary).label("m"),
    ).subquery("rfm_ranked")
    columns: list[sa.ColumnElement[Any]] = [sa.func.count()]
    for k in range(2, 6):
        columns.append(sa.func.max(sa.case((ranked.c.r >= k, ranked.c.days))))
        columns.append(sa.func.min(sa.case((ranked.c.f >= k, ranked.c.frequency))))
        columns.append(sa.func.min(sa.case((ranked.c.m >= k, ranked.c.monetary))))
    columns += [sa.func.avg(ranked.c.r), sa.func.avg(ranked.c.f), sa.func.avg(ranked.c.m)]
    row = (await session.execute(sa.select(*columns))).one()
    count = int(row[0])

    def edge(i: int) -> int | None:
        return None if i is None else int(i)

    r = tuple(edge(row[1 + 3 * k]) for k in range(4))
    f = tuple(edge(row[2 + 3 * k]) for k in range(4))
    m = tuple(edge(row[3 + 3 * k]) for k in range(4))
    avg = row[13:16]
    means = Means(*(float(a) if a is not None else 0.0 for a in avg))
    return Edges(r, f, m), means, count


async def _write(
    session: AsyncSession,
    policy: Policy,
    frame: Frame,
    run_id: int,
    edges: Edges,
    means: Means,
    member_where: sa.ColumnElement[bool],
    score_where: sa.ColumnElement[bool],
) -> int:
    """Replace the score rows of the members ``member_where`` selects (``score_where``: the same members on
    ``rfm_scores``) with fresh ones; members without a counted order in the window lose their row."""
    values = _aggregate(policy, frame, dialect_name(session), member_where)
    scored = sa.select(
        values.c.member_id,
        values.c.days,
        values.c.frequency,
        values.c.monetary,
        _score_sql(values.c.days, edges.r, lower_is_better=True).label("r"),
        _score_sql(values.c.frequency, edges.f).label("f"),
        _score_sql(values.c.monetary, edges.m).label("m"),
    ).subquery("rfm_scored")
    rows = sa.select(
        scored.c.member_id,
        scored.c.days,
        scored.c.frequency,
        scored.c.monetary,
        scored.c.r,
        scored.c.f,
        scored.c.m,
        _cell_sql(scored.c.r, scored.c.f, scored.c.m, means),
        sa.literal(run_id, sa.BigInteger),
        sa.literal(frame.as_of, UTCDateTime()),
    )
    await session.execute(sa.delete(scores).where(score_where))
    result = await session.execute(
        sa.insert(scores).from_select(
            ["member_id", "recency_days", "frequency", "monetary_fen", "r", "f", "m", "cell", "run_id",
             "computed_at"],
            rows,
        )
    )  # fmt: skip
    return max(int(cast(sa.CursorResult[Any], result).rowcount or 0), 0)


# -------------------------------------------------------------------------------------------------------------
# runs

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: int
    kind: str
    #: Members looked at (a full run: every member id; an incremental run: the members whose orders changed).
    members: int
    #: Score rows written.
    scored: int


async def recompute_full(
    sessions: async_sessionmaker[AsyncSession],
    as_of: datetime,
    tz: ZoneInfo,
    *,
    batch: int = 50_000,
    progress: Progress | None = None,
) -> RunResult:
    """Derive the edges over everyone, then re-score every member, one transaction per batch of member ids."""
    started = utcnow()
    async with sessions() as session, session.begin():
        policy = await current_policy(session)
        frame = Frame.of(policy, as_of, tz)
        edges, means, count = await derive_edges(session, policy, frame)
        run = RfmRun(
            kind="full", policy_version=policy.version, as_of=as_of, started_at=started,
            edges=edges.as_dict(), means=means.as_dict(), members=count,
        )  # fmt: skip
        session.add(run)
        await session.flush()
        run.edges_run_id = run.id
        run_id = run.id
        top = (await session.execute(sa.select(sa.func.max(members.c.id)))).scalar() or 0
    low, written = 0, 0
    if progress:
        progress(0, top)
    while low < top:
        high = min(low + batch, top)
        async with sessions() as session, session.begin():
            written += await _write(
                session, policy, frame, run_id, edges, means,
                sa.and_(members.c.id > low, members.c.id <= high),
                sa.and_(scores.c.member_id > low, scores.c.member_id <= high),
            )  # fmt: skip
        low = high
        if progress:
            progress(low, top)
    async with sessions() as session, session.begin():
        await session.execute(
            sa.update(RfmRun).where(RfmRun.id == run_id).values(finished_at=utcnow(), members=written)
        )
    return RunResult(run_id, "full", top, written)


async def recompute_incremental(
    sessions: async_sessionmaker[AsyncSession],
    as_of: datetime,
    tz: ZoneInfo,
    *,
    batch: int = 5_000,
    progress: Progress | None = None,
) -> RunResult:
    """Re-score the members whose orders changed since the previous run, against the last full run's edges.

    Falls back to a full run when there is none yet, or when the policy changed since (the edges belong to
    another window or scope)."""
    started = utcnow()
    async with sessions() as session:
        policy = await current_policy(session)
        full = (
            await session.execute(
                sa.select(RfmRun)
                .where(RfmRun.kind == "full", RfmRun.finished_at.is_not(None))
                .order_by(RfmRun.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        last = (
            await session.execute(
                sa.select(RfmRun).where(RfmRun.finished_at.is_not(None)).order_by(RfmRun.id.desc()).limit(1)
            )
        ).scalar_one_or_none()
        stale = full is None or last is None or full.policy_version != policy.version
        if stale or full is None or last is None:
            await session.rollback()  # hold no read transaction while the full run writes (SQLite)
        else:
            since = last.started_at - MARGIN
            changed = sa.select(Order.member_id).where(
                Order.updated_at >= since, Order.member_id.is_not(None)
            )
            merged = sa.select(Merge.survivor_id).where(
                sa.or_(Merge.created_at >= since, Merge.undone_at >= since)
            )
            absorbed = sa.select(Merge.absorbed_id).where(
                sa.or_(Merge.created_at >= since, Merge.undone_at >= since)
            )
            affected = sorted(
                {int(i) for i in (await session.execute(sa.union(changed, merged, absorbed))).scalars()}
            )
            edges, means = Edges.of(full.edges), Means(**full.means)
            full_id = full.id
    if stale:
        return await recompute_full(sessions, as_of, tz, progress=progress)
    frame = Frame.of(policy, as_of, tz)
    async with sessions() as session, session.begin():
        run = RfmRun(
            kind="incremental", policy_version=policy.version, as_of=as_of, started_at=started,
            edges_run_id=full_id, edges=edges.as_dict(), means=means.as_dict(), members=0,
        )  # fmt: skip
        session.add(run)
        await session.flush()
        run_id = run.id
        # a merged member's orders now belong to the survivor: its own row would count them twice
        tombstones = sa.select(members.c.id).where(members.c.status != "active")
        await session.execute(sa.delete(scores).where(scores.c.member_id.in_(tombstones)))
    written = 0
    if progress:
        progress(0, len(affected))
    for i in range(0, len(affected), batch):
        chunk = affected[i : i + batch]
        async with sessions() as session, session.begin():
            written += await _write(
                session, policy, frame, run_id, edges, means,
                members.c.id.in_(chunk), scores.c.member_id.in_(chunk),
            )  # fmt: skip
        if progress:
            progress(min(i + batch, len(affected)), len(affected))
    async with sessions() as session, session.begin():
        await session.execute(
            sa.update(RfmRun).where(RfmRun.id == run_id).values(finished_at=utcnow(), members=written)
        )
    return RunResult(run_id, "incremental", len(affected), written)


# -------------------------------------------------------------------------------------------------------------
# reads


@dataclass(frozen=True, slots=True)
class MemberRfm:
    recency_days: int
    frequency: int
    monetary_fen: int
    r: int
    f: int
    m: int
    cell: str
    cell_name: str
    computed_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "recency_days": self.recency_days, "frequency": self.frequency, "monetary_fen": self.monetary_fen,
            "r": self.r, "f": self.f, "m": self.m, "cell": self.cell, "cell_name": self.cell_name,
            "computed_at": self.computed_at.isoformat(),
        }  # fmt: skip


async def member_rfm(session: AsyncSession, member_id: int) -> MemberRfm | None:
    row = await session.get(RfmScore, member_id)
    if row is None:
        return None
    return MemberRfm(
        row.recency_days, row.frequency, row.monetary_fen, row.r, row.f, row.m, row.cell,
        CELL_NAMES.get(row.cell, row.cell), row.computed_at,
    )  # fmt: skip


async def require_member(session: AsyncSession, member_id: int) -> None:
    if await session.get(Member, member_id) is None:
        raise NotFound(f"member {member_id} does not exist")


async def cell_counts(session: AsyncSession) -> dict[str, int]:
    """Members per cell (every cell listed, empty ones with 0)."""
    rows = await session.execute(sa.select(scores.c.cell, sa.func.count()).group_by(scores.c.cell))
    found: dict[str, int] = {str(cell): int(n) for cell, n in rows}
    return {code: int(found.get(code, 0)) for code in CELL_CODES}


async def latest_run(session: AsyncSession) -> RfmRun | None:
    return (await session.execute(sa.select(RfmRun).order_by(RfmRun.id.desc()).limit(1))).scalar_one_or_none()
