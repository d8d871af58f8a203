"""``tongcrm demo``: prepare the demo folder, play the story with a progress display, then serve.

The folder holds everything: the SQLite database, its own secret key file, ``demo.json`` (seed, the moment the
story was anchored at and the fakes' ports, so ``--reuse`` regenerates the same shops on the same ports) and
``demo-keys.txt`` (the demo's API keys, readable by the owner only, so a reused folder can print them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from rich.console import Console
from tongcrm.config import Settings
from tongcrm.db import migrate
from tongcrm.db.engine import create_engine
from tongcrm.logging import configure_logging
from tongcrm.plugin.host import PluginHost

from tongcrm_demo import platforms as fakes
from tongcrm_demo.clock import DemoClock
from tongcrm_demo.story import Keys, Story, StoryReport, key_label

MARKER = "demo.json"
KEYS_FILE = "demo-keys.txt"
#: the environment the demo passes on to its settings; the database and the secret are always the folder's own
_PASSED_ON = ("TONGCRM_LOG_JSON", "TONGCRM_LOG_LEVEL", "TONGCRM_TIMEZONE")


def demo_settings(folder: Path) -> Settings:
    env = {k: os.environ[k] for k in _PASSED_ON if k in os.environ}
    env.setdefault("TONGCRM_LOG_LEVEL", "WARNING")  # the progress display speaks; logs only for trouble
    env["TONGCRM_DATABASE_URL"] = f"sqlite:///{folder / 'tongcrm.sqlite3'}"
    return Settings.from_env(env, workdir=folder, create=True)


def _quiet(settings: Settings) -> None:
    configure_logging(json=settings.log_json, level=settings.log_level)
    for name in ("uvicorn.error", "httpx", "alembic"):  # the fakes' servers and the platform clients
        logging.getLogger(name).setLevel(settings.log_level)


def choose(folder: Path, fresh: bool, reuse: bool, console: Console) -> str:
    """``new``, ``fresh`` or ``reuse``. An existing demo folder without a flag: ask on a terminal; otherwise
    reuse it (the documented default: nothing is deleted without being asked)."""
    if fresh and reuse:
        raise click.UsageError("--fresh and --reuse exclude each other")
    if not folder.exists() or not any(folder.iterdir()):
        return "new"
    if not (folder / MARKER).exists():
        raise click.UsageError(f"{folder} exists and is not a tongcrm demo folder; name another with --dir")
    if fresh:
        return "fresh"
    if reuse:
        return "reuse"
    if sys.stdin.isatty():
        answer = click.prompt(
            f"{folder} holds a demo already: [r]euse it, start [f]resh (deletes it), or [q]uit",
            type=click.Choice(["r", "f", "q"]),
            default="r",
        )
        if answer == "q":
            raise click.Abort
        return "fresh" if answer == "f" else "reuse"
    console.print(f"[yellow]{folder} holds a demo already: reusing it (pass --fresh to start afresh)[/]")
    return "reuse"


def run_demo(folder: Path, *, fresh: bool, reuse: bool, bind_host: str, port: int, seed: int) -> None:
    from tongcrm.serving import bind

    console = Console(highlight=False, soft_wrap=True)  # keys and URLs never wrap
    started = time.monotonic()
    mode = choose(folder, fresh, reuse, console)
    try:
        sock = bind(bind_host, port)  # before any work: a port someone holds fails at once
    except OSError as exc:
        # one line naming the address and the way out, as `tongcrm serve` says it (it was "OSError: [Errno 98]")
        raise click.ClickException(
            f"cannot listen on {bind_host}:{port}: {exc.strerror or exc} (another server on that port? choose "
            "another with --port; --host must be an address of this machine)"
        ) from exc
    if mode == "fresh":
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(folder)
    _quiet(settings)
    host = PluginHost()
    clock = DemoClock()
    if mode == "reuse":
        meta = json.loads((folder / MARKER).read_text())
        seed, anchor, ports = (
            meta["seed"],
            datetime.fromisoformat(meta["anchor"]),
            fakes.Ports(**meta["ports"]),
        )
    else:
        anchor, ports = datetime.now(UTC).replace(microsecond=0), fakes.Ports.free()
        meta = {"seed": seed, "anchor": anchor.isoformat(), "ports": dataclasses.asdict(ports)}
        (folder / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    platforms = fakes.build(seed, anchor, clock, ports)
    try:
        _run(folder, mode, settings, host, platforms, clock, seed, anchor, sock, bind_host, started, console)
    except KeyboardInterrupt:  # Ctrl-C before serving: the fake platforms stopped with the block
        console.print("demo interrupted")
        sys.exit(130)


def _run(
    folder: Path,
    mode: str,
    settings: Settings,
    host: PluginHost,
    platforms: fakes.Platforms,
    clock: DemoClock,
    seed: int,
    anchor: datetime,
    sock: socket.socket,
    bind_host: str,
    started: float,
    console: Console,
) -> None:
    from tongcrm.app import create_app, settle_heap
    from tongcrm.serving import run_app

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(fakes.serving(platforms))
        except RuntimeError as exc:  # a port of demo.json is taken now (reuse) or was taken meanwhile
            raise click.ClickException(
                f"the fake platforms cannot listen on their ports {dataclasses.asdict(platforms.ports)} "
                f"({exc}); free them, or start afresh with --fresh"
            ) from exc
        if mode == "reuse":
            made, renewed = asyncio.run(live_keys(settings, host, _read_keys(folder)))
            console.print(f"[bold]Reusing[/] {folder} (seed {seed}); the fake platforms are back on loopback")
            if renewed:
                _write_keys(folder, made)
                console.print(
                    f"  the saved {', '.join(renewed)} key(s) had been revoked or were unknown: new ones are made"
                    f" and saved in {folder / KEYS_FILE}"
                )
        else:
            # the served app's job runner works through the backlog (care flows, periodic jobs) once serving
            story = Story(settings, host, platforms, clock, seed=seed, anchor=anchor, drain_jobs=False)
            report = _play(story, console)
            made = report.keys
            _write_keys(folder, made)
            _summary(console, report)
        app = create_app(settings, host, run_jobs=True, configure_logs=False)
        settle_heap(app)
        url = f"http://{bind_host}:{sock.getsockname()[1]}"
        ready, cpu = time.monotonic() - started, time.process_time()

        def announce() -> None:
            console.print()
            console.rule(f"[bold green]tongcrm demo ready in {ready:.1f} s[/] (CPU {cpu:.1f} s)")
            console.print(f"  console   {url}/console")
            console.print(f"  API       {url}/api   (OpenAPI: {url}/schema)")
            console.print(f"  operator key  [bold]{made.operator}[/]")
            console.print(f"  admin key     [bold]{made.admin}[/]")
            console.print(f"  e.g.  curl -H 'Authorization: Bearer {made.operator}' {url}/api/members")
            console.print(
                "  The job runner catches up in the background: care messages (shipping, refund) go out by SMS"
            )
            console.print("  within a minute or so. Ctrl-C stops the demo and its fake platforms.")
            console.rule()

        # uvicorn shuts down gracefully on SIGINT/SIGTERM, restores the handlers it found and raises the signal
        # again: ours turns it into an exception, so the fake platforms stop here and the exit status is 0
        previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not run_app(app, sock, on_started=announce):
                raise click.ClickException("the app did not start (see the log above)")
        except Stopped:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    console.print("demo stopped: the server and the fake platforms")


class Stopped(Exception):
    """SIGINT or SIGTERM while serving."""


def _stopped(signum: int, frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def _play(story: Story, console: Console) -> StoryReport:
    """Migrate the new database and play the story, saying what it is doing."""
    settings = story.settings

    async def main() -> StoryReport:
        engine = create_engine(settings.database_url)
        try:
            await migrate.upgrade(engine, story.host)
        finally:
            await engine.dispose()
        _quiet(settings)  # Alembic's environment configures logging for itself: take it back
        return await story.play()

    last = [time.monotonic()]

    def step(text: str) -> None:
        now = time.monotonic()
        console.print(f"[dim]{now - last[0]:5.1f} s[/]  {text}")
        last[0] = now

    story.step = step
    with console.status("[bold]filling the demo member base…", spinner="dots"):
        console.print("[bold]tongcrm demo[/]: a fresh member base, three weeks of life, then the API")
        step("migrating a new SQLite database")
        return asyncio.run(main())


def _summary(console: Console, r: StoryReport) -> None:
    console.print(
        f"  {r.synced_orders} Tmall and JD orders synced, {r.receipts} store receipts ({r.points_payments} paid partly with points, {r.returns} returns), "
        f"{r.tmall_bindings} 会员通 and {r.jd_bindings} JD bindings, {r.live_events} live platform events, "
        f"a campaign to {r.campaign_audience} members, {r.tier_changes} tier changes at review"
    )


def _write_keys(folder: Path, made: Keys) -> None:
    path = folder / KEYS_FILE
    path.touch(mode=0o600)
    lines = [
        f"admin {made.admin}",
        f"operator {made.operator}",
        *(f"pos:{s} {k}" for s, k in made.pos.items()),
    ]
    path.write_text("\n".join(lines) + "\n")


async def live_keys(settings: Settings, host: PluginHost, saved: Keys) -> tuple[Keys, list[str]]:
    """``saved`` with each key that was revoked since (the console's API-keys page, ``tongcrm apikey revoke``) or
    that the database does not know replaced by a new key of the same role, store and label (audited as the
    system's), and the roles replaced: a reused demo never prints a key that no longer works."""
    from tongcrm.audit.service import SYSTEM
    from tongcrm.auth import audited
    from tongcrm.auth.models import ApiKey
    from tongcrm.auth.service import key_matches, key_prefix
    from tongcrm.db.engine import session_factory

    wanted: list[tuple[str, str | None, str]] = [
        ("admin", None, saved.admin),
        ("operator", None, saved.operator),
    ]
    wanted += [("pos", store, key) for store, key in saved.pos.items()]
    engine = create_engine(settings.database_url)
    renewed: list[str] = []
    out = Keys(admin=saved.admin, operator=saved.operator, pos=dict(saved.pos))
    try:
        async with session_factory(engine)() as session, session.begin():
            for role, store, key in wanted:
                row = (
                    await session.execute(sa.select(ApiKey).where(ApiKey.prefix == (key_prefix(key) or "")))
                ).scalar_one_or_none()
                if row is not None and row.revoked_at is None and key_matches(row.secret_hash, key):
                    continue
                label = key_label(role, store)
                made, _ = await audited.create(
                    session, SYSTEM, role, host=host, store_code=store, label=label
                )
                if store:
                    out.pos[store] = made.key
                    renewed.append(f"pos:{store}")
                else:
                    setattr(out, role, made.key)
                    renewed.append(role)
    finally:
        await engine.dispose()
    return out, renewed


def _read_keys(folder: Path) -> Keys:
    found: dict[str, Any] = {}
    for line in (folder / KEYS_FILE).read_text().splitlines():
        role, key = line.split(" ", 1)
        found[role] = key
    return Keys(
        admin=found["admin"],
        operator=found["operator"],
        pos={r.split(":", 1)[1]: k for r, k in found.items() if r.startswith("pos:")},
    )
