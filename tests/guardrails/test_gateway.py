"""Guardrails through the real gateway process and the real ``openai`` SDK.

The engine is ``tests/gateway/recording_engine.py``: it records what the gateway forwarded, so a
test sees exactly what an engine would have received.
"""

from __future__ import annotations

import json
import time

import openai
import pytest

from berth.redis import names
from guardrails import policies
from tests.gateway.conftest import make_key, make_tenant, register_model, set_routes
from tests.gateway.recording_engine import RecordingEngine

pytestmark = pytest.mark.django_db

PII_REDACT = {"email": "redact", "phone": "redact", "card": "redact", "iban": "redact", "secret": "redact"}


@pytest.fixture(scope="module")
def recorder():
    engine = RecordingEngine()
    yield engine
    engine.stop()


@pytest.fixture
def model(redis_client, recorder):
    name = register_model(redis_client, [])
    set_routes(redis_client, name, [recorder])
    return name


def _policy(tenant, django_capture_on_commit_callbacks, **fields):
    with django_capture_on_commit_callbacks(execute=True):
        return policies.create_policy(tenant=tenant, name=fields.pop("name", "policy"), **fields)


def _client(gateway_url: str, tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key=make_key(tenant), max_retries=0)


def _stream_entries(redis_client, name: str, wait: float = 3.0) -> list[dict]:
    deadline = time.monotonic() + wait
    while True:
        entries = [json.loads(fields["e"]) for _, fields in redis_client.xrange(name)]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_the_engine_receives_a_redacted_prompt(gateway, recorder, model, django_capture_on_commit_callbacks):
    tenant = make_tenant()
    _policy(tenant, django_capture_on_commit_callbacks, name="no PII", detectors=PII_REDACT)
    client = _client(gateway.url, tenant)
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Mail jane.roe@example.com, card 4111 1111 1111 1111."},
        ],
    )
    assert reply.choices[0].message.content == "ok"
    sent = recorder.bodies[-1]["messages"]
    assert sent[0]["content"] == "Be brief."
    assert sent[1]["content"] == "Mail [EMAIL], card [CARD]."
    assert "jane.roe" not in json.dumps(recorder.bodies[-1])
    # Metered as usual (the engine's usage), and redaction alone writes no audit event.
    assert reply.usage.prompt_tokens == 3


def test_other_tenants_and_other_keys_are_untouched(
    gateway, recorder, model, django_capture_on_commit_callbacks
):
    from tenants.keys import create_api_key
    from tenants.mirror import publish_key

    tenant, other = make_tenant(), make_tenant()
    scoped = create_api_key(tenant=tenant, name="scoped").api_key
    publish_key(scoped)
    _policy(tenant, django_capture_on_commit_callbacks, name="scoped", api_key=scoped, detectors=PII_REDACT)
    text = "I am jane.roe@example.com"
    _client(gateway.url, other).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    assert recorder.bodies[-1]["messages"][0]["content"] == text
    # The tenant's other key is not under the key's policy.
    _client(gateway.url, tenant).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    assert recorder.bodies[-1]["messages"][0]["content"] == text


def test_a_blocking_policy_answers_an_openai_error_and_records_an_audit_event(
    gateway, recorder, model, redis_client, django_capture_on_commit_callbacks
):
    tenant = make_tenant()
    policy = _policy(tenant, django_capture_on_commit_callbacks, name="no cards", detectors={"card": "block"})
    before = len(recorder.bodies)
    with pytest.raises(openai.BadRequestError) as caught:
        _client(gateway.url, tenant).completions.create(model=model, prompt="pay 4111111111111111 now")
    assert caught.value.code == "pii_detected"
    assert "no cards" in caught.value.message
    assert len(recorder.bodies) == before  # never reached the engine
    [event] = _stream_entries(redis_client, names().audit_events())
    assert event["action"] == "guardrail.block" and event["tenant_id"] == str(tenant.pk)
    assert event["detail"]["rule"] == "card" and event["detail"]["policy_id"] == str(policy.pk)
    assert "4111" not in json.dumps(event)  # the audit trail never holds the content


def test_blocked_terms_and_prompt_size(gateway, recorder, model, django_capture_on_commit_callbacks):
    tenant = make_tenant()
    _policy(
        tenant,
        django_capture_on_commit_callbacks,
        name="house rules",
        blocked_terms=["Project Falcon"],
        max_prompt_chars=200,
    )
    client = _client(gateway.url, tenant)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=model, input=["fine", "tell me about project FALCON"])
    assert caught.value.code == "content_blocked"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x" * 201}])
    assert caught.value.code == "prompt_too_large"
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "projects falconry"}])


def test_a_flag_lets_the_request_through_and_is_on_the_audit_stream(
    gateway, recorder, model, redis_client, django_capture_on_commit_callbacks
):
    tenant = make_tenant()
    _policy(tenant, django_capture_on_commit_callbacks, name="watch", detectors={"secret": "flag"})
    text = "my key is AKIAIOSFODNN7EXAMPLE"
    _client(gateway.url, tenant).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    assert recorder.bodies[-1]["messages"][0]["content"] == text
    [event] = _stream_entries(redis_client, names().audit_events())
    assert event["action"] == "guardrail.flag" and event["detail"]["direction"] == "prompt"
    assert event["request_id"].startswith("req_") and event["key_id"]


def _sse(*texts: str) -> bytes:
    events = []
    for number, text in enumerate(texts):
        finish = "stop" if number == len(texts) - 1 else None
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}  # fmt: skip
        events.append(f"data: {json.dumps(chunk)}\n\n")
    usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
             "usage": {"prompt_tokens": 5, "completion_tokens": len(texts), "total_tokens": 5 + len(texts)}}  # fmt: skip
    events.append(f"data: {json.dumps(usage)}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


def test_answers_are_redacted_streamed_or_not(gateway, recorder, model, django_capture_on_commit_callbacks):
    tenant = make_tenant()
    _policy(
        tenant,
        django_capture_on_commit_callbacks,
        name="answers",
        applies_to_prompts=False,
        applies_to_completions=True,
        detectors={"email": "redact"},
    )
    client = _client(gateway.url, tenant)
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "write to a.b@example.org"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}}  # fmt: skip
    recorder.scripted.append((200, json.dumps(answer).encode(), "application/json"))
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "a.b@example.org"}]
    )
    assert recorder.bodies[-1]["messages"][0]["content"] == "a.b@example.org"  # prompts not screened
    assert reply.choices[0].message.content == "write to [EMAIL]"
    assert reply.usage.completion_tokens == 6  # the engine's count, unchanged

    pieces = ("Reach me at jane", ".roe@exam", "ple.com any", " time.")
    recorder.scripted.append((200, _sse(*pieces), "text/event-stream"))
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Reach me at [EMAIL] any time."
    assert chunks[-1].usage.completion_tokens == len(pieces)


def test_content_is_logged_only_when_the_tenant_turned_it_on(
    gateway, recorder, model, redis_client, django_capture_on_commit_callbacks
):
    quiet, logged = make_tenant(), make_tenant()
    _policy(quiet, django_capture_on_commit_callbacks, name="pii", detectors=PII_REDACT)
    _client(gateway.url, quiet).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "secret plans of jane@example.com"}]
    )
    with django_capture_on_commit_callbacks(execute=True):
        policies.set_governance(tenant=logged, log_content=True, content_retention_days=7)
    _policy(logged, django_capture_on_commit_callbacks, name="pii", detectors=PII_REDACT)
    _client(gateway.url, logged).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "plans of joe@example.com"}]
    )
    [entry] = _stream_entries(redis_client, names().content_log())
    assert entry["tenant_id"] == str(logged.pk)
    assert entry["prompt"] == "plans of [EMAIL]"  # after redaction
    assert '"ok"' in entry["completion"]
    time.sleep(0.3)
    entries = [json.loads(f["e"]) for _, f in redis_client.xrange(names().content_log())]
    assert all(e["tenant_id"] != str(quiet.pk) for e in entries)
    assert "secret plans" not in json.dumps(entries)


def test_the_operators_content_log_honours_the_tenant_and_the_redaction(
    gateway, recorder, model, tmp_path, django_capture_on_commit_callbacks
):
    import os
    import subprocess

    from tests.gateway.conftest import ROOT, free_port, gateway_argv, gateway_env, wait_http

    port = free_port()
    log = tmp_path / "gateway.log"
    env = {**os.environ, **gateway_env(BERTH_GATEWAY_ACCESS_LOG="1", BERTH_GATEWAY_LOG_CONTENT="1")}
    with log.open("wb") as out:
        process = subprocess.Popen(gateway_argv(port), env=env, cwd=ROOT, stdout=out, stderr=out)  # noqa: S603
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz")
        private, sharing = make_tenant(), make_tenant()
        _policy(sharing, django_capture_on_commit_callbacks, name="pii", detectors=PII_REDACT)
        with django_capture_on_commit_callbacks(execute=True):
            policies.set_governance(tenant=sharing, log_content=True, content_retention_days=1)
        ask = [{"role": "user", "content": "private words of ann@example.com"}]
        _client(url, private).chat.completions.create(model=model, messages=ask)
        _client(url, sharing).chat.completions.create(model=model, messages=ask)
    finally:
        process.terminate()
        process.wait(10)
    text = log.read_text()
    assert "ann@example.com" not in text
    assert text.count("private words of [EMAIL]") == 1  # the sharing tenant's request only
