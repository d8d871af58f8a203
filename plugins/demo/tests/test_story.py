"""The demo's story, played in-process on each test database: what issue #21 promises a newcomer exists
afterwards — members on several channels with one mobile, merged identities, refunds and shipments on both
platforms, store receipts paid partly with points and returns, care messages through the SMS fake, a rule
change, segments, and a campaign whose report shows a response rate. Then an operator signs in to the console
with the story's operator key over HTTP and every figure the dashboard page renders must equal
``GET /api/dashboard``'s."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.auth.models import ApiKey
from tongcrm.campaigns import evaluation
from tongcrm.campaigns import service as campaigns
from tongcrm.config import Settings
from tongcrm.identity.models import Identity, Merge
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.points import ledger
from tongcrm.points import service as points
from tongcrm.points.models import PointsEntry, PointsRuleSet
from tongcrm.segments.models import Segment
from tongcrm.testing.database import TestDatabase
from tongcrm_demo import platforms as fakes
from tongcrm_demo.clock import DemoClock
from tongcrm_demo.story import CAMPAIGN, Story

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_CJK = re.compile(r"[\u4e00-\u9fff]")
_WORD = re.compile(r"[A-Za-z]{3,}")


@pytest.mark.slow(seconds=65)
async def test_the_story_leaves_everything_the_issue_promises(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, make_client: Callable[..., Any]
) -> None:
    clock = DemoClock()
    anchor = datetime.now(UTC).replace(microsecond=0)
    platforms = fakes.build(3, anchor, clock, fakes.Ports.free())
    with fakes.serving(platforms):
        report = await Story(
            tongcrm_settings,
            PluginHost(autoload=True, disabled=set()),
            platforms,
            clock,
            seed=3,
            anchor=anchor,
        ).play()

    async with tongcrm_db.sessions() as session:
        orders = (
            await session.execute(
                sa.select(
                    Order.member_id, Order.channel, Order.refunded_fen, Order.shipments, Order.placed_at
                )
            )
        ).all()
        channels: dict[int, set[str]] = defaultdict(set)
        for row in orders:
            if row.member_id is not None:
                channels[row.member_id].add(row.channel)
        kinds: dict[int, set[str]] = defaultdict(set)
        for member_id, kind in (await session.execute(sa.select(Identity.member_id, Identity.kind))).all():
            kinds[member_id].add(kind)
        merges = (await session.execute(sa.select(sa.func.count()).select_from(Merge))).scalar_one()
        redemptions = (
            await session.execute(
                sa.select(sa.func.count()).select_from(PointsEntry).where(PointsEntry.kind == "redeem")
            )
        ).scalar_one()
        rule_sets = await points.list_rule_sets(session)
        segments = set((await session.execute(sa.select(Segment.name))).scalars())
        typed = [
            *(await session.execute(sa.select(Segment.description))).scalars(),
            *(await session.execute(sa.select(PointsRuleSet.note))).scalars(),
            *(await session.execute(sa.select(ApiKey.label))).scalars(),
        ]
        sent = (
            await session.execute(
                sa.select(Message.flow, sa.func.count())
                .where(Message.status == "sent")
                .group_by(Message.flow)
            )
        ).all()
        campaign = await campaigns.get(session, CAMPAIGN)
        evaluated = await evaluation.report(session, campaign)
        drift = await ledger.verify(session)

    # shoppers who buy in a store and on both platforms with the same mobile are one member
    assert sum(1 for c in channels.values() if c == {"taobao", "jd", "offline_pos"}) >= 5, channels
    assert any({"mobile", "taobao.ouid", "jd.open_id", "taobao.open_uid"} <= k for k in kinds.values())
    assert merges >= 5 and report.tmall_bindings >= 20 and report.jd_bindings >= 20
    # three weeks of history, timestamps in the past
    placed = sorted(row.placed_at for row in orders)
    assert (anchor - placed[0]).days >= 20
    # refunds and shipments on both platforms; returns in the stores
    for channel in ("taobao", "jd", "offline_pos"):
        assert any(r.refunded_fen > 0 for r in orders if r.channel == channel), f"no refund on {channel}"
    for channel in ("taobao", "jd"):
        assert any(r.shipments for r in orders if r.channel == channel), f"no shipment on {channel}"
    # store receipts paid partly with points, recorded as redemptions on the exact ledger
    assert report.points_payments >= 5 and redemptions >= report.points_payments
    assert report.returns >= 3
    assert drift == []
    # the rule change, the segments
    assert [(r.version, r.status) for r in rule_sets] == [(2, "active"), (1, "retired")]
    assert {"omnichannel", "marketable"} <= segments
    # what the operator typed (the campaign's goal, segments' descriptions, rule sets' notes, keys' labels) is
    # Chinese, as an operator of a Chinese brand writes it; names and codes stay identifiers
    for text in [campaign.goal, *typed]:
        assert _CJK.search(text) and not _WORD.search(text.replace("SMS", "")), text
    # care messages and the campaign went out through the SMS fake
    flows = dict(sent)
    assert flows.get("flow.shipping_notice", 0) >= 1 and flows.get(f"campaign.{CAMPAIGN}", 0) >= 5
    assert len(platforms.sms.accepted) == sum(flows.values())
    # the campaign's report has a control group and a response rate for both groups
    total = evaluated.total
    assert (
        total.figures.control > 0 and total.figures.treated.eligible > 0 and total.figures.held.eligible > 0
    )
    assert 0 < total.uplift.treated_rate <= 1 and 0 <= total.uplift.control_rate <= 1
    assert total.figures.treated.responders <= total.figures.treated.eligible

    # the console, signed in with the story's operator key, shows exactly the API's dashboard figures (one story
    # per database is all the time CI has, so this rides on the same run)
    async with make_client(PluginHost(autoload=True, disabled=set()), role=None) as api:
        form = await api.get("/console/sign-in")
        assert form.status_code == 200, form.text
        signed_in = await api.post(
            "/console/sign-in",
            data={"key": report.keys.operator, "csrf_token": _csrf(form.text), "next": "/console/dashboard"},
            follow_redirects=False,
        )
        assert signed_in.status_code == 303, signed_in.text
        page = await api.get("/console/dashboard")
        assert page.status_code == 200, page.text
        answer = await api.get("/api/dashboard", headers={"Authorization": f"Bearer {report.keys.operator}"})
        assert answer.status_code == 200, answer.text
    rendered, expected = _rendered_figures(page.text), _api_figures(answer.json())
    assert expected["members"] > 0 and any(k.startswith("overlap.") for k in expected), expected
    assert set(rendered) == set(expected), set(rendered) ^ set(expected)
    for key, value in expected.items():
        shown = rendered[key]
        if key.endswith("_at"):
            assert (datetime.fromisoformat(shown) if shown else None) == value, key
        else:
            assert shown == str(value), (key, shown, value)


def _csrf(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "the sign-in form carries no CSRF token"
    return found.group(1)


class _Figures(HTMLParser):
    """Every ``data-figure`` element of a page: its ``data-value`` when it carries one (a localised yes/no, a
    local time), else its text."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self._open: list[tuple[str, int, list[str]]] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._depth += 1
        found = dict(attrs)
        key = found.get("data-figure")
        if key is None:
            return
        assert key not in self.figures, f"figure {key} rendered twice"
        if "data-value" in found:
            self.figures[key] = found["data-value"] or ""
        else:
            self._open.append((key, self._depth, []))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][1] == self._depth:
            key, _, text = self._open.pop()
            self.figures[key] = "".join(text).strip()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)


def _rendered_figures(html: str) -> dict[str, str]:
    parser = _Figures()
    parser.feed(html)
    parser.close()
    assert not parser._open, "a data-figure element was never closed"
    return parser.figures


def _api_figures(d: dict[str, Any]) -> dict[str, Any]:
    """The API's dashboard flattened to the keys the page's ``data-figure`` attributes use (``at`` is the moment
    of the answer and the message totals are not on the page)."""
    out: dict[str, Any] = {
        k: d[k]
        for k in ("members", "points_liability", "points_pending", "points_expiring_30d", "quarantine")
    }
    out |= {f"overlap.{'+'.join(o['channels'])}": o["members"] for o in d["overlap"]}
    out |= {f"tier.{c['key']}": c["members"] for c in d["tiers"]}
    out |= {f"stage.{c['key']}": c["members"] for c in d["lifecycle"]}
    for m in d["messages"]:
        out |= {f"messages.{m['days']}.sent": m["sent"], f"messages.{m['days']}.refused": m["refused"]}
    for a in d["accounts"]:
        f = f"account.{a['id']}."
        out |= {f + k: a[k] for k in ("name", "channel", "status")}
        out[f + "needs_reauth"] = str(a["needs_reauth"]).lower()
        out[f + "last_success_at"] = _moment(a["last_success_at"])
        if a["last_error"]:
            out |= {f + "last_error": a["last_error"], f + "last_error_at": _moment(a["last_error_at"])}
    return out


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
