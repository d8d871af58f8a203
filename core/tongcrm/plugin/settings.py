"""Checking what an operator gave against the settings a plugin declares (channels and messengers alike)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tongcrm.errors import BadRequest
from tongcrm.plugin.types import SettingField


def split_settings(
    fields: Sequence[SettingField], given: Mapping[str, str | None], *, what: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) settings with defaults applied; every problem is named in one 400 message."""
    declared = {f.name: f for f in fields}
    problems: list[str] = []
    unknown = sorted(set(given) - set(declared))
    if unknown:
        problems.append(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(declared))})")
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for field in fields:
        value = given.get(field.name)
        if value is None or value == "":
            value = field.default
        if value is None:
            if field.required:
                problems.append(f"missing required setting {field.name!r} ({field.help})")
            continue
        if field.choices and value not in field.choices:
            problems.append(
                f"setting {field.name!r} must be one of {', '.join(field.choices)}, got {value!r}"
            )
            continue
        (secret if field.secret else plain)[field.name] = str(value)
    if problems:
        raise BadRequest(f"invalid settings for {what}: " + "; ".join(problems))
    return plain, secret
