from __future__ import annotations

import re
from pathlib import Path

import pytest
from tongcrm.plugin.types import SendOutcome
from tongcrm_sms_gateway import aliyun
from tongcrm_sms_gateway.aliyun import CODES, rule_for

R, N, A = SendOutcome.RETRY_LATER, SendOutcome.FAILED_NUMBER, SendOutcome.FAILED_ACCOUNT

# Every code protocols.md §3.1 documents, with the outcome tongcrm must give it.
DOCUMENTED = {
    "isv.BUSINESS_LIMIT_CONTROL": R,
    "isv.DAY_LIMIT_CONTROL": R,
    "isv.MOBILE_NUMBER_ILLEGAL": N,
    "isv.MOBILE_COUNT_OVER_LIMIT": A,
    "isv.TEMPLATE_MISSING_PARAMETERS": N,
    "isv.INVALID_JSON_PARAM": N,
    "isv.AMOUNT_NOT_ENOUGH": A,
    "isv.OUT_OF_SERVICE": A,
    "isv.SMS_TEMPLATE_ILLEGAL": A,
    "isv.SMS_SIGNATURE_ILLEGAL": A,
    "isv.BLACK_KEY_CONTROL_LIMIT": N,
    "isv.PARAM_LENGTH_LIMIT": N,
    "isv.PARAM_NOT_SUPPORT_URL": N,
    "isp.SYSTEM_ERROR": R,
    "SignatureDoesNotMatch": A,
    "InvalidTimeStamp.Expired": A,
    "SignatureNonceUsed": R,
}


@pytest.mark.parametrize(("code", "outcome"), sorted(DOCUMENTED.items()))
def test_documented_code_mapping(code: str, outcome: SendOutcome) -> None:
    assert code in CODES, f"{code} is documented but not mapped explicitly"
    assert rule_for(code).outcome is outcome


def test_every_mapped_code_is_justified_in_the_docstring() -> None:
    doc = aliyun.__doc__ or ""
    for code in CODES:
        assert re.search(rf"^{re.escape(code)}\s", doc, re.MULTILINE), f"{code} missing from the table"


def test_protocols_doc_codes_are_all_covered() -> None:
    """If the shared protocol notes gain a code, this test names it."""
    path = Path(__file__).resolve().parents[3].parent / "shared" / "protocols.md"
    if not path.exists():
        pytest.skip("shared protocol notes not present")
    text = path.read_text(encoding="utf-8")
    section = text[text.index("### 3.1") : text.index("### 3.2")]
    found = set(
        re.findall(
            r"`((?:isv|isp)\.[A-Z_]+|SignatureDoesNotMatch|InvalidTimeStamp\.Expired|SignatureNonceUsed)`",
            section,
        )
    )
    assert found, "no codes parsed"
    assert found <= set(CODES)


def test_ok_and_transport_codes() -> None:
    assert rule_for("OK").outcome is SendOutcome.SENT
    for code in ("tongcrm.TRANSPORT_ERROR", "tongcrm.HTTP_ERROR"):
        assert rule_for(code).outcome is R
    # may have been accepted: a retry could send it twice
    for code in ("tongcrm.TIMEOUT", "tongcrm.CONNECTION_LOST"):
        assert rule_for(code).outcome is SendOutcome.IN_DOUBT
    assert rule_for("tongcrm.BAD_RESPONSE").outcome is A


def test_unknown_codes() -> None:
    assert rule_for("isp.SOMETHING_NEW").outcome is R
    assert rule_for("isv.SOMETHING_NEW").outcome is N
    assert not rule_for("isv.SOMETHING_NEW").per_recipient


def test_per_recipient_codes_are_the_ones_a_single_number_can_cause() -> None:
    per_recipient = {code for code, rule in CODES.items() if rule.per_recipient}
    assert "isv.MOBILE_NUMBER_ILLEGAL" in per_recipient
    assert "isv.BUSINESS_LIMIT_CONTROL" in per_recipient
    assert not per_recipient & {"isv.AMOUNT_NOT_ENOUGH", "SignatureDoesNotMatch", "isp.SYSTEM_ERROR"}
