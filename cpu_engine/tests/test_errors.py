"""The CPU engine's answers when generation fails: vLLM-shaped, generic, details only in the log.

The HTTP app is the engine's own (``cpu_engine.app.create_app``); the backend under it fails on
purpose with text that must never reach a caller (a path and a secret-looking value).
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from cpu_engine.app import create_app
from cpu_engine.backends import SamplingParams

SECRET = "postgresql://berth:hunter2@db/berth in /srv/berth/engine.py line 12"
KEY = "engine-key"


class FailingBackend:
    """Enough of GenerationBackend for the HTTP layer; fails where ``where`` says."""

    model_path = "/models/tiny"
    max_model_len = 2048
    running = waiting = 0

    def __init__(self, where: str):
        self.where = where

    def is_alive(self):
        return True

    def kv_cache_usage(self):
        return 0.0

    def chat_prompt_ids(self, messages, *, tools=None):
        if self.where == "prompt":
            raise KeyError(SECRET)
        return [1, 2, 3]

    def resolve_max_tokens(self, prompt_len, requested):
        return requested or 4

    async def generate(self, prompt_ids, params: SamplingParams, *, cache_salt=None):
        if self.where == "mid-stream":
            from cpu_engine.backends import Step

            yield Step(text="partial", completion_tokens=1)
        raise RuntimeError(SECRET)


def call(where: str, *, stream: bool = False, headers: dict | None = None) -> httpx.Response:
    app = create_app(task="chat", backend=FailingBackend(where), served_name="tiny", api_key=KEY)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def send():
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return await client.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
                headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
            )

    import asyncio

    return asyncio.run(send())


@pytest.mark.parametrize("where", ["prompt", "generate"])
def test_a_failure_answers_500_without_the_exception_text(where, caplog):
    caplog.set_level(logging.ERROR, logger="berth.cpu_engine")
    r = call(where)
    assert r.status_code == 500
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "internal_server_error"
    assert "hunter2" not in r.text and "/srv/berth" not in r.text and "Traceback" not in r.text
    assert "request id engine-" in error["message"]
    # The operator still gets the details, under the id the caller was given.
    error_id = error["message"].split("request id ")[1].split(")")[0]
    assert any(error_id in rec.getMessage() and rec.exc_info for rec in caplog.records)
    assert SECRET in caplog.text


def test_the_gateway_request_id_is_reused_when_it_is_a_plain_token():
    r = call("generate", headers={"X-Request-Id": "req-7f3a"})
    assert "request id req-7f3a" in r.json()["error"]["message"]
    r = call("generate", headers={"X-Request-Id": "<script>alert(1)</script>"})
    assert "script" not in r.text


def test_a_stream_that_fails_midway_says_so_without_the_exception_text():
    r = call("mid-stream", stream=True)
    assert r.status_code == 200
    events = [line[len("data: ") :] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "internal_server_error"
    assert "hunter2" not in r.text and "/srv/berth" not in r.text


def post(where: str, path: str, body: dict, headers: dict) -> httpx.Response:
    app = create_app(task="chat", backend=FailingBackend(where), served_name="tiny", api_key=KEY)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def send():
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return await client.post(path, json=body, headers=headers)

    import asyncio

    return asyncio.run(send())


MESSAGE = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("where", ["prompt", "generate"])
def test_messages_failures_answer_in_anthropics_shape_without_the_exception_text(where):
    r = post(where, "/v1/messages", MESSAGE, {"x-api-key": KEY})
    assert r.status_code == 500
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert "request id engine-" in body["error"]["message"]
    assert "hunter2" not in r.text and "/srv/berth" not in r.text


def test_messages_errors_and_the_key_check_use_anthropics_shape():
    r = post("generate", "/v1/messages", MESSAGE, {"x-api-key": "wrong"})
    assert r.status_code == 401
    assert r.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    r = post("generate", "/v1/messages", {**MESSAGE, "model": "other"}, {"x-api-key": KEY})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    # The same key in a Bearer header works on these paths too, and other paths keep OpenAI's shape.
    r = post("generate", "/v1/messages", {"messages": []}, {"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = post("generate", "/v1/responses", {"input": "hi"}, {"x-api-key": "wrong"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_a_messages_stream_that_fails_midway_sends_an_error_event():
    r = post("mid-stream", "/v1/messages", {**MESSAGE, "stream": True}, {"x-api-key": KEY})
    assert r.status_code == 200
    events = [line[len("event: ") :] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start"
    assert events[-1] == "error"
    assert "hunter2" not in r.text


def test_a_responses_stream_that_fails_midway_ends_with_response_failed():
    r = post(
        "mid-stream", "/v1/responses", {"input": "hi", "stream": True}, {"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 200
    events = [line[len("event: ") :] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "response.created"
    assert events[-1] == "response.failed"
    assert "hunter2" not in r.text
