"""One Redis client per process for control-plane code, and the Redis names under its prefix.

The names themselves are the contract's (``contract.redis_names``, which also describes the
layout); this module only supplies the prefix from ``settings.REDIS_PREFIX``.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis
from django.conf import settings

from contract import redis_names

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


def names() -> redis_names.RedisNames:
    """The contract's Redis names under this deployment's prefix (read on each call: tests and
    benchmarks change ``settings.REDIS_PREFIX``)."""
    return redis_names.RedisNames(settings.REDIS_PREFIX)


def mirror_write(write, *, invalidate: str, what: str) -> bool:
    """One atomic write to a Redis mirror of PostgreSQL, followed by an invalidation message.

    ``write(pipe)`` queues the commands; ``invalidate`` (a ``contract.invalidation`` message) is
    published on the invalidation channel so gateways drop their in-process copies. A Redis outage
    is logged, not raised: the caller's database change already committed, and the periodic resync
    repairs the mirror.
    """
    try:
        pipe = get_redis().pipeline(transaction=True)
        write(pipe)
        pipe.publish(names().invalidate_channel(), invalidate)
        pipe.execute()
    except redis.RedisError:
        logger.exception("could not mirror %s to Redis; the periodic resync will", what)
        return False
    return True
