"""The md5 signature against JD's published vector, and the pieces around it."""

from __future__ import annotations

from datetime import UTC, datetime

from tongcrm_jd.signing import encode_business_params, sign, signature_base, verify
from tongcrm_jd.timeutil import format_timestamp, parse_jd_time, parse_timestamp

VECTOR_PARAMS = {
    "360buy_param_json": '{"end_date":null,"optional_fields":null,"order_state":"WAIT_SELLER_STOCK_OUT",'
    '"page":"1","page_size":"200","start_date":null}',
    "access_token": "yourtoken",
    "app_key": "yourappkey",
    "method": "jingdong.pop.order.search",
    "timestamp": "2021-05-07 09:20:39.683+0800",
    "v": "2.0",
}


def test_published_vector() -> None:
    assert sign(VECTOR_PARAMS, "yourappSecret") == "D70825340F4084360B9362B60DFD7930"


def test_vector_business_json_is_what_encode_produces() -> None:
    business = {
        "end_date": None,
        "optional_fields": None,
        "order_state": "WAIT_SELLER_STOCK_OUT",
        "page": "1",
        "page_size": "200",
        "start_date": None,
    }
    assert encode_business_params(business) == VECTOR_PARAMS["360buy_param_json"]


def test_param_json_sorts_first_and_sign_is_excluded() -> None:
    base = signature_base({**VECTOR_PARAMS, "sign": "XYZ"})
    assert base.startswith("360buy_param_json{")
    assert "XYZ" not in base
    assert sign({**VECTOR_PARAMS, "sign": "XYZ"}, "yourappSecret") == "D70825340F4084360B9362B60DFD7930"


def test_any_change_breaks_the_signature() -> None:
    signed = {**VECTOR_PARAMS, "sign": sign(VECTOR_PARAMS, "yourappSecret")}
    assert verify(signed, "yourappSecret")
    assert verify({**signed, "sign": signed["sign"].lower()}, "yourappSecret")
    assert not verify(signed, "otherSecret")
    assert not verify({**signed, "v": "2.1"}, "yourappSecret")
    assert not verify(VECTOR_PARAMS, "yourappSecret")


def test_non_ascii_business_params_stay_utf8() -> None:
    assert encode_business_params({"remark": "京东"}) == '{"remark":"京东"}'


def test_timestamp_format_is_gmt8_with_millis() -> None:
    moment = datetime(2021, 5, 7, 1, 20, 39, 683_999, tzinfo=UTC)
    assert format_timestamp(moment) == "2021-05-07 09:20:39.683+0800"
    assert parse_timestamp("2021-05-07 09:20:39.683+0800") == datetime(
        2021, 5, 7, 1, 20, 39, 683_000, tzinfo=UTC
    )
    assert parse_timestamp("2021-05-07 09:20:39") == datetime(2021, 5, 7, 1, 20, 39, tzinfo=UTC)


def test_jd_times_are_beijing_time() -> None:
    assert parse_jd_time("2024-01-01 08:00:00") == datetime(2024, 1, 1, tzinfo=UTC)
