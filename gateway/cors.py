"""CORS for browser clients of the gateway (the console's playground runs on another origin).

Allowed origins come from ``BERTH_GATEWAY_CORS_ORIGINS`` (comma-separated, ``*`` for any). A
request without an ``Origin`` header (every server-side client) gets no CORS work beyond one scan
of its header list. Keys travel in ``Authorization``, never in cookies, so credentials are not
allowed and the allowed origin is echoed back (with ``Vary: Origin``).
"""

from __future__ import annotations

ALLOW_METHODS = b"GET, POST, OPTIONS"
DEFAULT_ALLOW_HEADERS = b"authorization, content-type"
# Headers a browser script may read: the request id for support, and the quota headers.
EXPOSE_HEADERS = (
    b"x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
    b"x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
    b"x-ratelimit-reset-tokens"
)
MAX_AGE = b"600"
_MAX_REQUESTED_HEADERS = 1024


class Cors:
    """The allow list, parsed once at start-up."""

    __slots__ = ("any_origin", "origins", "enabled")

    def __init__(self, origins: list[str]):
        self.any_origin = "*" in origins
        self.origins = frozenset(o.rstrip("/").encode() for o in origins if o and o != "*")
        self.enabled = self.any_origin or bool(self.origins)

    def allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins

    @staticmethod
    def origin_of(scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"origin":
                return value
        return None

    def response_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", EXPOSE_HEADERS),
            (b"vary", b"Origin"),
        ]

    def preflight_headers(self, origin: bytes, scope) -> list[tuple[bytes, bytes]]:
        requested = DEFAULT_ALLOW_HEADERS
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers" and value and len(value) <= _MAX_REQUESTED_HEADERS:
                requested = value
                break
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", requested),
            (b"access-control-max-age", MAX_AGE),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]


class CorsSend:
    """Wraps ``send`` to add the CORS headers to the response start."""

    __slots__ = ("send", "headers")

    def __init__(self, send, headers: list[tuple[bytes, bytes]]):
        self.send = send
        self.headers = headers

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *self.headers]}
        await self.send(message)
