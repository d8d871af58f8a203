"""``/metrics``: admin-key protected Prometheus text with HTTP metrics and the cluster's queues and backlogs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tongcrm.db.base import utcnow
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.queue import enqueue
from tongcrm.jobs.runner import JobContext, JobRegistry, Runner
from tongcrm.metrics import HttpMetrics
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_show_queue_depth_outbox_backlog_and_http_requests(
    make_client: Any, tongcrm_db: TestDatabase
) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "some.job", run_at=utcnow() - timedelta(seconds=5))
        await enqueue(session, "later.job", run_at=utcnow() + timedelta(hours=1))
        emit(session, "member_created", {"member_id": 1})
    async with make_client(role="admin") as client:
        assert (await client.get("/api/plugins")).status_code == 200
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"  # charset once
    samples = _samples(response.text)
    assert samples[("tongcrm_jobs", (("status", "queued"),))] == 2
    assert samples[("tongcrm_jobs_due", ())] == 1
    assert samples[("tongcrm_outbox_backlog", ())] == 1
    http = [
        key for key in samples if key[0] == "tongcrm_requests_total" and ("path", "/api/plugins") in key[1]
    ]
    assert http, "the HTTP middleware counted the request by its route"


async def test_http_requests_are_counted_by_route_template_and_status(make_client: Any) -> None:
    from prometheus_client import REGISTRY

    def count(path: str, status: int, method: str = "GET") -> float:
        labels = {"method": method, "path": path, "status_code": str(status), "app_name": "tongcrm"}
        return REGISTRY.get_sample_value("tongcrm_requests_total", labels) or 0.0

    def seconds(path: str, status: int) -> float:
        labels = {"method": "GET", "path": path, "status_code": str(status), "app_name": "tongcrm"}
        return REGISTRY.get_sample_value("tongcrm_request_duration_seconds_count", labels) or 0.0

    template = "/api/members/{member_id}"
    before = {
        "found": count(template, 404),
        "timed": seconds(template, 404),
        "refused": count("/api/plugins", 401),
        "metrics": count("/metrics", 200),
    }
    async with make_client(role="admin") as client:
        for member_id in (998, 999):  # two ids, one series: grouped by the route's template
            assert (await client.get(f"/api/members/{member_id}")).status_code == 404
        assert (await client.get("/no/such/route")).status_code == 404
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/api/plugins", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert count(template, 404) == before["found"] + 2
    assert seconds(template, 404) == before["timed"] + 2
    assert count("/api/plugins", 401) == before["refused"] + 1, "a refused request is counted with its status"
    assert count("/metrics", 200) == before["metrics"], "/metrics is not counted"
    assert count("/no/such/route", 404) == 0, "paths that match no route make no series"
    gauge = {"method": "GET", "app_name": "tongcrm"}
    assert REGISTRY.get_sample_value("tongcrm_requests_in_progress", gauge) == 0


@pytest.mark.parametrize("role", ["operator", "analyst", None])
async def test_metrics_need_an_admin_key(make_client: Any, role: str | None) -> None:
    async with make_client(role=role) as client:
        assert (await client.get("/metrics")).status_code == (401 if role is None else 403)


async def test_job_runs_are_timed_and_failures_counted(tongcrm_db: TestDatabase) -> None:
    from prometheus_client import REGISTRY

    jobs = JobRegistry()

    @jobs.job("metrics.boom")
    async def boom(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("tongcrm_job_failures_total", job="metrics.boom")
    async with tongcrm_db.sessions() as session, session.begin():
        await enqueue(session, "metrics.boom", max_attempts=1)
    await Runner(tongcrm_db.sessions, PluginHost(autoload=False), jobs).run_once()
    assert value("tongcrm_job_failures_total", job="metrics.boom") == before + 1
    assert value("tongcrm_job_duration_seconds_count", job="metrics.boom", outcome="parked") >= 1


async def test_a_workers_health_endpoint_checks_its_database_and_serves_its_metrics(
    tongcrm_db: TestDatabase,
) -> None:
    import httpx
    from tongcrm.jobs.health import HealthServer

    runner = Runner(tongcrm_db.sessions, PluginHost(autoload=False), JobRegistry(), worker_id="w-1")
    server = HealthServer(runner, role="worker")
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/health")
            assert health.status_code == 200
            assert health.json() == {"status": "ok", "role": "worker", "worker": "w-1", "database": "ok"}
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200 and "tongcrm_job_duration_seconds" in scraped.text
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/health")).status_code == 405
    finally:
        await server.close()


def test_made_up_methods_share_one_in_progress_label_and_the_families_scrape_as_before() -> None:
    """Made-up methods count under "other" (bounded); the plain-number counts scrape as prometheus_client's
    metrics did: a counter with its _created, a histogram with cumulative buckets, the errors of 5xx only."""
    from prometheus_client import REGISTRY, generate_latest

    metrics = HttpMetrics()
    assert metrics.started("BREW") == "other" == metrics.started("PROPFIND")
    assert (
        REGISTRY.get_sample_value("tongcrm_requests_in_progress", {"method": "other", "app_name": "tongcrm"})
        == 2
    )
    metrics.record("other", "BREW", None, 405, 0.001)  # no route: in progress no more, no series
    metrics.record("other", "PROPFIND", "/test/metrics/{x}", 503, 0.2)
    label = metrics.started("GET")
    metrics.record(label, "GET", "/test/metrics/{x}", 200, 0.03)
    metrics.record(metrics.started("GET"), "GET", "/test/metrics/{x}", 200, 7.0)
    get = {"method": "GET", "path": "/test/metrics/{x}", "status_code": "200", "app_name": "tongcrm"}
    failed = {"method": "PROPFIND", "path": "/test/metrics/{x}", "status_code": "503", "app_name": "tongcrm"}
    value = REGISTRY.get_sample_value
    assert value("tongcrm_requests_in_progress", {"method": "other", "app_name": "tongcrm"}) == 0
    assert value("tongcrm_requests_total", get) == 2 and value("tongcrm_requests_created", get) is not None
    assert value("tongcrm_request_duration_seconds_count", get) == 2
    assert value("tongcrm_request_duration_seconds_sum", get) == pytest.approx(7.03)
    assert value("tongcrm_request_duration_seconds_bucket", {**get, "le": "0.025"}) == 0
    assert value("tongcrm_request_duration_seconds_bucket", {**get, "le": "0.05"}) == 1
    assert value("tongcrm_request_duration_seconds_bucket", {**get, "le": "7.5"}) == 2
    assert value("tongcrm_request_duration_seconds_bucket", {**get, "le": "+Inf"}) == 2
    assert (
        value("tongcrm_requests_error_total", failed) == 1
        and value("tongcrm_requests_error_total", get) is None
    )
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE tongcrm_requests_total counter" in text
    assert "# TYPE tongcrm_request_duration_seconds histogram" in text
