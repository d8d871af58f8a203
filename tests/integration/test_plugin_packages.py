"""Plugins as third parties ship them, installed into a fresh virtualenv next to tongcrm.

- ``tongcrm plugin new`` writes a package of each kind; all three ``pip install -e`` and pass their own tests
  (the contract kit of their kind against their fake) in that venv.
- The example third-party channel (``tests/example_plugin``, outside the first-party tree) is built into a
  wheel, installed from it, discovered through its entry point (``tongcrm plugins``), passes the channel
  contract and syncs against its fake through ``tongcrm channel add`` / ``tongcrm sync`` on both databases.

No network: the fresh venv sees this venv's packages through a ``.pth`` file (``site.addsitedir``; a plain
``--system-site-packages`` venv would see the system's, not this venv's), and pip installs with
``--no-index --no-build-isolation`` using the hatchling already here.
"""

from __future__ import annotations

import os
import resource
import shutil
import site
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
from tongcrm.scaffold import KINDS, PluginTemplate, write_plugin

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "example_plugin"


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


def fresh_venv(path: Path) -> Path:
    """A new venv that also sees this venv's packages; returns its python."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    inner = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in paths)
    (Path(inner) / "_tongcrm_parent_venv.pth").write_text(lines, encoding="utf-8")
    return python


def pip_install(python: Path, *targets: str | Path) -> None:
    """pip from this venv, installing into ``python``'s venv, offline."""
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q",
        "--no-index", "--no-deps", "--no-build-isolation", *targets,
    )  # fmt: skip


def pytest_in(python: Path, package: Path) -> str:
    return run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", cwd=package, timeout=300
    )


@pytest.mark.slow
def test_generated_plugins_install_and_pass_their_own_tests(tmp_path: Path) -> None:
    """Prints the CPU and wall time it took (speed is measured in tests/benchmarks, never asserted here); the
    subprocess timeouts only stop a hung install or test run."""
    started, cpu_before = time.monotonic(), _children_cpu()
    python = fresh_venv(tmp_path / "venv")
    packages = [write_plugin(f"gen_{kind}", kind, tmp_path) for kind in KINDS]
    pip_install(python, *(arg for p in packages for arg in ("-e", p)))

    listed = run(python, "-m", "tongcrm", "plugins")  # discovered through their entry points
    for kind in KINDS:
        assert f"gen_{kind}" in listed
    running = [
        subprocess.Popen(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
            cwd=package,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for package in packages
    ]
    for package, process in zip(packages, running, strict=True):
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{package.name}: {out}"
        assert " passed" in out and "failed" not in out, out
    wall, cpu = time.monotonic() - started, _children_cpu() - cpu_before
    print(f"plugin new: 3 kinds installed and tested: {cpu:.1f} s CPU, {wall:.1f} s wall")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_plugin_new_refuses_bad_names_and_existing_work(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from tongcrm.cli import build_cli
    from tongcrm.plugin.host import PluginHost

    cli = build_cli(PluginHost(autoload=False))
    runner = CliRunner()
    bad = runner.invoke(cli, ["plugin", "new", "Bad-Name", "--kind", "channel", "--dir", str(tmp_path)])
    assert bad.exit_code != 0 and "lowercase" in bad.output
    ok = runner.invoke(cli, ["plugin", "new", "youzan", "--kind", "channel", "--dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(cli, ["plugin", "new", "youzan", "--kind", "messenger", "--dir", str(tmp_path)])
    assert again.exit_code != 0 and "not empty" in again.output
    pyproject = (tmp_path / "tongcrm-youzan" / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points.tongcrm]\nyouzan = "tongcrm_youzan.plugin"' in pyproject


def test_the_example_plugin_is_what_the_template_writes() -> None:
    """The example started as ``tongcrm plugin new example_mall --kind channel`` and only adds files (its sync
    test): when the template changes, regenerate it so the example keeps showing what authors get."""
    written = PluginTemplate("example_mall", "channel").files()
    for relative, content in written.items():
        assert (EXAMPLE / relative).read_text(encoding="utf-8") == content, (
            f"{relative} differs from the template"
        )


@pytest.mark.slow
def test_the_example_third_party_plugin_from_its_wheel(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dist"))
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist", source)
    [wheel] = (tmp_path / "dist").glob("tongcrm_example_mall-*.whl")
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, wheel)
    shown = run(python, "-c", "import tongcrm_example_mall, sys; print(tongcrm_example_mall.__file__)")
    assert str(tmp_path / "venv") in shown, "the example must be imported from its installed wheel"
    assert "example_mall" in run(python, "-m", "tongcrm", "plugins")
    # its tests, from a copy without the package beside them: the contract kit and the sync on both databases
    tests = tmp_path / "tests-only"
    tests.mkdir()
    shutil.copytree(source / "tests", tests / "tests")
    shutil.copy(source / "pyproject.toml", tests / "pyproject.toml")
    out = pytest_in(python, tests)
    assert "failed" not in out, out
    backends = ["sqlite", "postgresql"] if os.environ.get("TONGCRM_TEST_POSTGRES_URL") else ["sqlite"]
    for backend in backends:
        assert f"tongcrm: 1 tests passed on {backend}" in out, out
