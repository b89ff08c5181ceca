"""Requests the engine got but never fully answered: not retried, answered 504, billed the prompt;
answers without usage are counted and flagged, never billed 0."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from billing.models import UsageRecord
from tests.gateway.conftest import (
    engine_stats,
    free_port,
    make_key,
    make_tenant,
    register_model,
    start_gateway,
    uvicorn,
)
from tests.gateway.test_usage import drain

pytestmark = pytest.mark.django_db

WORDS = "one two three four five six seven"  # the fake engine counts 7 words + 1
PROMPT = [{"role": "user", "content": WORDS}]


@pytest.fixture(scope="module")
def impatient_gateway(_use_test_redis_db, engines):
    proc = start_gateway(BERTH_GATEWAY_READ_TIMEOUT="1")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def engine_without_tokenizer(_use_test_redis_db):
    proc = uvicorn(
        "tests.gateway.fake_upstream:app",
        free_port(),
        {"FAKE_API_KEY": "engine-nt", "FAKE_NAME": "nt", "FAKE_NO_TOKENIZE": "1"},
        "/health",
    )
    proc.name, proc.api_key = "nt", "engine-nt"
    yield proc
    proc.stop()


def reset(*engines) -> None:
    for engine in engines:
        httpx.post(engine.url + "/_reset")


def client(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def record(request_id: str, timeout: float = 10) -> UsageRecord:
    """The request's record, once the gateway wrote it (a disconnect is metered asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        drain()
        found = UsageRecord.objects.filter(request_id=request_id).first()
        if found is not None or time.monotonic() > deadline:
            assert found is not None, f"no usage record for {request_id}"
            return found
        time.sleep(0.1)


def test_a_read_timeout_is_not_retried_and_bills_the_prompt(impatient_gateway, engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, engines)
    reset(*engines)
    with pytest.raises(openai.InternalServerError) as exc:
        client(impatient_gateway, key).chat.completions.create(
            model=model, messages=PROMPT, max_tokens=5, extra_body={"fake_stall": 2.5}
        )
    assert exc.value.status_code == 504
    assert exc.value.code == "upstream_timeout"
    assert "not retried" in exc.value.message
    # The engine got it once: running it again elsewhere would have doubled the work.
    assert sum(engine_stats(e)["requests"] for e in engines) == 1
    rec = record(exc.value.response.headers["x-request-id"])
    assert (rec.status, rec.http_status, rec.prompt_tokens, rec.completion_tokens) == (
        "upstream_timeout",
        504,
        8,
        0,
    )
    assert rec.usage_source == "tokenizer"


def test_a_connection_broken_after_the_headers_is_not_retried(gateway, engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, engines)
    reset(*engines)
    with pytest.raises(openai.InternalServerError) as exc:
        client(gateway, key).chat.completions.create(
            model=model, messages=PROMPT, max_tokens=5, extra_body={"fake_die_after": 0}
        )
    assert (exc.value.status_code, exc.value.code) == (504, "upstream_disconnected")
    assert sum(engine_stats(e)["requests"] for e in engines) == 1
    rec = record(exc.value.response.headers["x-request-id"])
    assert (rec.status, rec.prompt_tokens, rec.usage_source) == ("upstream_error", 8, "tokenizer")


def test_a_stream_dropped_before_its_first_chunk_pays_its_prompt(gateway, engines, redis_client):
    key = make_key(make_tenant())
    engine = engines[0]
    model = register_model(redis_client, [engine])
    reset(engine)
    stream = client(gateway, key).chat.completions.create(
        model=model, messages=PROMPT, max_tokens=50, stream=True, extra_body={"fake_delay": 0.5}
    )
    request_id = stream.response.headers["x-request-id"]
    stream.close()  # headers came, no chunk yet: the engine has done the prefill
    rec = record(request_id)
    assert rec.status == "client_disconnected"
    assert (rec.prompt_tokens, rec.completion_tokens, rec.usage_source) == (8, 0, "tokenizer")


def test_without_the_engines_tokenizer_the_prompt_is_estimated_and_flagged(
    gateway, engine_without_tokenizer, redis_client
):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engine_without_tokenizer])
    stream = client(gateway, key).chat.completions.create(
        model=model, messages=PROMPT, max_tokens=50, stream=True, extra_body={"fake_delay": 0.5}
    )
    request_id = stream.response.headers["x-request-id"]
    stream.close()
    rec = record(request_id)
    assert rec.usage_source == "estimate"
    assert rec.prompt_tokens == (len(WORDS) + 16) // 4 + 1  # the gateway's ≈4 characters per token
    assert engine_stats(engine_without_tokenizer)["tokenize_calls"] >= 1


def test_an_engine_dying_before_its_first_chunk_bills_the_prompt(gateway, engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engines[0]])
    stream = client(gateway, key).chat.completions.create(
        model=model, messages=PROMPT, max_tokens=50, stream=True, extra_body={"fake_die_after": 0}
    )
    request_id = stream.response.headers["x-request-id"]
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(stream)
    rec = record(request_id)
    assert (rec.status, rec.prompt_tokens, rec.completion_tokens) == ("upstream_error", 8, 0)
    assert rec.usage_source == "tokenizer"


def test_an_engine_dying_mid_stream_bills_what_was_delivered(gateway, engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engines[0]])
    stream = client(gateway, key).chat.completions.create(
        model=model, messages=PROMPT, max_tokens=50, stream=True, extra_body={"fake_die_after": 6}
    )
    request_id = stream.response.headers["x-request-id"]
    seen = 0
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _chunk in stream:
            seen += 1
    assert seen == 6
    rec = record(request_id)
    assert (rec.status, rec.prompt_tokens, rec.completion_tokens, rec.usage_source) == (
        "upstream_error",
        8,
        6,
        "engine",
    )


def test_an_answer_without_usage_is_counted_with_the_tokenizer(gateway, engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engines[0]])
    answer = client(gateway, key).chat.completions.create(
        model=model, messages=PROMPT, max_tokens=9, extra_body={"fake_no_usage": True}
    )
    assert answer.usage is None  # passed through as the engine sent it
    rec = record(answer._request_id or "")
    assert (rec.status, rec.prompt_tokens, rec.completion_tokens, rec.usage_source) == (
        "ok",
        8,
        9,
        "tokenizer",
    )


def test_a_stream_without_usage_is_counted_by_chunks(gateway, engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engines[0]])
    stream = client(gateway, key).completions.create(
        model=model, prompt=WORDS, max_tokens=12, stream=True, extra_body={"fake_no_usage": True}
    )
    request_id = stream.response.headers["x-request-id"]
    assert len(list(stream)) == 12
    rec = record(request_id)
    assert (rec.status, rec.prompt_tokens, rec.completion_tokens) == ("ok", 8, 12)
    assert rec.usage_source == "chunks"


def test_an_engine_failing_before_any_byte_is_retried_elsewhere_and_billed_once(
    gateway, engines, redis_client
):
    key = make_key(make_tenant())
    failing = uvicorn(
        "tests.gateway.fake_upstream:app",
        free_port(),
        {"FAKE_API_KEY": "engine-f", "FAKE_NAME": "f", "FAKE_FAIL": "503"},
        "/health",
    )
    failing.name, failing.api_key = "f", "engine-f"
    try:
        model = register_model(redis_client, [failing, engines[0]])
        answers = [
            client(gateway, key).chat.completions.create(model=model, messages=PROMPT, max_tokens=3)
            for _ in range(4)
        ]
    finally:
        failing.stop()
    assert all(a.usage.completion_tokens == 3 for a in answers)
    drain()
    records = UsageRecord.objects.filter(request_id__in=[a._request_id for a in answers])
    assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in records] == [("ok", 8, 3)] * 4
