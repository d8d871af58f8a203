"""The CLI: database commands, API keys, plugins, and one-line errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from tongcrm.cli import Context, build_cli
from tongcrm.plugin.host import PluginHost


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    (tmp_path / "cli.sqlite3").touch()  # an empty database, as `tongcrm db upgrade` finds a new one
    host = PluginHost(autoload=True, disabled=set())

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)

    return run


def test_db_upgrade_status_and_check(invoke) -> None:  # type: ignore[no-untyped-def]
    status = invoke("db", "status")
    assert "the database is behind" in status.output
    assert invoke("db", "upgrade").exit_code == 0
    status = invoke("db", "status")
    assert "behind" not in status.output
    check = invoke("db", "check")
    assert check.exit_code == 0 and "agree" in check.output


def test_apikey_lifecycle(invoke) -> None:  # type: ignore[no-untyped-def]
    invoke("db", "upgrade")
    assert invoke("channel", "add", "offline_pos", "--name", "SH001").exit_code == 0
    created = invoke("apikey", "create", "--role", "pos", "--store", "SH001", "--label", "till 1")
    assert created.exit_code == 0
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tck_")
    listed = invoke("apikey", "list")
    assert "SH001" in listed.output and key not in listed.output
    revoked = invoke("apikey", "revoke", key.split("_")[1])
    assert revoked.exit_code == 0 and "revoked key #1" in revoked.output
    assert invoke("apikey", "revoke", "1").exit_code == 0  # already revoked: nothing changes, nothing audited


def test_apikey_create_and_revoke_are_audited(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A key minted or revoked at the shell leaves the same trail as one made through the API, and the chain
    still verifies."""
    import json
    import sqlite3

    invoke("db", "upgrade")
    key = invoke("apikey", "create", "--role", "operator", "--label", "ops").stdout.strip().splitlines()[-1]
    invoke("apikey", "revoke", key.split("_")[1])
    invoke("apikey", "revoke", key.split("_")[1])
    with sqlite3.connect(tmp_path / "cli.sqlite3") as db:
        rows = db.execute(
            "SELECT actor, role, action, object_id, after FROM audit_log ORDER BY seq"
        ).fetchall()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("cli", "admin", "api_key.create", "1"),
        ("cli", "admin", "api_key.revoke", "1"),
    ]
    created = json.loads(rows[0][4])
    assert created["role"] == "operator" and created["label"] == "ops" and key not in rows[0][4]
    assert invoke("verify").exit_code == 0


def test_pos_key_needs_a_store(invoke) -> None:  # type: ignore[no-untyped-def]
    from tongcrm.errors import BadRequest

    invoke("db", "upgrade")
    with pytest.raises(BadRequest, match="scoped to one store"):
        invoke("apikey", "create", "--role", "pos")


def test_a_pos_key_for_an_unknown_store_is_refused_naming_the_known_ones(invoke, capsys) -> None:  # type: ignore[no-untyped-def]
    """`--store S1` for a store that does not exist was accepted; the till then only ever heard "no store"."""
    from tongcrm.errors import Unprocessable

    invoke("db", "upgrade")
    with pytest.raises(Unprocessable) as refused:
        invoke("apikey", "create", "--role", "pos", "--store", "SH001")
    assert refused.value.message.endswith(
        "offline_pos channel(s): none yet; add the store first (tongcrm channel add offline_pos …)"
    )
    for code in ("SH002", "SH001"):
        assert invoke("channel", "add", "offline_pos", "--name", code).exit_code == 0
    with pytest.raises(Unprocessable) as refused:
        invoke("apikey", "create", "--role", "pos", "--store", "S1")
    assert refused.value.message.startswith(
        "store_code: no store 'S1': the stores are the accounts of the offline_pos channel(s): 'SH001', 'SH002';"
    )
    assert "SH001" not in invoke("apikey", "list").output  # nothing was created
    assert invoke("apikey", "create", "--role", "pos", "--store", "SH002").exit_code == 0


def test_plugins_lists_first_party_plugins(invoke) -> None:  # type: ignore[no-untyped-def]
    out = invoke("plugins").output
    for name in ("taobao", "jd", "offline_pos", "sms_gateway", "demo"):
        assert name in out


def test_errors_print_one_line_and_exit_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from tongcrm.cli import main

    monkeypatch.setenv("TONGCRM_DATABASE_URL", "mysql://nobody@127.0.0.1/none")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    with pytest.raises(SystemExit) as exited:
        main(["db", "status"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: unsupported database 'mysql'")


def test_a_command_on_a_database_without_the_schema_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    # e.g. `tongcrm apikey create` run in another directory than `tongcrm serve`: SQLite opens a new, empty
    # ./tongcrm.sqlite3 there, and the error was "OperationalError: (sqlite3.OperationalError) no such table"
    from tongcrm.cli import main

    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    (tmp_path / "empty.sqlite3").touch()
    with pytest.raises(SystemExit) as exited:
        main(["apikey", "create", "--role", "admin"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"error: the database sqlite:///{tmp_path / 'empty.sqlite3'} has no tongcrm tables")
    assert "run `tongcrm db upgrade`" in err and "TONGCRM_DATABASE_URL" in err


@pytest.mark.parametrize(
    "args",
    [
        ("apikey", "list"),
        ("apikey", "create", "--role", "admin"),
        ("sync",),
        ("db", "status"),
        ("settings", "show"),
        ("pos", "till", "list"),
        ("keys", "status"),
    ],
)
def test_a_command_in_a_directory_without_tongcrm_creates_nothing_and_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, args: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    """A mistaken `cd` used to leave an empty tongcrm.sqlite3 and a second .tongcrm-secret behind: data
    encrypted under that key is readable by no one who runs tongcrm from the right directory."""
    from tongcrm.cli import main

    monkeypatch.delenv("TONGCRM_DATABASE_URL", raising=False)
    monkeypatch.delenv("TONGCRM_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: no tongcrm database at {tmp_path / 'tongcrm.sqlite3'} (TONGCRM_DATABASE_URL unset): run this "
        "where `tongcrm serve` runs, set TONGCRM_DATABASE_URL to its database, or create a new one here with "
        "`tongcrm db upgrade`"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_missing_database_file_named_by_the_url_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from tongcrm.cli import main

    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'typo.sqlite3'}")
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    with pytest.raises(SystemExit) as exited:
        main(["apikey", "list"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"no tongcrm database at {tmp_path / 'typo.sqlite3'} (TONGCRM_DATABASE_URL)" in err
    assert list(tmp_path.iterdir()) == []


def test_the_secret_of_a_sqlite_database_lies_beside_it_whatever_folder_a_command_runs_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """The key was looked for (and made) in the current folder, so the same TONGCRM_DATABASE_URL run from
    another folder found no key, or made a second one: it is kept beside the SQLite file."""
    from tongcrm.cli import main

    home, elsewhere, data = tmp_path / "home", tmp_path / "elsewhere", tmp_path / "data"
    for folder in (home, elsewhere, data):
        folder.mkdir()
    monkeypatch.delenv("TONGCRM_SECRET_KEY", raising=False)
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{data / 'x.sqlite3'}")
    monkeypatch.chdir(home)
    main(["db", "upgrade"])  # a new installation: its key beside its file, not here
    assert (data / ".tongcrm-secret").exists() and list(home.iterdir()) == []
    main(["apikey", "create", "--role", "admin", "--label", "first"])
    capsys.readouterr()
    monkeypatch.chdir(elsewhere)
    main(["apikey", "list"])  # the same key, found from another folder
    assert "first" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []

    (data / ".tongcrm-secret").unlink()  # lost: refused, and no new key is made anywhere
    with pytest.raises(SystemExit) as exited:
        main(["apikey", "list"])
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith(
        f"error: no secret key: TONGCRM_SECRET_KEY is not set and there is no {data / '.tongcrm-secret'}"
    )
    assert list(elsewhere.iterdir()) == [] and not (data / ".tongcrm-secret").exists()


def test_a_secret_kept_the_old_way_in_the_folder_is_still_read_and_two_different_ones_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """An installation made before the key moved beside the file kept it in the folder `serve` ran in: that
    ./.tongcrm-secret still opens it. When a different key also lies beside the file, which one encrypted the
    data is not guessed: the command is refused, naming both files."""
    from tongcrm.cli import main

    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    monkeypatch.delenv("TONGCRM_SECRET_KEY", raising=False)
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{data / 'x.sqlite3'}")
    monkeypatch.chdir(home)
    main(["db", "upgrade"])
    main(["apikey", "create", "--role", "admin", "--label", "old-way"])
    (data / ".tongcrm-secret").rename(home / ".tongcrm-secret")  # where the old code had put it
    capsys.readouterr()
    main(["apikey", "list"])
    assert "old-way" in capsys.readouterr().out
    assert not (data / ".tongcrm-secret").exists()  # read where it is, not copied

    (data / ".tongcrm-secret").write_text((home / ".tongcrm-secret").read_text())  # moved by copying: one key
    main(["apikey", "list"])
    assert "old-way" in capsys.readouterr().out

    (data / ".tongcrm-secret").write_text("another-key-0123456789abcdef\n")
    for command in (["apikey", "list"], ["db", "upgrade"]):
        with pytest.raises(SystemExit) as exited:
            main(command)
        assert exited.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(
            f"error: two different secret keys: {data / '.tongcrm-secret'} (beside the database) and "
            f"{home / '.tongcrm-secret'} (in this folder"
        ), err


def test_a_server_database_takes_its_key_from_the_environment_never_from_a_file_in_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """With PostgreSQL and no TONGCRM_SECRET_KEY, `db upgrade` and `serve` made a ./.tongcrm-secret wherever
    they ran: the next run from another folder had another key. Refused before the database is touched, and
    a key file already in the folder is named so the operator can move it into the variable."""
    from tongcrm.cli import main

    monkeypatch.delenv("TONGCRM_SECRET_KEY", raising=False)
    monkeypatch.setenv("TONGCRM_DATABASE_URL", "postgresql://tongcrm@127.0.0.1:1/crm")  # never reached
    monkeypatch.chdir(tmp_path)
    for command in (["db", "upgrade"], ["serve", "--port", "1"], ["apikey", "list"]):
        with pytest.raises(SystemExit) as exited:
            main(command)
        assert exited.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(
            "error: TONGCRM_SECRET_KEY is not set: a server database takes its key from the environment"
        ), err
        assert list(tmp_path.iterdir()) == []
    (tmp_path / ".tongcrm-secret").write_text("a-key-made-the-old-way-0123456789\n")
    with pytest.raises(SystemExit):
        main(["db", "upgrade"])
    assert f"TONGCRM_SECRET_KEY=$(cat {tmp_path / '.tongcrm-secret'})" in capsys.readouterr().err


def test_serve_and_db_upgrade_make_no_second_secret_beside_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A database that holds data keeps the key it was written with: a lost .tongcrm-secret is not replaced."""
    from tongcrm.cli import main

    monkeypatch.delenv("TONGCRM_SECRET_KEY", raising=False)
    monkeypatch.delenv("TONGCRM_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    main(["db", "upgrade"])
    (tmp_path / ".tongcrm-secret").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["db", "upgrade"])
    assert exited.value.code == 1
    assert "error: no secret key" in capsys.readouterr().err
    assert not (tmp_path / ".tongcrm-secret").exists()


def test_an_unreachable_or_refusing_database_is_named_with_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """The bare driver errors ("ConnectionRefusedError: [Errno 111] Connect call failed", "DBAPIError: …
    database "x" does not exist") named neither the database nor what to check; a password is never shown."""
    import os
    import socket

    from sqlalchemy.engine import make_url
    from tongcrm.cli import main

    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"postgresql://tongcrm:hunter2@127.0.0.1:{port}/crm")
    with pytest.raises(SystemExit) as exited:
        main(["apikey", "list"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reach the database postgresql://tongcrm:***@127.0.0.1:{port}/crm (")
    assert "hunter2" not in err and err.count("\n") == 0

    monkeypatch.setenv("TONGCRM_DATABASE_URL", f"sqlite:///{tmp_path}")  # a directory, not a file
    with pytest.raises(SystemExit) as exited:
        main(["apikey", "list"])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot open the database sqlite:///{tmp_path}: unable to open database file "
        "(check TONGCRM_DATABASE_URL)"
    )

    server = os.environ.get("TONGCRM_TEST_POSTGRES_URL")
    if server:
        missing = (
            make_url(server).set(database="tongcrm_no_such_database").render_as_string(hide_password=False)
        )
        monkeypatch.setenv("TONGCRM_DATABASE_URL", missing)
        with pytest.raises(SystemExit) as exited:
            main(["apikey", "list"])
        assert exited.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot open the database postgresql://")
        assert 'database "tongcrm_no_such_database" does not exist (check TONGCRM_DATABASE_URL)' in err


def test_serve_on_a_port_in_use_or_out_of_range_says_so_in_one_line(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """ "OSError: [Errno 98] Address already in use" named no address; --port 99999 was a traceback."""
    import socket

    from tongcrm.cli import main

    invoke("db", "upgrade")
    monkeypatch.setenv("TONGCRM_LOG_LEVEL", "WARNING")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--port", str(port), "--no-jobs"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use (")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "99999"])
    assert exited.value.code == 2
    assert "99999 is not in the range 1<=x<=65535" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_says_serving_only_once_the_port_is_held(
    invoke, monkeypatch: pytest.MonkeyPatch, capsys, workers: str
) -> None:  # type: ignore[no-untyped-def]
    """`serve --workers 2` printed "serving on …" and then failed to bind a taken port: the line is printed
    once the port is held, and a taken port exits 1 with one line naming it, for one process or several."""
    import socket

    from tongcrm.cli import main

    invoke("db", "upgrade")
    monkeypatch.setenv("TONGCRM_LOG_LEVEL", "WARNING")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--port", str(port), "--no-jobs", "--workers", workers])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "serving on" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use (")
    )


def test_sync_with_no_account_says_so(invoke) -> None:  # type: ignore[no-untyped-def]
    invoke("db", "upgrade")
    synced = invoke("sync")
    assert synced.exit_code == 0
    assert "no active channel account to sync: add one with `tongcrm channel add CHANNEL`" in synced.output


@pytest.mark.parametrize(
    ("given", "expected_utc"),
    [
        ("2026-11-01 00:00", "2026-10-31T16:00:00+00:00"),  # the README's form: Asia/Shanghai wall time
        ("2026-11-01 00:00:30", "2026-10-31T16:00:30+00:00"),
        ("2026-11-01", "2026-10-31T16:00:00+00:00"),
        ("2026-11-01T08:00", "2026-11-01T00:00:00+00:00"),
        ("2026-11-01T00:00:00+08:00", "2026-10-31T16:00:00+00:00"),
        ("2026-11-01T00:00Z", "2026-11-01T00:00:00+00:00"),
        ("2026-11-01 09:30:00.250-05:00", "2026-11-01T14:30:00.250000+00:00"),
    ],
)
def test_sync_since_accepts_the_readme_form_and_iso_8601(
    invoke, monkeypatch: pytest.MonkeyPatch, given: str, expected_utc: str
) -> None:  # type: ignore[no-untyped-def]
    from tongcrm.ingest import cli as ingest_cli

    seen = []

    async def run_sync(host, settings, names, since, max_pages):  # type: ignore[no-untyped-def]
        seen.append(since)
        return []

    monkeypatch.setattr(ingest_cli, "_run_sync", run_sync)
    result = invoke("sync", "--since", given)
    assert result.exit_code == 0, result.output
    (since,) = seen
    assert since.isoformat() == expected_utc


def test_sync_since_naive_time_uses_the_programme_time_zone(invoke, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from tongcrm.ingest import cli as ingest_cli

    seen = []

    async def run_sync(host, settings, names, since, max_pages):  # type: ignore[no-untyped-def]
        seen.append(since)
        return []

    monkeypatch.setattr(ingest_cli, "_run_sync", run_sync)
    monkeypatch.setenv("TONGCRM_TIMEZONE", "Europe/London")
    assert invoke("sync", "--since", "2026-07-01 00:00").exit_code == 0
    assert seen[0].isoformat() == "2026-06-30T23:00:00+00:00"  # BST is UTC+1


@pytest.mark.parametrize("given", ["yesterday", "2026-13-01 00:00", "2026/11/01 00:00", ""])
def test_sync_since_refuses_what_is_not_a_time(invoke, given: str) -> None:  # type: ignore[no-untyped-def]
    result = invoke("sync", "--since", given)
    assert result.exit_code == 2
    assert "is not a date and time" in result.output


def test_sync_window_hours_backfills_in_windows_and_backfills_shows_progress(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from tongcrm.testing.platforms import jd_platform
    from tongcrm.testing.servers import serve_in_thread

    app, settings, truth = jd_platform(orders=80, buyers=30)
    assert invoke("db", "upgrade").exit_code == 0
    with serve_in_thread(app) as url:
        added = invoke(
            "channel", "add", "jd", "--name", "jd-pop", "--app-key", settings["app_key"],
            "--app-secret", settings["app_secret"], "--access-token", settings["access_token"],
            "--gateway-url", f"{url}{settings['_path']}",
        )  # fmt: skip
        assert added.exit_code == 0, added.output
        since = (datetime.now(UTC) - timedelta(days=3)).isoformat(timespec="seconds")
        result = invoke(
            "sync", "--account", "jd-pop", "--since", since, "--window-hours", "12", "--parallel", "2"
        )
    assert result.exit_code == 0, result.output
    assert "backfill 1 of jd-pop: 6 windows queued for the job workers" in result.output
    statuses, _lines = truth()
    assert "6/6 windows done" in result.output and f"{len(statuses)} orders applied" in result.output
    shown = invoke("backfills").output
    assert "jd-pop" in shown and "done" in shown and "6/6 (0 running)" in shown
    resumed = invoke("backfills", "--resume", "1")  # nothing left: it says so and fetches nothing
    assert resumed.exit_code == 0 and "6/6 windows done" in resumed.output
    assert invoke("sync", "--since", since, "--window-hours", "12").exit_code == 2  # which account?
    # audited as the console's backfill form is, and the chain still verifies
    with sqlite3.connect(tmp_path / "cli.sqlite3") as db:
        rows = db.execute(
            "SELECT actor, action, object_id, after FROM audit_log WHERE action LIKE '%backfill'"
        )
        trail = [(actor, action, object_id, json.loads(after)) for actor, action, object_id, after in rows]
    assert [t[:3] for t in trail] == [("cli", "channel_account.backfill", "jd-pop")]
    assert trail[0][3]["backfill"] == 1 and trail[0][3]["windows"] == 6 and trail[0][3]["window_hours"] == 12
    assert invoke("verify").exit_code == 0


async def test_a_line_logged_while_a_command_runs_stays_out_of_its_stdout() -> None:
    """Before an entry point configures logging, tongcrm's lines go to stderr (scrubbed), never to stdout, where
    a command's data goes: a test's CLI runner, capturing a command in another thread, had caught a request's log
    line in ``tongcrm messages in-doubt``'s listing (issue #22, leftovers14)."""
    import asyncio
    import time

    import click
    import structlog
    from click.testing import CliRunner
    from tongcrm.logging import configure_default, get_logger

    @click.command()
    def listing() -> None:
        time.sleep(0.5)
        click.echo("1\tflow.shipping_notice")

    saved = structlog.get_config()
    structlog.reset_defaults()
    configure_default()
    try:
        invoked = asyncio.create_task(asyncio.to_thread(CliRunner().invoke, listing, []))
        await asyncio.sleep(0.1)
        get_logger("elsewhere").info("request", path="/api/messages", mobile="13800138000")
        result = await invoked
    finally:
        structlog.configure(**saved)
    assert result.exit_code == 0 and result.stdout == "1\tflow.shipping_notice\n"
    if "request" in result.stderr:  # caught on the swapped stderr (the runner's threads share it): scrubbed
        assert "13800138000" not in result.stderr


def test_channel_add_applies_the_settings_bounds_of_the_api(invoke, capsys) -> None:  # type: ignore[no-untyped-def]
    """``tongcrm channel add`` refuses a value past ``SETTING_VALUE_MAX`` as the HTTP API and the console do
    (one definition, :mod:`tongcrm.plugin.settings`): one line, exit 1, and no account is added."""
    from tongcrm.cli import main
    from tongcrm.plugin.settings import SETTING_VALUE_MAX

    assert invoke("db", "upgrade").exit_code == 0
    args = ["channel", "add", "jd", "--name", "jd-pop", "--app-key", "k", "--access-token", "t"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--app-secret", "s" * (SETTING_VALUE_MAX + 1)])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'app_secret' is 4,097 characters, at most 4,096" in err
    assert "jd-pop" not in invoke("channel", "list").output
    assert invoke(*args, "--app-secret", "s" * SETTING_VALUE_MAX).exit_code == 0  # the bound itself fits
    assert "jd-pop" in invoke("channel", "list").output


@pytest.mark.parametrize("command", ["worker", "scheduler"])
@pytest.mark.parametrize("given", ["-1", "0", "nan", "inf", "soon"])
def test_a_jobs_poll_that_is_not_a_positive_pause_is_refused(invoke, command: str, given: str) -> None:  # type: ignore[no-untyped-def]
    """``jobs worker --poll -1`` (or 0) ran, its idle loop's wait timing out at once: a core spent polling the
    database without pause (walk16). Refused before anything connects, exit code 2, naming the option."""
    result = invoke("jobs", command, "--poll", given)
    assert result.exit_code == 2, result.output
    assert "--poll" in result.output and "Traceback" not in result.output


async def test_the_first_serve_migrates_without_alembic_s_info_lines_on_each_backend(
    tongcrm_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tongcrm serve` on a new database, its stderr no terminal (a service's log): Alembic's INFO lines (its
    plugins, each revision: some fifty JSON lines) are left out and the level it had is restored; a warning of
    Alembic's still goes out."""
    import logging

    from tongcrm.cli import _alembic_quiet, _prepare_database
    from tongcrm.config import Settings
    from tongcrm.testing.database import scratch_url

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep(logging.DEBUG)
    alembic_log = logging.getLogger("alembic")
    alembic_log.addHandler(keep)
    before = alembic_log.level
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    try:
        async with scratch_url(tongcrm_backend) as url:
            settings = Settings(database_url=url, secret_key="cli-test-secret-0123456789")
            key = await _prepare_database(settings, PluginHost(autoload=False))
        assert key is not None and key.startswith("tck_")
        assert [r.getMessage() for r in seen if r.levelno < logging.WARNING] == []
        assert alembic_log.level == before
        with _alembic_quiet(True):
            logging.getLogger("alembic.runtime.migration").warning("kept")
            logging.getLogger("alembic.runtime.migration").info("left out")
        assert [r.getMessage() for r in seen] == ["kept"]
    finally:
        alembic_log.removeHandler(keep)


async def test_apikey_create_with_both_streams_in_one_pipe_ends_the_key_s_line_on_each_backend(
    tongcrm_backend: str, tmp_path: Path
) -> None:
    """`tongcrm apikey create … 2>&1`: the notice (stderr), then the key on a line of its own that ends with a
    newline, nothing after it — a next stderr line never runs on from the key."""
    import os
    import subprocess
    import sys

    from tongcrm.testing.database import scratch_url

    async with scratch_url(tongcrm_backend) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TONGCRM_")}
        env |= {"TONGCRM_DATABASE_URL": url, "TONGCRM_SECRET_KEY": "cli-test-secret-0123456789"}

        def tongcrm(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "tongcrm", *args],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=120, check=True,
            )  # fmt: skip
            return done.stdout.decode()

        tongcrm("db", "upgrade")
        out = tongcrm("apikey", "create", "--role", "analyst", "--label", "pipe")
    lines = out.split("\n")
    assert out.endswith("\n") and lines[-1] == "", out
    assert lines[-3].startswith("created analyst key #") and lines[-2].startswith("tck_"), out
    assert len(lines[-2].split()) == 1, out  # the key alone on its line
