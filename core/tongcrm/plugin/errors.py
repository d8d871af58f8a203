"""Errors a channel or messenger adapter raises to tell the core what happened on the platform.

Adapters retry what is worth retrying themselves (a call limit with its ban time, a platform-side hiccup);
what they raise is what is left for the core to decide about.
"""

from __future__ import annotations


class ChannelError(Exception):
    """Base class for platform failures seen by an adapter. ``code`` is the platform's own code."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ChannelAuthError(ChannelError):
    """The account's authorisation is invalid or expired: stop syncing it until it is re-authorised."""


class ChannelUnavailable(ChannelError):
    """A transient failure that outlived the adapter's own retries; the core tries the page again later."""

    def __init__(self, message: str, *, code: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ChannelRequestError(ChannelError):
    """The platform refused the request for a reason retrying will not fix (a caller error, a business rule)."""


__all__ = ["ChannelAuthError", "ChannelError", "ChannelRequestError", "ChannelUnavailable"]
