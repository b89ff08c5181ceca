"""``GET /healthz`` reports PostgreSQL and Redis."""

from __future__ import annotations

import pytest

from berth.redis import get_redis

pytestmark = pytest.mark.django_db


def test_it_answers_200_when_database_and_redis_are_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]


def test_it_answers_503_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    try:
        response = client.get("/healthz")
    finally:
        get_redis.cache_clear()
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["database"]["ok"] is True


def test_it_answers_503_when_the_database_is_unreachable(client, monkeypatch):
    from django.db.backends.postgresql.base import DatabaseWrapper
    from django.db.utils import OperationalError

    def down(self, *args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(DatabaseWrapper, "cursor", down)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {"ok": False, "error": "OperationalError"}
