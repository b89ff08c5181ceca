"""Billing the streams of a gateway that died (SIGKILL, OOM) from their last usage checkpoint.

A gateway checkpoints each stream's delivered usage in Redis (``gateway/metering.py``: hash
``usage_ckpt`` by request id, sorted set ``usage_ckpt_due`` scored by the time after which the
checkpoint counts as abandoned, pushed forward by the live gateway's heartbeat). Its final usage
event removes the checkpoint in the same Lua script, so a checkpoint still present after its due
time belongs to a stream that never closed.

``bill_lost_streams`` moves each such checkpoint into the usage stream with one Lua script per
checkpoint — check it is still due, ``XADD`` it, delete it — so of two consumers racing for it only
one moves it (the atomic claim), and the unique ``request_id`` in PostgreSQL drops any second
event for the same request (the backstop). The usage consumer then ingests it like any other
event: status ``gateway_lost``, ``usage_source`` ``checkpoint``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from berth.redis import get_redis, rkey
from gateway.metering import CHECKPOINT_DUE, CHECKPOINT_HASH, USAGE_STREAM

logger = logging.getLogger(__name__)

# KEYS: due set, checkpoint hash, usage stream; ARGV: request id, now (epoch ms).
_CLAIM = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then
  return 0
end
local event = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if not event then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'e', event)
return 1
"""


def bill_lost_streams(
    *, client: redis.Redis | None = None, now_ms: int | None = None, limit: int = 500
) -> int:
    """Move every abandoned checkpoint into the usage stream; returns how many were moved."""
    client = client or get_redis()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    due_key, hash_key, stream = rkey(CHECKPOINT_DUE), rkey(CHECKPOINT_HASH), rkey(USAGE_STREAM)
    claim = client.register_script(_CLAIM)
    moved = 0
    due: Any = client.zrangebyscore(due_key, "-inf", now_ms, start=0, num=limit)
    for request_id in due:
        if claim(keys=[due_key, hash_key, stream], args=[request_id, now_ms], client=client):
            moved += 1
    if moved:
        logger.warning("billed %s stream(s) of a dead gateway from their last checkpoint", moved)
    return moved
