"""Settings from the environment: what an operator sets is what the code gets, and a malformed name is refused."""

from __future__ import annotations

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
