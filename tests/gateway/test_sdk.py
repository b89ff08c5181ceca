"""The real ``openai`` SDK (sync and async, streaming and not) against the gateway."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tenants import mirror
from tenants.constants import TenantStatus
from tenants.keys import revoke_api_key
from tenants.models import ApiKey
from tests.gateway.conftest import engine_stats, make_key, make_tenant, register_model, set_routes

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, engines)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    return tenant, key, model, client


def test_it_answers_chat_completions(setup):
    _, _, model, client = setup
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello there world"}], max_tokens=5
    )
    reply = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert reply.choices[0].message.content == "tok " * 5
    assert reply.usage.prompt_tokens == 4 and reply.usage.completion_tokens == 5


def test_it_streams_without_usage_when_not_asked(setup):
    _, _, model, client = setup
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
        )
    )
    assert len(chunks) == 6
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content for c in chunks) == "tok " * 6


def test_it_streams_the_usage_chunk_when_asked(setup):
    _, _, model, client = setup
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "one two"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) == 5
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == 3
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_it_answers_completions_and_embeddings(setup, redis_client, engines, gateway):
    _, key, model, client = setup
    completion = client.completions.create(model=model, prompt="a b c", max_tokens=3)
    assert completion.choices[0].text == "tok " * 3 and completion.usage.total_tokens == 7
    streamed = list(client.completions.create(model=model, prompt="a", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "tok " * 3
    embedder = register_model(redis_client, engines, task="embedding")
    result = client.embeddings.create(model=embedder, input=["one two", "three"])
    assert len(result.data) == 2 and result.usage.prompt_tokens == 5


def test_async_client_streams(setup, gateway):
    _, key, model, _ = setup

    async def run():
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
        )
        texts = [chunk.choices[0].delta.content async for chunk in stream]
        plain = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        await client.close()
        return texts, plain

    texts, plain = asyncio.run(run())
    assert texts == ["tok "] * 3
    assert plain.usage.completion_tokens == 8


def test_it_lists_only_models_the_key_may_use(gateway, engines, redis_client):
    tenant, other = make_tenant(), make_tenant()
    public = register_model(redis_client, engines)
    mine = register_model(redis_client, engines, visibility="private", tenants=[tenant.pk])
    theirs = register_model(redis_client, engines, visibility="private", tenants=[other.pk])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {public, mine} <= ids and theirs not in ids
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model=theirs, messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "model_not_found"
    limited = openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=make_key(tenant, allowed_models=[mine]), max_retries=0
    )
    assert {m.id for m in limited.models.list()} == {mine}
    with pytest.raises(openai.NotFoundError):
        limited.chat.completions.create(model=public, messages=[{"role": "user", "content": "x"}])


def test_it_rejects_unknown_and_wrong_keys_identically(setup, gateway):
    _, key, model, _ = setup
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    unknown = "sk-berth-AAAAAAAAAAAA_" + "b" * 43
    bodies = []
    for bad in (wrong_secret, unknown, "garbage"):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=bad, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as exc:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        assert exc.value.code == "invalid_api_key"
        bodies.append(exc.value.response.content)
    assert bodies[0] == bodies[1] == bodies[2]
    # The api-key header works too.
    response = httpx.get(gateway.url + "/v1/models", headers={"api-key": key})
    assert response.status_code == 200


def test_it_refuses_suspended_tenants_with_403(setup, gateway):
    tenant, key, model, client = setup
    tenant.status = TenantStatus.SUSPENDED
    tenant.save()
    mirror.publish_tenant(tenant)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


def test_it_maps_quota_refusals_to_rate_limit_error(gateway, engines, redis_client):
    tenant = make_tenant(requests_per_minute=1)
    model = register_model(redis_client, engines)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    ok = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "x"}]
    )
    assert ok.headers["x-ratelimit-limit-requests"] == "1"
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "rate_limit_exceeded"
    assert int(exc.value.response.headers["retry-after"]) >= 1
    assert exc.value.response.headers["x-request-id"]


def test_it_revokes_keys_within_a_second(setup, gateway):
    tenant, key, model, _ = setup
    assert (
        httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
    )
    revoke_api_key(api_key=ApiKey.objects.get(tenant=tenant))
    mirror.unpublish_key(
        key[len("sk-berth-") :][:12]
    )  # the on_commit hook, run by hand in a test transaction
    revoked_at = time.monotonic()
    status = 200
    while status == 200 and time.monotonic() - revoked_at < 3:
        status = httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code
    assert status == 401
    assert time.monotonic() - revoked_at < 1.0


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "invalid_json"),
        (b'{"messages": []}', {"content-type": "application/json"}, 400, "missing_model"),
        (b'{"model": "m", "max_tokens": -1}', {"content-type": "application/json"}, 400, "invalid_value"),
        (
            b'{"model": "m", "max_tokens": 10000000000}',
            {"content-type": "application/json"},
            400,
            "invalid_value",
        ),
        (b'{"model": "m", "max_tokens": "5"}', {"content-type": "application/json"}, 400, "invalid_type"),
        (b'{"model": "m"}', {"content-type": "text/plain"}, 400, "invalid_content_type"),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_json"),
        (
            b'{"model": "x"}' + b" " * (9 * 1024 * 1024),
            {"content-type": "application/json"},
            413,
            "request_too_large",
        ),
    ],
)
def test_it_rejects_bad_input_in_openai_shape(setup, gateway, body, headers, status, code):
    _, key, _, _ = setup
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={**headers, "authorization": f"Bearer {key}"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error
    assert response.headers["x-request-id"]


def test_it_passes_engine_errors_through(setup, engines):
    _, _, model, client = setup
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], extra_body={"fake_error": 400}
        )
    assert "fake error 400" in exc.value.message


def test_it_sends_the_engines_served_name(gateway, engines, redis_client):
    tenant = make_tenant()
    model = register_model(redis_client, engines, served_name="served-internal-name", name="public-name-x")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert any("served-internal-name" in engine_stats(e)["models"] for e in engines)


def test_metrics_and_health(setup, gateway):
    _, _, model, client = setup
    list(
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], stream=True)
    )
    health = httpx.get(gateway.url + "/healthz")
    assert health.json() == {"status": "ok"} and health.headers["x-request-id"]
    text = httpx.get(gateway.url + "/metrics").text
    assert f'berth_gateway_requests_total{{endpoint="chat",model="{model}",status="200"}} 1.0' in text
    assert f'berth_gateway_ttft_seconds_count{{model="{model}"}} 1.0' in text
    assert f'berth_gateway_tokens_total{{kind="completion",model="{model}"}} 8.0' in text
    assert "berth_gateway_quota_refusals_total" in text and "berth_gateway_queue_wait_seconds" in text


def test_an_engine_refusing_the_gateways_key_is_a_502_not_the_clients_401(gateway, engines, redis_client):
    tenant = make_tenant()
    model = register_model(redis_client, engines)
    bad = type("E", (), {"name": "w1", "url": engines[0].url, "api_key": "wrong-engine-key"})()
    set_routes(redis_client, model, [bad])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 502 and exc.value.code == "upstream_auth"
