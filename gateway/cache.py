"""The gateway's short-lived copies of what the control plane mirrors to Redis (keys, tenants,
models, routes), with one Redis read per entry however many requests miss it at once.

Without the single read, every request that arrives while an entry is being refreshed issues its
own read: a burst of a thousand streams after a one-second expiry asked Redis a thousand times at
once, emptied the connection pool and was answered 503. Here the first miss starts the read and
the others wait for its result.

An invalidation (``pop``) during a read lets that read finish for the requests already waiting on
it, but its result is not kept: the next request reads again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, *, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]], *, fresh: bool = False) -> V:
        if not fresh:
            hit = self._entries.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = pending
        # shield: one waiter cancelled (its client left) must not cancel the read the others share
        return await asyncio.shield(pending)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        started = time.monotonic()
        this = asyncio.current_task()
        try:
            value = await load()
        finally:
            mine = self._loading.get(key)
            if mine is not None and mine is this:
                del self._loading[key]
                keep = True
            else:
                keep = False  # invalidated while reading
        if keep:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (started, value)
        return value

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)
        self._loading.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()

    def __len__(self) -> int:
        return len(self._entries)
