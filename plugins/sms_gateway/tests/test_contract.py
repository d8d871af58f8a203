"""The core's messenger contract, run against the Aliyun SMS messenger over its real client and the fake
dysmsapi gateway served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from tongcrm.plugin.types import OutboundMessage
from tongcrm.testing.contract import MessengerContract
from tongcrm.testing.servers import serve_in_thread

from .conftest import KEY_ID, PROMO, SECRET, Clock, make_fake, message


class TestAliyunSmsMessengerContract(MessengerContract):
    messenger_name = "aliyun_sms"

    @pytest.fixture
    def messenger_clock(self) -> Callable[[], datetime]:
        return Clock()

    @pytest.fixture
    def messenger_settings(self, messenger_clock: Clock) -> Iterator[dict[str, str]]:
        gateway = make_fake(messenger_clock)
        with serve_in_thread(gateway.app) as url:
            yield {
                "access_key_id": KEY_ID,
                "access_key_secret": SECRET,
                "endpoint": f"{url}/",
                # a rate makes the messenger take grants from the core's gate, which the kit checks it returns
                "max_send_rate": "50",
            }

    @pytest.fixture
    def contract_messages(self) -> list[OutboundMessage]:
        return [message(1), message(2), message(3, template=PROMO), message(4, template=PROMO)]
