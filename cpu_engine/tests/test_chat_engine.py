"""The CPU chat engine, as a client sees it: a real process, the real openai SDK, raw SSE."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from cpu_engine.tests.engine_process import (
    API_KEY,
    Engine,
    EngineArgs,
    free_port,
    metric,
    scrape,
    start_engine,
    stop_engine,
    wait_ready,
)

# Each test talks to a real engine process (the session fixtures start it), so none is fast;
# marked here too so that collecting this folder alone deselects them.
pytestmark = [pytest.mark.engine, pytest.mark.processes]

MESSAGES = [{"role": "user", "content": "Say something about lighthouses."}]


@pytest.fixture
def client(chat_engine: Engine) -> openai.OpenAI:
    with openai.OpenAI(base_url=chat_engine.base_url, api_key=chat_engine.spec.api_key, max_retries=0) as c:
        yield c


def model(engine: Engine) -> str:
    return engine.spec.served_name


def sse_events(engine: Engine, path: str, body: dict) -> list[str]:
    """The raw ``data:`` payloads of a streamed response, in order."""
    with httpx.stream("POST", f"{engine.base_url}{path}", json=body, headers=engine.auth, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]


def chunks_of(events: list[str]) -> list[dict]:
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    return [json.loads(e) for e in events[:-1]]


def prompt_token_count(engine: Engine, messages: list[dict]) -> int:
    r = httpx.post(f"{engine.url}/tokenize", json={"model": model(engine), "messages": messages}, timeout=10)
    assert r.status_code == 200
    return r.json()["count"]


def test_it_answers_chat_with_usage(chat_engine, client):
    reply = client.chat.completions.create(model=model(chat_engine), messages=MESSAGES, max_tokens=8)
    assert reply.model == model(chat_engine)
    assert reply.object == "chat.completion"
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens == prompt_token_count(chat_engine, MESSAGES)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 8
    else:
        assert 1 <= usage.completion_tokens <= 8


def test_it_is_deterministic_at_temperature_zero_while_sampling_otherwise(chat_engine, client):
    def ask(**kwargs):
        reply = client.chat.completions.create(
            model=model(chat_engine), messages=MESSAGES, max_tokens=24, **kwargs
        )
        return reply.choices[0].message.content

    assert ask(temperature=0) == ask(temperature=0)
    # Sampling settings are per request: high-temperature replies differ from the greedy one.
    greedy = ask(temperature=0)
    assert any(ask(temperature=2.0, top_p=1.0) != greedy for _ in range(3))


def test_it_streams_with_done_terminator_and_no_usage_unless_asked(chat_engine):
    body = {
        "model": model(chat_engine),
        "messages": MESSAGES,
        "max_tokens": 12,
        "stream": True,
        "temperature": 0,
    }
    chunks = chunks_of(sse_events(chat_engine, "/chat/completions", body))
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == model(chat_engine) for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_it_sends_one_usage_chunk_without_choices_when_include_usage(chat_engine, client):
    body = {
        "model": model(chat_engine),
        "messages": MESSAGES,
        "max_tokens": 12,
        "stream": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    chunks = chunks_of(sse_events(chat_engine, "/chat/completions", body))
    with_usage = [c for c in chunks if "usage" in c]
    assert len(with_usage) == 1
    assert with_usage[0] is chunks[-1]
    assert with_usage[0]["choices"] == []
    usage = with_usage[0]["usage"]

    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    reply = client.chat.completions.create(
        model=model(chat_engine), messages=MESSAGES, max_tokens=12, temperature=0
    )
    assert streamed == reply.choices[0].message.content
    assert usage == reply.usage.model_dump(exclude_none=True)


def test_it_reports_running_usage_on_every_chunk_with_continuous_usage_stats(chat_engine):
    body = {
        "model": model(chat_engine),
        "messages": MESSAGES,
        "max_tokens": 10,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    chunks = chunks_of(sse_events(chat_engine, "/chat/completions", body))
    assert all("usage" in c for c in chunks)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts)
    assert counts[0] == 0
    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"]["completion_tokens"] == counts[-2]
    assert all(
        c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]
        for c in chunks
    )


def test_the_sdk_stream_yields_usage_last(chat_engine, client):
    stream = client.chat.completions.create(
        model=model(chat_engine),
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens <= 6


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_it_stops_at_a_stop_string_without_sending_any_of_it(chat_engine, client, stream):
    greedy = {"model": model(chat_engine), "messages": MESSAGES, "max_tokens": 24, "temperature": 0}
    text = client.chat.completions.create(**greedy).choices[0].message.content
    # Stops of several lengths from the middle of the greedy text; some straddle token boundaries.
    for length in (2, 3, 5):
        stop = text[len(text) // 2 : len(text) // 2 + length]
        assert len(stop) == length
        if stream:
            chunks = chunks_of(
                sse_events(chat_engine, "/chat/completions", {**greedy, "stop": [stop], "stream": True})
            )
            content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            cut = client.chat.completions.create(**greedy, stop=[stop]).choices[0]
            content, finish = cut.message.content, cut.finish_reason
        assert finish == "stop"
        assert content == text[: text.index(stop)]


def test_it_serves_completions(chat_engine, client):
    reply = client.completions.create(
        model=model(chat_engine), prompt="def main():", max_tokens=5, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens <= 5
    ids = httpx.post(f"{chat_engine.url}/tokenize", json={"prompt": "def main():"}, timeout=10).json()[
        "tokens"
    ]
    assert reply.usage.prompt_tokens == len(ids)
    # The same prompt as token ids gives the same greedy text.
    again = client.completions.create(model=model(chat_engine), prompt=ids, max_tokens=5, temperature=0)
    assert again.choices[0].text == reply.choices[0].text


def test_it_streams_completions_with_usage(chat_engine):
    body = {
        "model": model(chat_engine),
        "prompt": "import os",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = chunks_of(sse_events(chat_engine, "/completions", body))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] <= 4
    assert sum("usage" in c for c in chunks) == 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "wrong"}])
def test_it_rejects_missing_or_wrong_key(chat_engine, headers):
    body = {"model": model(chat_engine), "messages": MESSAGES}
    for method, path in [("POST", "/chat/completions"), ("POST", "/completions"), ("GET", "/models")]:
        r = httpx.request(method, f"{chat_engine.base_url}{path}", json=body, headers=headers, timeout=10)
        assert r.status_code == 401
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "invalid_api_key"


def test_the_sdk_raises_authentication_error_for_a_wrong_key(chat_engine):
    with openai.OpenAI(base_url=chat_engine.base_url, api_key="nope", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_it_answers_404_model_not_found_for_an_unknown_model(chat_engine, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": MESSAGES, "temperature": 9},
        {"messages": MESSAGES, "max_tokens": 0},
        {"messages": MESSAGES, "max_tokens": 100000},
        {"messages": MESSAGES, "n": 2},
        {"messages": MESSAGES, "stream_options": {"include_usage": True}},
        {"messages": MESSAGES, "stream": "yes please"},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {},
    ],
    ids=[
        "empty",
        "role",
        "temperature",
        "zero-max",
        "over-context",
        "n",
        "options-no-stream",
        "stream",
        "image",
        "no-messages",
    ],
)
def test_it_answers_400_for_bad_chat_input(chat_engine, body):
    r = httpx.post(
        f"{chat_engine.base_url}/chat/completions",
        json={"model": model(chat_engine), **body},
        headers=chat_engine.auth,
        timeout=10,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1, 2]", b'{"prompt": ""}', b'{"prompt": [999999]}', b'{"prompt": ["a", "b"]}']
)
def test_it_answers_400_for_bad_completion_input(chat_engine, raw):
    headers = {**chat_engine.auth, "content-type": "application/json"}
    r = httpx.post(f"{chat_engine.base_url}/completions", content=raw, headers=headers, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_it_lists_the_model_in_vllm_shape(chat_engine, client):
    r = httpx.get(f"{chat_engine.base_url}/models", headers=chat_engine.auth, timeout=10)
    body = r.json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == model(chat_engine)
    assert card["object"] == "model"
    assert card["root"] == chat_engine.spec.source
    assert card["parent"] is None
    assert card["max_model_len"] == 2048
    assert card["permission"][0]["object"] == "model_permission"
    assert [m.id for m in client.models.list()] == [model(chat_engine)]


def test_health_and_metrics_need_no_key(chat_engine):
    assert httpx.get(f"{chat_engine.url}/health", timeout=5).status_code == 200
    r = httpx.get(f"{chat_engine.url}/metrics", timeout=5)
    assert r.status_code == 200
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f'{name}{{engine="0",model_name="{model(chat_engine)}"}}' in r.text


def test_metrics_count_the_tokens_reported_in_usage(chat_engine, client):
    before = scrape(chat_engine)
    reply = client.chat.completions.create(model=model(chat_engine), messages=MESSAGES, max_tokens=7)
    streamed = list(
        client.completions.create(
            model=model(chat_engine),
            prompt="class A:",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )[-1].usage
    after = scrape(chat_engine)
    name = model(chat_engine)
    prompt = metric(after, "vllm:prompt_tokens_total", model_name=name) - metric(
        before, "vllm:prompt_tokens_total", model_name=name
    )
    generated = metric(after, "vllm:generation_tokens_total", model_name=name) - metric(
        before, "vllm:generation_tokens_total", model_name=name
    )
    assert prompt == reply.usage.prompt_tokens + streamed.prompt_tokens
    assert generated == reply.usage.completion_tokens + streamed.completion_tokens

    def finished(values):
        return sum(
            metric(values, "vllm:request_success_total", model_name=name, finished_reason=r)
            for r in ("stop", "length")
        )

    assert finished(after) - finished(before) == 2


def test_it_batches_four_concurrent_requests_with_correct_usage(chat_engine):
    async def main():
        async with openai.AsyncOpenAI(
            base_url=chat_engine.base_url, api_key=chat_engine.spec.api_key
        ) as aclient:
            prompts = [[{"role": "user", "content": f"Question number {i}?" * (i + 1)}] for i in range(4)]
            replies = await asyncio.gather(
                *[
                    aclient.chat.completions.create(
                        model=model(chat_engine),
                        messages=p,
                        max_tokens=16 + i,
                        extra_body={"ignore_eos": True},
                    )
                    for i, p in enumerate(prompts)
                ]
            )
            return prompts, replies

    prompts, replies = asyncio.run(main())
    for i, (messages, reply) in enumerate(zip(prompts, replies, strict=True)):
        assert reply.usage.prompt_tokens == prompt_token_count(chat_engine, messages)
        assert reply.usage.completion_tokens == 16 + i
        assert reply.choices[0].finish_reason == "length"
    assert len({r.id for r in replies}) == 4


def test_ignore_eos_runs_to_max_tokens(chat_engine, client):
    reply = client.chat.completions.create(
        model=model(chat_engine), messages=MESSAGES, max_tokens=40, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 40
    assert reply.choices[0].finish_reason == "length"


def test_a_client_disconnect_stops_generation(chat_engine):
    name = model(chat_engine)
    before = scrape(chat_engine)
    body = {"model": name, "messages": MESSAGES, "max_tokens": 1900, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{chat_engine.base_url}/chat/completions", json=body, headers=chat_engine.auth, timeout=30
    ) as r:
        lines = r.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)

    deadline = time.monotonic() + 20
    while True:
        after = scrape(chat_engine)
        aborted = metric(
            after, "vllm:request_success_total", model_name=name, finished_reason="abort"
        ) - metric(before, "vllm:request_success_total", model_name=name, finished_reason="abort")
        if aborted == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert aborted == 1
    assert metric(after, "vllm:num_requests_running", model_name=name) == 0
    generated = metric(after, "vllm:generation_tokens_total", model_name=name) - metric(
        before, "vllm:generation_tokens_total", model_name=name
    )
    assert generated < 1900


def test_a_client_leaving_a_non_streaming_request_stops_generation(chat_engine):
    name = model(chat_engine)
    before = scrape(chat_engine)
    body = {"model": name, "messages": MESSAGES, "max_tokens": 1900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{chat_engine.base_url}/chat/completions", json=body, headers=chat_engine.auth, timeout=1.5
        )

    deadline = time.monotonic() + 20
    while True:
        after = scrape(chat_engine)
        aborted = metric(
            after, "vllm:request_success_total", model_name=name, finished_reason="abort"
        ) - metric(before, "vllm:request_success_total", model_name=name, finished_reason="abort")
        if aborted == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert aborted == 1
    generated = metric(after, "vllm:generation_tokens_total", model_name=name) - metric(
        before, "vllm:generation_tokens_total", model_name=name
    )
    assert generated < 1900


def test_sigterm_ends_open_streams_after_the_grace_period(tiny_model_path, tmp_path):
    spec = EngineArgs(
        served_name="tiny",
        source=str(tiny_model_path),
        task="chat",
        host="127.0.0.1",
        port=free_port(),
        api_key=API_KEY,
        extra_args=("--graceful-shutdown-timeout", "1"),
    )
    engine = start_engine(spec, tmp_path / "engine.log")
    try:
        wait_ready(engine)
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1900, "stream": True, "ignore_eos": True}
        with httpx.stream(
            "POST", f"{engine.base_url}/chat/completions", json=body, headers=engine.auth, timeout=60
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            engine.process.terminate()
            rest = []
            # After the grace period the server drops the connection mid-stream, long before 1900 tokens.
            with pytest.raises(httpx.RemoteProtocolError):
                for line in lines:
                    rest.append(line)
        assert "data: [DONE]" not in rest
        assert engine.process.wait(timeout=30) in (0, -15)
    finally:
        if engine.process.poll() is None:
            stop_engine(engine)
