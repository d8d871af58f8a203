"""Responses for the hottest reads."""

from __future__ import annotations

from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send


class EncodedJSON(ASGIResponse):
    """A JSON answer (200 unless ``status`` says otherwise; ``content_type`` for another JSON media type, e.g. a
    problem's) whose body and extra headers are already bytes.

    litestar's own responses (this class's base included) collect their headers in a mutable header map and
    re-encode them on every response, which cost the member lookup about as much as decrypting the member's
    mobile. This one builds its headers once, from bytes. Return it from a handler annotated
    ``-> EncodedJSON`` and document the body with ``responses={200: ResponseSpec(...)}``.
    """

    __slots__ = ("_headers",)

    def __init__(
        self,
        body: bytes,
        *headers: tuple[bytes, bytes],
        status: int = 200,
        content_type: bytes = b"application/json",
    ) -> None:
        # the base's __init__ is the cost this class exists to avoid; set what its readers expect
        self.body = body
        self.status_code = status
        self.background = None
        self.is_head_response = False
        self._headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            *headers,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self._headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})

    async def send_adding(self, send: Send, header: tuple[bytes, bytes]) -> None:
        """As the response sends itself, with ``header`` after its own (the outer layer's request id, added
        here rather than by wrapping ``send`` to copy the start message)."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": [*self._headers, header]}
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": False})
