"""The fake platforms the demo plays against: a Taobao/Tmall TOP gateway, a JD JOS gateway and an Aliyun SMS
gateway, each served on loopback from a thread of this process.

They are the first-party plugins' own fakes (the ones their tests use); tongcrm talks to them through the
plugins' production clients, exactly as it would to the real platforms. Their shops are generated from the
demo's seed and anchor, so a ``--reuse`` run regenerates the very shops the database was filled from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from tongcrm.testing.servers import free_port, serve_in_thread
from tongcrm_jd.fake_server import FakeJosGateway
from tongcrm_jd.fake_server import create_app as jos_app
from tongcrm_jd.fake_shop import generate_shop
from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate
from tongcrm_taobao.fake_server import FakeTopGateway
from tongcrm_taobao.fake_server import create_app as top_app
from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

from tongcrm_demo.clock import DemoClock

#: How far back the generated shops reach: the "few weeks of life" the story plays.
HISTORY_DAYS = 21
TOP_APP_KEY, TOP_SECRET, TOP_SESSION = "23456789", "demo-top-secret", "demo-seller-session"
JOS_APP_KEY, JOS_SECRET, JOS_TOKEN = "demo-jos-app", "demo-jos-secret", "demo-jos-token"
SMS_KEY_ID, SMS_KEY_SECRET = "demo-access-key", "demo-access-secret"
SMS_SIGNATURE = "通通会员"
SMS_TEMPLATES = {
    "SMS_DEMO_SHIP": frozenset({"order_id", "carrier", "tracking_number"}),
    "SMS_DEMO_REFUND": frozenset({"order_id", "refund_amount"}),
    "SMS_DEMO_PROMO": frozenset(),
}


@dataclass(frozen=True, slots=True)
class Ports:
    top: int
    jos: int
    sms: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


@dataclass(slots=True)
class Platforms:
    """The running fakes and where they listen."""

    top: FakeTopGateway
    jos: FakeJosGateway
    sms: FakeAliyun
    ports: Ports

    @property
    def top_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.top}/router/rest"

    @property
    def jos_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.jos}/routerjson"

    @property
    def sms_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.sms}/"

    def jd_buyers(self) -> list[str]:
        """JD open ids of the shop's buyers, most frequent first (ties by id, so the order is stable)."""
        counts = Counter(r["open_id_buyer"] for r in self.jos.shop if r["open_id_buyer"])
        return [open_id for open_id, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def build(seed: int, anchor: datetime, clock: DemoClock, ports: Ports) -> Platforms:
    """The fakes' state: shops whose history ends at ``anchor`` (the first run's start)."""
    shop = FakeShop(
        ShopConfig(
            seed=seed,
            trades=320,
            buyers=150,
            days=HISTORY_DAYS,
            anchor=anchor,
            seller_nick="通通美妆旗舰店",
            ouid_share=0.9,
        ),
        clock=clock,
        app_key=TOP_APP_KEY,
    )
    # the TOP client stamps its requests with the wall clock, so the gateway checks them against it too
    top = FakeTopGateway(shop, app_key=TOP_APP_KEY, app_secret=TOP_SECRET, session=TOP_SESSION)
    jos = FakeJosGateway(
        shop=generate_shop(
            seed=seed, orders=260, buyers=110, start=anchor - timedelta(days=HISTORY_DAYS), end=anchor
        ),
        app_key=JOS_APP_KEY,
        app_secret=JOS_SECRET,
        access_tokens={JOS_TOKEN},
        clock=clock,
        seed=seed,
    )
    sms = FakeAliyun(
        access_keys={SMS_KEY_ID: SMS_KEY_SECRET},
        signatures={SMS_SIGNATURE},
        templates=[
            FakeTemplate(code, variables, "promotion" if code.endswith("PROMO") else "notice")
            for code, variables in SMS_TEMPLATES.items()
        ],
        clock=clock,
    )
    return Platforms(top, jos, sms, ports)


@contextmanager
def serving(platforms: Platforms) -> Iterator[Platforms]:
    """Serve the three fakes on their loopback ports until the block ends (they stop with it)."""
    with ExitStack() as stack:
        stack.enter_context(serve_in_thread(top_app(platforms.top), port=platforms.ports.top))
        stack.enter_context(serve_in_thread(jos_app(platforms.jos), port=platforms.ports.jos))
        stack.enter_context(serve_in_thread(platforms.sms.app, port=platforms.ports.sms))
        yield platforms
