from __future__ import annotations

import hashlib
import hmac

import pytest
from tongcrm_taobao.signing import canonical_string, parse_sign_method, sign

# the published TOP vector (protocols.md §1.2)
VECTOR = {
    "method": "taobao.item.seller.get",
    "app_key": "12345678",
    "session": "test",
    "timestamp": "2016-01-01 12:00:00",
    "format": "json",
    "v": "2.0",
    "sign_method": "md5",
    "fields": "num_iid,title,nick,price,num",
    "num_iid": "11223344",
}


def test_md5_matches_the_published_vector() -> None:
    assert sign(VECTOR, "helloworld", "md5") == "66987CB115214E59E6EC978214934FB8"


def test_canonical_string_sorts_by_ascii_and_skips_sign_and_empty_values() -> None:
    params = {"b": "2", "a": "1", "B": "0", "sign": "XYZ", "empty": "", "none": None, "_x": "u"}
    assert canonical_string(params) == "B0_xua1b2"


def _expected_string() -> bytes:
    return "".join(k + v for k, v in sorted(VECTOR.items())).encode()


def test_hmac_md5_is_hmac_keyed_by_secret() -> None:
    params = {**VECTOR, "sign_method": "hmac"}
    data = "".join(k + v for k, v in sorted(params.items())).encode()
    expected = hmac.new(b"helloworld", data, hashlib.md5).hexdigest().upper()
    assert sign(params, "helloworld", "hmac") == expected
    assert len(expected) == 32


def test_hmac_sha256_is_hmac_keyed_by_secret() -> None:
    params = {**VECTOR, "sign_method": "hmac-sha256"}
    data = "".join(k + v for k, v in sorted(params.items())).encode()
    expected = hmac.new(b"helloworld", data, hashlib.sha256).hexdigest().upper()
    assert sign(params, "helloworld", "hmac-sha256") == expected
    assert len(expected) == 64


def test_md5_wraps_the_string_in_the_secret() -> None:
    expected = (
        hashlib.md5(b"helloworld" + _expected_string() + b"helloworld", usedforsecurity=False)
        .hexdigest()
        .upper()
    )
    assert sign(VECTOR, "helloworld", "md5") == expected


def test_utf8_values_and_a_raw_body_are_signed() -> None:
    params = {"title": "面膜", "app_key": "1"}
    data = "app_key1title面膜".encode() + b"{body}"
    assert (
        sign(params, "s", "hmac-sha256", body=b"{body}")
        == hmac.new(b"s", data, hashlib.sha256).hexdigest().upper()
    )


def test_signature_changes_with_any_value_and_with_the_secret() -> None:
    base = sign(VECTOR, "helloworld", "md5")
    assert sign({**VECTOR, "num_iid": "11223345"}, "helloworld", "md5") != base
    assert sign(VECTOR, "helloworld2", "md5") != base


def test_unknown_sign_method_is_refused() -> None:
    assert parse_sign_method("hmac") == "hmac"
    with pytest.raises(ValueError, match="sign_method"):
        parse_sign_method("sha1")
