"""Quotas hold under concurrency: atomic Lua admission, leases, settlement to actual tokens."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from berth.redis import names
from models_registry import mirror as registry_mirror
from tests.gateway.conftest import make_key, make_tenant, register_model, set_routes
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db
HI = [{"role": "user", "content": "hi"}]


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
    redis_client.set(names().spend_blocked(tenant.pk), "1")
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


def test_the_reservation_covers_every_generated_sequence(gateway, engines, redis_client):
    tpm = 1_000_000
    tenant = make_tenant(tokens_per_minute=tpm)
    model = register_model(redis_client, engines)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    # "hi" in one message: a prompt estimate of 5 tokens; each choice may produce max_tokens.
    single = client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=10)
    several = client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=10, n=3)
    first = int(single.headers["x-ratelimit-remaining-tokens"])
    second = int(several.headers["x-ratelimit-remaining-tokens"])
    # The second admission's counter = the first request's settled usage + 5 + 3 × 10 (fixed
    # minute windows: a new minute may have begun between the two).
    settled = single.parse().usage.total_tokens
    assert first == tpm - (5 + 10)
    assert tpm - second in (5 + 3 * 10, settled + 5 + 3 * 10)
    completions = client.completions.with_raw_response.create(
        model=model, prompt="hi", max_tokens=10, n=2, best_of=4
    )
    used_before = settled + several.parse().usage.total_tokens
    held = tpm - int(completions.headers["x-ratelimit-remaining-tokens"])
    assert held in (1 + 4 * 10, used_before + 1 + 4 * 10)
    # A batch of prompts: n sequences for each ("hi", "hi": an estimate of 2 tokens).
    used_before += completions.parse().usage.total_tokens
    batch = client.completions.with_raw_response.create(model=model, prompt=["hi", "hi"], max_tokens=10, n=3)
    held = tpm - int(batch.headers["x-ratelimit-remaining-tokens"])
    assert held in (2 + 2 * 3 * 10, used_before + 2 + 2 * 3 * 10)


def test_without_max_tokens_the_reservation_is_the_models_context(gateway, engines, redis_client):
    tpm = 1_000_000
    tenant = make_tenant(tokens_per_minute=tpm)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    registered = ModelFactory(context_length=4096)
    assert registry_mirror.publish_model(registered)  # as the registry publishes it
    set_routes(redis_client, registered.name, engines)
    first = client.chat.completions.with_raw_response.create(model=registered.name, messages=HI, n=2)
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == tpm - (5 + 2 * (4096 - 5))
    # A model whose context length the registry does not know: BERTH_GATEWAY_DEFAULT_MAX_TOKENS.
    unknown = ModelFactory(context_length=None)
    assert registry_mirror.publish_model(unknown)
    set_routes(redis_client, unknown.name, engines)
    used = first.parse().usage.total_tokens
    second = client.chat.completions.with_raw_response.create(model=unknown.name, messages=HI)
    assert tpm - int(second.headers["x-ratelimit-remaining-tokens"]) in (5 + 1024, used + 5 + 1024)


def test_a_tokens_per_minute_limit_refuses_what_n_choices_could_exceed(gateway, engines, redis_client):
    tenant = make_tenant(tokens_per_minute=100)
    model = register_model(redis_client, engines)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=model, messages=HI, max_tokens=30, n=4)
    assert refused.value.code == "rate_limit_exceeded"
    assert "up to 125 tokens" in refused.value.message and "max_tokens" in refused.value.message
    assert client.chat.completions.create(model=model, messages=HI, max_tokens=30).choices
