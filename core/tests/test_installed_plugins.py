"""Plugins installed as real distributions: a throw-away plugin is built and installed into a temporary
site directory, then ``tongcrm plugins`` runs in a subprocess that sees it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _make_distribution(root: Path, dist: str, module: str, body: str) -> Path:
    src = root / dist
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text("")
    (src / module / "plugin.py").write_text(textwrap.dedent(body))
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{dist}"
            version = "1.2.3"

            [project.entry-points.tongcrm]
            {module.removeprefix("tongcrm_")} = "{module}.plugin"

            [tool.hatch.build.targets.wheel]
            packages = ["{module}"]
            """
        )
    )
    return src


def _install(src: Path, site: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
    )


def _tongcrm(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    environ.pop("TONGCRM_DISABLE_PLUGINS", None)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "tongcrm", *args], capture_output=True, text=True, env=environ
    )


GOOD = """
    import click
    from tongcrm.plugin import hookimpl
    from tongcrm.plugin.types import IdentityKindSpec

    @hookimpl
    def identity_kinds():
        return [IdentityKindSpec("wechat.unionid", strong=True, description="WeChat union id")]

    @hookimpl
    def cli_commands():
        @click.command("hello-wechat")
        def hello():
            click.echo("hello from a third-party plugin")
        return [hello]
"""


def test_third_party_plugin_is_listed_and_its_command_runs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(_make_distribution(tmp_path, "tongcrm-wechat", "tongcrm_wechat", GOOD), site)
    listed = _tongcrm(site, "plugins", TONGCRM_DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite3")
    assert listed.returncode == 0, listed.stderr
    assert "wechat" in listed.stdout and "tongcrm-wechat" in listed.stdout and "1.2.3" in listed.stdout
    assert "cli_commands" in listed.stdout and "identity_kinds" in listed.stdout
    assert "taobao" in listed.stdout  # first-party plugins load through the same entry points
    hello = _tongcrm(site, "hello-wechat")
    assert hello.stdout.strip() == "hello from a third-party plugin"
    blocked = _tongcrm(site, "plugins", TONGCRM_DISABLE_PLUGINS="wechat")
    assert "tongcrm-wechat" not in blocked.stdout


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("import tongcrm_does_not_exist\n", "failed to load"),
        ("from tongcrm.plugin import hookimpl\n\n@hookimpl\ndef chanels():\n    return []\n", "does not fit"),
    ],
    ids=["import-error", "unknown-hook"],
)
def test_broken_plugin_fails_startup_with_its_name(tmp_path: Path, body: str, expected: str) -> None:
    site = tmp_path / "site"
    _install(_make_distribution(tmp_path, "tongcrm-broken", "tongcrm_broken", body), site)
    result = _tongcrm(site, "plugins")
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith("error: plugin 'broken' from distribution 'tongcrm-broken'"), line
    assert expected in line
    assert "Traceback" not in result.stderr
    blocked = _tongcrm(site, "plugins", TONGCRM_DISABLE_PLUGINS="broken")
    assert blocked.returncode == 0, blocked.stderr
