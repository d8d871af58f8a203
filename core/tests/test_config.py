"""Settings from the environment: what an operator sets is what the code gets, and a malformed name is refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from tongcrm.config import Settings
from tongcrm.errors import ConfigError

BASE = {"TONGCRM_SECRET_KEY": "config-test-secret-0123456789", "TONGCRM_DATABASE_URL": "sqlite:///x.sqlite3"}


def test_entitlement_provider_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "TONGCRM_ENTITLEMENTS__TMALL_COUPON__APP_KEY": "k-123",
            "TONGCRM_ENTITLEMENTS__TMALL_COUPON__BASE_URL": "http://127.0.0.1:9/",
            "TONGCRM_ENTITLEMENTS__GIFTS__TOKEN": "t",
            "TONGCRM_LOG_LEVEL": "info",
        },
        workdir=tmp_path,
        create=True,
    )
    assert settings.extra == {
        "tmall_coupon.app_key": "k-123",
        "tmall_coupon.base_url": "http://127.0.0.1:9/",
        "gifts.token": "t",
    }
    assert Settings.from_env(dict(BASE), workdir=tmp_path, create=True).extra == {}


@pytest.mark.parametrize(
    "name", ["TONGCRM_ENTITLEMENTS__TMALL", "TONGCRM_ENTITLEMENTS____KEY", "TONGCRM_ENTITLEMENTS__A__B__C"]
)
def test_a_malformed_provider_setting_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="expected TONGCRM_ENTITLEMENTS__<PROVIDER>__<SETTING>"):
        Settings.from_env({**BASE, name: "x"}, workdir=tmp_path, create=True)


def test_the_data_folder_is_named_or_beside_the_sqlite_file_or_where_the_server_runs(tmp_path: Path) -> None:
    """Where kept uploads wait (tongcrm.bulk.kept): ``TONGCRM_DATA_DIR``; else beside the SQLite file (found from
    any folder, like its secret); else, for PostgreSQL, the folder the command runs in."""
    database = tmp_path / "db" / "crm.sqlite3"
    database.parent.mkdir()
    sqlite = {"TONGCRM_DATABASE_URL": f"sqlite:///{database}", "TONGCRM_SECRET_KEY": "k" * 32}
    assert (
        Settings.from_env(sqlite, workdir=tmp_path, create=True).data_folder
        == database.parent / "tongcrm-data"
    )
    named = Settings.from_env(
        {**sqlite, "TONGCRM_DATA_DIR": str(tmp_path / "d")}, workdir=tmp_path, create=True
    )
    assert named.data_folder == tmp_path / "d"
    server = {"TONGCRM_DATABASE_URL": "postgresql://u@h/db", "TONGCRM_SECRET_KEY": "k" * 32}
    assert Settings.from_env(server, workdir=tmp_path).data_folder == tmp_path / "tongcrm-data"
    # settings built in code: beside their SQLite file, else a temporary folder (never the working directory)
    assert Settings(f"sqlite:///{database}", "k" * 32).data_folder == database.parent / "tongcrm-data"
    assert Settings("postgresql://u@h/db", "k" * 32).data_folder.parent == Path(tempfile.gettempdir())
