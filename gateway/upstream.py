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

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import httptools
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


# ---------------------------------------------------------------------------------------------
# The hot path's client: HTTP/1.1 on raw asyncio protocols, parsed by httptools.
#
# aiohttp's request machinery (URL and header objects, tracing hooks, the connector, a stream
# reader with its own timeout rescheduling, an async iterator per read) was the largest single
# item in the gateway's flame graph after the server itself (issue 20). For plain-HTTP workers the
# gateway instead writes the request as one buffer on a pooled keep-alive connection and hands
# the body over as it arrives: a streamed chunk costs one parser callback and one future.
# Semantics are aiohttp's as the proxy relies on them: ``UpstreamError.sent`` is False only when
# the connection could not be opened, a read waits at most ``read_timeout`` seconds for the next
# bytes, bytes received before a broken connection are handed over before the error, and
# ``close()`` on an unfinished response drops the connection (so the engine aborts). HTTPS
# workers and the small calls beside the request path (``get_text``, ``post_json``) stay on
# aiohttp.

_HIGH_WATER = 1 << 20  # stop reading from the engine while this much is waiting for the client


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "parser", "response", "key", "lost", "_headers")

    def __init__(self, key: tuple[str, int]):
        self.key = key
        # Set by connection_made, which runs before create_connection hands the protocol over.
        self.transport: asyncio.Transport
        self.parser: Any = None
        self.response: _RawResponse | None = None
        self.lost = False
        self._headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(self, response: _RawResponse) -> None:
        self.response = response
        self._headers = []
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # bytes on an idle connection: not HTTP we understand
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.response is not None:
                self.response._fail(UpstreamError(f"malformed answer from the engine: {exc}"))
            self.transport.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None:
            response._headers_done(
                self.parser.get_status_code(), self._headers, self.parser.should_keep_alive()
            )

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None:
            response._complete()

    def connection_lost(self, exc) -> None:
        self.lost = True
        response = self.response
        if response is not None:
            response._lost(exc)


class _RawResponse(UpstreamResponse):
    def __init__(self, client: RawUpstream, conn: _Conn, read_timeout: float):
        self._client = client
        self._conn = conn
        self._timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._error: UpstreamError | None = None
        self._done = False  # the whole body arrived
        self._closed = False
        self._keep_alive = False
        self._until_close = False  # no length and not chunked: the body ends with the connection
        self.status = 0
        self.headers = []

    # --- from the protocol
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers_done(self, status: int, headers: list, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self._keep_alive = keep_alive
        names = {name for name, _ in headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def _feed(self, body: bytes) -> None:
        self._buffer.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER:
            self._conn.transport.pause_reading()
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _lost(self, exc) -> None:
        if self._done:
            return
        if self.status and self._until_close and exc is None:
            self._done = True
            self._keep_alive = False
            self._wake()
            return
        self._fail(UpstreamError(f"Server disconnected: {exc}" if exc else "Server disconnected"))

    # --- for the proxy
    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._timeout, self._expired, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expired(self, waiter: asyncio.Future) -> None:
        if not waiter.done():
            self._fail(UpstreamError("timed out waiting for the engine", timeout=True))

    async def _head(self) -> None:
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    def _take(self) -> bytes:
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        if self._buffered > _HIGH_WATER and not self._conn.lost:
            self._conn.transport.resume_reading()
        self._buffered = 0
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._buffer:
                yield self._take()
            elif self._done:
                self._release()
                return
            elif self._error is not None:
                self._release()
                raise self._error
            else:
                await self._wait()

    async def read(self) -> bytes:
        parts = []
        async for chunk in self.chunks():
            parts.append(chunk)
        return b"".join(parts)

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        conn.response = None
        conn.parser = None
        if self._done and self._keep_alive and not conn.lost:
            self._client._idle(conn)
        else:
            conn.transport.close()
        self._client._slots.release()

    async def close(self) -> None:
        # An unfinished answer drops the connection (the engine aborts); a finished one goes back
        # to the pool.
        if not self._done:
            self._keep_alive = False
            # A reader waiting on this answer (the stream loop, when a disconnect watcher closes
            # it) fails now, as aiohttp's reader does, instead of waiting out the read timeout.
            self._fail(UpstreamError("Connection closed"))
        self._release()


class RawUpstream(AiohttpUpstream):
    """aiohttp's session for HTTPS and the side calls; raw HTTP/1.1 for ``send`` to http:// workers."""

    def __init__(self, settings):
        super().__init__(settings)
        self._connect_timeout = settings.connect_timeout
        self._read_timeout = settings.read_timeout
        self._pool: dict[tuple[str, int], list[_Conn]] = {}
        self._targets: dict[str, Any] = {}
        self._slots = asyncio.Semaphore(settings.max_connections)

    def _target(self, url: str) -> tuple[tuple[str, int], bytes, bytes] | None:
        """(host, port), the request target and the Host header of a URL; None unless plain HTTP."""
        found = self._targets.get(url, False)
        if found is False:
            parsed = URL(url)
            if parsed.scheme != "http" or not parsed.host:
                found = None
            else:
                port = parsed.port or 80
                target = parsed.raw_path_qs.encode("latin-1") or b"/"
                host = f"{parsed.raw_host}:{port}".encode("latin-1")
                found = ((str(parsed.raw_host), port), target, host)
            if len(self._targets) >= self._URLS_KEPT:
                self._targets.clear()
            self._targets[url] = found
        return found

    def _idle(self, conn: _Conn) -> None:
        self._pool.setdefault(conn.key, []).append(conn)

    async def _connection(self, key: tuple[str, int]) -> _Conn:
        idle = self._pool.get(key)
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(key), key[0], key[1]), self._connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                f"Cannot connect to {key[0]}:{key[1]}: {exc or type(exc).__name__}", sent=False
            ) from exc
        return conn

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes) -> UpstreamResponse:
        # HTTPS, and a body streamed as it arrives (a file upload relayed to the control plane),
        # go through aiohttp; the raw path writes a request in one piece.
        target = self._target(url) if isinstance(body, bytes | bytearray) else None
        if target is None:
            return await super().send(method, url, headers, body)
        key, path, host = target
        await self._slots.acquire()
        try:
            conn = await self._connection(key)
        except BaseException:
            self._slots.release()
            raise
        response = _RawResponse(self, conn, self._read_timeout)
        conn.start(response)
        head = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), path, host)]
        for name, value in headers.items():
            if name.lower() == "content-length":  # written below, once: two would be a bad request
                continue
            head.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        conn.transport.write(b"".join(head) + body)
        try:
            await response._head()
        except BaseException:
            await response.close()
            raise
        return response

    async def close(self) -> None:
        for conns in self._pool.values():
            for conn in conns:
                conn.transport.close()
        self._pool.clear()
        await super().close()


def make_upstream(settings: GatewaySettings) -> AiohttpUpstream:
    return RawUpstream(settings)
