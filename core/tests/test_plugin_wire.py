"""tongcrm.plugin.wire: platform answers decoded exactly, with Python's json as the fallback."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from tongcrm.plugin.wire import loads_exact

BODIES = [
    b'{"tid": 3028689418086124987, "oid": 18446744073709551616, "payment": 199.10, "fee": 0.0}',
    b'{"a": [1, -0, -0.0, 1e400, 1.5E-3, "\\u4e2d\\ud83d\\ude00", true, false, null], "a": {"dup": 2}}',
    '{"name": "中文", "n": 12345678901234567890123}'.encode(),
    b"  [1, 2.50, {}]  ",
]


@pytest.mark.parametrize("body", BODIES)
def test_the_same_values_as_json_with_exact_decimals(body: bytes) -> None:
    expected = json.loads(body, parse_float=Decimal)
    got = loads_exact(body)
    assert got == expected
    assert repr(got) == repr(expected)  # the same types and digits, not only equal numbers
    assert loads_exact(body.decode()) == expected


def test_ids_beyond_doubles_and_money_digits_survive() -> None:
    data = loads_exact(b'{"tid": 9007199254740993, "payment": 99.10}')
    assert data["tid"] == 9007199254740993 and type(data["tid"]) is int
    assert data["payment"] == Decimal("99.10") and str(data["payment"]) == "99.10"


def test_what_msgspec_refuses_is_read_as_json_reads_it() -> None:
    data = loads_exact(b'{"payment": NaN, "total_fee": Infinity}')
    assert data["payment"] != data["payment"]  # NaN: the normaliser quarantines that record alone
    assert data["total_fee"] == float("inf")
    assert loads_exact('{"a": 1.25}'.encode("utf-16")) == {"a": Decimal("1.25")}


@pytest.mark.parametrize("body", [b"", b"not json", b'{"a": 1', b"\xff\xfe\xfa", b'{"a": 1} trailing'])
def test_what_is_not_json_fails_as_before(body: bytes) -> None:
    try:
        json.loads(body, parse_float=Decimal)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        expected = type(exc)
    else:
        raise AssertionError("json read a body the test calls malformed")
    with pytest.raises(expected):
        loads_exact(body)
