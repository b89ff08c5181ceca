"""One Redis client per process for control-plane code (keys mirror, routing table, ...)."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings


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
