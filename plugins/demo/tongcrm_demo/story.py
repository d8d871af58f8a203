"""The demo's story: three weeks in the life of a beauty brand's member programme, played in seconds.

An operator launches the programme (a tier ladder, an earning rule), connects a Tmall flagship shop, a JD shop,
two stores and an SMS account, and configures care messages. Then, day by day: stores upload their receipts
(points earned, points paid with, goods returned), the platforms are synced through the plugins' real clients
against the fakes, Tmall's 会员通 and JD's membership bind shoppers' mobiles to their platform identities (so one
person who buys in a store and on both platforms becomes one member, merged), the earning rules change, the
audience is segmented and a campaign with a control group goes out. On the last day the shops ship and refund
live and the care flows text the shoppers through the SMS fake; a tier review closes the story.

Everything goes through the services and APIs an operator or a till would use: the HTTP API in-process for the
tills and the platform callbacks, the core services for the back office. Time comes from :class:`DemoClock`, set
to moments of the past, so every timestamp is believable; the seed makes the story repeatable.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import httpx
from tongcrm.audit.service import SYSTEM, Actor
from tongcrm.auth import audited as keys
from tongcrm.campaigns import service as campaigns
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.counter import open_counter
from tongcrm.db.engine import create_engine, session_factory, transaction
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import sync_account
from tongcrm.jobs.registry import load_job_modules
from tongcrm.jobs.runner import Runner
from tongcrm.membership import MembershipService
from tongcrm.messaging import flows
from tongcrm.messaging import service as messaging
from tongcrm.messaging.dispatch import Dispatcher
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim
from tongcrm.points import service as points
from tongcrm.segments import service as segments
from tongcrm.tiers import service as tiers
from tongcrm_offline_pos import stores as pos_stores
from tongcrm_offline_pos.models import TABLES as POS_TABLES
from tongcrm_offline_pos.simulator import return_of_first_line
from tongcrm_offline_pos.simulator import sale as simulated_sale
from tongcrm_taobao.fake_tmall import FakeTmall

from tongcrm_demo.clock import DemoClock
from tongcrm_demo.platforms import (
    HISTORY_DAYS,
    JOS_APP_KEY,
    JOS_SECRET,
    JOS_TOKEN,
    SMS_KEY_ID,
    SMS_KEY_SECRET,
    SMS_SIGNATURE,
    TOP_APP_KEY,
    TOP_SECRET,
    TOP_SESSION,
    Platforms,
)

OPERATOR = Actor("demo-operator", "operator")
TMALL, JD, SMS = "tmall-flagship", "jd-pop", "sms"
STORES = (("SH001", "上海南京西路店", "上海"), ("BJ001", "北京三里屯店", "北京"))
TILL = "T1"
LADDER: dict[str, Any] = {
    "window_months": 12,
    "review": {"mode": "anniversary", "one_step": True},
    "tiers": [
        {"code": "member", "name": "普通会员"},
        {
            "code": "silver",
            "name": "银卡",
            "rule": {"metric": "spend_fen", "min": 80_000},
            "entitlements": [{"kind": "points_multiplier", "value": 120}, {"kind": "gift_packaging"}],
        },
        {
            "code": "gold",
            "name": "金卡",
            "rule": {"any": [{"metric": "spend_fen", "min": 300_000}, {"metric": "order_count", "min": 8}]},
            "entitlements": [
                {"kind": "points_multiplier", "value": 150},
                {"kind": "gift_packaging"},
                {"kind": "free_shipping"},
            ],
        },
    ],
}
_BASE_RULE = {"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1"}
RULES_AT_LAUNCH: dict[str, Any] = {"rules": [_BASE_RULE], "expiry": {"kind": "end_of_year", "months": 12}}
#: The change in week three: store purchases earn double (a second spend rule stacking on the base one).
RULES_STORE_DOUBLE: dict[str, Any] = {
    "rules": [
        _BASE_RULE,
        {
            "type": "spend",
            "code": "store-double",
            "priority": 50,
            "points_per_yuan": "1",
            "channels": ["offline_pos"],
        },
    ],
    "expiry": {"kind": "end_of_year", "months": 12},
}
SEGMENTS: dict[str, dict[str, Any]] = {
    "omnichannel": {
        "version": 1,
        "condition": {
            "all": [
                {"field": "orders.count", "op": "gte", "value": 1, "channel": "offline_pos"},
                {
                    "any": [
                        {"field": "orders.count", "op": "gte", "value": 1, "channel": "taobao"},
                        {"field": "orders.count", "op": "gte", "value": 1, "channel": "jd"},
                    ]
                },
            ]
        },
    },
    "marketable": {
        "version": 1,
        "condition": {
            "all": [
                {"field": "consent.opted_in", "op": "is", "value": True, "purpose": "marketing"},
                {"field": "orders.count", "op": "gte", "value": 1},
            ]
        },
    },
}
CAMPAIGN = "member-day"
#: What the operator wrote about each saved segment (the names are identifiers: a-z, digits, '-' and '_').
SEGMENT_DESCRIPTIONS = {
    "omnichannel": "全渠道会员：在门店买过，也在天猫或京东买过",
    "marketable": "可营销会员：同意接收营销消息，且至少下过一单",
}


def key_label(role: str, store: str | None = None) -> str:
    """The label of a key the demo makes, as an operator of a Chinese brand would write it."""
    if store:
        return f"演示收银 {store}"
    return {"admin": "演示管理员", "operator": "演示运营"}.get(role, f"演示 {role}")


_NAMES = [
    "王芳",
    "李娜",
    "张伟",
    "刘洋",
    "陈静",
    "杨敏",
    "赵磊",
    "黄丽",
    "周杰",
    "吴婷",
    "徐明",
    "孙悦",
    "马超",
    "朱琳",
    "胡斌",
    "郭艳",
    "何平",
    "林雪",
    "高峰",
    "罗欣",
]
_CATALOGUE = (
    ("SKU-MASK", "玻尿酸补水面膜 10片装", "护肤", 9_900),
    ("SKU-CLEAN", "氨基酸洁面乳 120g", "护肤", 6_800),
    ("SKU-SERUM", "烟酰胺精华液 30ml", "护肤", 25_900),
    ("SKU-SUN", "防晒乳 SPF50+", "防晒", 15_800),
    ("SKU-LIP", "口红 #999", "彩妆", 32_000),
    ("SKU-HAND", "护手霜礼盒", "礼盒", 8_800),
)


@dataclass(frozen=True, slots=True)
class Shopper:
    """One person of the story, known by one mobile on every channel they use."""

    index: int
    mobile: str
    name: str
    ouid: str | None  # their Taobao ouid when they buy on Tmall
    jd_open_id: str | None
    store: str | None  # the store they visit
    marketing: bool  # opted in to marketing at the till


@dataclass(slots=True)
class Keys:
    admin: str
    operator: str
    pos: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StoryReport:
    """What the story did, for the progress display and the final summary."""

    keys: Keys
    receipts: int = 0
    points_payments: int = 0
    returns: int = 0
    tmall_bindings: int = 0
    jd_bindings: int = 0
    synced_orders: int = 0
    live_events: int = 0
    tier_changes: int = 0
    campaign_audience: int = 0


Step = Callable[[str], None]


def shoppers(seed: int, platforms: Platforms, count: int = 48) -> list[Shopper]:
    """The cast: ``count`` shoppers, most on two or three channels. Deterministic for a seed."""
    rnd = random.Random(seed)
    jd_ids = platforms.jd_buyers()
    cast = []
    for k in range(count):
        buyer = platforms.top.shop.buyer(3 * k + 2)  # not only the shop's most frequent buyers
        on_tmall, on_jd, in_store = k % 5 != 4, k % 3 != 2, k % 4 != 3
        cast.append(
            Shopper(
                index=k,
                mobile=f"139{seed % 100:02d}{k:06d}",
                name=_NAMES[k % len(_NAMES)],
                ouid=buyer.get("ouid") if on_tmall else None,
                jd_open_id=jd_ids[2 * k + 1] if on_jd and 2 * k + 1 < len(jd_ids) else None,
                store=STORES[k % len(STORES)][0] if in_store else None,
                marketing=rnd.random() < 0.75,
            )
        )
    return cast


def local_moment(day: date, hour: int, minute: int, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=tz)


class Story:
    def __init__(
        self,
        settings: Settings,
        host: PluginHost,
        platforms: Platforms,
        clock: DemoClock,
        *,
        seed: int,
        anchor: datetime,
        step: Step = lambda _: None,
        drain_jobs: bool = True,
    ) -> None:
        self.settings = settings
        self.host = host
        self.platforms = platforms
        self.clock = clock
        self.seed = seed
        self.anchor = anchor
        self.step = step
        self.drain_jobs = drain_jobs
        self.tz = settings.tz
        self.vault = settings.vault()
        self.rnd = random.Random(seed)
        self.cast = shoppers(seed, platforms)
        #: sales each store uploaded, newest last: the till returns goods from them
        self.sales: dict[str, list[dict[str, Any]]] = {code: [] for code, _, _ in STORES}
        self.enrolled: set[int] = set()
        #: points available per shopper, as the last store receipt printed them
        self.points_seen: dict[int, int] = {}

    # ------------------------------------------------------------------------------------------------- play

    async def play(self) -> StoryReport:
        from tongcrm.app import create_app

        engine = create_engine(self.settings.database_url)
        self.sessions = session_factory(engine)
        app = create_app(self.settings, self.host, run_jobs=False, configure_logs=False)
        self.api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=cast(Any, app)), base_url="http://demo.local"
        )
        self.ingest = IngestContext(host=self.host, vault=self.vault, clock=self.clock, tz=self.tz)
        self.runner = Runner(
            self.sessions,
            self.host,
            load_job_modules(),
            clock=self.clock,
            services={"settings": self.settings},
        )
        try:
            first_day = self.anchor.astimezone(self.tz).date() - timedelta(days=HISTORY_DAYS)
            self.clock.set(local_moment(first_day, 9, 0, self.tz))
            self.report = StoryReport(keys=await self.launch())
            await self.weeks(first_day)
            await self.live_day()
            return self.report
        finally:
            await self.api.aclose()
            await _dispose(app)
            await engine.dispose()

    # ------------------------------------------------------------------------------------------------ launch

    async def launch(self) -> Keys:
        self.step("launching the programme: tiers, points rules, channel accounts, SMS, API keys")
        now = self.clock()
        p = self.platforms
        async with transaction(self.sessions) as s:
            await tiers.apply_ladder(
                s, tiers.TierContext(now=now, tz=self.tz), LADDER, reason="会员计划上线", actor=OPERATOR
            )
            await points.create_rule_set(
                s,
                RULES_AT_LAUNCH,
                now=now,
                note="上线：每消费 1 元积 1 分",
                actor=OPERATOR.name,
                activate=True,
            )
            await accounts.create_account(
                s, self.host, self.vault, "taobao", TMALL,
                {"app_key": TOP_APP_KEY, "app_secret": TOP_SECRET, "session": TOP_SESSION, "gateway_url": p.top_url,
                 "sign_method": "md5", "initial_sync_days": str(HISTORY_DAYS + 9)},
            )  # fmt: skip
            await accounts.create_account(
                s, self.host, self.vault, "jd", JD,
                {"app_key": JOS_APP_KEY, "app_secret": JOS_SECRET, "access_token": JOS_TOKEN, "gateway_url": p.jos_url,
                 "initial_sync_days": str(HISTORY_DAYS + 9)},
            )  # fmt: skip
            for code, title, city in STORES:
                await accounts.create_account(
                    s, self.host, self.vault, "offline_pos", code, {"title": title, "city": city}
                )
            await messaging.create_account(
                s, self.host, self.vault, "aliyun_sms", SMS,
                {"access_key_id": SMS_KEY_ID, "access_key_secret": SMS_KEY_SECRET, "endpoint": p.sms_url},
            )  # fmt: skip
            for name, code, purpose, text in (
                (
                    "ship",
                    "SMS_DEMO_SHIP",
                    "service",
                    "您的订单${order_id}已由${carrier}发出，运单号${tracking_number}",
                ),
                ("refund", "SMS_DEMO_REFUND", "service", "您的订单${order_id}已退款${refund_amount}元"),
                (
                    "member_day",
                    "SMS_DEMO_PROMO",
                    "marketing",
                    "会员日：全场满299减50，门店与旗舰店同享。拒收请回复R",
                ),
            ):
                await messaging.create_template(
                    s,
                    name=name,
                    account=SMS,
                    purpose=purpose,
                    signature=SMS_SIGNATURE,
                    template_code=code,
                    text=text,
                )
            await flows.configure(s, "shipping_notice", template="ship", delay_seconds=0)
            await flows.configure(s, "refund_notice", template="refund", delay_seconds=0)
            made = Keys(
                admin=(await keys.create(s, SYSTEM, "admin", host=self.host, label=key_label("admin")))[
                    0
                ].key,
                operator=(
                    await keys.create(s, SYSTEM, "operator", host=self.host, label=key_label("operator"))
                )[0].key,
            )
            for code, _, _ in STORES:
                made.pos[code] = (
                    await keys.create(
                        s, SYSTEM, "pos", host=self.host, store_code=code, label=key_label("pos", code)
                    )
                )[0].key
        async with open_counter(self.settings, self.host) as counter:
            for code, _, _ in STORES:
                async with counter.unit_of_work(actor=OPERATOR, tables=POS_TABLES) as uow:
                    await pos_stores.add_till(uow, code, TILL, label="收银台 1")
        return made

    # ------------------------------------------------------------------------------------------------- weeks

    async def weeks(self, first_day: date) -> None:
        for d in range(HISTORY_DAYS):
            day = first_day + timedelta(days=d)
            if d % 7 == 0:
                self.step(f"week {d // 7 + 1} of {HISTORY_DAYS // 7}: store receipts, platform sync")
            if d == 14:
                await self.campaign_day(day)
            self.clock.set(local_moment(day, 21, 0, self.tz))
            for code, _, _ in STORES:
                await self.store_day(code, day)
            if d % 7 == 6:
                await self.sync_and_settle()
            if d == 6:
                await self.bindings()
            if d == 13:
                await self.rule_change_and_segments()

    async def store_day(self, store: str, day: date) -> None:
        """A store's day: walk-ins enrol, regulars buy (some paying with points), a return now and then; the
        till uploads the day's receipts as one batch, as a till that was offline does. The till knows a
        regular's points from the last receipt it printed for them, so it asks for no lookups."""
        rnd = self.rnd
        regulars = [s for s in self.cast if s.store == store]
        receipts: list[dict[str, Any]] = []
        buyers: dict[int, Shopper] = {}
        for visitor in rnd.sample(regulars, k=min(len(regulars), rnd.randint(1, 4))):
            if visitor.index not in self.enrolled:
                await self.enrol(store, visitor)
            known = self.points_seen.get(visitor.index, 0)
            use_points = known // 2 if known >= 400 and rnd.random() < 0.4 else 0
            receipts.append(self.sale(store, day, len(receipts) + 1, {"mobile": visitor.mobile}, use_points))
            buyers[len(receipts)] = visitor
        for _ in range(rnd.randint(0, 2)):  # walk-ins who stay anonymous
            receipts.append(self.sale(store, day, len(receipts) + 1, None, 0))
        if self.sales[store] and rnd.random() < 0.3:
            original = self.sales[store].pop(rnd.randrange(len(self.sales[store])))
            receipts.append(self.refund(store, day, len(receipts) + 1, original))
        answer = await self.pos(store, "POST", "/pos/v1/receipts/batch", {"receipts": receipts})
        for result, body in zip(answer["results"], receipts, strict=True):
            if result["status"] != "applied":
                continue
            self.report.receipts += 1
            if result["kind"] == "return":
                self.report.returns += 1
                continue
            self.sales[store].append(body)
            self.report.points_payments += int(result["points_redeemed"] > 0)
            buyer = buyers.get(result["sequence"])
            if buyer is not None and result["points_available"] is not None:
                self.points_seen[buyer.index] = result["points_available"]

    def sale(
        self, store: str, day: date, seq: int, member: dict[str, Any] | None, use_points: int
    ) -> dict[str, Any]:
        at = local_moment(day, 10, 0, self.tz) + timedelta(minutes=self.rnd.randint(0, 600))
        body: dict[str, Any] = simulated_sale(
            store, TILL, day, seq, at, member, self.rnd, use_points, catalogue=_CATALOGUE
        )
        return body

    def refund(self, store: str, day: date, seq: int, original: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = return_of_first_line(
            original, store, TILL, day, seq, local_moment(day, 19, 30, self.tz)
        )
        return body

    async def enrol(self, store: str, visitor: Shopper) -> None:
        await self.pos(
            store,
            "POST",
            "/pos/v1/members",
            {"till": TILL, "mobile": visitor.mobile, "name": visitor.name,
             "consent": {"marketing": visitor.marketing, "proof": "till screen, signed"}},
        )  # fmt: skip
        self.enrolled.add(visitor.index)

    async def pos(self, store: str, method: str, path: str, body: Any) -> dict[str, Any]:
        """One call of a store's till, waiting out the till API's rate limit like a real till."""
        headers = {"Authorization": f"Bearer {self.report.keys.pos[store]}"}
        while True:
            response = await self.api.request(method, path, json=body, headers=headers)
            if response.status_code != 429:
                break
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        if response.status_code not in (200, 201):
            raise RuntimeError(f"till {store} {path}: {response.status_code} {response.text[:300]}")
        answer: dict[str, Any] = response.json()
        return answer

    # ------------------------------------------------------------------------------------ platforms and jobs

    async def sync_and_settle(self) -> None:
        """What the periodic jobs do: sync both shops until caught up, then run due jobs and the dispatcher."""
        for account in (TMALL, JD):
            for _ in range(20):
                report = await sync_account(self.sessions, self.ingest, account)
                self.report.synced_orders += report.applied
                if report.error is not None:
                    raise RuntimeError(f"sync of {account} failed: {report.error}")
                if report.caught_up:
                    break
        await self.settle()

    async def settle(self) -> None:
        """Send what is queued (the dispatcher); with ``drain_jobs``, first run every due job and event
        delivery until idle. Without it the job runner's backlog (care flows of every order event, periodic
        jobs) is left to the runner of the served app, which catches up in the background once serving."""
        if self.drain_jobs:
            for _ in range(1000):  # until idle: the periodic jobs of this moment have run once
                if not await self.runner.run_once():
                    break
        await Dispatcher(self.sessions, self.host, self.vault, clock=self.clock).run()

    async def bindings(self) -> None:
        """Shoppers join the brand's membership on Tmall (会员通: Tmall calls the brand's SPI with the mobile and
        the buyer's ouid) and on JD (the shop's membership card, bound through the membership service). The
        same mobile already names a store member, so the platform members merge into one."""
        self.step("会员通 and JD membership: binding mobiles, merging identities across channels")
        tmall = FakeTmall(self.api, account=TMALL, app_key=TOP_APP_KEY, app_secret=TOP_SECRET)
        membership = MembershipService(self.sessions, self.host, self.settings, clock=self.clock)
        for shopper in self.cast:
            if shopper.ouid is not None:
                answer = await tmall.call(
                    "tmall.mei.crm.member.register",
                    {"mobile": shopper.mobile, "ouid": shopper.ouid, "nick": f"t**{shopper.index}"},
                )
                if answer.get("query_code") != "SUC":
                    raise RuntimeError(f"会员通 register refused: {answer}")
                self.report.tmall_bindings += 1
            if shopper.jd_open_id is not None:
                await membership.bind(
                    mobile=shopper.mobile,
                    claims=[IdentityClaim("jd.open_id", shopper.jd_open_id, evidence="jd membership card")],
                    account_name=JD,
                    register=True,
                    actor="jd-membership",
                )
                self.report.jd_bindings += 1
        await self.settle()

    # ----------------------------------------------------------------------------- programme and marketing

    async def rule_change_and_segments(self) -> None:
        self.step("week 3: store purchases earn double points; segments saved")
        now = self.clock()
        async with transaction(self.sessions) as s:
            await points.create_rule_set(
                s, RULES_STORE_DOUBLE, now=now, note="门店消费积分翻倍", actor=OPERATOR.name, activate=True
            )
            context = await segments.load_context(s, self.host, now)
            for name, definition in SEGMENTS.items():
                await segments.save(
                    s, context, name, definition, OPERATOR, description=SEGMENT_DESCRIPTIONS[name]
                )

    async def campaign_day(self, day: date) -> None:
        """A member-day SMS to the marketable members, 20 % held out as the control group, judged on orders in
        any channel within 3 days."""
        self.step("campaign 'member-day': audience frozen, control group held out, SMS sent")
        at = local_moment(day, 10, 0, self.tz)
        self.clock.set(at - timedelta(hours=1))
        async with transaction(self.sessions) as s:
            await campaigns.create(
                s,
                campaigns.Draft(
                    name=CAMPAIGN,
                    segment="marketable",
                    template="member_day",
                    response={"kind": "order", "within_days": 3},
                    goal="会员日后一周内让会员回来再买一次",
                    control_percent=20.0,
                    control_seed=f"demo-{self.seed}",
                    message_cost_fen=5,
                ),
                OPERATOR,
            )
            campaign = await campaigns.schedule(
                s,
                self.host,
                OPERATOR,
                CAMPAIGN,
                {"kind": "once", "at": at.isoformat()},
                now=self.clock(),
                tz=self.tz,
            )
        self.clock.set(at)
        await campaigns.run_due(self.sessions, self.host, now=at, tz=self.tz)
        async with self.sessions() as s:
            self.report.campaign_audience = sum(r.audience for r in await campaigns.runs(s, campaign.id))
        self.clock.set(at + timedelta(minutes=5))
        await self.settle()

    # ---------------------------------------------------------------------------------------------- today

    async def live_day(self) -> None:
        """Today, on the wall clock: the shops ship and refund, new orders come in, everything syncs, the care
        flows text the buyers, and the tier review runs."""
        self.step("today: shipments, refunds and new orders on the platforms, synced")
        self.clock.release()
        shop = self.platforms.top.shop
        ours = {s.ouid for s in self.cast if s.ouid}
        waiting = [
            t
            for t in shop.tids()
            if shop.trade(t)["status"] == "WAIT_SELLER_SEND_GOODS" and shop.trade(t).get("ouid") in ours
        ]
        for tid in waiting[:6]:
            shop.ship(tid)
            self.report.live_events += 1
        finished = [
            t
            for t in shop.tids()
            if shop.trade(t)["status"] == "TRADE_FINISHED"
            and shop.trade(t).get("ouid") in ours
            and all(line["refund_status"] == "NO_REFUND" for line in shop.trade(t)["orders"]["order"])
        ]
        for tid in finished[:3]:
            shop.refund_line(tid)
            self.report.live_events += 1
        for shopper in self.cast[:4]:
            if shopper.ouid is not None:
                shop.pay(shop.create_trade(buyer=3 * shopper.index + 2))
                self.report.live_events += 1
        jd = self.platforms.jos.shop
        for record in [r for r in jd if r["orderState"] == "WAIT_SELLER_STOCK_OUT"][:4]:
            jd.ship(record["orderId"], self.clock())
            self.report.live_events += 1
        await self.sync_and_settle()
        self.step("tier review")
        self.report.tier_changes = await tiers.review(
            self.sessions, tiers.TierContext(now=self.clock(), tz=self.tz)
        )


async def _dispose(app: Any) -> None:
    """The in-process app's engines: its lifespan never ran, so close what it opened here."""
    state = getattr(app, "state", None) or getattr(getattr(app, "app", None), "state", None)
    if state is None:
        return
    await state.point_reader.close()
    await state.engine.dispose()
