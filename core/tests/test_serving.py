"""Serving from one or several processes: the socket we bind, the supervisor, and ``tongcrm serve --workers``."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from tongcrm.serving import KERNEL_BALANCES, UNPARSABLE_DETAIL, bind, problem_protocol
from tongcrm.testing.servers import free_port

pytestmark = pytest.mark.slow

WHO_APP = """
import asyncio
import os
import sys
from litestar import Litestar, get

def _http_impl():
    frame = sys._getframe()
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("uvicorn.protocols.http."):
            return name.rsplit(".", 1)[1]
        frame = frame.f_back
    return None

def who_app(worker, *, fail_worker=None):
    if worker == fail_worker:
        raise SystemExit(3)

    @get("/who")
    async def who() -> dict:
        loop = type(asyncio.get_running_loop()).__module__
        return {"worker": worker, "pid": os.getpid(), "loop": loop, "http": _http_impl()}

    return Litestar(route_handlers=[who])
"""


async def test_accepted_connections_have_nagle_off() -> None:
    """The reason we bind ourselves: asyncio sets TCP_NODELAY only for sockets of protocol IPPROTO_TCP (a
    socket of protocol 0, as uvicorn binds for its workers, answers in two segments with Nagle on)."""
    seen: list[int] = []

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    for sock, expected in ((bind("127.0.0.1", 0), True), (_proto_zero_socket(), False)):
        server = await asyncio.start_server(accepted, sock=sock)
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert bool(seen.pop()) is expected
        writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("http_impl", ["httptools", "h11"])
async def test_a_request_uvicorn_cannot_parse_gets_a_problem(http_impl: str) -> None:
    """A request line with raw UTF-8 bytes never reaches the app: uvicorn answered it in plain text."""

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        raise AssertionError("an unparsable request reached the app")

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_config=None, lifespan="off", http=problem_protocol(http_impl))
    server = uvicorn.Server(config)
    serving = asyncio.create_task(
        server.serve(sockets=[sock])
    )  # the socket listens: a connection waits for it
    try:
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        writer.write("GET /api/members?q=会员 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)  # the connection closes after it
        writer.close()
    finally:
        server.should_exit = True
        await serving
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    assert "content-type: application/problem+json" in lines and "connection: close" in lines
    assert json.loads(body) == {
        "type": "about:blank", "title": "Bad request", "status": 400, "detail": UNPARSABLE_DETAIL,
    }  # fmt: skip


def _proto_zero_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.fixture
def who_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "who_serving_app.py").write_text(textwrap.dedent(WHO_APP))
    return str(tmp_path)


@pytest.fixture
def supervisor(who_module: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = _start_supervisor(who_module, port, workers=2)
    try:
        _wait_for(port)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _start_supervisor(path: str, port: int, workers: int, **options: object) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from tongcrm.serving import AppSpec, run_workers; "
        f"sys.exit(run_workers(AppSpec('who_serving_app:who_app', {options!r}), '127.0.0.1', {port}, {workers}))"
    )
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _get(port: int, path: str = "/who") -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return dict(json.loads(response.read()))
    finally:
        conn.close()


def _wait_for(port: int, path: str = "/who", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(port, path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _workers_answering(port: int, connections: int = 24) -> dict[int, int]:
    """worker index → pid, over connections opened at once and kept open (as a proxy's pool holds them)."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(connections)]
    try:
        for conn in conns:
            conn.connect()
        seen: dict[int, int] = {}
        for conn in conns:
            conn.request("GET", "/who")
            body = json.loads(conn.getresponse().read())
            seen[body["worker"]] = body["pid"]
        return seen
    finally:
        for conn in conns:
            conn.close()


def test_workers_share_the_port_and_a_dead_one_is_replaced(
    supervisor: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = supervisor
    seen: dict[int, int] = {}
    # the kernel spreads connections at random (24 of them all on one worker is ~1e-7) once both workers listen;
    # on a loaded machine the second may still be starting, so ask again until it answers or a minute is over
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        seen.update(_workers_answering(port))
        if len(seen) < 2:
            time.sleep(0.2)
    assert set(seen) == {0, 1}, seen
    if not KERNEL_BALANCES:
        pytest.skip("workers share one socket here; the rest needs SO_REUSEPORT")
    os.kill(seen[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            now = _workers_answering(port)
        except OSError:  # a connection queued on the dying worker's socket is reset
            now = {}
        if now.get(1) not in (None, seen[1]):
            break
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.2)
    assert now[0] == seen[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    with pytest.raises(ConnectionRefusedError):
        _get(port)


def test_workers_serve_on_httptools_and_uvloop(supervisor: tuple[subprocess.Popen[bytes], int]) -> None:
    """uvicorn's "auto" would quietly serve on h11 and asyncio's loop were they missing; we name the fast stack
    (a bare endpoint answers ~2.5x as many requests on it), and both are core dependencies."""
    _, port = supervisor
    body = _get(port)
    assert body["loop"].startswith("uvloop"), body
    assert body["http"] == "httptools_impl", body


def test_a_worker_that_cannot_start_stops_the_supervisor(who_module: str) -> None:
    port = free_port()
    proc = _start_supervisor(who_module, port, workers=2, fail_worker=1)
    try:
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stdout is not None
    assert b"worker failed to start" in proc.stdout.read()


def test_a_port_in_use_is_refused_before_any_worker_starts(who_module: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _start_supervisor(who_module, taken.getsockname()[1], workers=2)
        try:
            assert proc.wait(30) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stdout is not None
        assert b"Address already in use" in proc.stdout.read()


def test_serve_with_workers_runs_jobs_in_one_of_them(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGCRM_")}
    env.update({"TONGCRM_DATABASE_URL": f"sqlite:///{tmp_path / 'crm.sqlite3'}", "TONGCRM_LOG_JSON": "1"})
    out = tmp_path / "serve.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tongcrm", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(port, "/health", timeout=60)
        # one worker answering says nothing of the other, nor of the job runner: on a loaded machine stopping
        # now raced their start-up, so wait until both workers said they started before stopping them
        deadline = time.monotonic() + 60
        while out.read_text().count('"worker started"') < 2 or '"job runner started"' not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = out.read_text()
    assert "from 2 process(es)" in log
    assert log.count('"worker started"') == 2, log
    assert log.count('"job runner started"') == 1, log


def test_workers_stop_when_the_supervisor_is_killed(supervisor: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = supervisor
    pids = set(_workers_answering(port).values())
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)
    with pytest.raises(ConnectionRefusedError):
        _get(port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of an already-dead worker
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_stack_falls_back_when_the_fast_one_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform without wheels for them (uvloop has none on Windows) still serves, on h11 / asyncio."""
    import importlib.util

    from tongcrm import serving

    assert serving.server_stack() == serving.ServerStack(http="httptools", loop="uvloop")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("httptools", "uvloop") else real(name, *a),
    )
    assert serving.server_stack() == serving.ServerStack(http="h11", loop="asyncio")
