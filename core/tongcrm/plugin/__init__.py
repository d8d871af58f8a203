"""The plugin contract: hook markers, the types hooks return, and the host that calls them."""

from tongcrm.plugin.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
