"""Responses, Messages, rerank and score through the gateway, with the real ``openai`` and
``anthropic`` SDKs against fake engines that speak vLLM 0.33's formats (``fake_surfaces``).

Each test checks what the client got and what was billed: the usage records in PostgreSQL equal
the usage the engine reported, under the surface's own endpoint name.
"""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from berth.redis import names
from billing import usage
from billing.models import UsageRecord
from tests.gateway.conftest import make_key, make_tenant, register_model

pytestmark = pytest.mark.django_db

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def drain() -> None:
    usage.ensure_group()
    while usage.consume_batch(consumer="test", block_ms=None, claim_idle_ms=0):
        pass


def records(tenant, endpoint: str) -> list[UsageRecord]:
    drain()
    return list(UsageRecord.objects.filter(tenant_id=tenant.pk, endpoint=endpoint).order_by("occurred_at"))


@pytest.fixture
def setup(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, engines)
    return tenant, key, model


def _openai(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def _anthropic(gateway, key, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, **kwargs)


# ---------------------------------------------------------------------------------- responses


def test_responses_create_is_billed_from_the_engine_usage(setup, gateway):
    tenant, key, model = setup
    client = _openai(gateway, key)
    response = client.responses.create(
        model=model, input="one two three", instructions="be brief", max_output_tokens=5
    )
    assert response.output_text == "tok " * 5
    assert response.usage.input_tokens == 6 and response.usage.output_tokens == 5
    [record] = records(tenant, "responses")
    assert (record.prompt_tokens, record.completion_tokens) == (6, 5)
    assert record.model == model and record.status == "ok" and record.usage_source == "engine"


def test_responses_stream_passes_typed_events_and_meters_response_completed(setup, gateway):
    tenant, key, model = setup
    client = _openai(gateway, key)
    with client.responses.stream(model=model, input="a b", max_output_tokens=7) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 7
    assert final.output_text == "tok " * 7 and final.usage.output_tokens == 7
    raw = list(client.responses.create(model=model, input="x", max_output_tokens=2, stream=True))
    assert raw[-1].type == "response.completed" and raw[-1].response.usage.input_tokens == 2
    first, second = records(tenant, "responses")
    assert (first.prompt_tokens, first.completion_tokens) == (3, 7)
    assert (second.prompt_tokens, second.completion_tokens) == (2, 2)
    assert first.ttft_ms is not None


def test_a_stored_response_is_retrieved_from_its_worker_and_never_billed_again(
    setup, gateway, engines, redis_client
):
    tenant, key, model = setup
    client = _openai(gateway, key)
    created = [
        client.responses.create(model=model, input="hello there", max_output_tokens=3) for _ in range(4)
    ]
    with client.responses.stream(model=model, input="streamed", max_output_tokens=2) as stream:
        for _ in stream:
            pass
        created.append(stream.get_final_response())
    # Two engines, each storing only its own answers: every retrieval must reach the right one.
    for response in created:
        for _ in range(3):
            again = client.responses.retrieve(response.id)
            assert again.id == response.id and again.output_text == response.output_text
    assert len(records(tenant, "responses")) == 5  # the creates only
    assert UsageRecord.objects.filter(tenant_id=tenant.pk).count() == 5
    assert redis_client.ttl(names().response(created[0].id)) > 6 * 86400
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        client.responses.cancel(created[0].id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_does_not_exist")
    assert missing.value.body["code"] == "response_not_found"
    unstored = client.responses.create(model=model, input="x", max_output_tokens=1, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    deleted = httpx.delete(
        f"{gateway.url}/v1/responses/{created[0].id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert deleted.status_code == 405 and deleted.json()["error"]["code"] == "method_not_allowed"


def test_another_tenant_cannot_retrieve_cancel_or_continue_a_response(setup, gateway):
    _, key, model = setup
    response = _openai(gateway, key).responses.create(model=model, input="secret", max_output_tokens=2)
    other = _openai(gateway, make_key(make_tenant()))
    with pytest.raises(openai.NotFoundError) as retrieve:
        other.responses.retrieve(response.id)
    assert retrieve.value.status_code == 404 and retrieve.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(response.id)
    with pytest.raises(openai.NotFoundError) as follow_up:
        other.responses.create(model=model, input="more", previous_response_id=response.id)
    assert follow_up.value.body["code"] == "previous_response_not_found"


def test_a_follow_up_turn_goes_to_the_worker_holding_the_previous_response(setup, gateway, engines):
    _, key, model = setup
    client = _openai(gateway, key)
    first = client.responses.create(model=model, input="start", max_output_tokens=2)
    holder = next(
        e
        for e in engines
        if httpx.get(
            f"{e.url}/v1/responses/{first.id}", headers={"Authorization": f"Bearer {e.api_key}"}
        ).status_code
        == 200
    )
    for _ in range(4):
        turn = client.responses.create(
            model=model, input="next", previous_response_id=first.id, max_output_tokens=2
        )
        assert (
            httpx.get(
                f"{holder.url}/v1/responses/{turn.id}", headers={"Authorization": f"Bearer {holder.api_key}"}
            ).status_code
            == 200
        )


def test_responses_tool_calls_pass_through(setup, gateway, engines):
    tenant, key, model = setup
    client = _openai(gateway, key)
    response = client.responses.create(
        model=model, input="weather in Paris?", tools=[TOOL], extra_body={"fake_tool_call": "get_weather"}
    )
    [call] = response.output
    assert (
        call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city": "Paris"}'
    )
    sent = [httpx.get(e.url + "/_last", params={"path": "/v1/responses"}).json() for e in engines]
    assert any(body.get("tools") == [TOOL] for body in sent)
    assert all("stream_options" not in body for body in sent)
    # Prefix-cache isolation: vLLM reads cache_salt on /v1/responses too.
    assert all(len(body["cache_salt"]) == 32 for body in sent if body)


def test_responses_bad_bodies_are_openai_400s(setup, gateway):
    _, key, model = setup
    client = _openai(gateway, key)
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model=model, input=None)
    assert missing.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as background:
        client.responses.create(model=model, input="x", background=True)
    assert background.value.body["param"] == "background"
    with pytest.raises(openai.BadRequestError) as big:
        client.responses.create(model=model, input="x", max_output_tokens=0)
    assert big.value.body["param"] == "max_output_tokens"


# ---------------------------------------------------------------------------------- messages


def test_messages_create_with_the_anthropic_sdk_is_billed(setup, gateway):
    tenant, key, model = setup
    client = _anthropic(gateway, key)
    message = client.messages.create(
        model=model, max_tokens=4, system="you help", messages=[{"role": "user", "content": "hi there you"}]
    )
    assert message.content[0].text == "tok " * 4 and message.usage.input_tokens == 6
    [record] = records(tenant, "messages")
    assert (record.prompt_tokens, record.completion_tokens) == (6, 4) and record.status == "ok"


def test_messages_stream_meters_the_final_usage(setup, gateway):
    tenant, key, model = setup
    client = _anthropic(gateway, key)
    with client.messages.stream(
        model=model, max_tokens=6, messages=[{"role": "user", "content": "a b c"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok " * 6
    assert final.usage.output_tokens == 6 and final.usage.input_tokens == 4
    events = [
        event.type
        for event in client.messages.create(
            model=model, max_tokens=2, messages=[{"role": "user", "content": "x"}], stream=True
        )
    ]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    first, second = records(tenant, "messages")
    assert (first.prompt_tokens, first.completion_tokens) == (4, 6)
    assert (second.prompt_tokens, second.completion_tokens) == (2, 2)


def test_messages_accept_bearer_and_the_anthropic_version_header(setup, gateway):
    _, key, model = setup
    answer = httpx.post(
        gateway.url + "/v1/messages",
        headers={"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"},
        json={"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200 and answer.json()["type"] == "message"


def test_messages_tool_use_passes_through(setup, gateway, engines):
    _, key, model = setup
    message = _anthropic(gateway, key).messages.create(
        model=model,
        max_tokens=20,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
        extra_body={"fake_tool_call": "get_weather"},
    )
    assert message.stop_reason == "tool_use" and message.content[0].name == "get_weather"
    sent = [httpx.get(e.url + "/_last", params={"path": "/v1/messages"}).json() for e in engines]
    assert any(body.get("tools") for body in sent)
    assert all(len(body["cache_salt"]) == 32 for body in sent if body)


def test_count_tokens_is_answered_and_not_billed(setup, gateway):
    tenant, key, model = setup
    count = _anthropic(gateway, key).messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "one two three"}]
    )
    assert count.input_tokens == 4
    assert (
        records(tenant, "count_tokens") == [] and UsageRecord.objects.filter(tenant_id=tenant.pk).count() == 0
    )


def test_anthropic_errors_have_anthropic_shape(setup, gateway, redis_client, engines):
    _, key, model = setup
    good = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        _anthropic(gateway, "sk-berth-nope").messages.create(**good)
    assert bad_key.value.status_code == 401
    assert bad_key.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": bad_key.value.body["error"]["message"]},
    }
    client = _anthropic(gateway, key)
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(**{**good, "model": "no-such-model"})
    assert unknown.value.body["type"] == "error" and unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad_body:
        client.messages.create(model=model, max_tokens=2, messages=[{"role": 5, "content": "x"}])
    assert bad_body.value.body["error"]["type"] == "invalid_request_error"
    missing = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": key}, json={"model": model, "messages": []}
    )
    assert missing.status_code == 400 and missing.json()["type"] == "error"
    engine_400 = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": key}, json={**good, "fake_error": 422}
    )
    assert engine_400.status_code == 422
    assert engine_400.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "fake error 422"},
    }
    engine_500 = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": key}, json={**good, "fake_error": 500}
    )
    assert engine_500.status_code == 500 and engine_500.json()["error"]["type"] == "api_error"
    no_key = httpx.post(gateway.url + "/v1/messages/count_tokens", json=good)
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    # /v1 keeps OpenAI's shape.
    assert "type" not in httpx.post(gateway.url + "/v1/responses", json={}).json()


def test_a_private_model_is_not_found_for_other_tenants_on_every_surface(gateway, engines, redis_client):
    owner = make_tenant()
    model = register_model(redis_client, engines, visibility="private", tenants=[owner.pk])
    key = make_key(make_tenant())
    with pytest.raises(anthropic.NotFoundError):
        _anthropic(gateway, key).messages.create(
            model=model, max_tokens=2, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError):
        _openai(gateway, key).responses.create(model=model, input="x")
    rerank = httpx.post(
        gateway.url + "/v1/rerank",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "query": "q", "documents": ["d"]},
    )
    assert rerank.status_code == 404 and rerank.json()["error"]["code"] == "model_not_found"


# ---------------------------------------------------------------------------------- rerank, score


def test_rerank_and_score_are_metered_by_tokens(setup, gateway, redis_client, engines):
    tenant, key, _ = setup
    scorer = register_model(redis_client, engines, task="embedding")
    auth = {"Authorization": f"Bearer {key}"}
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        answer = httpx.post(
            gateway.url + path,
            headers=auth,
            json={"model": scorer, "query": "what is x", "documents": ["x is a", "y b"], "top_n": 1},
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["results"]) == 1 and answer.json()["usage"]["total_tokens"] == 15
    objects = httpx.post(
        gateway.url + "/v1/rerank",
        headers=auth,
        json={"model": scorer, "query": "q", "documents": [{"text": "a b"}]},
    )
    assert objects.status_code == 200, objects.text
    score = httpx.post(
        gateway.url + "/v1/score",
        headers=auth,
        json={"model": scorer, "text_1": "a b", "text_2": ["c", "d e"]},
    )
    assert score.status_code == 200 and score.json()["usage"]["prompt_tokens"] == 11
    reranks = records(tenant, "rerank")
    assert [(r.prompt_tokens, r.completion_tokens) for r in reranks] == [(15, 0)] * 3 + [(5, 0)]
    [scored] = records(tenant, "score")
    assert (scored.prompt_tokens, scored.completion_tokens) == (11, 0)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rerank", {"documents": ["a"]}, "query"),
        ("/v1/rerank", {"query": "q", "documents": "a"}, "documents"),
        ("/v1/rerank", {"query": "q", "documents": []}, "documents"),
        ("/v1/rerank", {"query": "q", "documents": ["a", 3]}, "documents[1]"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
        ("/v1/score", {"text_1": "a"}, "text_2"),
        ("/v1/score", {"text_1": 5, "text_2": "b"}, "text_1"),
    ],
)
def test_rerank_and_score_bodies_are_validated(setup, gateway, path, body, param):
    _, key, model = setup
    answer = httpx.post(
        gateway.url + path, headers={"Authorization": f"Bearer {key}"}, json={"model": model, **body}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_unbilled_calls_still_count_against_requests_per_minute(gateway, engines, redis_client):
    tenant = make_tenant(requests_per_minute=3)
    key = make_key(tenant)
    model = register_model(redis_client, engines)
    response = _openai(gateway, key).responses.create(model=model, input="x", max_output_tokens=1)
    client = _anthropic(gateway, key)
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    assert client.messages.count_tokens(**body).input_tokens == 2
    assert _openai(gateway, key).responses.retrieve(response.id).id == response.id
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.count_tokens(**body)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert [r.endpoint for r in records(tenant, "responses")] == ["responses"]
    assert UsageRecord.objects.filter(tenant_id=tenant.pk).count() == 1


@pytest.mark.parametrize(
    ("path", "body", "delta", "prompt"),
    [
        # No usage before response.completed: the prompt is counted with the engine's tokenizer.
        (
            "/v1/responses",
            {"input": "two words", "max_output_tokens": 400},
            "response.output_text.delta",
            3,
        ),
        # message_start told the prompt.
        (
            "/v1/messages",
            {"messages": [{"role": "user", "content": "a b c"}], "max_tokens": 400},
            "content_block_delta",
            4,
        ),
    ],
)
def test_a_hang_up_mid_stream_bills_the_prompt_and_what_was_streamed(
    setup, gateway, path, body, delta, prompt
):
    tenant, key, model = setup
    seen = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            gateway.url + path,
            json={"model": model, "stream": True, "fake_delay": 0.02, **body},
            headers={"x-api-key": key},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            seen += line == f"event: {delta}"
            if seen == 10:
                break
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(request_id=request_id).exists() and time.monotonic() < deadline:
        drain()
        time.sleep(0.1)
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.status == "client_disconnected" and record.http_status == 499
    # The output is counted by the deltas that reached the gateway (one token each).
    assert record.prompt_tokens == prompt and record.usage_source == "chunks"
    assert 10 <= record.completion_tokens < 400
