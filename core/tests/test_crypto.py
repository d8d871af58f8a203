"""The vault's blind indexes are HMAC-SHA256 computed from two precomputed SHA-256 states (``crypto._Key``):
every stored index must stay what ``hmac`` computes, or lookups of identities stored before would miss."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st
from tongcrm.crypto import Vault, _derive, _hmac_pads

SECRET = "test-secret-0123456789abcdef0123456789"


def _reference(secret: str, value: str, purpose: str) -> str:
    """The blind index as the standard library's HMAC computes it."""
    vault = Vault(secret)
    key = _derive(secret, "tongcrm/blind-index/v1")
    message = f"{purpose}\x00{value}".encode()
    return f"{vault.kid}.{hmac.new(key, message, hashlib.sha256).hexdigest()}"


@given(value=st.text(max_size=300), purpose=st.sampled_from(["identity.mobile", "member.mobile_masked", "x"]))
def test_blind_index_is_hmac_sha256(value: str, purpose: str) -> None:
    vault = Vault(SECRET)
    assert vault.blind_index(value, purpose=purpose) == _reference(SECRET, value, purpose)


def test_blind_indexes_under_every_key_and_a_known_value() -> None:
    """Old keys index as the current one does; one value pinned as the code before computed it."""
    vault = Vault(SECRET, ["old-secret-abcdefabcdefabcdefabcdef"])
    indexes = vault.blind_indexes("+8613800138000", purpose="identity.mobile")
    assert indexes == [
        _reference(SECRET, "+8613800138000", "identity.mobile"),
        _reference("old-secret-abcdefabcdefabcdefabcdef", "+8613800138000", "identity.mobile"),
    ]
    assert Vault("bench-bulk-secret-0123456789abcdef").blind_index(
        "+8613800000001", purpose="identity.mobile"
    ) == ("a97164ab.62e77734d63a86988d428cf9d76bf122972feeac5071933b4f2dedce03c3fba8")


@given(key=st.binary(max_size=200), message=st.binary(max_size=200))
def test_padded_keys_make_the_standard_hmac(key: bytes, message: bytes) -> None:
    """Keys longer than the block (hashed first) and shorter ones (zero-padded) alike."""
    inner, outer = _hmac_pads(key)
    digest = hashlib.sha256(outer + hashlib.sha256(inner + message).digest()).hexdigest()
    assert digest == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_a_mobile_lookup_is_computed_once_while_kept_and_never_kept_past_it() -> None:
    """:func:`tongcrm.members.phone.mobile_lookup` (a till's unit of work keeps what it computed, tillcpu17): the
    same values as the vault's, computed once while kept, and computed afresh outside (nothing left behind)."""
    from tongcrm.members.phone import MOBILE_INDEX_PURPOSE, drop_lookups, keep_lookups, mobile_lookup

    calls: list[str] = []

    class Counting(Vault):
        def blind_indexes(self, value: str, *, purpose: str) -> list[str]:
            calls.append(value)
            return super().blind_indexes(value, purpose=purpose)

    vault = Counting(SECRET, ["old-secret-0123456789abcdef0123456789"])
    expected = tuple(
        Vault(SECRET, ["old-secret-0123456789abcdef0123456789"]).blind_indexes(
            "+8613800138000", purpose=MOBILE_INDEX_PURPOSE
        )
    )
    assert mobile_lookup(vault, "+8613800138000") == expected and len(expected) == 2
    assert mobile_lookup(vault, "+8613800138000") == expected and len(calls) == 2  # not kept outside
    token = keep_lookups()
    try:
        assert mobile_lookup(vault, "+8613800138000") == expected
        assert mobile_lookup(vault, "+8613800138000") == expected
        assert mobile_lookup(vault, "+8613900139000") != expected
        assert calls == ["+8613800138000"] * 3 + ["+8613900139000"]
    finally:
        drop_lookups(token)
    assert mobile_lookup(vault, "+8613800138000") == expected and len(calls) == 5
