"""Money as integer fen, exactly.

JD sends amounts as decimal strings in yuan (``"199.00"``). They are parsed with :class:`~decimal.Decimal`
and refused unless they are a plain, non-negative amount with a whole number of fen: a value such as
``"1.005"``, ``"1e3"``, ``"-5.00"`` or ``"NaN"`` means the record is not what we think it is, and guessing
would corrupt points and spend totals downstream.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

_PLAIN = re.compile(r"^\d+(\.\d+)?$")


class MoneyError(ValueError):
    """A money value that cannot be turned into whole fen."""


def to_fen(value: object, field: str) -> int:
    """Convert a yuan amount (``str``, exact ``Decimal`` or ``int``) to integer fen."""
    if type(value) is str and value.isascii():
        # what JD sends, "199.00": whole fen read as integers, without the pattern and the Decimal below, which
        # cost a visible share of normalising a page (issue #22); anything else takes the long way
        yuan, dot, cents = value.partition(".")
        if yuan.isdigit() and (not dot or (cents.isdigit() and len(cents) <= 2)):
            return int(yuan) * 100 + (int(cents.ljust(2, "0")) if dot else 0)
    if isinstance(value, bool) or value is None:
        raise MoneyError(f"{field} is missing or not a number")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        text = value.strip()
        if not _PLAIN.match(text):
            raise MoneyError(f"{field} is not a plain decimal amount: {value!r}")
        try:
            amount = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the pattern already guarantees a valid literal
            raise MoneyError(f"{field} is not a decimal amount: {value!r}") from None
    else:
        # Floats never reach here (bodies are decoded with parse_float=Decimal); refusing them keeps it so.
        raise MoneyError(f"{field} has unexpected type {type(value).__name__}")
    if not amount.is_finite() or amount < 0:
        raise MoneyError(f"{field} must be a finite, non-negative amount: {value!r}")
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise MoneyError(f"{field} has fractions of a fen: {value!r}")
    return int(fen)


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` fen over ``weights`` so the shares are proportional and sum to ``total`` exactly.

    Largest-remainder method: every share starts at ``floor(total * w / W)``; the fen left over go one each to
    the shares with the largest remainders, ties to the earlier line. Deterministic, never negative, and a
    line's share never differs from its exact proportional value by a whole fen or more.
    If all weights are zero the split is even (same method with equal weights).
    """
    if total < 0:
        raise ValueError("cannot allocate a negative amount")
    if not weights:
        if total:
            raise ValueError("cannot allocate a non-zero amount over no lines")
        return []
    if any(w < 0 for w in weights):
        raise ValueError("allocation weights must not be negative")
    if len(weights) == 1:  # one line (half of an order's): it takes the whole total, whatever its weight
        return [total]
    effective = list(weights) if sum(weights) > 0 else [1] * len(weights)
    whole = sum(effective)
    shares = [total * w // whole for w in effective]
    remainders = [total * w % whole for w in effective]
    leftover = total - sum(shares)
    order = sorted(range(len(effective)), key=lambda i: (-remainders[i], i))
    for i in order[:leftover]:
        shares[i] += 1
    return shares
