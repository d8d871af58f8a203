"""Reading platform answers: JSON decoded exactly (no number through a binary float), and fast.

Channel clients decode every page of orders they fetch; Python's ``json`` with ``parse_float=Decimal`` was a
visible share of the fetch side's CPU (issue #22). msgspec's decoder reads the same text several times faster
and gives the same values: integers stay arbitrary-precision ``int`` (an id beyond 2^53 is never a float), and
every fractional number reaches :class:`~decimal.Decimal` as the digits written (``"1.10"`` stays ``1.10``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec

__all__ = ["loads_exact"]

_DECODER = msgspec.json.Decoder(float_hook=Decimal)


def loads_exact(body: bytes | str) -> Any:
    """Decode a JSON body exactly; raises ``ValueError`` (or ``UnicodeDecodeError``) for what is not JSON.

    What msgspec refuses is read again by Python's ``json`` as before: the ``NaN``/``Infinity`` literals, a
    UTF-16 body. So a record holding such a value still reaches the normaliser, which quarantines that record
    alone, and an answer that is not JSON at all fails with the same errors as it always did.
    """
    try:
        return _DECODER.decode(body)
    except msgspec.DecodeError:
        return json.loads(body, parse_float=Decimal)
