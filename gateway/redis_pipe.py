"""An auto-pipelining Redis connection for the two hot-path round trips of every request.

redis-py's asyncio client costs ~50–80 µs of Python per command (pool checkout, packing,
parsing), the largest single item in the gateway's CPU profile. The admission script and the
usage ``XADD`` + settlement script are instead sent here: every command issued during one event
loop iteration, from any number of concurrent requests, goes out in ONE write on ONE connection
(packed by hiredis), and replies are matched in order (Redis answers in order) as hiredis parses
them. Everything else (caches, pub/sub, scans) keeps using redis-py.

Failure handling: a lost connection fails every pending command with ``ConnectionError`` and the
next command reconnects; a watchdog aborts the connection when the oldest pending command has
waited longer than ``timeout`` seconds. Error replies are returned as ``hiredis.ReplyError``
instances (not raised), so a caller can handle ``NOSCRIPT`` per command.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What "Redis is not there right now" looks like from redis-py, this pipe (builtin
# ConnectionError, a refused or timed-out connect) and the socket underneath.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: RedisPipe):
        self.owner = owner
        self.reader = hiredis.Reader()
        # Set by connection_made, which runs before create_connection hands the protocol over.
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.owner._pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = pending.popleft()[0]
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.owner._lost(self, exc)


class RedisPipe:
    def __init__(self, url: str, *, timeout: float = 5.0):
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", ""):
            raise ValueError("the hot-path Redis connection supports redis:// URLs only")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.db = int(parsed.path.lstrip("/") or 0) if parsed.path not in ("", "/") else 0
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._pending: deque[tuple[asyncio.Future, float]] = deque()
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port), self.timeout
            )
            self._protocol = protocol
            setup: list[tuple[object, ...]] = []
            if self.password:
                setup.append(
                    ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                )
            if self.db:
                setup.append(("SELECT", self.db))
            for reply in await self.execute(*setup) if setup else ():
                if isinstance(reply, hiredis.ReplyError):
                    protocol.transport.close()
                    raise ConnectionError(f"Redis refused the connection set-up: {reply}")
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch())
            return protocol

    def _lost(self, protocol: _Protocol, exc) -> None:
        if self._protocol is protocol:
            self._protocol = None
        error = ConnectionError(f"Redis connection lost: {exc or 'closed'}")
        while self._pending:
            future = self._pending.popleft()[0]
            if not future.done():
                future.set_exception(error)
        self._buffer.clear()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 2))
            protocol = self._protocol
            if (
                protocol is not None
                and self._pending
                and time.monotonic() - self._pending[0][1] > self.timeout
            ):
                protocol.transport.abort()

    def _flush(self) -> None:
        self._flush_scheduled = False
        protocol = self._protocol
        if protocol is None or not self._buffer:
            return
        protocol.transport.write(b"".join(self._buffer))
        self._buffer.clear()

    async def execute(self, *commands: tuple) -> list:
        """Send commands (tuples of arguments) and return their replies, in order."""
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for command in commands:
            future = loop.create_future()
            self._pending.append((future, now))
            self._buffer.append(hiredis.pack_command(command))
            futures.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        del protocol
        return [await future for future in futures]

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._protocol is not None:
            self._protocol.transport.close()
            self._protocol = None


class RedisPyPipe:
    """The same ``execute`` on redis-py (for ``rediss://`` and other URLs the pipe does not speak)."""

    def __init__(self, redis):
        self.redis = redis

    async def execute(self, *commands: tuple) -> list:
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)

    async def close(self) -> None:
        return None


def is_unavailable(reply) -> bool:
    """A reply or error that means "Redis is not there right now", not "this command is wrong"."""
    if isinstance(reply, REDIS_DOWN):
        return True
    return isinstance(reply, Exception) and str(reply).startswith(("LOADING", "TRYAGAIN", "MASTERDOWN"))


def is_noscript(reply) -> bool:
    return isinstance(reply, Exception) and (
        str(reply).startswith("NOSCRIPT") or type(reply).__name__ == "NoScriptError"
    )


def make_pipe(url: str, redis, *, timeout: float = 5.0):
    try:
        return RedisPipe(url, timeout=timeout)
    except ValueError:
        return RedisPyPipe(redis)
