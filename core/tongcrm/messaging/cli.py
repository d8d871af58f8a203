"""``tongcrm messages``: the send log's in-doubt messages, and the operator's word on them
(:mod:`tongcrm.messaging.settle`)."""

from __future__ import annotations

import click
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.cli_run import CLI_ACTOR, CliObj, read, write
from tongcrm.db.base import utcnow
from tongcrm.messaging import settle
from tongcrm.messaging.models import Message

#: In-doubt messages ``tongcrm messages in-doubt`` lists at most.
LISTED = 1000


@click.group("messages")
def messages_group() -> None:
    """The send log: list the messages in doubt and settle them."""


@messages_group.command("in-doubt")
@click.pass_obj
def in_doubt_command(obj: CliObj) -> None:
    """Messages in doubt (sent, no answer): id, flow, member, account, code, when sent; oldest first."""

    async def query(session: AsyncSession) -> list[Message]:
        rows = await session.execute(
            sa.select(Message).where(Message.status == "in_doubt").order_by(Message.id).limit(LISTED)
        )
        return list(rows.scalars())

    listed = read(obj, query)
    for m in listed:
        sent = m.sent_at.isoformat() if m.sent_at else "-"
        click.echo(f"{m.id}\t{m.flow}\tmember {m.member_id}\taccount {m.account_id}\t{m.code or '-'}\t{sent}")
    # said on stderr, so that stdout stays one line per message for scripts
    if not listed:
        click.echo("no message is in doubt", err=True)
    elif len(listed) == LISTED:
        click.echo(f"the {LISTED} oldest are listed: settle them to see the rest", err=True)


@messages_group.command("settle")
@click.argument("message_ids", nargs=-1, required=True, type=click.IntRange(1))
@click.option(
    "--as",
    "outcome",
    required=True,
    type=click.Choice(settle.OUTCOMES),
    help="sent: it went out; failed: it did not (not sent again); resend: queue it again now.",
)
@click.option("--note", required=True, help="How you know (the gateway's console, the member): audited.")
@click.option(
    "--resend-confirmed",
    is_flag=True,
    help="With --as resend: accept that the member may get the message twice (it may have been delivered).",
)
@click.pass_obj
def settle_command(
    obj: CliObj, message_ids: tuple[int, ...], outcome: str, note: str, resend_confirmed: bool
) -> None:
    """Settle in-doubt MESSAGE_IDS (all or none) as sent, failed or to resend; each is audited."""

    async def change(session: AsyncSession) -> list[tuple[int, str]]:
        messages = await settle.settle_in_doubt(
            session,
            CLI_ACTOR,
            message_ids,
            outcome,
            note=note,
            resend_confirmed=resend_confirmed,
            now=utcnow(),
        )
        return [(m.id, m.status) for m in messages]

    for message_id, status in write(obj, change):
        click.echo(f"message {message_id}: {status}")
