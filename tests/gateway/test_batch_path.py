"""The gateway's batch path: batch lines sent by the runner on a tenant's behalf.

Only the internal token opens it (a tenant's own API key does not), the tenant comes from
``X-Berth-Tenant`` (suspended: 403), the line is metered under its own request id in tier
``batch`` with its batch id, the engine gets the batch priority, and its tokens count against the
plan's batch token budget, never against rpm or tpm.
"""

from __future__ import annotations

import secrets
import time

import httpx
import openai
import pytest

from berth.redis import names
from contract import tiers
from contract.usage import EVENT_FIELD, UsageEvent
from tenants import mirror
from tenants.models import TenantStatus
from tests.batches import conftest as batch_fixtures
from tests.batches.conftest import TOKEN
from tests.gateway.conftest import make_key, make_tenant, register_model
from tests.gateway.recording_engine import RecordingEngine

pytestmark = pytest.mark.django_db
batch_gateway = batch_fixtures.batch_gateway  # the gateway with the internal token set


def line_headers(tenant, batch_id: str, index: int, token: str | None = TOKEN) -> dict[str, str]:
    headers = {
        "X-Berth-Tenant": str(tenant.id),
        "X-Berth-Batch": batch_id,
        "X-Berth-Request-Id": f"{batch_id}_{index}",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def chat(model: str, words: int = 3) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
        "max_tokens": 4,
    }


def events(redis_client) -> dict[str, UsageEvent]:
    out = {}
    for _id, fields in redis_client.xrange(names().usage_stream()):
        event = UsageEvent.decode(fields.get(EVENT_FIELD, fields.get(EVENT_FIELD.encode())))
        out[event.request_id] = event
    return out


def test_only_the_internal_token_opens_the_batch_path(batch_gateway, engines, redis_client):
    tenant = make_tenant()
    api_key = make_key(tenant)
    model = register_model(redis_client, engines)
    batch_id = new_batch_id()
    url = batch_gateway.url + "/v1/chat/completions"
    refused = [
        httpx.post(url, json=chat(model), headers=line_headers(tenant, batch_id, 0, token=None)),
        httpx.post(url, json=chat(model), headers=line_headers(tenant, batch_id, 0, token=TOKEN[:-1] + "x")),
        httpx.post(url, json=chat(model), headers=line_headers(tenant, batch_id, 0, token=api_key)),
    ]
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert not redis_client.xlen(names().usage_stream())

    response = httpx.post(url, json=chat(model, words=5), headers=line_headers(tenant, batch_id, 7))
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == f"{batch_id}_7"
    event = events(redis_client)[f"{batch_id}_7"]
    assert event.service_tier == tiers.BATCH
    assert event.batch_id == batch_id
    assert event.tenant_id == str(tenant.id)
    assert event.key_id is None
    assert (event.prompt_tokens, event.completion_tokens) == (6, 4)


def test_malformed_batch_headers_and_unknown_or_suspended_tenants_are_refused(
    batch_gateway, engines, redis_client
):
    tenant = make_tenant()
    model = register_model(redis_client, engines)
    url = batch_gateway.url + "/v1/chat/completions"
    batch_id = new_batch_id()
    headers = line_headers(tenant, batch_id, 0)
    headers["X-Berth-Request-Id"] = new_batch_id() + "_0"  # another batch's id
    response = httpx.post(url, json=chat(model), headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_batch_headers"

    stranger = line_headers(tenant, batch_id, 0)
    stranger["X-Berth-Tenant"] = "00000000-0000-4000-8000-000000000000"
    assert httpx.post(url, json=chat(model), headers=stranger).status_code == 401

    tenant.status = TenantStatus.SUSPENDED
    tenant.save()
    mirror.publish_tenant(tenant)
    response = httpx.post(url, json=chat(model), headers=line_headers(tenant, batch_id, 1))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "organization_suspended"


def test_batch_tokens_count_against_the_batch_budget_not_rpm_or_tpm(batch_gateway, engines, redis_client):
    # One interactive request a minute and a token rate no batch line fits in.
    tenant = make_tenant(requests_per_minute=1, tokens_per_minute=100, monthly_batch_token_budget=60)
    model = register_model(redis_client, engines)
    url = batch_gateway.url + "/v1/chat/completions"
    batch_id = new_batch_id()
    month = time.strftime("%Y%m", time.gmtime())
    statuses = []
    for index in range(8):
        body = {**chat(model, words=9), "max_tokens": 5}  # 10 prompt + 5 completion tokens
        response = httpx.post(url, json=body, headers=line_headers(tenant, batch_id, index))
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "insufficient_quota"
            assert "batch token budget" in response.json()["error"]["message"]
    # 60 tokens: four lines of 15 (settled to the engine's count), then the budget is spent.
    assert statuses == [200] * 4 + [429] * 4
    assert int(redis_client.get(names().quota_batch_tokens(str(tenant.id), month))) == 60
    minute = int(time.time() // 60)
    for key in (names().quota_rpm(str(tenant.id), minute), names().quota_tpm(str(tenant.id), minute)):
        assert redis_client.get(key) is None

    # The interactive budget is untouched: the one request a minute still goes through.
    client = openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert answer.usage.completion_tokens == 2
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


def test_the_engine_gets_the_batch_priority(batch_gateway, redis_client):
    engine = RecordingEngine()
    try:
        tenant = make_tenant()
        model = register_model(redis_client, [engine])
        batch_id = new_batch_id()
        response = httpx.post(
            batch_gateway.url + "/v1/chat/completions",
            json=chat(model),
            headers=line_headers(tenant, batch_id, 0),
        )
        assert response.status_code == 200, response.text
        assert engine.bodies[-1]["priority"] == tiers.RANK[tiers.BATCH]
    finally:
        engine.stop()
