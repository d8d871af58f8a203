"""``tongcrm demo`` as a newcomer runs it: a subprocess in an empty folder that must serve within its bound,
print a working operator key once, and stop cleanly (with its fake platforms) on SIGTERM; a second run reuses
the folder without replaying."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tongcrm.testing.servers import free_port

#: The issue asks for under 60 s on the 2-core CI machine; the bound leaves room for a machine shared with
#: other work (the figure itself is printed by the command and reported).
READY_BOUND = float(os.environ.get("TONGCRM_DEMO_READY_BOUND", "90"))
KEY = re.compile(r"operator key\s+(tck_[A-Za-z0-9_-]+)")


def _start(folder: Path, port: int, *flags: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGCRM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tongcrm", "demo", "--dir", str(folder), "--port", str(port), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=folder.parent,
    )


def _wait_until_serving(proc: subprocess.Popen[str], port: int, bound: float) -> tuple[float, str]:
    """Seconds until /health answered, and the output so far (read line by line until the key appears)."""
    started = time.monotonic()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        while time.monotonic() - started < bound:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the demo exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
                )
            try:
                if client.get("/health").status_code == 200:
                    return time.monotonic() - started, ""
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    proc.kill()
    raise AssertionError(f"the demo did not serve within {bound} s")


def _output_until_key(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if KEY.search(line):
            return "".join(seen)
    raise AssertionError("no operator key printed:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    return rest


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.slow
def test_tongcrm_demo_serves_within_its_bound_and_reuses_its_folder(tmp_path: Path) -> None:
    folder, port = tmp_path / "demo", free_port()
    proc = _start(folder, port)
    try:
        took, _ = _wait_until_serving(proc, port, READY_BOUND)
        out = _output_until_key(proc)
    except BaseException:
        proc.kill()
        raise
    key = KEY.search(out)
    assert key is not None and f"http://127.0.0.1:{port}/console" in out
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key[1]}"}
    ) as api:
        members = api.get("/api/members")
        assert members.status_code == 200 and members.json()["items"]
        report = api.get("/api/campaigns/member-day/report")
        assert report.status_code == 200 and report.json()["total"]["treated"]["eligible"] > 0
    ports = json.loads((folder / "demo.json").read_text())["ports"]
    _stop(proc)
    assert all(_port_free(p) for p in ports.values()), "a fake platform outlived the demo"
    print(f"tongcrm demo: serving after {took:.1f} s (bound {READY_BOUND:.0f} s, {os.cpu_count()} cores)")

    # a second run without a flag, not on a terminal: the documented default reuses the folder
    again = _start(folder, port)
    try:
        took_again, _ = _wait_until_serving(again, port, READY_BOUND)
        out_again = _output_until_key(again)
    except BaseException:
        again.kill()
        raise
    assert "reusing it" in out_again and key[1] in out_again  # the same keys: nothing was played again
    print(f"tongcrm demo --reuse: serving after {took_again:.1f} s")
    _stop(again)


def test_a_port_out_of_range_or_held_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """``--port 99999`` was an OverflowError traceback from bind(), a held port "OSError: [Errno 98]" naming
    neither address nor way out (walk16); now exit 2 for the range, and serve's one line for a held port."""
    out_of_range = _start(tmp_path / "demo", 99999, "--fresh")
    output, _ = out_of_range.communicate(timeout=60)
    assert out_of_range.returncode == 2 and "Traceback" not in output
    assert "'--port': 99999 is not in the range 1<=x<=65535" in output
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = _start(tmp_path / "demo", port, "--fresh")
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in output, output
    assert f"cannot listen on 127.0.0.1:{port}" in output and "choose another with --port" in output
    assert not (tmp_path / "demo").exists()  # refused before any work
