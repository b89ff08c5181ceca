"""Service tiers through the gateway, with the real ``openai`` and ``anthropic`` SDKs.

A request's ``service_tier`` is resolved within its plan's band, echoed in the answer and in every
streamed chunk, recorded on the usage record, charged to the spend counter at the tier's percent,
and sent to the engine as vLLM's ``priority``.
"""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from berth.redis import names
from billing.models import UsageRecord
from contract import spend as spend_counter
from contract.tiers import RANK
from tests.gateway.conftest import make_key, make_tenant, register_model, set_routes
from tests.gateway.recording_engine import RecordingEngine
from tests.gateway.test_usage import drain

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "one two three four five"}]


@pytest.fixture(scope="module")
def recorder():
    engine = RecordingEngine()
    yield engine
    engine.stop()


def _client(gateway, tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)


def _record(request_id: str) -> UsageRecord:
    drain()
    return UsageRecord.objects.get(request_id=request_id)


def test_flex_is_echoed_in_the_answer_every_chunk_and_the_usage_record(gateway, engines, redis_client):
    tenant = make_tenant()  # a standard plan: default and flex
    model = register_model(redis_client, engines)
    client = _client(gateway, tenant)

    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, max_tokens=3, service_tier="flex"
    )
    answer = raw.parse()
    assert answer.service_tier == "flex"
    assert _record(raw.headers["x-request-id"]).service_tier == "flex"

    with client.chat.completions.with_streaming_response.create(
        model=model, messages=HELLO, max_tokens=4, stream=True, service_tier="flex",
        stream_options={"include_usage": True},
    ) as streamed:  # fmt: skip
        chunks = list(streamed.parse())
        request_id = streamed.headers["x-request-id"]
    assert len(chunks) == 5 and chunks[-1].usage.completion_tokens == 4  # 4 tokens + the usage chunk
    assert {chunk.service_tier for chunk in chunks} == {"flex"}
    assert _record(request_id).service_tier == "flex"

    completion = client.completions.create(
        model=model, prompt="a b", max_tokens=2, extra_body={"service_tier": "flex"}
    )
    assert completion.model_extra["service_tier"] == "flex"
    pieces = list(
        client.completions.create(
            model=model, prompt="a b", max_tokens=3, stream=True, extra_body={"service_tier": "flex"}
        )
    )
    assert len(pieces) == 3 and {p.model_extra["service_tier"] for p in pieces} == {"flex"}


def test_without_a_tier_the_plans_band_decides(gateway, engines, redis_client):
    model = register_model(redis_client, engines)
    standard = _client(gateway, make_tenant())
    answer = standard.chat.completions.create(model=model, messages=HELLO, max_tokens=1)
    assert answer.service_tier == "default"
    best_effort = _client(gateway, make_tenant(priority_band="best_effort"))
    for extra in ({}, {"service_tier": "auto"}):
        raw = best_effort.chat.completions.with_raw_response.create(
            model=model, messages=HELLO, max_tokens=1, **extra
        )
        assert raw.parse().service_tier == "flex"
    assert _record(raw.headers["x-request-id"]).service_tier == "flex"
    priority = _client(gateway, make_tenant(priority_band="priority"))
    assert (
        priority.chat.completions.create(model=model, messages=HELLO, max_tokens=1).service_tier == "priority"
    )
    # A priority plan may still ask for a cheaper tier.
    assert (
        priority.chat.completions.create(
            model=model, messages=HELLO, max_tokens=1, service_tier="default"
        ).service_tier
        == "default"
    )


def test_a_tier_above_the_plan_or_of_the_wrong_type_is_a_400(gateway, engines, redis_client):
    model = register_model(redis_client, engines)
    tenant = make_tenant()
    client = _client(gateway, tenant)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=HELLO, service_tier="priority")
    assert refused.value.code == "service_tier_not_allowed"
    assert refused.value.param == "service_tier"
    assert "auto, default, flex" in refused.value.message
    with pytest.raises(openai.BadRequestError) as default_refused:
        _client(gateway, make_tenant(priority_band="best_effort")).chat.completions.create(
            model=model, messages=HELLO, service_tier="default"
        )
    assert default_refused.value.code == "service_tier_not_allowed"
    for value, code in ((7, "invalid_type"), ("fastest", "invalid_value")):
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=model, messages=HELLO, extra_body={"service_tier": value})
        assert (bad.value.param, bad.value.code) == ("service_tier", code)
    drain()
    # Refused before any quota or engine work: nothing was billed.
    assert not UsageRecord.objects.filter(tenant=tenant).exists()


def test_the_spend_counter_is_charged_at_the_tiers_percent(gateway, engines, redis_client):
    tenant = make_tenant()
    model = register_model(redis_client, engines)
    # $1,000 per million prompt tokens, $2,000 per million completion tokens.
    redis_client.hset(
        names().model(model),
        mapping={"price_input_micros": 1000 * 1_000_000, "price_output_micros": 2000 * 1_000_000},
    )
    client = _client(gateway, tenant)
    counter = names().spend_counter(tenant.pk, spend_counter.period_id("month"))

    def charged(**extra) -> int:
        before = int(redis_client.get(counter) or 0)
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=5, **extra)
        return int(redis_client.get(counter)) - before

    # 6 prompt tokens × $1,000/M + 5 completion tokens × $2,000/M = 16,000 micro-dollars.
    assert charged() == 16_000
    assert charged(service_tier="flex") == 8_000  # contract.tiers' default: 50 %

    # The price row's own percent, as the control plane mirrors it.
    other = register_model(redis_client, engines)
    redis_client.hset(
        names().model(other),
        mapping={
            "price_input_micros": 1000 * 1_000_000,
            "price_output_micros": 2000 * 1_000_000,
            "price_percent_flex": "25",
        },
    )
    before = int(redis_client.get(counter))
    client.chat.completions.create(model=other, messages=HELLO, max_tokens=5, service_tier="flex")
    assert int(redis_client.get(counter)) - before == 4_000


def test_the_engine_gets_the_tiers_priority_and_not_the_clients(gateway, redis_client, recorder):
    model = register_model(redis_client, [])
    set_routes(redis_client, model, [recorder])
    priority_plan = _client(gateway, make_tenant(priority_band="priority"))
    for tier in ("priority", "default", "flex"):
        priority_plan.chat.completions.create(model=model, messages=HELLO, service_tier=tier)
        assert recorder.bodies[-1]["priority"] == RANK[tier]
        assert "service_tier" not in recorder.bodies[-1]
    # A client's own vLLM priority does not jump the queue.
    standard = _client(gateway, make_tenant())
    standard.chat.completions.create(model=model, messages=HELLO, extra_body={"priority": -100})
    assert recorder.bodies[-1]["priority"] == RANK["default"]

    embedder = register_model(redis_client, [], task="embedding")
    set_routes(redis_client, embedder, [recorder])
    embedding = (
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],'
        b'"model":"m","usage":{"prompt_tokens":2,"total_tokens":2}}'
    )
    recorder.scripted += [(200, embedding, "application/json")] * 2
    standard.embeddings.create(model=embedder, input="same prefix")
    assert recorder.bodies[-1] == {
        "priority": RANK["default"],
        "model": embedder,
        "input": "same prefix",
        "encoding_format": "base64",
    }
    answer = standard.embeddings.with_raw_response.create(
        model=embedder, input="x", extra_body={"service_tier": "flex"}
    )
    assert recorder.bodies[-1]["priority"] == RANK["flex"] and "service_tier" not in recorder.bodies[-1]
    assert answer.http_response.json()["service_tier"] == "flex"


def test_responses_echo_the_tier_in_the_response_and_its_events(gateway, engines, redis_client):
    model = register_model(redis_client, engines)
    client = _client(gateway, make_tenant())
    response = client.responses.create(model=model, input="a b c", max_output_tokens=3, service_tier="flex")
    assert response.service_tier == "flex"
    events = list(client.responses.create(model=model, input="a b c", max_output_tokens=3, stream=True))
    carrying = [e for e in events if hasattr(e, "response")]
    assert carrying and {e.response.service_tier for e in carrying} == {"default"}


def test_messages_map_anthropics_tiers(gateway, engines, redis_client):
    model = register_model(redis_client, engines)
    key = make_key(make_tenant(priority_band="priority"))
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    hello = {"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi there"}]}
    assert client.messages.create(**hello).usage.service_tier == "priority"  # auto on a priority plan
    assert client.messages.create(**hello, service_tier="auto").usage.service_tier == "priority"
    assert client.messages.create(**hello, service_tier="standard_only").usage.service_tier == "standard"
    with client.messages.stream(**hello, service_tier="standard_only") as stream:
        final = stream.get_final_message()
    assert final.usage.service_tier == "standard"
    assert final.usage.output_tokens == 3

    best_effort = make_key(make_tenant(priority_band="best_effort"))
    refused = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": best_effort},
        json={**hello, "service_tier": "standard_only"},
    )
    assert refused.status_code == 400
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "service tier" in refused.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0).messages.create(
            **hello, extra_body={"service_tier": "flex"}
        )
