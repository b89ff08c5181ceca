"""Prefix-cache isolation in the CPU engine: ``cache_salt`` as vLLM reads it.

Observed through the engine's own counters, ``vllm:prefix_cache_queries_total`` and
``vllm:prefix_cache_hits_total`` (tokens), as a router or an operator would read them.
"""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from cpu_engine.backends import PAGE_SIZE
from cpu_engine.tests.engine_process import Engine, metric, scrape

# Each test talks to a real engine process (the session fixtures start it), so none is fast;
# marked here too so that collecting this folder alone deselects them.
pytestmark = [pytest.mark.engine, pytest.mark.processes]


def counters(engine: Engine) -> tuple[float, float]:
    values = scrape(engine)
    name = engine.spec.served_name
    return (
        metric(values, "vllm:prefix_cache_queries_total", model_name=name),
        metric(values, "vllm:prefix_cache_hits_total", model_name=name),
    )


def long_prefix() -> str:
    """A system prompt of several cache blocks, new to the engine (earlier tests cached others)."""
    words = " ".join(f"clause {i} of contract {uuid.uuid4().hex[:8]}" for i in range(40))
    return f"You are the assistant of one tenant. Confidential terms follow. {words}"


def ask(engine: Engine, system: str, question: str, salt: str | None) -> tuple[float, float]:
    """Send one chat; return how many prompt tokens it queried and hit in the prefix cache."""
    before = counters(engine)
    body = {
        "model": engine.spec.served_name,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        # transformers registers a prompt's blocks only for a request still running after its
        # first token, so one token would cache nothing.
        "max_tokens": 2,
        "ignore_eos": True,
    }
    if salt is not None:
        body["cache_salt"] = salt
    r = httpx.post(f"{engine.base_url}/chat/completions", json=body, headers=engine.auth, timeout=60)
    assert r.status_code == 200, r.text
    after = counters(engine)
    return after[0] - before[0], after[1] - before[1]


def test_a_tenant_hits_its_own_prefix_and_another_salt_never_does(chat_engine):
    prefix = long_prefix()

    queried, hit = ask(chat_engine, prefix, "What is clause 3?", "tenant-a")
    assert queried > 3 * PAGE_SIZE  # the lookup happened, over a prompt of several blocks
    assert hit == 0  # nobody sent this prefix before

    queried, hit = ask(chat_engine, prefix, "And clause 7?", "tenant-a")
    assert hit >= 3 * PAGE_SIZE  # tenant A reuses its own cached prefix

    queried, hit = ask(chat_engine, prefix, "And clause 7?", "tenant-b")
    assert queried > 3 * PAGE_SIZE
    assert hit == 0  # tenant B, same prompt, another salt: no timing signal from A's cache

    queried, hit = ask(chat_engine, prefix, "And clause 9?", "tenant-b")
    assert hit >= 3 * PAGE_SIZE  # B's own blocks are cached under B's salt


def test_requests_without_a_salt_share_among_themselves_only(chat_engine):
    prefix = long_prefix()
    assert ask(chat_engine, prefix, "One?", None)[1] == 0
    assert ask(chat_engine, prefix, "Two?", None)[1] >= 3 * PAGE_SIZE
    assert ask(chat_engine, prefix, "Two?", "tenant-c")[1] == 0


def test_completions_take_a_salt_too(chat_engine):
    prompt = long_prefix()
    with openai.OpenAI(base_url=chat_engine.base_url, api_key=chat_engine.spec.api_key, max_retries=0) as c:

        def complete(salt: str) -> float:
            before = counters(chat_engine)[1]
            c.completions.create(
                model=chat_engine.spec.served_name,
                prompt=prompt,
                max_tokens=2,
                extra_body={"cache_salt": salt, "ignore_eos": True},
            )
            return counters(chat_engine)[1] - before

        assert complete("tenant-d") == 0
        assert complete("tenant-d") >= 3 * PAGE_SIZE
        assert complete("tenant-e") == 0


@pytest.mark.parametrize("salt", ["", 42, ["a"]])
def test_it_rejects_a_salt_that_is_not_a_non_empty_string(chat_engine, salt):
    body = {
        "model": chat_engine.spec.served_name,
        "messages": [{"role": "user", "content": "hi"}],
        "cache_salt": salt,
    }
    r = httpx.post(
        f"{chat_engine.base_url}/chat/completions", json=body, headers=chat_engine.auth, timeout=10
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "cache_salt"
    assert "cache_salt" in error["message"]


def test_usage_reports_the_prompt_tokens_the_prefix_cache_served(chat_engine):
    """``usage.prompt_tokens_details.cached_tokens`` on chat and completions, whole and in the
    streamed usage chunk, equal to the hits the engine's counter saw (0, present, on a miss)."""
    prompt = long_prefix()
    with openai.OpenAI(base_url=chat_engine.base_url, api_key=chat_engine.spec.api_key, max_retries=0) as c:
        model = chat_engine.spec.served_name
        extra = {"cache_salt": "tenant-f", "ignore_eos": True}

        def hits_and_usage(call) -> tuple[float, object]:
            before = counters(chat_engine)[1]
            usage = call()
            return counters(chat_engine)[1] - before, usage

        hit, usage = hits_and_usage(
            lambda: c.completions.create(model=model, prompt=prompt, max_tokens=2, extra_body=extra).usage
        )
        assert hit == 0 and usage.prompt_tokens_details.cached_tokens == 0

        hit, usage = hits_and_usage(
            lambda: c.completions.create(model=model, prompt=prompt, max_tokens=2, extra_body=extra).usage
        )
        assert hit >= 3 * PAGE_SIZE and usage.prompt_tokens_details.cached_tokens == hit

        def streamed_chat():
            chunks = list(
                c.chat.completions.create(
                    model=model,
                    messages=[{"role": "system", "content": prompt}, {"role": "user", "content": "Hi"}],
                    max_tokens=2,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body=extra,
                )
            )
            assert all(chunk.usage is None for chunk in chunks[:-1])
            return chunks[-1].usage

        streamed_chat()  # caches the chat prompt's blocks
        hit, usage = hits_and_usage(streamed_chat)
        assert hit >= 3 * PAGE_SIZE and usage.prompt_tokens_details.cached_tokens == hit
