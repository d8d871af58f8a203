"""One SQLite sync of the ingest benchmark's fake shop, for instruction counts: ``python ingest_instructions.py
CHANNEL TRADES MODE``, MODE ``sync`` (the whole ``sync_account``), ``fetch`` (fetch + normalise alone) or
``none`` (everything but those: the baseline to subtract).

Wall-clock figures on a shared machine are the load's (issue #22); instructions are not. Run it under
``valgrind --tool=callgrind --callgrind-out-file=/dev/null`` (the fake platform is a child process, which
callgrind does not follow) once per mode and take ``(sync − none) / TRADES`` as the sync's instructions an order.
The process's own CPU time is printed too, for a run outside valgrind.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpcore  # noqa: F401  (imported before the sync, as the benchmark's httpx.get to the platform does)
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.db.base import metadata
from tongcrm.db.models import import_models
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import sync_account
from tongcrm.logging import configure_logging
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelContext
from tongcrm.testing.database import open_database, scratch_url
from tongcrm.testing.servers import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ingest_throughput import CHANNELS, _business_now


def _wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("fake platform did not start") from None
            time.sleep(0.5)


async def main(channel: str, trades: int, mode: str) -> None:
    conf = CHANNELS[channel]
    port = free_port()
    here = Path(__file__).resolve().parent  # noqa: ASYNC240 (before anything is measured)
    proc = subprocess.Popen(  # noqa: ASYNC220 (started and waited for before anything is measured)
        [sys.executable, str(here / conf["script"]), str(port), str(trades), str(max(1, trades * 3 // 10))]
    )
    try:
        _wait_for(port, proc)
        configure_logging(json=True, level="INFO")
        business_now = _business_now(conf["script"])
        clock = functools.partial(datetime.fromtimestamp, business_now.timestamp(), UTC)
        host = PluginHost(autoload=True, disabled=set())
        import_models()
        vault = Vault("bench-secret-0123456789abcdef")
        settings = {
            **conf["settings"],
            "gateway_url": f"http://127.0.0.1:{port}{conf['path']}",
            "initial_sync_days": "11",
        }
        async with scratch_url("sqlite") as url, open_database("sqlite", url) as db:
            async with db.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            async with db.sessions() as session, session.begin():
                await accounts.create_account(session, host, vault, channel, "bench", settings)
            ctx = IngestContext(host=host, vault=vault, clock=clock, tz=ZoneInfo("Asia/Shanghai"))
            cpu, wall = time.process_time(), time.perf_counter()
            count = 0
            if mode == "sync":
                report = await sync_account(db.sessions, ctx, "bench")
                assert report.error is None and report.caught_up, report
                count = report.applied + report.unchanged
            elif mode == "fetch":
                adapter = host.channel(channel).factory(ChannelContext("bench", settings, clock=clock))
                cursor = None
                while True:
                    page = await adapter.fetch_orders(cursor)
                    count += len(page.orders)
                    cursor = page.next_cursor
                    if not page.has_more:
                        break
                await adapter.aclose()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"{channel} {mode}: {count} orders, process CPU {cpu:.2f} s, wall {wall:.2f} s",
                file=sys.stderr,
            )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
