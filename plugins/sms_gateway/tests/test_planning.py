"""How a batch becomes requests, without a gateway."""

from __future__ import annotations

from tongcrm.plugin.types import OutboundMessage
from tongcrm_sms_gateway.aliyun import template_param_json
from tongcrm_sms_gateway.messenger import _Item, plan

from .conftest import NOTICE, PROMO, message


def items(*messages: OutboundMessage) -> list[_Item]:
    return [_Item(i, m, m.mobile_e164[3:], template_param_json(m.params)) for i, m in enumerate(messages)]


def test_shared_params_chunk_at_1000() -> None:
    requests = plan(items(*(message(i, template=PROMO) for i in range(2500))))
    assert [len(r.items) for r in requests] == [1000, 1000, 500]
    assert not any(r.batch_api for r in requests)


def test_personal_params_chunk_at_100_per_template() -> None:
    batch = [message(i, name=f"a{i}") for i in range(120)] + [
        message(500 + i, template="SMS_X", v=str(i)) for i in range(3)
    ]
    requests = plan(items(*batch))
    assert sorted(len(r.items) for r in requests) == [3, 20, 100]
    assert all(r.batch_api for r in requests)
    for request in requests:
        assert len({i.message.template_code for i in request.items}) == 1


def test_single_leftovers_use_send_sms() -> None:
    [request] = plan(items(message(1, name="x")))
    assert not request.batch_api


def test_rate_caps_request_size() -> None:
    requests = plan(items(*(message(i, template=PROMO) for i in range(100))), max_request=30)
    assert [len(r.items) for r in requests] == [30, 30, 30, 10]


def test_no_number_twice_in_a_request() -> None:
    phone = "+8613900000001"
    batch = [message(i, phone=phone, template=PROMO) for i in range(3)] + [message(9, template=PROMO)]
    requests = plan(items(*batch))
    for request in requests:
        phones = [i.phone for i in request.items]
        assert len(phones) == len(set(phones))
    assert sum(len(r.items) for r in requests) == 4


def test_param_json_is_canonical() -> None:
    assert template_param_json({"b": "2", "a": "短"}) == '{"a":"短","b":"2"}'
    assert message(1).template_code == NOTICE
