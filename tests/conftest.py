"""Shared fixtures: real PostgreSQL (pytest-django's test database) and a real Redis.

Both come from ``DATABASE_URL``/``REDIS_URL`` when set, else from the embedded servers. Tests use
Redis database ``REDIS_TEST_DB`` (15 by default), flushed before every test, so a developer's
data in database 0 is never touched.
"""

from __future__ import annotations

import os

import pytest
import redis as redis_lib
from django.conf import settings

from berth.redis import get_redis

REDIS_TEST_DB = int(os.environ.get("REDIS_TEST_DB", "15"))


def _test_redis_url(url: str) -> str:
    base = url.split("?", 1)[0]
    scheme, _, rest = base.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{REDIS_TEST_DB}"


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    # PBKDF2's 1M iterations would dominate the suite; the hasher itself is Django's concern.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _use_test_redis_db():
    settings.REDIS_URL = _test_redis_url(settings.REDIS_URL)
    settings.CACHES["default"]["LOCATION"] = settings.REDIS_URL
    get_redis.cache_clear()
    yield
    get_redis.cache_clear()


@pytest.fixture(autouse=True)
def redis_client(_use_test_redis_db) -> redis_lib.Redis:
    client = get_redis()
    client.flushdb()
    return client
