"""Checking what an operator gave against the settings a plugin declares (channels and messengers alike)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tongcrm.errors import BadRequest, shown
from tongcrm.plugin.types import SettingField

#: The bounds of a channel's or messenger's ``settings`` however they arrive — the HTTP API (``SettingsIn`` in
#: :mod:`tongcrm.api.inputs` is built from these), the console's forms, ``tongcrm channel add`` / ``reauth``:
#: at most :data:`SETTINGS_MAX` names of 1 to :data:`SETTING_NAME_MAX` characters, each value a string of at
#: most :data:`SETTING_VALUE_MAX` characters. The plugin's ``SettingField``s then check which names it takes and
#: their values; these bounds only keep a megabyte of text out of JSON or a sealed secret (a 4096-bit RSA key in
#: PEM is ~3,300 characters; no plugin's field name is longer than 40), whichever door it came through.
SETTINGS_MAX = 64
SETTING_NAME_MAX = 64
SETTING_VALUE_MAX = 4096


def check_bounds(given: Mapping[str, str | None]) -> None:
    """Refuse settings past the bounds above, or holding a NUL (PostgreSQL's JSON cannot keep one: a plain
    setting is stored as JSON), with a code the console says in Chinese. The API's request type refuses the
    same before a handler runs; the console and the CLI reach this through :func:`split_settings`."""
    if len(given) > SETTINGS_MAX:
        raise BadRequest(
            f"settings: at most {SETTINGS_MAX} names, got {len(given)}",
            code="settings.too_many",
            params={"max": SETTINGS_MAX, "count": len(given)},
        )
    for name, value in given.items():
        if not 1 <= len(name) <= SETTING_NAME_MAX or "\x00" in name:
            raise BadRequest(
                f"settings: a name is 1 to {SETTING_NAME_MAX} characters without NUL, got {shown(name)}",
                code="settings.name_length",
                params={"name": name[:40], "max": SETTING_NAME_MAX},
            )
        if value is None:
            continue
        if len(value) > SETTING_VALUE_MAX:
            raise BadRequest(
                f"settings: {name!r} is {len(value):,} characters, at most {SETTING_VALUE_MAX:,}",
                code="settings.value_too_long",
                params={"name": name, "length": len(value), "max": SETTING_VALUE_MAX},
            )
        if "\x00" in value:
            raise BadRequest(
                f"settings: {name!r} holds a NUL character", code="settings.nul", params={"name": name}
            )


def split_settings(
    fields: Sequence[SettingField], given: Mapping[str, str | None], *, what: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) settings with defaults applied; every problem is named in one 400 message (after
    :func:`check_bounds`, which refuses at the first value past the bounds)."""
    check_bounds(given)
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
