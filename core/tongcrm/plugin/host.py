"""The plugin host: loads plugins, and is the only code that calls their hooks.

The rest of tongcrm asks the host ("which channels are there?") and gets validated, typed answers. Every
answer remembers which plugin gave it, so a clash or a bad result names the plugin that caused it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar, cast

import click
import pluggy

from tongcrm.errors import PluginError
from tongcrm.plugin import hookspecs
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
    validate_name,
)

ENTRY_POINT_GROUP = "tongcrm"
DISABLE_ENV = "TONGCRM_DISABLE_PLUGINS"
AUTOLOAD_ENV = "TONGCRM_DISABLE_PLUGIN_AUTOLOAD"

#: Core modules that implement hooks themselves (default policies, core identity kinds, core event handlers).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "tongcrm.identity.plugin",
    "tongcrm.messaging.plugin",
    "tongcrm.campaigns.plugin",
)

#: The builtin plugin whose ``resolve_member`` is the core resolution policy.
CORE_POLICY = "tongcrm.identity.plugin"

#: the key in a host's cache of hook answers under which :meth:`PluginHost.identity_kinds` keeps its answer
_IDENTITY_KINDS = "identity_kinds (by name)"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    builtin: bool


@dataclass(frozen=True, slots=True)
class Provided(Generic[T]):
    """A hook result together with the plugin that provided it."""

    plugin: str
    value: T


def disabled_from_env() -> frozenset[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(name.strip().lower() for name in raw.split(",") if name.strip())


def autoload_from_env() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes"}


class PluginHost:
    """Typed facade over the pluggy manager.

    ``autoload`` discovers plugins through the ``tongcrm`` entry-point group (first-party plugins use it too);
    tests pass ``autoload=False`` and register what they need. ``disabled`` names plugins that must not load,
    by default those in ``TONGCRM_DISABLE_PLUGINS``; a blocked plugin is not even imported.
    """

    def __init__(
        self,
        *,
        autoload: bool | None = None,
        disabled: Iterable[str] | None = None,
        builtins: bool = True,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self.disabled = frozenset(disabled) if disabled is not None else disabled_from_env()
        self._cache: dict[str, Any] = {}
        if builtins:
            for module_name in BUILTIN_PLUGINS:
                module = __import__(module_name, fromlist=["_"])
                self._register(module, module_name, "tongcrm", _core_version(), builtin=True)
        if autoload if autoload is not None else autoload_from_env():
            self.load_entrypoints()

    # ---------------------------------------------------------------------------------------------------------
    # loading

    def load_entrypoints(self) -> None:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            name = ep.name.lower()
            if name in self.disabled or name in self._info:
                continue
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {name!r} from distribution {dist!r} failed to load ({ep.value}): "
                    f"{type(exc).__name__}: {exc}. Fix or uninstall it, or block it with {DISABLE_ENV}={name}"
                ) from exc
            self._register(plugin, name, dist, version, builtin=False)

    def register(
        self, plugin: object, name: str, *, distribution: str = "(registered)", version: str = ""
    ) -> None:
        """Register a plugin object (a module or an instance with hookimpls); tests use this."""
        name = name.lower()
        if name in self.disabled:
            return
        self._register(plugin, name, distribution, version, builtin=False)

    def unregister(self, name: str) -> None:
        self._pm.unregister(name=name)
        self._info.pop(name, None)
        self._cache.clear()

    def _register(self, plugin: object, name: str, dist: str, version: str, *, builtin: bool) -> None:
        if name in self._info:
            raise PluginError(
                f"plugin name {name!r} is used by both {self._info[name].distribution!r} and {dist!r}"
            )
        try:
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self._pm.has_plugin(name):
                self._pm.unregister(name=name)
            raise PluginError(
                f"plugin {name!r} from distribution {dist!r} does not fit the tongcrm hook contract: {exc}"
            ) from exc
        hooks = tuple(sorted(c.name for c in self._pm.get_hookcallers(plugin) or ()))
        self._info[name] = PluginInfo(name, dist, version, hooks, builtin)
        self._cache.clear()

    def plugins(self, *, include_builtin: bool = False) -> list[PluginInfo]:
        return [i for i in self._info.values() if include_builtin or not i.builtin]

    # ---------------------------------------------------------------------------------------------------------
    # collecting registration hooks

    def _collect(self, hook_name: str, expected: type[T] | tuple[type, ...]) -> list[Provided[T]]:
        if hook_name in self._cache:
            return list(self._cache[hook_name])
        caller = getattr(self._pm.hook, hook_name)
        out: list[Provided[T]] = []
        for impl in caller.get_hookimpls():  # registration order
            try:
                results = impl.function()
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} failed in hook {hook_name!r}: {exc}") from exc
            if results is None:
                continue
            if isinstance(results, (str, bytes)) or not isinstance(results, Iterable):
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: hook {hook_name!r} must return a list, got {type(results).__name__}"
                )
            for value in results:
                if not isinstance(value, expected):
                    raise PluginError(
                        f"plugin {impl.plugin_name!r}: hook {hook_name!r} returned {type(value).__name__}, "
                        f"expected {_type_names(expected)}"
                    )
                out.append(Provided(impl.plugin_name, cast(T, value)))
        self._cache[hook_name] = out
        return list(out)

    def _unique(
        self, hook_name: str, items: Sequence[Provided[T]], key: Callable[[T], str], what: str
    ) -> dict[str, T]:
        seen: dict[str, str] = {}
        result: dict[str, T] = {}
        for item in items:
            name = key(item.value)
            if name in seen:
                raise PluginError(
                    f"{what} {name!r} is registered by both plugin {seen[name]!r} and {item.plugin!r}"
                )
            seen[name] = item.plugin
            result[name] = item.value
        return result

    def channels(self) -> dict[str, ChannelSpec]:
        return self._unique("channels", self._collect("channels", ChannelSpec), lambda c: c.name, "channel")

    def channel(self, name: str) -> ChannelSpec:
        channels = self.channels()
        if name not in channels:
            known = ", ".join(sorted(channels)) or "none installed"
            raise PluginError(f"no channel named {name!r} (installed channels: {known})")
        return channels[name]

    def identity_kinds(self) -> dict[str, IdentityKindSpec]:
        """Every identity kind, by name: the plugins' own and their channels'. Kept until a plugin is
        registered or removed (as the hooks' answers are): a till's receipt asks for them once or twice, and
        collecting and checking them again cost ~11 µs each time (issue #22). A copy, which callers may
        change."""
        kinds: dict[str, IdentityKindSpec] | None = self._cache.get(_IDENTITY_KINDS)
        if kinds is None:
            items = list(self._collect("identity_kinds", IdentityKindSpec))
            for provided in self._collect("channels", ChannelSpec):
                items.extend(Provided(provided.plugin, kind) for kind in provided.value.identity_kinds)
            kinds = self._cache[_IDENTITY_KINDS] = self._unique(
                "identity_kinds", items, lambda k: k.name, "identity kind"
            )
        return dict(kinds)

    def messengers(self) -> dict[str, MessengerSpec]:
        return self._unique(
            "messengers", self._collect("messengers", MessengerSpec), lambda m: m.name, "messenger"
        )

    def entitlement_providers(self) -> dict[str, EntitlementProviderSpec]:
        items = self._collect("entitlement_providers", EntitlementProviderSpec)
        return self._unique("entitlement_providers", items, lambda p: p.name, "entitlement provider")

    def routes(self) -> list[Provided[RouteSpec]]:
        return self._collect("routes", RouteSpec)

    def cli_commands(self, reserved: Iterable[str] = ()) -> list[click.Command]:
        items = self._collect("cli_commands", click.Command)
        owners = {name: "tongcrm" for name in reserved}
        for item in items:
            cmd_name = item.value.name or ""
            if cmd_name in owners:
                raise PluginError(
                    f"command {cmd_name!r} is registered by both {owners[cmd_name]!r} and plugin {item.plugin!r}"
                )
            owners[cmd_name] = item.plugin
        return [item.value for item in items]

    def jobs(self) -> dict[str, JobSpec]:
        return self._unique("jobs", self._collect("jobs", JobSpec), lambda j: j.name, "job")

    def migration_locations(self) -> list[MigrationLocation]:
        items = self._collect("migration_locations", MigrationLocation)
        return list(
            self._unique("migration_locations", items, lambda m: m.branch_label, "migration branch").values()
        )

    def sealed_columns(self) -> list[SealedColumn]:
        items = self._collect("sealed_columns", SealedColumn)
        return list(self._unique("sealed_columns", items, lambda s: s.name, "sealed column").values())

    # ---------------------------------------------------------------------------------------------------------
    # policy and events

    def resolution_is_core(self) -> bool:
        """Whether the core policy (:func:`tongcrm.identity.plugin.default_decision`) alone decides
        ``resolve_member``: no other plugin implements it. A caller that would ask the policy once per row about
        claims whose answer that policy gives without weighing (every claim stored, one member named) may then
        take the answer as given — a bulk import asked it 100,000 times through pluggy (#22)."""
        key = "resolve_member:core"
        if key not in self._cache:
            impls = self._pm.hook.resolve_member.get_hookimpls()
            self._cache[key] = all(impl.plugin_name == CORE_POLICY for impl in impls)
        return bool(self._cache[key])

    def resolve_member(
        self, claims: Sequence[IdentityClaim], matches: Sequence[MemberMatch]
    ) -> ResolutionDecision | None:
        decision = self._pm.hook.resolve_member(claims=claims, matches=matches)
        if decision is not None and not isinstance(decision, ResolutionDecision):
            raise PluginError(
                f"resolve_member returned {type(decision).__name__}, expected ResolutionDecision"
            )
        return decision

    def event_handlers(self, event_name: str) -> list[tuple[str, Callable[..., Any]]]:
        """(plugin name, handler) for every plugin that implements the event's hook, in registration order."""
        if event_name not in hookspecs.EVENT_NAMES:
            raise PluginError(f"unknown domain event {event_name!r}")
        caller = getattr(self._pm.hook, event_name)
        return [(impl.plugin_name, impl.function) for impl in caller.get_hookimpls()]

    @staticmethod
    def call_event_handler(
        handler: Callable[..., Any], event: DomainEvent, enqueue: hookspecs.Enqueue
    ) -> Any:
        """Call one handler with the arguments it asked for (pluggy lets an impl take a subset)."""
        params = _argnames(handler)
        kwargs: dict[str, Any] = {}
        if "event" in params:
            kwargs["event"] = event
        if "enqueue" in params:
            kwargs["enqueue"] = enqueue
        return handler(**kwargs)


def _argnames(func: Callable[..., Any]) -> tuple[str, ...]:
    code = getattr(func, "__code__", None)
    if code is None:
        return ("event", "enqueue")
    return tuple(code.co_varnames[: code.co_argcount])


def _type_names(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _core_version() -> str:
    try:
        return metadata.version("tongcrm")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0+unknown"


__all__ = ["ENTRY_POINT_GROUP", "PluginHost", "PluginInfo", "Provided", "validate_name"]
