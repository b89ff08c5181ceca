"""Every field the gateway reads is checked before any work: OpenAI-shaped 400s, never a 500.

Also: the text of an engine's failure (exception strings, tracebacks) never reaches the client.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.gateway.conftest import engine_stats, free_port, make_key, make_tenant, register_model, set_routes
from tests.gateway.recording_engine import RecordingEngine

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def setup(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    chat = register_model(redis_client, engines)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    return key, chat, client


CASES = [
    # (path, body without "model", param, code)
    ("chat/completions", {"messages": 5}, "messages", "invalid_type"),
    ("chat/completions", {}, "messages", "missing_required_parameter"),
    ("chat/completions", {"messages": []}, "messages", "empty_array"),
    ("chat/completions", {"messages": ["hi"]}, "messages[0]", "invalid_type"),
    ("chat/completions", {"messages": [{"content": "hi"}]}, "messages[0].role", "missing_required_parameter"),
    ("chat/completions", {"messages": [{"role": 3, "content": "hi"}]}, "messages[0].role", "invalid_type"),
    (
        "chat/completions",
        {"messages": [{"role": "boss", "content": "hi"}]},
        "messages[0].role",
        "invalid_value",
    ),
    (
        "chat/completions",
        {"messages": [{"role": "user"}]},
        "messages[0].content",
        "missing_required_parameter",
    ),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": 5}]},
        "messages[0].content",
        "invalid_type",
    ),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0].text",
        "invalid_type",
    ),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": [7]}]},
        "messages[0].content[0]",
        "invalid_type",
    ),
    ("chat/completions", {"messages": MESSAGES, "n": "2"}, "n", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "n": 0}, "n", "integer_below_min_value"),
    ("chat/completions", {"messages": MESSAGES, "n": 10_000}, "n", "integer_above_max_value"),
    ("chat/completions", {"messages": MESSAGES, "stream": "yes"}, "stream", "invalid_type"),
    (
        "chat/completions",
        {"messages": MESSAGES, "stream": True, "stream_options": 1},
        "stream_options",
        "invalid_type",
    ),
    (
        "chat/completions",
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
        "invalid_type",
    ),
    (
        "chat/completions",
        {"messages": MESSAGES, "max_completion_tokens": 1.5},
        "max_completion_tokens",
        "invalid_type",
    ),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": True}, "max_tokens", "invalid_type"),
    ("completions", {}, "prompt", "missing_required_parameter"),
    ("completions", {"prompt": {"a": 1}}, "prompt", "invalid_type"),
    ("completions", {"prompt": [1, "a", None]}, "prompt[0]", "invalid_type"),
    ("completions", {"prompt": "x", "best_of": 1, "n": 2}, "best_of", "invalid_value"),
    ("completions", {"prompt": "x", "best_of": "3"}, "best_of", "invalid_type"),
    ("embeddings", {}, "input", "missing_required_parameter"),
    ("embeddings", {"input": 5}, "input", "invalid_type"),
    ("embeddings", {"input": ""}, "input", "invalid_value"),
    ("embeddings", {"input": [[1, 2], "x"]}, "input[1]", "invalid_type"),
    ("embeddings", {"input": "x", "stream": 1}, "stream", "invalid_type"),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), CASES)
def test_it_rejects_each_malformed_field_with_an_openai_400(setup, gateway, engines, path, body, param, code):
    key, model, _ = setup
    before = sum(engine_stats(e)["requests"] for e in engines)
    response = httpx.post(
        gateway.url + "/v1/" + path,
        content=json.dumps({"model": model, **body}),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]
    assert sum(engine_stats(e)["requests"] for e in engines) == before  # refused before any work


def test_the_sdk_gets_a_bad_request_error_not_a_500_for_messages_5(setup):
    _, model, client = setup
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=5)
    assert refused.value.status_code == 400
    assert refused.value.param == "messages" and refused.value.code == "invalid_type"
    assert "expected an array" in refused.value.message


def test_valid_shapes_pass(setup):
    _, model, client = setup
    parts = [{"role": "user", "content": [{"type": "text", "text": "one two"}]}]
    reply = client.chat.completions.create(model=model, messages=parts, n=2, max_completion_tokens=3)
    assert reply.usage.completion_tokens == 3
    tool_turn = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "again"},
    ]
    assert client.chat.completions.create(model=model, messages=tool_turn, max_tokens=2).choices
    for prompt in ("", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        assert client.completions.create(model=model, prompt=prompt, max_tokens=2, best_of=2, n=1).choices


# ---------------------------------------------------------------------- engine error text


@pytest.fixture(scope="module")
def recorder():
    engine = RecordingEngine()
    yield engine
    engine.stop()


TRACEBACK = (
    b"Traceback (most recent call last):\n"
    b'  File "/usr/lib/python3.12/site-packages/vllm/engine.py", line 12, in generate\n'
    b"RuntimeError: CUDA error: device-side assert triggered at 10.0.0.7:8000"
)


def _client_on(gateway, redis_client, recorder):
    model = register_model(redis_client, [])
    set_routes(redis_client, model, [recorder])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(make_tenant()), max_retries=0)
    return model, client


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (500, TRACEBACK, "text/plain"),
        (
            500,
            json.dumps({"error": {"message": TRACEBACK.decode(), "type": "InternalServerError"}}).encode(),
            "application/json",
        ),
        (500, b'{"message": "EngineDeadError: the engine loop died at /opt/vllm"}', "application/json"),
        (
            400,
            json.dumps({"error": {"message": TRACEBACK.decode(), "code": 400}}).encode(),
            "application/json",
        ),
        (
            400,
            b'{"object": "error", "message": "ValueError: <vllm.Req object at 0x7f00aa>"}',
            "application/json",
        ),
        (422, b"<html>Internal details</html>", "text/html"),
    ],
)
def test_engine_internals_never_reach_the_client(gateway, redis_client, recorder, status, body, content_type):
    model, client = _client_on(gateway, redis_client, recorder)
    recorder.scripted.append((status, body, content_type))
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    error = failed.value.body
    request_id = failed.value.response.headers["x-request-id"]
    assert failed.value.status_code == status
    assert set(error) >= {"message", "type", "param", "code"}
    for leak in ("Traceback", "File ", "site-packages", "CUDA", "10.0.0.7", "0x7f00aa", "/opt/vllm", "html"):
        assert leak not in error["message"]
    assert request_id in error["message"]


def test_an_engine_message_about_the_request_itself_passes(gateway, redis_client, recorder):
    model, client = _client_on(gateway, redis_client, recorder)
    message = "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens."
    recorder.scripted.append(
        (
            400,
            json.dumps(
                {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
            ).encode(),
            "application/json",
        )
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert refused.value.body["message"] == message


def test_an_unreachable_engine_is_a_502_that_names_no_host_or_port(gateway, redis_client):
    closed = free_port()  # nothing listens there: connection refused
    dead = type("E", (), {"name": "dead", "url": f"http://127.0.0.1:{closed}", "api_key": "k"})()
    model = register_model(redis_client, [])
    set_routes(redis_client, model, [dead])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(make_tenant()), max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert failed.value.status_code == 502 and failed.value.code == "upstream_unavailable"
    message = failed.value.body["message"]
    assert str(closed) not in message and "127.0.0.1" not in message
    assert failed.value.response.headers["x-request-id"] in message
