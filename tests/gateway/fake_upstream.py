"""A fast fake OpenAI-compatible engine that behaves like ``vllm serve`` where the gateway cares.

Run it with ``python -m uvicorn tests.gateway.fake_upstream:app --port P`` (the tests and
``bench/gateway.py`` do). Behaviour:

* ``/v1/chat/completions``, ``/v1/completions`` (stream and not), ``/v1/embeddings``,
  ``/v1/models``, ``/health``, ``/metrics`` (``vllm:num_requests_running`` / ``_waiting`` /
  ``vllm:kv_cache_usage_perc`` labelled ``model_name``).
* Prompt tokens = whitespace-separated words of the prompt/messages (+1); completion tokens =
  ``max_tokens`` (``max_completion_tokens``), default 8. Usage is exact and deterministic.
* Streams follow vLLM: ``stream_options.include_usage`` adds a final chunk with ``choices: []``
  and ``usage``; ``continuous_usage_stats`` puts cumulative ``usage`` on every chunk; streams end
  with ``data: [DONE]``.
* ``POST /tokenize`` like vLLM's: ``{"prompt"}`` or ``{"messages"}`` → ``{"count", "max_model_len",
  "tokens"}``, counted by the same rule (words, +1 unless ``add_special_tokens`` is false).
* Test knobs in the body (they pass through the gateway untouched): ``fake_delay`` (seconds per
  token), ``fake_error`` (an HTTP status to fail with, in OpenAI's error shape), ``fake_stall``
  (seconds to wait before answering at all), ``fake_no_usage`` (report no usage, whatever
  ``stream_options`` say), ``fake_die_after`` (drop the connection after this many chunks of a
  stream; for a non-streaming answer, after the headers).
* Env: ``FAKE_API_KEY`` (required bearer key), ``FAKE_NAME`` (reported in ``/_stats``),
  ``FAKE_WAITING`` (reported as waiting requests), ``FAKE_TOKEN_DELAY`` (default per-token delay),
  ``FAKE_FAIL`` (answer every inference request with this status, e.g. 503), ``FAKE_NO_TOKENIZE``
  (``/tokenize`` answers 404, as on an engine without it).
* ``GET /_stats`` → counters (requests, running, max running, aborted streams, tokens sent);
  ``POST /_reset`` zeroes them.
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson

from tests.gateway import fake_surfaces

API_KEY = os.environ.get("FAKE_API_KEY", "")
NAME = os.environ.get("FAKE_NAME", "fake")
WAITING = float(os.environ.get("FAKE_WAITING", "0"))
TOKEN_DELAY = float(os.environ.get("FAKE_TOKEN_DELAY", "0"))
FAIL = int(os.environ.get("FAKE_FAIL", "0"))
NO_TOKENIZE = os.environ.get("FAKE_NO_TOKENIZE") == "1"

STATS = {
    "requests": 0,
    "running": 0,
    "max_running": 0,
    "aborted": 0,
    "completion_tokens_sent": 0,
    "tokenize_calls": 0,
    "models": [],
}
JSON = [(b"content-type", b"application/json")]


def _words(value) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) if isinstance(v, str | list | dict) else 1 for v in value)
    if isinstance(value, dict):
        return _words(value.get("content") or value.get("text") or "")
    return 0


async def _json(send, status: int, body, headers=()) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [*JSON, *headers]})
    await send({"type": "http.response.body", "body": payload})


def _error(status: int, message: str) -> dict:
    return {
        "error": {
            "message": message,
            "type": "BadRequestError" if status < 500 else "InternalServerError",
            "param": None,
            "code": status,
        }
    }


async def _read(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _metrics() -> bytes:
    running = STATS["running"]
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{model_name="{NAME}"}} {running}',
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{model_name="{NAME}"}} {WAITING}',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f'vllm:kv_cache_usage_perc{{model_name="{NAME}"}} {min(1.0, running / 100)}',
    ]
    return ("\n".join(lines) + "\n").encode()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/metrics":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": _metrics()})
        return
    if path == "/_reset":
        STATS.update(
            requests=0,
            max_running=STATS["running"],
            aborted=0,
            completion_tokens_sent=0,
            tokenize_calls=0,
            models=[],
        )
        await _json(send, 200, {})
        return
    if path == "/_stats":
        await _json(send, 200, {**STATS, "name": NAME})
        return
    if path == "/_last":
        wanted = scope.get("query_string", b"").decode().partition("=")[2]
        await _json(send, 200, fake_surfaces.LAST.get(wanted.replace("%2F", "/"), {}))
        return
    if path == "/tokenize" and method == "POST":  # open, as on vLLM's port
        await _tokenize(orjson.loads(await _read(receive)), send)
        return
    headers = dict(scope["headers"])
    if API_KEY and headers.get(b"authorization") != f"Bearer {API_KEY}".encode():
        await _json(send, 401, {"error": "Unauthorized"})
        return
    if path == "/v1/models":
        await _json(
            send, 200, {"object": "list", "data": [{"id": NAME, "object": "model", "owned_by": "vllm"}]}
        )
        return
    if path.startswith("/v1/responses/"):  # retrieve and cancel: no body
        STATS["retrievals"] = STATS.get("retrievals", 0) + 1
        await fake_surfaces.handle(path, method, None, scope, send)
        return
    if method != "POST" or (
        path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
        and not fake_surfaces.handles(path)
    ):
        await _json(send, 404, {"detail": "Not Found"})
        return
    body = orjson.loads(await _read(receive))
    STATS["requests"] += 1
    model = body.get("model")
    if model not in STATS["models"]:
        STATS["models"].append(model)
    if FAIL:
        await _json(send, FAIL, _error(FAIL, "fake failure"))
        return
    if body.get("fake_stall"):
        await asyncio.sleep(float(body["fake_stall"]))
    if body.get("fake_error"):
        status = int(body["fake_error"])
        await _json(send, status, _error(status, f"fake error {status}"))
        return
    STATS["running"] += 1
    STATS["max_running"] = max(STATS["max_running"], STATS["running"])
    try:
        if fake_surfaces.handles(path):
            await fake_surfaces.handle(path, method, body, scope, send)
        elif path == "/v1/embeddings":
            await _embeddings(body, send)
        else:
            await _generate(path, body, receive, send)
    finally:
        STATS["running"] -= 1


async def _tokenize(body, send) -> None:
    STATS["tokenize_calls"] += 1
    if NO_TOKENIZE:
        await _json(send, 404, {"detail": "Not Found"})
        return
    if "messages" in body:
        count = _words(body["messages"]) + 1
    else:
        count = _words(body.get("prompt") or "") + (0 if body.get("add_special_tokens") is False else 1)
    await _json(send, 200, {"count": count, "max_model_len": 4096, "tokens": list(range(count))})


class Died(Exception):
    """Raised mid-response: uvicorn drops the connection, as when an engine process dies."""


async def _embeddings(body, send) -> None:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) and inputs and isinstance(inputs[0], str) else [inputs]
    prompt = sum(_words(i) + 1 for i in items)
    await _json(
        send,
        200,
        {
            "object": "list",
            "model": body.get("model"),
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]}
                for i in range(len(items))
            ],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        },
    )


async def _generate(path, body, receive, send) -> None:
    chat = path == "/v1/chat/completions"
    prompt_tokens = (_words(body.get("messages") or []) if chat else _words(body.get("prompt") or "")) + 1
    n = body.get("max_completion_tokens") or body.get("max_tokens") or 8
    delay = float(body.get("fake_delay") or TOKEN_DELAY)
    created = int(time.time())
    rid = ("chatcmpl-" if chat else "cmpl-") + os.urandom(8).hex()
    model = body.get("model")
    if not body.get("stream"):
        if delay:
            await asyncio.sleep(delay * n)
        text = "tok " * n
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
        )
        STATS["completion_tokens_sent"] += n
        answer = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            },
        }
        if body.get("fake_no_usage"):
            del answer["usage"]
        if body.get("fake_die_after") is not None:
            await send({"type": "http.response.start", "status": 200, "headers": JSON})
            await send({"type": "http.response.body", "body": orjson.dumps(answer)[:20], "more_body": True})
            raise Died
        await _json(send, 200, answer)
        return
    options = body.get("stream_options") or {}
    include_usage = options.get("include_usage") is True and not body.get("fake_no_usage")
    die_after = body.get("fake_die_after")
    continuous = include_usage and options.get("continuous_usage_stats") is True
    disconnected = asyncio.Event()

    async def watch():
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    watcher = asyncio.create_task(watch())
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    try:
        for i in range(1, n + 1):
            if delay:
                await asyncio.sleep(delay)
            if disconnected.is_set():
                STATS["aborted"] += 1
                return
            if die_after is not None and i > die_after:
                raise Died
            if chat:
                delta = {"content": "tok "} if i > 1 else {"role": "assistant", "content": "tok "}
                choice = {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": "length" if i == n else None,
                }
            else:
                choice = {
                    "index": 0,
                    "text": "tok ",
                    "logprobs": None,
                    "finish_reason": "length" if i == n else None,
                }
            chunk = {
                "id": rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            if continuous:
                chunk["usage"] = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": i,
                    "total_tokens": prompt_tokens + i,
                }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
            STATS["completion_tokens_sent"] += 1
        tail = b""
        if include_usage:
            final = {
                "id": rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": n,
                    "total_tokens": prompt_tokens + n,
                },
            }
            tail = b"data: " + orjson.dumps(final) + b"\n\n"
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
    finally:
        watcher.cancel()
