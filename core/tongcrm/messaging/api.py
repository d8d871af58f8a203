"""Messaging HTTP API: messenger accounts (pause is visible, resume is explicit), templates, the send log per
member and per flow or campaign, campaign sends, and care-flow configuration and reports."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId, QueryId, QueryOffset
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.channels.service import get_account as get_channel_account
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.db.engine import transaction
from tongcrm.errors import Unprocessable
from tongcrm.messaging import flows, holdout, service, settle
from tongcrm.messaging.jobs import request_dispatch
from tongcrm.messaging.models import CareFlowConfig, Message, MessageTemplate, MessengerAccount
from tongcrm.messaging.schemas import (
    CampaignSendIn,
    CampaignSendOut,
    CampaignStatusOut,
    FlowConfigIn,
    FlowConfigOut,
    FlowReportOut,
    MessageOut,
    MessengerAccountIn,
    MessengerAccountOut,
    SettleIn,
    SettleOut,
    TemplateIn,
    TemplateOut,
)
from tongcrm.plugin.host import PluginHost

MAX_CAMPAIGN_MEMBERS = 200_000


def _account_out(a: MessengerAccount, vault: Vault, principal: Principal) -> MessengerAccountOut:
    return MessengerAccountOut(
        id=a.id,
        messenger=a.messenger,
        name=a.name,
        settings=dict(a.settings),
        secrets_set=sorted(a.secret_names or []),
        status=a.status,
        status_code=a.status_code,
        status_detail=a.status_detail,
        paused_at=a.paused_at,
        callback_token=service.callback_token(vault, a.name) if principal.role == Role.ADMIN else None,
    )


def _template_out(t: MessageTemplate) -> TemplateOut:
    return TemplateOut(
        t.id,
        t.name,
        t.account_id,
        t.purpose,
        t.signature,
        t.template_code,
        t.text,
        list(t.variables),
        dict(t.defaults),
    )


def _message_out(m: Message) -> MessageOut:
    return MessageOut(
        id=m.id,
        flow=m.flow,
        member_id=m.member_id,
        order_id=m.order_id,
        template_id=m.template_id,
        account_id=m.account_id,
        purpose=m.purpose,
        status=m.status,
        reason=m.reason,
        code=m.code,
        detail=m.detail,
        provider_id=m.provider_id,
        attempts=m.attempts,
        next_attempt_at=m.next_attempt_at,
        created_at=m.created_at,
        sent_at=m.sent_at,
        delivered_at=m.delivered_at,
        finished_at=m.finished_at,
        held_out=m.held_out,
    )


def _config_out(c: CareFlowConfig) -> FlowConfigOut:
    return FlowConfigOut(c.flow, c.channel_account_id, c.enabled, c.delay_seconds, c.template_id)


class MessengerAccountController(Controller):
    path = "/api/messenger-accounts"
    tags = ["messaging"]

    @post("/", opt=requires(Role.ADMIN), summary="Add a messenger account (secret settings are encrypted)")
    async def create(
        self,
        data: JSONBody[MessengerAccountIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        host: NamedDependency[PluginHost],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> MessengerAccountOut:
        async with transaction(sessions) as session:
            account = await service.create_account(
                session, host, vault, data.messenger, data.name, data.settings
            )
        return _account_out(account, vault, principal)

    @get("/", opt=requires(*READ_ROLES), summary="Messenger accounts and whether sending is paused")
    async def list_accounts(
        self,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> list[MessengerAccountOut]:
        async with read_sessions() as session:
            return [_account_out(a, vault, principal) for a in await service.list_accounts(session)]

    @post(
        "/{name:str}/resume",
        opt=requires(*WRITE_ROLES),
        status_code=200,
        summary="Resume sending after the cause of a pause was fixed",
    )
    async def resume(
        self,
        name: FromPath[str],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        vault: NamedDependency[Vault],
        principal: NamedDependency[Principal],
    ) -> MessengerAccountOut:
        async with transaction(sessions) as session:
            account = await service.resume_account(session, name)
            await request_dispatch(session, utcnow())
        return _account_out(account, vault, principal)


class TemplateController(Controller):
    path = "/api/message-templates"
    tags = ["messaging"]

    @post(
        "/",
        opt=requires(*WRITE_ROLES),
        summary="Add a template (marketing ones must carry opt-out text)",
    )
    async def create(
        self, data: JSONBody[TemplateIn], sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> TemplateOut:
        async with transaction(sessions) as session:
            template = await service.create_template(
                session,
                name=data.name,
                account=data.account,
                purpose=data.purpose,
                signature=data.signature,
                template_code=data.template_code,
                text=data.text,
                variables=data.variables,
                defaults=data.defaults,
            )
        return _template_out(template)

    @get("/", opt=requires(*READ_ROLES), summary="Templates")
    async def list_templates(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> list[TemplateOut]:
        async with read_sessions() as session:
            return [_template_out(t) for t in await service.list_templates(session)]


class MessageController(Controller):
    path = "/api/messages"
    tags = ["messaging"]

    @get("/", opt=requires(*READ_ROLES), summary="The send log, per member and per flow or campaign")
    async def list_messages(
        self,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        member_id: QueryId = None,
        flow: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        order_id: QueryId = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
        offset: QueryOffset = 0,
    ) -> list[MessageOut]:
        if flow and "." not in flow:
            flow = f"flow.{flow}" if flow in flows.FLOWS else f"campaign.{flow}"
        query = service.MessageQuery(member_id, flow, status, order_id, limit, offset)
        async with read_sessions() as session:
            return [_message_out(m) for m in await service.list_messages(session, query)]

    @get("/{message_id:int}", opt=requires(*READ_ROLES), summary="One message")
    async def get_message(
        self, message_id: PathId, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> MessageOut:
        async with read_sessions() as session:
            return _message_out(await service.get_message(session, message_id))

    @post(
        "/settle",
        opt=requires(*WRITE_ROLES),
        status_code=200,
        summary="Settle in-doubt messages as sent, failed or to resend (audited)",
        description="A message is `in_doubt` when its request may have reached the gateway and no answer came "
        "(a timeout; for a multi-recipient batch, every message of it); the dispatcher never sends it again and "
        "only a delivery report settled it. Say what the gateway's console or the member shows: `sent`, "
        "`failed` (not sent again) or `resend` (queued again now, through the contact policy), which needs "
        "`resend_confirmed: true` since the member may then get it twice (422 `resend_not_confirmed` "
        "without). All the messages are settled or none: 404 for an unknown one, 409 for one no longer in "
        "doubt (`not_in_doubt`). Each is audited as `message.settle` with the note.",
    )
    async def settle_messages(
        self,
        data: JSONBody[SettleIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
    ) -> SettleOut:
        async with transaction(sessions) as session:
            messages = await settle.settle_in_doubt(
                session,
                Actor.of(principal),
                data.message_ids,
                data.outcome,
                note=data.note,
                resend_confirmed=data.resend_confirmed,
                now=utcnow(),
            )
            out = SettleOut(data.outcome, [_message_out(m) for m in messages])
        return out

    @post(
        "/campaign-sends",
        opt=requires(*WRITE_ROLES),
        status_code=202,
        summary="Queue a marketing send to members; each member gets it at most once per campaign",
    )
    async def campaign_send(
        self, data: JSONBody[CampaignSendIn], sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> CampaignSendOut:
        if len(data.member_ids) > MAX_CAMPAIGN_MEMBERS:
            raise Unprocessable(f"at most {MAX_CAMPAIGN_MEMBERS} members per request")
        try:
            points = holdout.basis_points(data.holdout_percent)
        except ValueError as exc:
            raise Unprocessable(str(exc)) from exc
        flow = f"campaign.{data.campaign}"
        targets = [
            service.Target(m, held_out=holdout.in_holdout(flow, m, points, data.holdout_seed))
            for m in dict.fromkeys(data.member_ids)
        ]
        async with transaction(sessions) as session:
            template = await service.get_template(session, data.template)
            queued = await service.queue_messages(
                session, flow, template, [t for t in targets if not t.held_out], not_before=data.not_before
            )
            held = await service.queue_messages(
                session, flow, template, [t for t in targets if t.held_out], not_before=data.not_before
            )
            await request_dispatch(session, data.not_before or utcnow())
        return CampaignSendOut(flow, len(data.member_ids), queued + held, held)

    @get(
        "/campaigns/{campaign:str}",
        opt=requires(*READ_ROLES),
        summary="A campaign's send log by status, with its hold-out (control) and treatment counts",
    )
    async def campaign_status(
        self, campaign: FromPath[str], read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> CampaignStatusOut:
        async with read_sessions() as session:
            status = await service.campaign_status(session, f"campaign.{campaign}")
        return CampaignStatusOut(
            status.flow, status.statuses, status.assigned_holdout, status.held_out, status.treatment_reached
        )


class CareFlowController(Controller):
    path = "/api/care-flows"
    tags = ["messaging"]

    @get("/", opt=requires(*READ_ROLES), summary="Each care flow: messages by status, and its outcome")
    async def report(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> list[FlowReportOut]:
        async with read_sessions() as session:
            return [
                FlowReportOut(
                    r.flow,
                    r.title,
                    r.configured,
                    r.statuses,
                    r.reminded_orders,
                    r.paid_after_reminder,
                    r.recovered_fen,
                )
                for r in await flows.reports(session)
            ]

    @get("/configs", opt=requires(*READ_ROLES), summary="Care-flow configurations")
    async def configs(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> list[FlowConfigOut]:
        async with read_sessions() as session:
            return [_config_out(c) for c in await flows.list_configs(session)]

    @put(
        "/{flow:str}",
        opt=requires(*WRITE_ROLES),
        summary="Configure a flow (default or per channel account; audited)",
    )
    async def configure(
        self,
        flow: FromPath[str],
        data: JSONBody[FlowConfigIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
    ) -> FlowConfigOut:
        async with transaction(sessions) as session:
            account_id = None
            if data.channel_account:
                account_id = (await get_channel_account(session, data.channel_account)).id
            config = await flows.configure(
                session,
                flow,
                template=data.template,
                channel_account_id=account_id,
                enabled=data.enabled,
                delay_seconds=data.delay_seconds,
                actor=Actor.of(principal),
            )
        return _config_out(config)


CONTROLLERS = (MessengerAccountController, TemplateController, MessageController, CareFlowController)
