"""Mobile normalisation and masking: the shortcuts must agree with the full phonenumbers path."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tongcrm.members.phone import InvalidMobile, mask_mobile, normalise_mobile


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


@pytest.mark.parametrize("raw", ["13800138000", "+86 138-0013-8000", "008613800138000", " 138 0013 8000 "])
def test_one_person_typed_several_ways(raw: str) -> None:
    assert normalise_mobile(raw) == "+8613800138000"


def test_masking_other_countries_keeps_the_calling_code() -> None:
    assert mask_mobile("+16502530000") == "+1 650***0000"
