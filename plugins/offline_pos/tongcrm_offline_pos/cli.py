"""``tongcrm pos …``: tills per store, and the till simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import TypeVar

import click
from tongcrm.audit.service import Actor
from tongcrm.config import Settings
from tongcrm.counter import CounterWork, open_counter

from tongcrm_offline_pos import stores
from tongcrm_offline_pos.models import TABLES
from tongcrm_offline_pos.simulator import simulate

T = TypeVar("T")
CLI_ACTOR = Actor("cli", "admin")


def _in_unit_of_work(body: Callable[[CounterWork], Awaitable[T]]) -> T:
    """Run ``body`` in one unit of work of the core's counter, on the configured database."""
    settings = Settings.from_env()

    async def main() -> T:
        async with (
            open_counter(settings) as counter,
            counter.unit_of_work(actor=CLI_ACTOR, tables=TABLES) as uow,
        ):
            return await body(uow)

    return asyncio.run(main())


def pos_group() -> click.Group:
    group = click.Group("pos", help="Offline stores: tills, and a till simulator.")
    till = click.Group("till", help="Tills (workstations) of a store; receipts from other tills are refused.")
    group.add_command(till)

    @till.command("add")
    @click.option(
        "--store", "store_code", required=True, help="Store code (the offline_pos channel account)."
    )
    @click.option("--till", "till_code", required=True, help="Till code, e.g. T01.")
    @click.option("--label", default="", help="A note to recognise the till by.")
    def till_add(store_code: str, till_code: str, label: str) -> None:
        view = _in_unit_of_work(lambda s: stores.add_till(s, store_code, till_code, label=label))
        click.echo(f"added till {view.till!r} to store {view.store!r}")

    @till.command("disable")
    @click.option("--store", "store_code", required=True)
    @click.option("--till", "till_code", required=True)
    def till_disable(store_code: str, till_code: str) -> None:
        view = _in_unit_of_work(lambda s: stores.disable_till(s, store_code, till_code))
        click.echo(f"disabled till {view.till!r} of store {view.store!r}")

    @till.command("list")
    @click.option("--store", "store_code", default=None)
    def till_list(store_code: str | None) -> None:
        for view in _in_unit_of_work(lambda s: stores.list_tills(s, store_code)):
            click.echo(f"{view.store}\t{view.till}\t{view.status}\t{view.label}")

    @group.command("simulate")
    @click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="A loopback tongcrm URL.")
    @click.option(
        "--key", envvar="TONGCRM_POS_KEY", required=True, help="The store's POS key (or TONGCRM_POS_KEY)."
    )
    @click.option("--store", "store_code", required=True)
    @click.option("--till", "till_code", required=True)
    @click.option("--receipts", default=100, show_default=True, type=click.IntRange(1, 100_000))
    @click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(1, 3600))
    @click.option("--seed", default=1, show_default=True)
    @click.option("--customers", default=50, show_default=True, type=click.IntRange(1, 100_000))
    @click.option("--offline-share", default=0.2, show_default=True, type=click.FloatRange(0, 1))
    @click.option("--return-share", default=0.05, show_default=True, type=click.FloatRange(0, 1))
    @click.option("--start-sequence", default=1, show_default=True, type=click.IntRange(1))
    @click.option("--business-day", type=click.DateTime(["%Y-%m-%d"]), default=None)
    def simulate_cmd(
        url: str, key: str, store_code: str, till_code: str, receipts: int, seconds: float, seed: int,
        customers: int, offline_share: float, return_share: float, start_sequence: int,
        business_day: datetime | None,
    ) -> None:  # fmt: skip
        """Play a day of store traffic against a running tongcrm (loopback only), bounded in count and time."""
        day: date | None = business_day.date() if business_day is not None else None
        try:
            report = asyncio.run(
                simulate(
                    url,
                    key,
                    store_code,
                    till_code,
                    receipts=receipts,
                    seconds=seconds,
                    seed=seed,
                    customers=customers,
                    offline_share=offline_share,
                    return_share=return_share,
                    start_sequence=start_sequence,
                    business_day=day,
                )
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        lat = sorted(report.latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
        click.echo(
            f"{report.receipts} receipts ({report.offline_receipts} offline, {report.returns} returns, "
            f"{report.redemptions} paid with points), {report.lookups} lookups, {report.enrolments} enrolments, "
            f"{report.rejected} rejected, {report.throttled} throttled in {report.elapsed:.1f} s; p99 {p99:.1f} ms"
        )
        for error in report.errors[:10]:
            click.echo(f"error: {error}", err=True)
        if report.errors:
            raise click.exceptions.Exit(1)

    return group
