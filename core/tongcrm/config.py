"""Settings, read once from ``TONGCRM_*`` environment variables.

Only the entry points (app factory, CLI) read the environment; everything else receives a ``Settings``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from tongcrm.crypto import Vault
from tongcrm.errors import ConfigError

DEFAULT_DATABASE_FILE = "tongcrm.sqlite3"
#: The installation's data folder when ``TONGCRM_DATA_DIR`` does not name one: beside the SQLite file, or in the
#: folder the command runs in for a server database.
DEFAULT_DATA_FOLDER = "tongcrm-data"
SECRET_FILE = ".tongcrm-secret"  # noqa: S105 - a file name, not a secret
PROGRAMME_TZ = "Asia/Shanghai"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    secret_key: str
    timezone: str = PROGRAMME_TZ
    log_json: bool | None = None  # None: JSON when stderr is not a terminal
    log_level: str = "INFO"
    old_secret_keys: tuple[str, ...] = ()
    run_jobs_in_process: bool = True
    job_poll_seconds: float = 0.5
    #: How long a sync worker's lease on an account lasts without renewal (a dead worker's lapses after this).
    sync_lease_seconds: float = 120.0
    #: Syncs fetch and normalise pages in a child process, overlapping the apply (``tongcrm.ingest.fetcher``):
    #: off by default, as it pays only where a core is free (docs/architecture.md, *The ingest page*).
    sync_fetch_process: bool = False
    #: Broker mode (``amqp://…``): jobs run on ``tongcrm jobs worker`` processes fed through RabbitMQ by
    #: ``tongcrm jobs scheduler``. None: the in-process runner, the embedded default.
    jobs_broker_url: str | None = None
    #: How long a claimed job stays locked to its worker; a job of a worker that died runs again after this.
    job_lock_seconds: float = 300.0
    #: Broker mode: the RabbitMQ queue (one per tongcrm installation sharing a vhost) and how old a row's
    #: ``published_at`` must be before the scheduler publishes it again (its message may have been lost).
    jobs_queue: str = "tongcrm.jobs"
    jobs_republish_seconds: float = 30.0
    #: Finished (``done``/``parked``) job rows older than this many days are deleted by the ``jobs.prune``
    #: job; 0 keeps them all.
    jobs_retention_days: int = 14
    extra: dict[str, str] = field(default_factory=dict)
    #: The installation's data folder (``TONGCRM_DATA_DIR``): files tongcrm keeps between requests, such as an
    #: import's upload until the import finished. None (settings built in code): see :attr:`data_folder`.
    data_dir: Path | None = None

    @property
    def data_folder(self) -> Path:
        """:attr:`data_dir`, else ``tongcrm-data`` beside the SQLite file, else in the system's temporary folder
        (settings built in code for a server database name no folder of their own)."""
        if self.data_dir is not None:
            return self.data_dir
        database = sqlite_file(self.database_url)
        base = database.parent if database is not None else Path(tempfile.gettempdir())
        return base / DEFAULT_DATA_FOLDER

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def vault(self) -> Vault:
        return Vault(self.secret_key, self.old_secret_keys)

    @classmethod
    def from_env(
        cls, environ: dict[str, str] | None = None, *, workdir: Path | None = None, create: bool = False
    ) -> Settings:
        """The settings of the installation the environment names.

        ``create``: this run may start a new installation (``tongcrm serve``, ``tongcrm db upgrade``, the demo),
        so a missing ``.tongcrm-secret`` is made beside the SQLite file (SQLite then makes the file). Everything else works on an
        existing one and is refused with :class:`NoInstallation` when the SQLite file or the secret is not
        there: a command run in the wrong directory used to leave an empty database and a second secret behind,
        and a value encrypted under that secret is readable by no one who runs tongcrm from the right one."""
        env = dict(os.environ if environ is None else environ)
        workdir = workdir or Path.cwd()
        url = env.get("TONGCRM_DATABASE_URL") or f"sqlite:///{workdir / DEFAULT_DATABASE_FILE}"
        database = sqlite_file(url)
        if not create and database is not None and not database.exists():
            named = (
                "TONGCRM_DATABASE_URL" if env.get("TONGCRM_DATABASE_URL") else "TONGCRM_DATABASE_URL unset"
            )
            raise NoInstallation(
                f"no tongcrm database at {database} ({named}): run this where `tongcrm serve` runs, set "
                "TONGCRM_DATABASE_URL to its database, or create a new one here with `tongcrm db upgrade`"
            )
        secret = env.get("TONGCRM_SECRET_KEY") or _embedded_secret(url, database, workdir, create=create)
        if len(secret) < 16:
            raise ConfigError("TONGCRM_SECRET_KEY must be at least 16 characters long")
        log_json_raw = env.get("TONGCRM_LOG_JSON")
        log_json = None if log_json_raw is None else log_json_raw.lower() in {"1", "true", "yes"}
        tz = env.get("TONGCRM_TIMEZONE", PROGRAMME_TZ)
        try:
            ZoneInfo(tz)
        except Exception as exc:
            raise ConfigError(f"TONGCRM_TIMEZONE={tz!r} is not a known time zone") from exc
        broker_url = env.get("TONGCRM_JOBS_BROKER_URL") or None
        if broker_url is not None and not broker_url.startswith(("amqp://", "amqps://")):
            raise ConfigError("TONGCRM_JOBS_BROKER_URL must be an amqp:// or amqps:// URL (RabbitMQ)")
        retention_raw = env.get("TONGCRM_JOBS_RETENTION_DAYS", "14")
        try:
            retention_days = int(retention_raw)
        except ValueError:
            retention_days = -1
        if retention_days < 0:
            raise ConfigError(
                "TONGCRM_JOBS_RETENTION_DAYS must be a whole number of days (0 keeps every job)"
            )
        # in broker mode the API process runs no jobs unless asked to: the workers do
        in_process_default = "0" if broker_url else "1"
        return cls(
            database_url=url,
            secret_key=secret,
            timezone=tz,
            log_json=log_json,
            log_level=env.get("TONGCRM_LOG_LEVEL", "INFO").upper(),
            old_secret_keys=tuple(k for k in env.get("TONGCRM_OLD_SECRET_KEYS", "").split(",") if k.strip()),
            run_jobs_in_process=env.get("TONGCRM_IN_PROCESS_JOBS", in_process_default).lower()
            not in {"0", "false", "no"},
            sync_lease_seconds=float(env.get("TONGCRM_SYNC_LEASE_SECONDS", "120")),
            sync_fetch_process=env.get("TONGCRM_SYNC_FETCH_PROCESS", "0").lower() in {"1", "true", "yes"},
            jobs_broker_url=broker_url,
            job_lock_seconds=float(env.get("TONGCRM_JOB_LOCK_SECONDS", "300")),
            jobs_queue=env.get("TONGCRM_JOBS_QUEUE", "tongcrm.jobs"),
            jobs_republish_seconds=float(env.get("TONGCRM_JOBS_REPUBLISH_SECONDS", "30")),
            jobs_retention_days=retention_days,
            extra=_provider_settings(env),
            data_dir=Path(env["TONGCRM_DATA_DIR"]).absolute()
            if env.get("TONGCRM_DATA_DIR")
            else (database.parent if database is not None else workdir.absolute()) / DEFAULT_DATA_FOLDER,
        )


#: ``TONGCRM_ENTITLEMENTS__<PROVIDER>__<SETTING>=value`` → ``extra["<provider>.<setting>"]`` (lower case): the
#: settings an installed entitlement provider receives. Double underscores separate the parts because provider
#: and setting names may hold single ones.
PROVIDER_ENV_PREFIX = "TONGCRM_ENTITLEMENTS__"


def _provider_settings(env: dict[str, str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(PROVIDER_ENV_PREFIX):
            continue
        provider, sep, setting = name[len(PROVIDER_ENV_PREFIX) :].partition("__")
        if not (sep and provider and setting) or "__" in setting:
            raise ConfigError(
                f"{name}: expected {PROVIDER_ENV_PREFIX}<PROVIDER>__<SETTING>, e.g. "
                f"{PROVIDER_ENV_PREFIX}TMALL_COUPON__APP_KEY"
            )
        extra[f"{provider.lower()}.{setting.lower()}"] = value
    return extra


class NoInstallation(ConfigError):
    """The environment names no existing installation: its SQLite file or its secret is not there (see
    :meth:`Settings.from_env`)."""


def sqlite_file(url: str) -> Path | None:
    """The absolute path of the plain SQLite file ``url`` names (there or not); None for any other URL
    (PostgreSQL, ``:memory:``, a URI filename or driver options). Opening a missing file creates it, empty."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+")[0] != "sqlite" or "?" in rest:
        return None
    if not rest or rest == ":memory:" or rest.startswith("file:"):
        return None
    return Path(rest).absolute()


def _embedded_secret(url: str, database: Path | None, workdir: Path, *, create: bool) -> str:
    """The key of an embedded installation that sets no ``TONGCRM_SECRET_KEY``: ``.tongcrm-secret`` beside its
    SQLite file, so a command run from any folder with the same ``TONGCRM_DATABASE_URL`` finds it.

    A server database (PostgreSQL) never takes its key from a file: the one found or made in whatever folder
    ``serve`` happened to run in would be a second key the day it runs from another. Installations made before
    the key moved beside the file kept it in the folder the first command ran in: that ``./.tongcrm-secret`` is
    still read, and refused when a different key lies beside the file (which one encrypted the data is not
    something to guess). A new key is made only when ``create`` and the database holds nothing yet: never
    beside data encrypted under a key that was lost.
    """
    if database is None and url.partition(":")[0].split("+")[0] != "sqlite":
        found = workdir / SECRET_FILE
        hint = f" (the key in {found}: TONGCRM_SECRET_KEY=$(cat {found}))" if found.is_file() else ""
        raise ConfigError(
            "TONGCRM_SECRET_KEY is not set: a server database takes its key from the environment (set it from "
            f"your secret store, the same for every process){hint}; a .tongcrm-secret file is for an embedded "
            "SQLite database only"
        )
    beside = (database.parent if database is not None else workdir) / SECRET_FILE
    new_database = database is None or not database.exists() or database.stat().st_size == 0
    # the folder's key of the old way belongs to a database that exists: a new one gets its own, beside it
    places = (beside,) if new_database else (beside, workdir / SECRET_FILE)
    keys = {path: path.read_text().strip() for path in dict.fromkeys(places) if path.is_file()}
    if len(set(keys.values())) > 1:
        raise ConfigError(
            f"two different secret keys: {beside} (beside the database) and {workdir / SECRET_FILE} (in this "
            "folder, where installations made before the key moved beside the database kept it): keep the one "
            "the data was encrypted with beside the database and move the other away, or set TONGCRM_SECRET_KEY"
        )
    if keys:
        return next(iter(keys.values()))
    if not (create and new_database):
        raise NoInstallation(
            f"no secret key: TONGCRM_SECRET_KEY is not set and there is no {beside}: set TONGCRM_SECRET_KEY to "
            "the key `tongcrm serve` uses, or put its .tongcrm-secret back beside the database (a new key could not "
            "read what the old one encrypted)"
        )
    key = secrets.token_urlsafe(48)
    beside.touch(mode=0o600)
    beside.write_text(key + "\n")
    return key
