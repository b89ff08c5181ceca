"""A fake OpenAI-compatible engine for ``bench/chaos.py`` that keeps a ledger of what it emitted.

``bench/chaos.py`` compares what the engines produced with what Berth billed, so this engine
writes, per request id (the gateway's ``X-Request-Id``), the prompt tokens it prefilled and the
completion tokens it has written to its socket so far: one line per step, appended with a single
``os.write`` on an ``O_APPEND`` descriptor, so the ledger survives the engine's own SIGKILL and
the last line of a request id is its total. A token counts once the engine has handed its chunk
to the connection while the gateway was still connected.

``POST /_die`` makes the engine SIGKILL itself in the middle of its next stream, just after a
chunk and its ledger line, so the ledger is exact up to the kill.

Run: ``LEDGER=path ENGINE_KEY=k TOKEN_DELAY=0.01 python -m uvicorn bench.ledger_engine:app``.
Token counts follow the request deterministically: prompt = words + 1; completion = ``max_tokens``
(default 16) per choice, ``n`` choices; embeddings bill the prompt only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import orjson

KEY = os.environ.get("ENGINE_KEY", "")
DELAY = float(os.environ.get("TOKEN_DELAY", "0.01"))
ENGINE = os.environ.get("ENGINE_NAME", "engine")
DYING = asyncio.Event()  # set by POST /_die: the engine SIGKILLs itself inside its next stream
_ledger = os.open(os.environ.get("LEDGER", os.devnull), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def note(request_id: str, endpoint: str, prompt: int, completion: int) -> None:
    line = f"{request_id}\t{ENGINE}\t{endpoint}\t{prompt}\t{completion}\t{time.time():.3f}\n"
    os.write(_ledger, line.encode())


def words(value) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(words(item) for item in value)
    if isinstance(value, dict):
        return words(value.get("content") or "")
    return 1


async def reply(send, status: int, body: dict) -> None:
    raw = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def read_body(receive) -> bytes:
    parts, more = [], True
    while more:
        message = await receive()
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(parts)


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def stream(send, receive, request_id, endpoint, body, prompt, per_choice, choices) -> None:
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    options = body.get("stream_options") or {}
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    emitted = 0
    try:
        for step in range(per_choice):
            await asyncio.sleep(DELAY)
            if gone.is_set():
                return
            for index in range(choices):
                piece = {"delta": {"content": f"t{step} "}} if endpoint == "chat" else {"text": f"t{step} "}
                chunk = {"id": request_id, "object": kind, "choices": [{"index": index, **piece}]}
                if options.get("continuous_usage_stats"):
                    chunk["usage"] = usage(prompt, emitted + 1)
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                        "more_body": True,
                    }
                )
                emitted += 1
                note(request_id, endpoint + "-stream", prompt, emitted)
                if DYING.is_set():
                    os.kill(os.getpid(), signal.SIGKILL)  # mid-stream, right after a ledgered chunk
        tail = b""
        if options.get("include_usage"):
            tail += (
                b"data: "
                + orjson.dumps(
                    {"id": request_id, "object": kind, "choices": [], "usage": usage(prompt, emitted)}
                )
                + b"\n\n"
            )
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
    finally:
        watcher.cancel()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path in ("/health", "/metrics"):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/_die":
        DYING.set()
        await reply(send, 202, {})
        return
    headers = dict(scope["headers"])
    if KEY and headers.get(b"authorization") != b"Bearer " + KEY.encode():
        await reply(send, 401, {"error": {"message": "bad engine key", "type": "auth"}})
        return
    endpoint = {
        "/v1/chat/completions": "chat",
        "/v1/completions": "completions",
        "/v1/embeddings": "embeddings",
        "/tokenize": "tokenize",
    }.get(path)
    if endpoint is None:
        await reply(send, 404, {"error": {"message": "not found"}})
        return
    body = orjson.loads(await read_body(receive))
    source = (
        body.get("messages")
        if endpoint in ("chat", "tokenize") and "messages" in body
        else body.get("prompt", body.get("input"))
    )
    prompt = words(source) + 1
    if endpoint == "tokenize":
        await reply(send, 200, {"count": prompt, "max_model_len": 4096, "tokens": list(range(prompt))})
        return
    request_id = headers.get(b"x-request-id", b"none").decode()
    note(request_id, endpoint + ("-stream" if body.get("stream") else ""), prompt, 0)  # the prefill is done
    if endpoint == "embeddings":
        items = source if isinstance(source, list) else [source]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))]
        await reply(
            send, 200, {"object": "list", "data": data, "model": body.get("model"), "usage": usage(prompt, 0)}
        )
        return
    choices = int(body.get("n") or 1)
    per_choice = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    if body.get("stream"):
        await stream(send, receive, request_id, endpoint, body, prompt, per_choice, choices)
        return
    await asyncio.sleep(DELAY * per_choice)
    completion = per_choice * choices
    if endpoint == "chat":
        out = [
            {
                "index": i,
                "message": {"role": "assistant", "content": "t " * per_choice},
                "finish_reason": "length",
            }
            for i in range(choices)
        ]
        kind = "chat.completion"
    else:
        out = [{"index": i, "text": "t " * per_choice, "finish_reason": "length"} for i in range(choices)]
        kind = "text_completion"
    note(request_id, endpoint, prompt, completion)
    await reply(
        send, 200, {"id": request_id, "object": kind, "choices": out, "usage": usage(prompt, completion)}
    )
