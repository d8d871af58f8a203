"""Scrubbing text that leaves the process (log lines, stored error texts) of values that must not be there.

This is the last line of defence, not the way personal data is kept out: code never logs a mobile, a name or
a key on purpose. But some texts are made by others — a database driver's error message quotes the value it
could not send (asyncpg: ``invalid input for query argument $1: '1381234…'``), an exception message may
carry a platform's answer — and those reach the log and the ``last_error`` columns. Everything written there
goes through :func:`redact`.
"""

from __future__ import annotations

import re

#: asyncpg quotes a bound value it could not encode; SQLAlchemy's ``hide_parameters`` does not cover it.
_DRIVER_VALUE = re.compile(r"(invalid input for query argument \$\d+)(?:: [^\n]*)")
#: mainland mobile numbers, with or without +86/86, in runs of digits, spaces or dashes as people type them
_MOBILE = re.compile(r"(?<![\w.])(?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d){8}(?![\w])")
#: an HTTP bearer credential (tongcrm API keys) and key=value secrets as platforms put them in URLs
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_SECRET_PARAM = re.compile(
    r"(?i)\b(app_?secret|secret|session|access_token|token|sign|password|api_key)(=|\"?:\s*\"?)([^&\s\"',}]{4,})"
)

HIDDEN = "<hidden>"


def redact(text: str) -> str:
    """``text`` with driver-quoted values, mobile numbers and credentials replaced by ``<hidden>``."""
    if not text:
        return text
    text = _DRIVER_VALUE.sub(rf"\1: {HIDDEN}", text)
    text = _MOBILE.sub(HIDDEN, text)
    text = _BEARER.sub(rf"\1{HIDDEN}", text)
    return _SECRET_PARAM.sub(rf"\1\2{HIDDEN}", text)
