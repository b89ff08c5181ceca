"""Quotas hold under concurrency: atomic Lua admission, leases, settlement to actual tokens."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.gateway.conftest import make_key, make_tenant, register_model

pytestmark = pytest.mark.django_db


async def _burst(url: str, key: str, model: str, n: int, **body) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
        return await asyncio.gather(
            *(
                client.post(
                    url + "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {key}"}
                )
                for _ in range(n)
            )
        )


def test_it_never_admits_more_than_the_requests_per_minute(gateway, engines, redis_client):
    tenant = make_tenant(requests_per_minute=100)
    model = register_model(redis_client, engines)
    responses = asyncio.run(_burst(gateway.url, make_key(tenant), model, 500, max_tokens=1))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 100
    assert statuses.count(429) == 400
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1


def test_it_caps_concurrent_requests(gateway, engines, redis_client):
    tenant = make_tenant(max_concurrent_requests=5)
    engine = engines[0]
    model = register_model(redis_client, [engine])
    httpx.post(engine.url + "/_reset")
    responses = asyncio.run(_burst(gateway.url, make_key(tenant), model, 200, max_tokens=5, fake_delay=0.02))
    statuses = [r.status_code for r in responses]
    assert 5 <= statuses.count(200) < 200
    assert httpx.get(engine.url + "/_stats").json()["max_running"] <= 5
    # Leases are released: nothing is left in flight.
    again = asyncio.run(_burst(gateway.url, make_key(tenant), model, 5, max_tokens=1))
    assert [r.status_code for r in again] == [200] * 5


def test_it_reserves_and_settles_tokens_per_minute(gateway, engines, redis_client):
    tenant = make_tenant(tokens_per_minute=1000)
    model = register_model(redis_client, engines)
    responses = asyncio.run(_burst(gateway.url, make_key(tenant), model, 500, max_tokens=100))
    ok = [r for r in responses if r.status_code == 200]
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert ok and used <= 1000
    assert {r.json()["error"]["code"] for r in responses if r.status_code != 200} == {"rate_limit_exceeded"}
    assert ok[0].headers["x-ratelimit-limit-tokens"] == "1000"


def test_it_stops_at_the_monthly_token_budget(gateway, engines, redis_client):
    tenant = make_tenant(monthly_token_budget=300)
    model = register_model(redis_client, engines)
    key = make_key(tenant)
    statuses = []
    for _ in range(5):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
            headers={"authorization": f"Bearer {key}"},
        )
        statuses.append(response.status_code)
    assert statuses[:4] == [200] * 4  # 4 × (reserve 56) fits, settled to 4 × 52
    assert statuses[4] == 200 or response.json()["error"]["code"] == "insufficient_quota"
    for _ in range(3):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
            headers={"authorization": f"Bearer {key}"},
        )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"


def test_the_spend_limit_hook_refuses_with_insufficient_quota(gateway, engines, redis_client, settings):
    tenant = make_tenant()
    model = register_model(redis_client, engines)
    redis_client.set(f"{settings.REDIS_PREFIX}q:{{{tenant.pk}}}:spend_blocked", "1")
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {make_key(tenant)}"},
    )
    assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"


def test_it_recovers_when_redis_lost_its_scripts(gateway, engines, redis_client):
    tenant = make_tenant(max_concurrent_requests=2)
    model = register_model(redis_client, engines)
    key = make_key(tenant)
    redis_client.script_flush()
    for _ in range(3):  # would stall at 2 if a lease were never released
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200
        redis_client.script_flush()


def test_per_key_limits_apply_on_top_of_the_plan(gateway, engines, redis_client, settings):
    tenant = make_tenant(requests_per_minute=100)
    model = register_model(redis_client, engines)
    limited, free = make_key(tenant), make_key(tenant)
    # The mirror's optional per-key limits (same shape as the plan's).
    redis_client.hset(f"{settings.REDIS_PREFIX}apikey:{limited[9:21]}", "limits", '{"rpm": 2}')

    def call(key):
        return httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
            headers={"authorization": f"Bearer {key}"},
        ).status_code

    assert [call(limited) for _ in range(3)] == [200, 200, 429]
    assert [call(free) for _ in range(3)] == [200, 200, 200]
