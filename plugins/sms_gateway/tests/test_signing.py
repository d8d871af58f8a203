from __future__ import annotations

from tongcrm_sms_gateway.aliyun_signing import (
    canonical_query,
    percent_encode,
    sign,
    signed_body,
    string_to_sign,
    verify,
)

# Aliyun's published example (protocols.md §3.1).
VECTOR = {
    "AccessKeyId": "testId",
    "Action": "SendSms",
    "Format": "XML",
    "OutId": "123",
    "PhoneNumbers": "15300000001",
    "RegionId": "cn-hangzhou",
    "SignName": "阿里云短信测试专用",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
    "SignatureVersion": "1.0",
    "TemplateCode": "SMS_71390007",
    "TemplateParam": '{"customer":"test"}',
    "Timestamp": "2017-07-12T02:42:19Z",
    "Version": "2017-05-25",
}


def test_official_vector() -> None:
    assert sign(VECTOR, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="


def test_string_to_sign_shape() -> None:
    sts = string_to_sign("get", VECTOR)
    assert sts.startswith("GET&%2F&AccessKeyId%3DtestId%26Action%3DSendSms")
    # The canonical query is encoded twice: a '%' inside it becomes '%25'.
    assert "SignName%3D%25E9%2598%25BF" in sts


def test_percent_encoding_rules() -> None:
    assert percent_encode("a b") == "a%20b"
    assert percent_encode("*") == "%2A"
    assert percent_encode("~-_.") == "~-_."
    assert percent_encode("+/=&") == "%2B%2F%3D%26"
    assert percent_encode("短") == "%E7%9F%AD"


def test_signature_excluded_and_keys_sorted() -> None:
    params = {"b": "2", "a": "1", "Signature": "x"}
    assert canonical_query(params) == "a=1&b=2"


def test_verify_and_method_matter() -> None:
    params = dict(VECTOR, Signature=sign(VECTOR, "testSecret", "POST"))
    assert verify(params, "testSecret", "POST")
    assert not verify(params, "testSecret", "GET")
    assert not verify(params, "otherSecret", "POST")
    assert not verify(dict(params, PhoneNumbers="15300000002"), "testSecret", "POST")


def test_signed_body_carries_encoded_signature() -> None:
    body = signed_body(VECTOR, "testSecret", "GET")
    assert body.endswith("&Signature=zJDF%2BLrzhj%2FThnlvIToysFRq6t4%3D")
