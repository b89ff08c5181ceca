"""Usage events and key last-use times, written to Redis by the gateway.

The event (``contract.usage``) is appended to the usage stream together with the quota
settlement, **before** the last bytes of the response leave, so a client that saw a complete
answer is always billed for it; ``billing.usage`` moves it to PostgreSQL. A long stream is also
checkpointed (what it delivered so far) every ``checkpoint_seconds`` or ``checkpoint_tokens``,
with a due time this gateway's heartbeat pushes forward while the stream lives. The final event
and the checkpoint's removal are one Lua script, so a stream is billed either by its final event
or, if the gateway died (SIGKILL, OOM), by ``billing.checkpoints`` moving the last checkpoint into
the stream — never both. Key last-use times are flushed to a hash every few seconds, for the
control plane to write to ``ApiKey.last_used_at``. Names: ``contract``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from contract.redis_names import RedisNames
from contract.usage import EVENT_FIELD, UsageEvent
from gateway.redis_pipe import REDIS_DOWN, is_noscript, is_unavailable

logger = logging.getLogger("berth.gateway.metering")

# KEYS: usage stream, checkpoint hash, due set; ARGV: event, request id.
FINAL_WITH_CHECKPOINT = """
redis.call('XADD', KEYS[1], '*', '%(field)s', ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
""" % {"field": EVENT_FIELD}  # noqa: UP031 - as the stream's readers expect


class Metering:
    def __init__(self, redis, settings, quotas):
        self.redis = redis
        self.settings = settings
        self.quotas = quotas
        self.names = RedisNames(settings.redis_prefix)
        self.stream = self.names.usage_stream()
        self.checkpoints = self.names.usage_checkpoints()
        self.checkpoints_due = self.names.usage_checkpoints_due()
        self.last_used: dict[str, int] = {}
        self.checkpointed: set[str] = set()  # request ids with a checkpoint in Redis

    def _due(self) -> int:
        return int((time.time() + self.settings.checkpoint_lost_after) * 1000)

    async def checkpoint(self, event: UsageEvent) -> None:
        """Store what a stream has delivered so far; billed only if this gateway dies."""
        snapshot = event.as_checkpoint()
        rid = snapshot.request_id
        self.checkpointed.add(rid)  # from now on the final event must remove it
        results = await self.quotas.hot.execute(
            ("HSET", self.checkpoints, rid, snapshot.encode()),
            ("ZADD", self.checkpoints_due, self._due(), rid),
        )
        for result in results:
            if isinstance(result, Exception):
                raise result

    def touch(self, key_id: str) -> None:
        self.last_used[key_id] = int(time.time())

    async def record(self, event: UsageEvent, lease) -> None:
        """Append the usage event and settle the request's quota in one round trip."""
        rid = event.request_id
        if rid in self.checkpointed:
            commands: list[tuple[object, ...]] = [
                (
                    "EVAL",
                    FINAL_WITH_CHECKPOINT,
                    3,
                    self.stream,
                    self.checkpoints,
                    self.checkpoints_due,
                    event.encode(),
                    rid,
                )
            ]
        else:
            commands = [("XADD", self.stream, "*", EVENT_FIELD, event.encode())]
        if lease is not None and not lease.settled:
            commands.append(
                self.quotas.settle_command(
                    lease,
                    prompt_tokens=event.prompt_tokens or 0,
                    completion_tokens=event.completion_tokens or 0,
                    cached_tokens=event.cached_tokens,
                )
            )
        try:
            results = await self._send_riding_out_outages(commands)
        finally:
            # Recorded, or else the last checkpoint is what gets billed: stop refreshing it.
            self.checkpointed.discard(rid)
        if isinstance(results[0], Exception):
            raise results[0]  # the usage event is what must not be lost: fail the request
        if len(results) > 1 and is_noscript(results[1]):
            await self.quotas.retry_settle(commands[1])
        elif len(results) > 1 and isinstance(results[1], Exception):
            logger.warning("quota settlement failed for %s: %s", rid, results[1])

    async def _send_riding_out_outages(self, commands: list[tuple]) -> list:
        """Send, retrying while Redis is unreachable or loading (a restart, a failover).

        The engine has done the work, so the usage event waits for Redis up to
        ``record_retry_seconds`` (the client's last bytes wait with it) rather than being lost. A
        retry after a reply that was lost in transit may append the event twice: the consumer keeps
        one per request id.
        """
        deadline = time.monotonic() + self.settings.record_retry_seconds
        delay = 0.05
        while True:
            try:
                results = await self.quotas.hot.execute(*commands)
                failure = results[0] if is_unavailable(results[0]) else None
            except (*REDIS_DOWN, RedisError) as exc:
                results, failure = [exc], exc
            if failure is None or time.monotonic() + delay > deadline:
                return results
            logger.warning("Redis unavailable while recording usage (%s); retrying", failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def flush_last_used(self) -> None:
        if not self.last_used:
            return
        batch, self.last_used = self.last_used, {}
        await self.redis.hset(self.names.key_last_used(), mapping=batch)

    async def heartbeat(self) -> None:
        """Keep this gateway's checkpoints from being billed as lost while their streams live."""
        if not self.checkpointed:
            return
        due = self._due()
        await self.redis.zadd(self.checkpoints_due, dict.fromkeys(self.checkpointed, due), xx=True)

    async def run_heartbeat(self) -> None:
        interval = min(self.settings.checkpoint_seconds, self.settings.checkpoint_lost_after / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not refresh usage checkpoints", exc_info=True)

    async def run_background(self) -> None:
        while True:
            await asyncio.sleep(self.settings.last_used_flush_seconds)
            try:
                await self.flush_last_used()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not record key last-use times", exc_info=True)
