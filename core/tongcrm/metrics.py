"""Prometheus metrics: what each process did (job runs, deliveries) and what the database holds (backlogs, lag).

Two kinds, because they answer different questions:

- *Process* metrics are counted where the work happens, in prometheus_client's default registry: job
  durations and outcomes, the wait between a job falling due and its claim, event deliveries. Each API process
  and each worker exposes its own; Prometheus sums them over its targets.
- *Database* gauges are read at scrape time (:func:`database_gauges`): queue depth by status, outbox backlog,
  deliveries pending or parked, sync lag per channel account, messages by status. They describe the whole
  cluster, so scrape them from one place (the API's ``/metrics``), not from every worker.
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels.models import ChannelAccount, SyncState
from tongcrm.jobs.models import EventDelivery, Job, OutboxEvent

_HTTP_LABELS = ("method", "path", "status_code", "app_name")
APP_NAME = "tongcrm"
#: prometheus_client's default buckets, which the request histogram has always had
HTTP_BUCKETS: tuple[float, ...] = Histogram.DEFAULT_BUCKETS
#: their ``le`` labels, written as prometheus_client writes them ("0.005", "1.0", "+Inf")
_BUCKET_LABELS = tuple("+Inf" if bound == float("inf") else repr(bound) for bound in HTTP_BUCKETS)


class _Series:
    """One (method, route template, status) of the HTTP families: plain numbers, bucket counts not cumulated."""

    __slots__ = ("buckets", "count", "created", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * len(HTTP_BUCKETS)
        self.created = time.time()


class _HttpCounts(Collector):
    """The process's HTTP families, counted in plain numbers and turned into Prometheus families when scraped.

    prometheus_client's metric children take a lock on every ``inc``/``dec`` and a histogram finds its bucket in
    a Python loop: about 4 µs a request for the four calls a request made (issue #22: a tenth of a member
    lookup's own work). Requests are counted on the event loop's thread, so plain numbers do; the names, labels,
    buckets and values scraped are those the prometheus_client metrics had.
    """

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], _Series] = {}
        #: requests being served, by method label
        self.busy: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("tongcrm_requests", "Total requests", labels=_HTTP_LABELS)
        errors = CounterMetricFamily(
            "tongcrm_requests_error", "Total errors in requests (status 500 and above)", labels=_HTTP_LABELS
        )
        seconds = HistogramMetricFamily(
            "tongcrm_request_duration_seconds", "Request duration, in seconds", labels=_HTTP_LABELS
        )
        for (method, template, status), series in list(self.series.items()):
            labels = (method, template, str(status), APP_NAME)
            requests.add_metric(labels, series.count, created=series.created)
            if status >= 500:
                errors.add_metric(labels, series.count, created=series.created)
            cumulative = list(itertools.accumulate(series.buckets))
            seconds.add_metric(
                labels,
                list(zip(_BUCKET_LABELS, cumulative, strict=True)),
                series.total,
            )
        busy = GaugeMetricFamily(
            "tongcrm_requests_in_progress",
            "Requests currently in progress, by method",
            labels=("method", "app_name"),
        )
        for method, n in list(self.busy.items()):
            busy.add_metric((method, APP_NAME), n)
        yield from (requests, seconds, errors, busy)


#: one per process, like the default registry it is in: every app built in the process counts here
_HTTP = _HttpCounts()
REGISTRY.register(_HTTP)


class HttpMetrics:
    """HTTP requests by method, route template and status, counted by the app's outermost ASGI layer
    (:func:`tongcrm.api.middleware.request_id_middleware`) once the request has been answered.

    Paths are grouped by their route template so that member ids do not each make a series; requests that
    matched no route are left out for the same reason (a scanner would otherwise mint one series per probe), and
    so is ``/metrics``. Counted in plain numbers (see :class:`_HttpCounts`): litestar's Prometheus middleware,
    which looked each label set up four times per request and built a ``Request`` to find the path, was a third
    of an authenticated member lookup's server time.
    """

    EXCLUDED = frozenset({"/metrics"})
    #: the methods the in-progress gauge names (counted before routing: any other is "other")
    METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

    def __init__(self) -> None:
        self._counts = _HTTP

    def started(self, method: str) -> str:
        """Count a request as in progress; returns the label to hand to :meth:`record` when it is answered."""
        # the label, not the method: a scanner's made-up methods all share "other" (bounded)
        label = method if method in self.METHODS else "other"
        busy = self._counts.busy
        busy[label] = busy.get(label, 0) + 1
        return label

    def record(self, label: str, method: str, template: str | None, status: int, seconds: float) -> None:
        """Count one answered request (``label``: :meth:`started`'s; ``template``: the route's path template,
        None when none matched)."""
        self._counts.busy[label] -= 1
        if template is None or template in self.EXCLUDED:
            return
        key = (method, template, status)
        series = self._counts.series.get(key)
        if series is None:
            series = self._counts.series[key] = _Series()
        series.count += 1
        series.total += seconds
        series.buckets[bisect_left(HTTP_BUCKETS, seconds)] += 1


JOB_SECONDS = Histogram(
    "tongcrm_job_duration_seconds",
    "Time a job handler ran, by job name and outcome (done, retry, parked)",
    ["job", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
)
JOB_WAIT_SECONDS = Histogram(
    "tongcrm_job_wait_seconds",
    "Time from a job falling due to a worker claiming it (queueing latency)",
    ["job"],
    buckets=(0.05, 0.1, 0.5, 1, 5, 15, 60, 300),
)
JOB_FAILURES = Counter("tongcrm_job_failures_total", "Job attempts that raised, by job name", ["job"])
DELIVERIES = Counter(
    "tongcrm_event_deliveries_total", "Event deliveries attempted, by event and outcome", ["event", "outcome"]
)


class _Snapshot(Collector):
    """Gauge families computed beforehand (the database is async; a collector's ``collect`` is not)."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


async def database_gauges(session: AsyncSession, *, now: datetime) -> list[GaugeMetricFamily]:
    """Cluster-wide gauges, each one aggregate query (the send log's is a scan: scrape every 30 s or more)."""
    jobs = GaugeMetricFamily("tongcrm_jobs", "Jobs by status", labels=["status"])
    for status, count in await session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)):
        jobs.add_metric([status], count)
    due = GaugeMetricFamily("tongcrm_jobs_due", "Queued jobs already due (the queue depth workers face)")
    due.add_metric(
        [],
        (
            await session.execute(
                sa.select(sa.func.count()).select_from(Job).where(Job.status == "queued", Job.run_at <= now)
            )
        ).scalar_one(),
    )
    backlog = GaugeMetricFamily("tongcrm_outbox_backlog", "Committed events not yet fanned out to plugins")
    backlog.add_metric(
        [],
        (
            await session.execute(
                sa.select(sa.func.count()).select_from(OutboxEvent).where(OutboxEvent.dispatched_at.is_(None))
            )
        ).scalar_one(),
    )
    deliveries = GaugeMetricFamily(
        "tongcrm_event_deliveries", "Event deliveries by status", labels=["status"]
    )
    for status, count in await session.execute(
        sa.select(EventDelivery.status, sa.func.count())
        .where(EventDelivery.status != "done")
        .group_by(EventDelivery.status)
    ):
        deliveries.add_metric([status], count)
    lag = GaugeMetricFamily(
        "tongcrm_sync_lag_seconds",
        "Seconds since a channel account's sync last caught up (its watermark's age when never caught up)",
        labels=["channel", "account"],
    )
    rows = await session.execute(
        sa.select(ChannelAccount.channel, ChannelAccount.name, SyncState.last_success_at, SyncState.watermark)
        .outerjoin(SyncState, SyncState.account_id == ChannelAccount.id)
        .where(ChannelAccount.status == "active")
    )
    for channel, name, last_success, watermark in rows:
        since = last_success or watermark
        if since is not None:
            lag.add_metric([channel, name], max(0.0, (now - since).total_seconds()))
    return [jobs, due, backlog, deliveries, lag, *await _messages(session)]


async def _messages(session: AsyncSession) -> list[GaugeMetricFamily]:
    from tongcrm.messaging.models import Message

    messages = GaugeMetricFamily(
        "tongcrm_messages",
        "Messages in the send log by status (sent, delivered, refused, …)",
        labels=["status"],
    )
    for status, count in await session.execute(
        sa.select(Message.status, sa.func.count()).group_by(Message.status)
    ):
        messages.add_metric([status], count)
    return [messages]


def render(process: bool, database: list[GaugeMetricFamily] | None = None) -> bytes:
    """The text exposition of this process's metrics and, when given, the database gauges."""
    out = generate_latest(REGISTRY) if process else b""
    if database:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(database))
        out += generate_latest(registry)
    return out
