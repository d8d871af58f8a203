"""Templates: the variables a message may carry, the opt-out wording marketing must include, and rendering."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tongcrm.errors import Unprocessable

#: Variables tongcrm knows how to fill (see :mod:`tongcrm.messaging.variables`); ``short_link`` and any
#: other fixed value come from the template's ``defaults``.
KNOWN_VARIABLES: frozenset[str] = frozenset(
    {
        "member_name",
        "order_id",
        "order_amount",
        "tracking_number",
        "carrier",
        "refund_amount",
        "points",
        "tier",
        "short_link",
        "shop_name",
    }
)
#: Wordings that give a recipient a convenient way to refuse (工信部令第31号; Aliyun asks for 拒收请回复R).
OPT_OUT_WORDINGS: tuple[str, ...] = (
    "拒收请回复R",
    "回T退订",
    "回TD退订",
    "退订回T",
    "退订回TD",
    "回R退订",
    "退订回R",
)
_PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")


def placeholders(text: str) -> list[str]:
    return sorted(set(_PLACEHOLDER.findall(text)))


def has_opt_out_wording(text: str) -> bool:
    compact = "".join(text.split())
    return any(w in compact for w in OPT_OUT_WORDINGS)


def validate_template(
    purpose: str, text: str, variables: Sequence[str] | None, defaults: Mapping[str, str]
) -> list[str]:
    """The template's variables (from its text when not given); every problem named in one message."""
    problems: list[str] = []
    found = placeholders(text)
    declared = sorted(set(variables)) if variables is not None else found
    if declared != found:
        problems.append(f"declared variables {declared} differ from the text's placeholders {found}")
    unknown = sorted(set(declared) - KNOWN_VARIABLES)
    if unknown:
        problems.append(
            f"unknown variable(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_VARIABLES))})"
        )
    extra = sorted(set(defaults) - set(declared))
    if extra:
        problems.append(f"defaults for variables the template does not use: {', '.join(extra)}")
    if purpose not in ("service", "marketing"):
        problems.append("purpose must be 'service' or 'marketing'")
    if purpose == "marketing" and not has_opt_out_wording(text):
        problems.append(f"a marketing template must tell how to refuse, e.g. {OPT_OUT_WORDINGS[0]!r}")
    if problems:
        raise Unprocessable("invalid template: " + "; ".join(problems))
    return declared


def fill(
    variables: Sequence[str], defaults: Mapping[str, str], *sources: Mapping[str, str | None]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The template's parameters from its defaults and then each source in turn; and the variables still
    missing (a message with missing variables is refused, never sent half-filled)."""
    params: dict[str, str] = {}
    for name in variables:
        value: str | None = defaults.get(name)
        for source in sources:
            candidate = source.get(name)
            if candidate not in (None, ""):
                value = candidate
        if value not in (None, ""):
            params[name] = str(value)
    missing = tuple(name for name in variables if name not in params)
    return params, missing


def render(text: str, params: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: params.get(m.group(1), m.group(0)), text)
