"""``tongcrm plugin new``: write a working plugin package a third party starts from.

The package is small on purpose but complete: a ``pyproject.toml`` with the ``tongcrm`` entry point, the hook
module, an adapter against a placeholder platform API, a fake of that platform, and tests that run tongcrm's
contract kit for the kind against the fake. ``pip install -e`` and ``pytest`` pass on what is written, so an
author changes working code (and keeps it passing) instead of filling in blanks.

Templates are plain files under ``templates/`` with ``{{placeholders}}`` (not ``str.format``: the code in
them is full of braces); ``.tmpl`` keeps linters and test collectors of this repository away from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["KINDS", "PluginTemplate", "write_plugin"]

#: kind → the module the adapter lives in
KINDS: dict[str, str] = {"channel": "adapter", "messenger": "messenger", "entitlement": "provider"}

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
_RESERVED = {"tongcrm", "core", "test", "tests"}


@dataclass(frozen=True, slots=True)
class PluginTemplate:
    name: str
    kind: str

    @property
    def package(self) -> str:
        return f"tongcrm_{self.name}"

    @property
    def dist(self) -> str:
        return f"tongcrm-{self.name.replace('_', '-')}"

    @property
    def display(self) -> str:
        return self.name.replace("_", " ").title()

    def values(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "package": self.package,
            "dist": self.dist,
            "display": self.display,
            "adapter_module": KINDS[self.kind],
        }

    def render(self, text: str) -> str:
        for key, value in self.values().items():
            text = text.replace("{{" + key + "}}", value)
        left = re.search(r"\{\{\w+\}\}", text)
        if left:  # a template names a placeholder this code does not fill: a bug here, not the author's
            raise RuntimeError(f"template placeholder {left.group(0)} has no value")
        return text

    def files(self) -> dict[str, str]:
        """Relative path → content of every file of the package."""
        root = resources.files(__package__).joinpath("templates")
        out: dict[str, str] = {}
        for folder in ("common", self.kind):
            for entry in root.joinpath(folder).iterdir():
                if not entry.name.endswith(".tmpl"):
                    continue
                filename = entry.name.removesuffix(".tmpl")
                if filename in ("pyproject.toml", "README.md"):
                    target = filename
                elif filename.startswith("test_"):
                    target = f"tests/{filename}"
                else:
                    target = f"{self.package}/{filename}"
                out[target] = self.render(entry.read_text(encoding="utf-8"))
        return out


def check_name(name: str) -> str:
    if not _NAME.match(name) or name in _RESERVED:
        raise ValueError(
            f"plugin name {name!r} must be 2-41 lowercase letters, digits and '_', starting with a letter "
            f"(not {', '.join(sorted(_RESERVED))})"
        )
    return name


def write_plugin(name: str, kind: str, directory: Path) -> Path:
    """Write the package for plugin ``name`` of ``kind`` into ``directory/<distribution>``; returns that path.

    Refuses to write into a folder that exists and is not empty, so it never overwrites an author's work."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    template = PluginTemplate(check_name(name), kind)
    target = directory / template.dist
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    for relative, content in template.files().items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return target
