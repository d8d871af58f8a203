"""The tongcrm plugin contract.

Every hook a plugin may implement is declared here, typed and documented. Hooks are synchronous: the
registration hooks return small frozen dataclasses (see :mod:`tongcrm.plugin.types`) carrying the async adapter
objects that do the work. Plugins implement them with :data:`hookimpl`::

    from tongcrm.plugin import hookimpl

    @hookimpl
    def channels() -> list[ChannelSpec]:
        return [ChannelSpec(name="youzan", ...)]

Plugins never receive a database session and never commit: the core owns every transaction.

Versioning follows the core's SemVer. New hooks and new opt-in arguments are minor changes; a hook is removed
only after it has warned (pluggy's ``warn_on_impl``) for at least one minor release.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from tongcrm.plugin.types import (
        ChannelSpec,
        DomainEvent,
        EntitlementProviderSpec,
        IdentityClaim,
        IdentityKindSpec,
        JobSpec,
        MemberMatch,
        MessengerSpec,
        MigrationLocation,
        ResolutionDecision,
        RouteSpec,
        SealedColumn,
    )

PROJECT = "tongcrm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``enqueue(job_name, payload, *, unique_key=None, delay_seconds=0)`` — the only effect an event handler may have.
Enqueue = Callable[..., None]

# -------------------------------------------------------------------------------------------------------------
# registration hooks (collect: every plugin's results are gathered and validated together)


@hookspec
def channels() -> Sequence[ChannelSpec]:
    """Sales channels this plugin connects (a shop platform, a store till).

    Channel names must be unique across all plugins; the core refuses to start on a clash and names both plugins.
    """
    raise NotImplementedError


@hookspec
def identity_kinds() -> Sequence[IdentityKindSpec]:
    """Identity claim kinds this plugin produces, beyond those declared on its channels.

    The core declares ``mobile`` itself. A claim of an undeclared kind is rejected at resolution time.
    """
    raise NotImplementedError


@hookspec
def messengers() -> Sequence[MessengerSpec]:
    """Messaging channels (SMS gateways, ...) that can deliver messages the contact policy allowed."""
    raise NotImplementedError


@hookspec
def entitlement_providers() -> Sequence[EntitlementProviderSpec]:
    """Fulfil tier benefits on a platform (e.g. issue a shop coupon). Fulfilment is idempotent by grant id."""
    raise NotImplementedError


@hookspec
def routes() -> Sequence[RouteSpec]:
    """Litestar handlers the plugin mounts on the app (a POS API, platform push callbacks, SMS receipts).

    Each handler declares who may call it with ``opt=requires(...)`` unless it is under a public path (see
    :class:`~tongcrm.plugin.types.RouteSpec`). ``RouteSpec.hot`` may name some of them to be answered before
    litestar in their plain case (:class:`~tongcrm.plugin.types.HotRouteSpec`, :mod:`tongcrm.api.hot`)."""
    raise NotImplementedError


@hookspec
def cli_commands() -> Sequence[click.Command]:
    """Extra ``tongcrm`` sub-commands. Names must not clash with core commands or other plugins' commands."""
    raise NotImplementedError


@hookspec
def migration_locations() -> Sequence[MigrationLocation]:
    """Folders of Alembic revisions that ship inside the plugin's wheel, each on its own branch label."""
    raise NotImplementedError


@hookspec
def jobs() -> Sequence[JobSpec]:
    """Background jobs of this plugin: the handlers of the jobs its event handlers ``enqueue``, and periodic work.

    A handler receives a :class:`~tongcrm.plugin.types.PluginJobContext` (the store facade, never a session).
    Job names are namespaced with the plugin's name and unique across the core and all plugins.
    """
    raise NotImplementedError


@hookspec
def sealed_columns() -> Sequence[SealedColumn]:
    """Columns of this plugin's tables that hold values sealed with ``PluginStore.seal`` (secrets, tokens).

    ``tongcrm keys rotate`` re-seals them under the current secret key and ``tongcrm keys status`` counts them, so
    an operator can retire an old key without breaking the plugin. A plugin that seals values and does not declare
    them finds them unreadable once the old key leaves ``TONGCRM_OLD_SECRET_KEYS``. Names are unique across
    plugins.
    """
    raise NotImplementedError


# -------------------------------------------------------------------------------------------------------------
# policy hooks


@hookspec(firstresult=True)
def resolve_member(
    claims: Sequence[IdentityClaim], matches: Sequence[MemberMatch]
) -> ResolutionDecision | None:
    """Decide which member a set of identity claims belongs to.

    ``matches`` lists the live members the claims already point at. Return ``None`` to let the next
    implementation decide; the core's default policy runs last (attach to the member a strong claim names,
    merge when strong claims name several, create when none matches).
    """
    raise NotImplementedError


# -------------------------------------------------------------------------------------------------------------
# domain events: delivered after commit from the outbox, at least once. Handlers must be idempotent by
# ``event.id`` and may only enqueue work (``enqueue``), which is written in the same transaction that records
# the delivery. A handler that raises is retried with backoff and parked with its error after the last attempt.


@hookspec
def member_created(event: DomainEvent, enqueue: Enqueue) -> None:
    """A new member was created (payload: ``member_id``, ``source``)."""


@hookspec
def order_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    """An order was created or moved forward (payload: ``order_id``, ``account_id``, ``channel``, ``external_id``,
    ``member_id``, ``status``, ``previous``, ``refunded_fen``, ``changed_at``: the platform's modified time)."""


@hookspec
def points_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    """A member's points balance changed (payload: ``member_id``, ``delta``, ``available``, ``pending``)."""


@hookspec
def tier_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    """A member changed tier (payload: ``member_id``, ``from``, ``to``, ``reason``)."""


@hookspec
def lifecycle_changed(event: DomainEvent, enqueue: Enqueue) -> None:
    """A member's derived lifecycle stage changed (payload: ``member_id``, ``from``, ``to``)."""


@hookspec
def members_merged(event: DomainEvent, enqueue: Enqueue) -> None:
    """Two members became one (payload: ``merge_id``, ``survivor_id``, ``absorbed_id``) or were split back."""


@hookspec
def message_status(event: DomainEvent, enqueue: Enqueue) -> None:
    """A message changed status (payload: ``message_id``, ``member_id``, ``status``, ``code``)."""


#: Names of the domain events; each is delivered through the hook of the same name.
EVENT_NAMES: frozenset[str] = frozenset(
    {
        "member_created",
        "order_changed",
        "points_changed",
        "tier_changed",
        "lifecycle_changed",
        "members_merged",
        "message_status",
    }
)
