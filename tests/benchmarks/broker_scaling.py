"""Broker-mode ingest scaling: fake JD shops synced by 1, 2 and 4 ``tongcrm jobs worker`` processes.

    TONGCRM_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python tests/benchmarks/broker_scaling.py --orders 300 --workers 1,2,4 [--mode backfill]

``--mode shops`` (default): four shops, one ``ingest.sync_account`` job each — parallel ingest of accounts.
``--mode backfill``: one shop holding the four shops' orders, backfilled in eight windows
(:mod:`tongcrm.ingest.backfill`) — one account's history split across workers. ``--latency S``: the fake
gateways answer every call after S seconds, as a real platform's round trip does (the instant fakes leave
nothing for more workers to overlap on a small machine).

For each worker count: a fresh PostgreSQL database (migrated with ``tongcrm db upgrade``), a scheduler and N
workers on RabbitMQ (started and healthy before the clock starts), four accounts and one ``ingest.sync_account``
job each; the clock stops when every order is stored. Prints orders/s, the ratio to one worker and the CPU
seconds each process used (from /proc), this process's included (it serves the four fake gateways), so the
figure can be read for a machine with more cores than this one: each worker, the scheduler, this process
(it serves the fake gateways), the PostgreSQL backends of the run's database (sampled from ``pg_stat_activity``
and /proc every half second, so a backend that came and went between two samples is missed) and RabbitMQ's
``beam.smp`` (the whole broker: run nothing else on it meanwhile). It also counts the rows the scheduler had to
publish (jobs and event deliveries created during the run), so the scheduler's CPU can be read per message.

Databases are named ``{--db-prefix}_{workers}`` (default ``tongcrm_bench_broker``): on a shared server give a
prefix of your own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.ingest.backfill import create_backfill
from tongcrm.jobs.models import EventDelivery, Job
from tongcrm.jobs.queue import enqueue
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.servers import serve_in_thread
from tongcrm_jd.fake_server import FakeJosGateway, FaultPlan, create_app
from tongcrm_jd.fake_shop import generate_shop

SECRET = "bench-secret-key-0123456789abcdef"
SHOPS = 4
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def beam_pid() -> int | None:
    """RabbitMQ's Erlang VM on this machine, if it runs here."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
            except OSError:
                continue
    return None


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving one database, sampled while the run goes on: the first and
    the latest reading of each backend process (a backend is a process of its own on this machine)."""

    def __init__(self, server_url: str, database: str) -> None:
        self.server_url = server_url
        self.database = database
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def sample(self) -> None:
        answer = subprocess.run(
            [
                "psql",
                self.server_url,
                "-Atc",
                "SELECT pid, datname FROM pg_stat_activity",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in answer.stdout.split():
            pid_text, _, database = line.partition("|")
            if database != self.database:
                continue
            pid = int(pid_text)
            try:
                used = cpu_seconds(pid)
            except (OSError, IndexError):
                continue
            self.first.setdefault(pid, used)
            self.last[pid] = used

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    def total(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tongcrm", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def healthy(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
        answer.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def delete_queue(name: str) -> None:
    """Durable queues outlive the run otherwise."""
    subprocess.run(["rabbitmqctl", "delete_queue", name], capture_output=True, check=False)


def admin(url: str, sql: str) -> None:
    subprocess.run(["psql", url, "-qc", sql], check=True, capture_output=True)


async def run(
    server_url: str,
    workers: int,
    orders: int,
    env_base: dict[str, str],
    mode: str,
    latency: float = 0.0,
    db_prefix: str = "tongcrm_bench_broker",
) -> dict[str, object]:
    name = f"{db_prefix}_{workers}"
    admin(server_url, f"DROP DATABASE IF EXISTS {name}")
    admin(server_url, f"CREATE DATABASE {name}")
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    env = {**env_base, "TONGCRM_DATABASE_URL": url, "TONGCRM_JOBS_QUEUE": f"tongcrm.bench.{os.getpid()}"}
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tongcrm", "db", "upgrade"],
        env=env,
        check=True,
        capture_output=True,
    )
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    engine = create_engine(url)
    try:
        with ExitStack() as stack:
            urls = []
            shops = SHOPS if mode == "shops" else 1
            per_shop = orders if mode == "shops" else SHOPS * orders
            for i in range(shops):
                shop = generate_shop(
                    seed=i, orders=per_shop, buyers=per_shop // 2, start=end - timedelta(days=2), end=end
                )
                # every call answered after ``latency`` seconds: a platform's round trip, which workers overlap
                faults = FaultPlan(slow_rate=1.0, slow_seconds=latency) if latency else FaultPlan()
                gateway = FakeJosGateway(
                    shop=shop, app_key=f"bench-{i}", access_tokens={"bench-token"}, faults=faults
                )
                urls.append(stack.enter_context(serve_in_thread(create_app(gateway))))
            ports = {}
            for role in ["scheduler", *(f"worker-{i}" for i in range(workers))]:
                ports[role] = free_port()
                args = (
                    ["jobs", "scheduler"] if role == "scheduler" else ["jobs", "worker", "--concurrency", "4"]
                )
                processes[role] = spawn([*args, "--health-port", str(ports[role])], env)
            for port in ports.values():  # every process up before the clock starts
                for _ in range(600):
                    try:
                        await asyncio.to_thread(healthy, port)
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
            host = PluginHost(autoload=True, disabled=set())
            sessions = session_factory(engine)
            # the scheduler's first periodic slots (ingest.sync_all among them) run before the shops exist,
            # so none of them enqueues a second sync of an account while the clock runs
            for _ in range(600):
                async with sessions() as session:
                    busy = (
                        await session.execute(
                            sa.select(sa.func.count())
                            .select_from(Job)
                            .where(Job.status.in_(["queued", "running"]), Job.run_at <= sa.func.now())
                        )
                    ).scalar_one()
                    periodic = (
                        await session.execute(sa.select(sa.func.count()).select_from(Job))
                    ).scalar_one()
                if periodic and not busy:
                    break
                await asyncio.sleep(0.2)
            load_before = os.getloadavg()[0]
            beam = beam_pid()
            cpu_before = {role: cpu_seconds(p.pid) for role, p in processes.items()}
            cpu_before["gateways+bench"] = cpu_seconds(os.getpid())
            if beam is not None:
                cpu_before["rabbitmq"] = cpu_seconds(beam)
            async with sessions() as session:
                rows_before = await _published_rows(session)
            backends = BackendCpu(server_url, name)
            backends.sample()
            stop_sampling = asyncio.Event()
            sampling = asyncio.create_task(backends.watch(stop_sampling))
            async with sessions() as session, session.begin():
                for i, gateway_url in enumerate(urls):
                    settings = {
                        "app_key": f"bench-{i}",
                        "app_secret": "fake-app-secret",
                        "access_token": "bench-token",
                        "gateway_url": f"{gateway_url}/routerjson",
                        "initial_sync_days": "3",
                    }
                    await accounts.create_account(session, host, Vault(SECRET), "jd", f"shop-{i}", settings)
                    if mode == "shops":
                        await enqueue(
                            session,
                            "ingest.sync_account",
                            {"account": f"shop-{i}"},
                            lock_key=f"sync:shop-{i}",
                        )
                    else:  # two days and a bit in eight windows
                        since = end - timedelta(days=2, hours=1)
                        await create_backfill(
                            session,
                            host,
                            f"shop-{i}",
                            since=since,
                            until=end,
                            window=timedelta(hours=49) / 8,
                            actor=SYSTEM,
                        )
            started = time.perf_counter()
            while True:
                async with sessions() as session:
                    stored = (
                        await session.execute(sa.select(sa.func.count()).select_from(Order))
                    ).scalar_one()
                if stored >= SHOPS * orders:
                    break
                if time.perf_counter() - started > 600:
                    raise TimeoutError(f"only {stored} of {SHOPS * orders} orders after 600 s")
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            load_after = os.getloadavg()[0]
            cpu = {role: round(cpu_seconds(p.pid) - cpu_before[role], 1) for role, p in processes.items()}
            cpu["gateways+bench"] = round(cpu_seconds(os.getpid()) - cpu_before["gateways+bench"], 1)
            if beam is not None:
                cpu["rabbitmq"] = round(cpu_seconds(beam) - cpu_before["rabbitmq"], 1)
            stop_sampling.set()
            await sampling
            backends.sample()
            cpu["postgres"] = round(backends.total(), 1)
            async with sessions() as session:
                published = await _published_rows(session) - rows_before
            async with sessions() as session:
                retried = (
                    await session.execute(
                        sa.select(sa.func.sum(sa.case((Job.attempts > 1, Job.attempts - 1), else_=0))).where(
                            Job.name.in_(["ingest.sync_account", "ingest.backfill_window"])
                        )
                    )
                ).scalar_one()
                errors = sorted(
                    {
                        next(
                            (line for line in reversed((error or "").splitlines()) if "Error" in line[:80]),
                            "",
                        )[:200]
                        for error in (
                            await session.execute(
                                sa.select(Job.last_error).where(
                                    Job.name.in_(["ingest.sync_account", "ingest.backfill_window"]),
                                    Job.last_error.is_not(None),
                                )
                            )
                        ).scalars()
                    }
                )
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(30)
        await engine.dispose()
        admin(server_url, f"DROP DATABASE IF EXISTS {name}")
        for queue in (env["TONGCRM_JOBS_QUEUE"], env["TONGCRM_JOBS_QUEUE"] + ".dead"):
            delete_queue(queue)
    return {
        "workers": workers,
        "seconds": round(elapsed, 1),
        "orders_per_s": round(SHOPS * orders / elapsed, 1),
        "cpu_s": cpu,
        "published": published,
        "sync_retries": retried,
        "load": (round(load_before, 2), round(load_after, 2)),
        "retry_reasons": errors,
    }


async def _published_rows(session: AsyncSession) -> int:
    """Jobs and event deliveries ever created: each is at least one message the scheduler publishes."""
    jobs = (await session.execute(sa.select(sa.func.count()).select_from(Job))).scalar_one()
    deliveries = (await session.execute(sa.select(sa.func.count()).select_from(EventDelivery))).scalar_one()
    return int(jobs) + int(deliveries)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=300, help="orders per shop")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--mode", choices=["shops", "backfill"], default="shops")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds the fake gateway takes to answer each call"
    )
    parser.add_argument(
        "--db-prefix", default="tongcrm_bench_broker", help="the run's databases are PREFIX_<workers>"
    )
    options = parser.parse_args()
    server_url = os.environ["TONGCRM_TEST_POSTGRES_URL"]
    env = {
        **os.environ,
        "TONGCRM_SECRET_KEY": SECRET,
        "TONGCRM_JOBS_BROKER_URL": os.environ.get(
            "TONGCRM_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"
        ),
        "TONGCRM_LOG_LEVEL": "WARNING",
        "TONGCRM_DISABLE_PLUGINS": "",
    }
    results = [
        await run(server_url, int(n), options.orders, env, options.mode, options.latency, options.db_prefix)
        for n in options.workers.split(",")
    ]
    base = results[0]["orders_per_s"]
    print(
        f"mode {options.mode}, {SHOPS * options.orders} orders, gateway latency {options.latency} s a call; "
        f"cores on this machine: {os.cpu_count()}"
    )
    for result in results:
        ratio = float(result["orders_per_s"]) / float(base)  # type: ignore[arg-type]
        print(
            f"{result['workers']} worker(s): {result['orders_per_s']} orders/s in {result['seconds']} s, "
            f"x{ratio:.2f} of one worker; sync job retries {result['sync_retries']}; "
            f"1-min load average before/after {result['load']}"
        )
        cpu: dict[str, float] = result["cpu_s"]  # type: ignore[assignment]
        print(
            f"    CPU seconds in the {result['seconds']} s: "
            + ", ".join(f"{role} {used}" for role, used in cpu.items())
            + f"; rows published {result['published']}"
            + f" ({1000 * cpu['scheduler'] / max(1, int(result['published'])):.2f} scheduler CPU ms a row)"  # type: ignore[call-overload]
        )
        for reason in result["retry_reasons"]:  # type: ignore[attr-defined]
            print(f"    retried after: {reason}")


if __name__ == "__main__":
    asyncio.run(main())
