"""Usage events and key last-use times, written to Redis by the gateway.

* ``usage`` — a Redis stream; one entry per admitted request, field ``e`` = JSON
  ``{"id", "t" (tenant), "k" (key id), "m" (model), "ep" (endpoint), "p", "c" (prompt/completion
  tokens), "s" (status), "h" (HTTP code), "l" (latency ms), "f" (TTFT ms or null), "w" (worker),
  "ts" (epoch ms)}``. It is written, together with the quota settlement, **before** the last bytes
  of the response leave, so a client that saw a complete answer is always billed for it. The
  consumer in ``billing/usage.py`` moves it to PostgreSQL.
* ``key_last_used`` — hash ``<key id>`` → epoch seconds, flushed by this gateway every few
  seconds; ``gateway.tasks.flush_key_last_used`` writes it to ``ApiKey.last_used_at``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from gateway.redis_pipe import is_noscript

logger = logging.getLogger("berth.gateway.metering")

USAGE_STREAM = "usage"
LAST_USED_HASH = "key_last_used"


class Metering:
    def __init__(self, redis, settings, quotas):
        self.redis = redis
        self.settings = settings
        self.quotas = quotas
        self.stream = settings.key(USAGE_STREAM)
        self.last_used: dict[str, int] = {}

    def touch(self, key_id: str) -> None:
        self.last_used[key_id] = int(time.time())

    async def record(self, event: dict, lease) -> None:
        """Append the usage event and settle the request's quota in one round trip."""
        commands = [("XADD", self.stream, "*", "e", orjson.dumps(event))]
        if lease is not None and not lease.settled:
            commands.append(
                self.quotas.settle_command(lease, prompt_tokens=event["p"], completion_tokens=event["c"])
            )
        results = await self.quotas.hot.execute(*commands)
        if isinstance(results[0], Exception):
            raise results[0]  # the usage event is what must not be lost: fail the request
        if len(results) > 1 and is_noscript(results[1]):
            await self.quotas.retry_settle(commands[1])
        elif len(results) > 1 and isinstance(results[1], Exception):
            logger.warning("quota settlement failed for %s: %s", event["id"], results[1])

    async def flush_last_used(self) -> None:
        if not self.last_used:
            return
        batch, self.last_used = self.last_used, {}
        await self.redis.hset(self.settings.key(LAST_USED_HASH), mapping=batch)

    async def run_background(self) -> None:
        while True:
            await asyncio.sleep(self.settings.last_used_flush_seconds)
            try:
                await self.flush_last_used()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not record key last-use times", exc_info=True)
