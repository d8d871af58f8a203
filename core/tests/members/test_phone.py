"""Mobile normalisation and masking: the shortcuts must agree with the full phonenumbers path."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tongcrm.crypto import Vault
from tongcrm.identity.service import mobile_identity_value
from tongcrm.members.phone import (
    MOBILE_INDEX_PURPOSE,
    InvalidMobile,
    _verdict,
    mask_mobile,
    normalise_mobile,
)

#: +8613800138000's blind index under the current and the old secret of the rotation test below.
CURRENT_INDEX = "7dda1609.099acbce494aabeafd84eb04806e408bbf764df35c3a1859fc59428d4e2c1539"
OLD_INDEX = "4fd6ce9a.6920aa479da3baec7b804edb8bfe3695486714bb4a1de38652646f342603430d"


def _full(raw: str) -> str | None:
    """What phonenumbers alone says: the E.164 form of a valid CN mobile, else None."""
    try:
        number = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    if phonenumbers.number_type(number) not in {
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
        phonenumbers.PhoneNumberType.PERSONAL_NUMBER,
    }:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@settings(max_examples=2000)
@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_the_bare_mobile_shortcut_agrees_with_phonenumbers(tail: str) -> None:
    raw = "1" + tail
    expected = _full(raw)
    if expected is None:
        with pytest.raises(InvalidMobile):
            normalise_mobile(raw)
    else:
        assert normalise_mobile(raw) == expected
        assert mask_mobile(expected) == f"{raw[:3]}****{raw[-4:]}"


@settings(max_examples=2000, deadline=None)  # phonenumbers' first parses are slow on a loaded machine
@given(
    st.one_of(
        st.text(alphabet="0123456789", min_size=11, max_size=11),
        st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
    ),
    st.sampled_from(["CN", "US", "GB"]),
)
def test_the_e164_mobile_shortcut_agrees_with_phonenumbers(national: str, region: str) -> None:
    """``+86`` and eleven digits (the form channels that normalise numbers hand over) skip phonenumbers: the
    answer must be what phonenumbers says for that text, from any default region."""
    raw = "+86" + national
    expected = _full(raw)
    _verdict.cache_clear()  # the shortcut, not an earlier answer, is under test
    if expected is None:
        with pytest.raises(InvalidMobile):
            normalise_mobile(raw, region)
    else:
        assert normalise_mobile(raw, region) == expected == raw


@pytest.mark.parametrize("raw", ["13800138000", "+86 138-0013-8000", "008613800138000", " 138 0013 8000 "])
def test_one_person_typed_several_ways(raw: str) -> None:
    assert normalise_mobile(raw) == "+8613800138000"


def test_masking_other_countries_keeps_the_calling_code() -> None:
    assert mask_mobile("+16502530000") == "+1 650***0000"


def test_a_mobile_identity_is_stored_under_the_current_key_and_found_under_every_key() -> None:
    """The stored value is the blind index under the current key, and the lookup values are the indexes under
    every configured key, current first — pinned, so computing them differently cannot change what is stored."""
    rotated = Vault("the-current-secret-0123456789", ["an-old-secret-0123456789"])
    value, lookup, e164 = mobile_identity_value(rotated, "138 0013 8000")
    assert e164 == "+8613800138000"
    assert value == rotated.blind_index(e164, purpose=MOBILE_INDEX_PURPOSE) == lookup[0]
    assert lookup == tuple(rotated.blind_indexes(e164, purpose=MOBILE_INDEX_PURPOSE)) and len(lookup) == 2
    assert (value, lookup[1]) == (CURRENT_INDEX, OLD_INDEX)
    alone = Vault("the-current-secret-0123456789")
    assert mobile_identity_value(alone, "+86 13800138000") == (CURRENT_INDEX, (CURRENT_INDEX,), e164)
    with pytest.raises(InvalidMobile):
        mobile_identity_value(alone, "12345")


@pytest.mark.parametrize(
    "raw",
    [
        "+86138\uff10\uff10138000",  # E.164 with two FULLWIDTH DIGIT ZEROs (an IME's digits, pasted)
        "138\uff10\uff10138000",  # the bare form, the same digits
        "+86138\u0660\u0660138000",  # ARABIC-INDIC DIGIT ZEROs
    ],
)
def test_digits_of_other_scripts_give_the_ascii_e164(raw: str) -> None:
    """The shortcuts match phonenumbers' pattern, whose ``\\d`` would match any script's digits: such a number
    must still come out as phonenumbers writes it (ASCII digits), not as it came in — otherwise it is stored under
    another blind index than the same mobile typed in ASCII, and the same person becomes a second member."""
    _verdict.cache_clear()
    assert normalise_mobile(raw) == "+8613800138000" == _full(raw)


@pytest.mark.parametrize("raw", ["138****8000", "02161234567", "not a number"])
def test_an_invalid_number_is_refused_every_time_from_its_cached_verdict(raw: str) -> None:
    """Invalid numbers are cached too (ingest meets the same masked number page after page); each call still
    raises, with the same message and a fresh exception."""
    _verdict.cache_clear()
    with pytest.raises(InvalidMobile) as first:
        normalise_mobile(raw)
    with pytest.raises(InvalidMobile) as again:
        normalise_mobile(raw)
    assert str(first.value) == str(again.value)
    assert first.value is not again.value
    assert _verdict.cache_info().hits == 1
