"""One Redis client per process for control-plane code (keys mirror, routing table, ...)."""

from __future__ import annotations

import logging
from functools import lru_cache

import redis
from django.conf import settings

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )


def rkey(*parts: object) -> str:
    """Build a namespaced Redis key: ``rkey("key", "abc")`` -> ``berth:key:abc``."""
    return settings.REDIS_PREFIX + ":".join(str(part) for part in parts)


def mirror_write(write, *, invalidate: str, what: str) -> bool:
    """One atomic write to a Redis mirror of PostgreSQL, followed by an invalidation message.

    ``write(pipe)`` queues the commands; ``invalidate`` is published on the ``invalidate`` channel
    so gateways drop their in-process copies. A Redis outage is logged, not raised: the caller's
    database change already committed, and the periodic resync repairs the mirror.
    """
    try:
        pipe = get_redis().pipeline(transaction=True)
        write(pipe)
        pipe.publish(rkey("invalidate"), invalidate)
        pipe.execute()
    except redis.RedisError:
        logger.exception("could not mirror %s to Redis; the periodic resync will", what)
        return False
    return True
