"""Fuzz the admin API from its OpenAPI document with schemathesis, as every role, on SQLite and PostgreSQL.

    python tests/fuzz/run.py                 # SQLite; PostgreSQL too when TONGCRM_TEST_POSTGRES_URL is set
    python tests/fuzz/run.py --seconds 20    # per role and backend (default: see ROLE_SECONDS)

For each backend this makes a scratch database, starts ``tongcrm serve`` on 127.0.0.1 (migrating it and
minting the first admin key), adds a store (``tongcrm channel add``) and, with the first admin key, an API key of
each role (admin, operator, analyst, pos) through ``POST /api/api-keys``, runs
schemathesis against ``/schema/openapi.json`` once per key, and stops the server. It fails when any response
is a server error (5xx), has a status the operation does not document, or does not match the documented
content type or schema; schemathesis prints each failure with the request that reproduces it. The number of
requests each run made is counted from the server's access log.

Bounded: each run stops after its time budget (``--max-time``) and at most ``--max-examples`` cases per
operation; the two backends run side by side (each with its own database and server), so the stage takes about
two minutes; each run prints how many of the OpenAPI's operations it tested. The seed is fixed so a failure in CI
reproduces locally with the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from tongcrm.testing.database import POSTGRES_ENV, scratch_url

#: Seconds of fuzzing per role; admin may call every route, so it gets the most.
ROLE_SECONDS = {"admin": 40, "operator": 20, "analyst": 15, "pos": 15}
#: What a response must satisfy (schemathesis check names).
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
STORE = "SH001"
SEED = 20261206
KEY = re.compile(r"tck_[A-Za-z0-9_-]+")


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tongcrm(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["tongcrm", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"tongcrm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tongcrm serve exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"tongcrm serve did not answer /health:\n{log.read_text()}")


def create_key(url: str, admin_key: str, role: str) -> str:
    """A new API key of ``role`` (a pos key for the store), made through ``POST /api/api-keys``."""
    body = {"role": role, "label": f"fuzz {role}", **({"store_code": STORE} if role == "pos" else {})}
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{url}/api/api-keys",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        key: str = json.loads(response.read())["key"]
    return key


def count_requests(log: Path) -> int:
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "request":
            count += 1
    return count


def operations_tested(output: str) -> str:
    """ "tested T of S operations" from schemathesis's summary (S: the operations it selected, every operation
    of the OpenAPI; an operation a role may not call is tested too, and must answer 401/403)."""
    selected = re.search(r"Selected: (\d+)/\d+", output)
    tested = re.search(r"Tested: (\d+)", output)
    if selected is None or tested is None:
        return "operations tested: unknown (no schemathesis summary)"
    return f"tested {tested.group(1)} of {selected.group(1)} operations"


def fuzz_role(url: str, role: str, key: str, seconds: int, workdir: Path, seed: int) -> tuple[bool, str]:
    """One schemathesis run as ``role``: (passed, its output)."""
    command = [
        "schemathesis",
        "run",
        f"{url}/schema/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--max-time",
        str(seconds),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=seconds + 240, check=False
    )
    return done.returncode == 0, done.stdout + done.stderr


def fuzz_backend(
    backend: str, database_url: str, role_seconds: dict[str, int], seed: int
) -> tuple[bool, int]:
    """Serve ``database_url``, fuzz it as each role; (all passed, requests made)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"tongcrm-fuzz-{backend}-"))
    env = {
        **os.environ,
        "TONGCRM_DATABASE_URL": database_url,
        "TONGCRM_SECRET_KEY": "fuzz-secret-key-0123456789abcdef",
        "TONGCRM_LOG_JSON": "1",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["tongcrm", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    passed = True
    try:
        wait_for_health(url, server, log)
        tongcrm(env, workdir, "channel", "add", "offline_pos", "--name", STORE)
        first = KEY.search(log.read_text(errors="replace"))
        if first is None:
            raise RuntimeError(f"tongcrm serve printed no first admin key:\n{log.read_text()}")
        # the other keys through the API with the first admin key (a request each, where `tongcrm apikey create`
        # would start a process that imports the whole app per role)
        keys = {role: create_key(url, first.group(0), role) for role in role_seconds}
        for role, seconds in role_seconds.items():
            started = time.monotonic()
            before = count_requests(log)
            ok, output = fuzz_role(url, role, keys[role], seconds, workdir, seed)
            made = count_requests(log) - before
            verdict = "passed" if ok else "FAILED"
            print(
                f"fuzz {backend} {role}: {verdict}, {made} requests in {time.monotonic() - started:.0f}s, "
                f"{operations_tested(output)}",
                flush=True,
            )
            if not ok:
                passed = False
                print(output)
                errors = [
                    line
                    for line in log.read_text(errors="replace").splitlines()
                    if '"unhandled error"' in line
                ]
                for line in errors[-5:]:
                    print(f"server log: {line[:3000]}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        total = count_requests(log)
        shutil.rmtree(workdir, ignore_errors=True)
    return passed, total


async def _with_scratch(backend: str, role_seconds: dict[str, int], seed: int) -> tuple[bool, int]:
    async with scratch_url(backend, durable=False) as database_url:
        return await asyncio.to_thread(fuzz_backend, backend, database_url, role_seconds, seed)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, help="seconds per role and backend (default: per role)")
    parser.add_argument("--roles", default=",".join(ROLE_SECONDS), help="comma-separated roles to fuzz as")
    parser.add_argument("--backends", help="comma-separated: sqlite,postgresql (default: what is configured)")
    parser.add_argument("--seed", type=int, default=SEED, help="schemathesis's seed (CI uses the default)")
    args = parser.parse_args()
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    role_seconds = {r: args.seconds or ROLE_SECONDS[r] for r in roles}
    backends = (
        [b.strip() for b in args.backends.split(",")]
        if args.backends
        else ["sqlite", *(["postgresql"] if os.environ.get(POSTGRES_ENV) else [])]
    )
    # the backends run side by side, each with its own database, server and schemathesis (the stage's wall is one
    # backend's, not their sum; most of a run's wall is waiting on the server and the database)
    with ThreadPoolExecutor(max_workers=len(backends)) as pool:
        outcomes = list(pool.map(lambda b: asyncio.run(_with_scratch(b, role_seconds, args.seed)), backends))
    failed = []
    for backend, (passed, requests) in zip(backends, outcomes, strict=True):
        print(f"fuzz {backend}: {'passed' if passed else 'FAILED'}, {requests} requests in all")
        if not passed:
            failed.append(backend)
    if failed:
        print(f"FAIL: the API fuzz found failures on {', '.join(failed)} (reproducing requests above)")
        return 1
    print(f"fuzz passed on {', '.join(backends)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
