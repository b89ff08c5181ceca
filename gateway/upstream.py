"""The one upstream HTTP client (created in the lifespan, closed there) behind a tiny interface.

aiohttp streams the response body as it arrives and closes the connection when asked, which is how
a client disconnect stops the engine's work. (httpx was measured against it and dropped: it
took 5–9× more gateway CPU per proxied request.)

``UpstreamError.sent`` says whether the engine may have received the request: only a request
that surely never reached it (connection refused, connect timeout) may be sent again elsewhere;
anything later (read timeout, connection dropped after the write) could have run already, so the
proxy answers it and bills the prompt instead of running it twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

if TYPE_CHECKING:
    from gateway.config import GatewaySettings


class UpstreamError(Exception):
    """Talking to the worker failed (before a response started, or while reading its body)."""

    def __init__(self, message: str, *, sent: bool = True, timeout: bool = False):
        super().__init__(message)
        self.sent = sent  # False only when the request surely never reached the engine
        self.timeout = timeout


class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]

    def chunks(self) -> AsyncIterator[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    async def read(self) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class _AiohttpResponse(UpstreamResponse):
    def __init__(self, response):
        self._r = response
        self.status = response.status
        self.headers = [(k.lower(), v) for k, v in response.raw_headers]

    async def chunks(self) -> AsyncIterator[bytes]:
        readany = self._r.content.readany  # iter_any() without its iterator object on every read
        try:
            while chunk := await readany():
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # aiohttp raises a lost connection before handing over what it had already received,
            # so an engine that died after sending six chunks could reach the client as one.
            rest = _unread(self._r.content)
            if rest:
                yield rest
            raise _aiohttp_error(exc) from exc

    async def read(self) -> bytes:
        try:
            return await self._r.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _aiohttp_error(exc) from exc

    async def close(self) -> None:
        # close(), not release(): an unfinished stream must drop the connection so vLLM aborts.
        if not self._r.closed:
            self._r.close()


def _unread(content) -> bytes:
    """The bytes aiohttp's reader holds but has not returned (its buffer is not public API)."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    data = b"".join(buffer)[getattr(content, "_buffer_offset", 0) :]
    buffer.clear()
    return data


def _aiohttp_error(exc: BaseException) -> UpstreamError:
    # Connector errors and connect timeouts happen before a byte of the request is written.
    never_sent = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    timeout = isinstance(exc, TimeoutError) and not never_sent
    return UpstreamError(str(exc) or type(exc).__name__, sent=not never_sent, timeout=timeout)


class AiohttpUpstream:
    def __init__(self, settings):
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self._urls: dict[str, URL] = {}

    _URLS_KEPT = 4096

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes) -> UpstreamResponse:
        # Parsing the URL (yarl) is a visible part of aiohttp's per-request cost; the same few
        # worker URLs and paths come back on every request.
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= self._URLS_KEPT:
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        try:
            response = await self.session.request(method, parsed, headers=headers, data=body)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _aiohttp_error(exc) from exc
        return _AiohttpResponse(response)

    async def get_text(self, url: str, api_key: str, *, limit_s: float) -> str:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with self.session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=limit_s)
        ) as response:
            return await response.text()

    async def post_json(self, url: str, api_key: str, body: bytes, *, limit_s: float):
        """A small JSON call beside the request path (``/tokenize``); None when it fails."""
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        try:
            async with self.session.post(
                url, headers=headers, data=body, timeout=aiohttp.ClientTimeout(total=limit_s)
            ) as response:
                return await response.json(content_type=None) if response.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    async def close(self) -> None:
        await self.session.close()


def make_upstream(settings: GatewaySettings) -> AiohttpUpstream:
    return AiohttpUpstream(settings)
