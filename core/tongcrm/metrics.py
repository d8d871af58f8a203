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

from datetime import datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels.models import ChannelAccount, SyncState
from tongcrm.jobs.models import EventDelivery, Job, OutboxEvent

_HTTP_LABELS = ("method", "path", "status_code", "app_name")
HTTP_REQUESTS = Counter("tongcrm_requests_total", "Total requests", _HTTP_LABELS)
HTTP_SECONDS = Histogram("tongcrm_request_duration_seconds", "Request duration, in seconds", _HTTP_LABELS)
HTTP_ERRORS = Counter(
    "tongcrm_requests_error_total", "Total errors in requests (status 500 and above)", _HTTP_LABELS
)
HTTP_IN_PROGRESS = Gauge(
    "tongcrm_requests_in_progress",
    "Requests currently in progress, by method",
    ("method", "app_name"),
    multiprocess_mode="livesum",
)
APP_NAME = "tongcrm"


class HttpMetrics:
    """HTTP requests by method, route template and status, counted by the app's outermost ASGI layer
    (:func:`tongcrm.api.middleware.request_id_middleware`) once the request has been answered.

    Paths are grouped by their route template so that member ids do not each make a series; requests that
    matched no route are left out for the same reason (a scanner would otherwise mint one series per probe), and
    so is ``/metrics``. The label sets' children are kept here: prometheus_client's ``labels()`` takes a lock
    and builds a key on every call, which litestar's Prometheus middleware did four times per request, with a
    ``Request`` and its URL built to find the path — a third of an authenticated member lookup's server time.
    """

    EXCLUDED = frozenset({"/metrics"})
    #: the methods the in-progress gauge names (counted before routing: any other is "other")
    METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram, Counter | None]] = {}
        self._in_progress: dict[str, Gauge] = {}

    def in_progress(self, method: str) -> Gauge:
        # keyed by the label, not the method: a scanner's made-up methods all share "other" (bounded, and cached)
        name = method if method in self.METHODS else "other"
        gauge = self._in_progress.get(name)
        if gauge is None:
            gauge = self._in_progress[name] = HTTP_IN_PROGRESS.labels(name, APP_NAME)
        return gauge

    def record(self, method: str, template: str | None, status: int, seconds: float) -> None:
        """Count one answered request (``template``: the route's path template, None when none matched)."""
        if template is None or template in self.EXCLUDED:
            return
        key = (method, template, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, template, str(status), APP_NAME)
            errors = HTTP_ERRORS.labels(*labels) if status >= 500 else None
            children = self._children[key] = (
                HTTP_REQUESTS.labels(*labels),
                HTTP_SECONDS.labels(*labels),
                errors,
            )
        count, seconds_, errors = children
        count.inc()
        seconds_.observe(seconds)
        if errors is not None:
            errors.inc()


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
    from prometheus_client import REGISTRY

    out = generate_latest(REGISTRY) if process else b""
    if database:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(database))
        out += generate_latest(registry)
    return out
