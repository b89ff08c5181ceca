"""A fake engine with a batching scheduler, for ``bench/batch.py``: fixed step time, priority queue.

Run: ``python -m uvicorn --app-dir bench batch_engine:app --port P`` with ``BENCH_ENGINE_SLOTS``
(sequences in the batch, vLLM's ``max_num_seqs``; default 16), ``BENCH_ENGINE_STEP_MS`` (one decode
step with one sequence running; default 20) and ``BENCH_ENGINE_STEP_PER_SEQ_MS`` (what each further
running sequence adds to a step; default 0.25: decode on a GPU is memory-bound, so a fuller batch
costs little more per step).

Every step emits one token for each running sequence. A request waits for a free slot; waiting
requests are admitted by (``priority``, arrival), as vLLM's ``--scheduling-policy priority`` does
(no preemption). ``/v1/chat/completions`` (stream and not; ``stream_options.include_usage``
honoured), ``/health``, ``/metrics`` (vLLM's running/waiting gauges) and ``/_stats``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time

import orjson

SLOTS = int(os.environ.get("BENCH_ENGINE_SLOTS", "16"))
STEP_S = float(os.environ.get("BENCH_ENGINE_STEP_MS", "20")) / 1000
PER_SEQ_S = float(os.environ.get("BENCH_ENGINE_STEP_PER_SEQ_MS", "0.25")) / 1000
API_KEY = os.environ.get("FAKE_API_KEY", "")


class Sequence:
    __slots__ = ("done", "queue", "remaining")

    def __init__(self, tokens: int):
        self.remaining = tokens
        self.queue: asyncio.Queue[int] = asyncio.Queue()  # token index, -1 at the end
        self.done = False


class Scheduler:
    def __init__(self) -> None:
        self.waiting: list[tuple[int, int, Sequence]] = []
        self.running: list[Sequence] = []
        self.order = itertools.count()
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.stats = {"requests": 0, "tokens": 0, "max_running": 0, "max_waiting": 0}

    def submit(self, tokens: int, priority: int) -> Sequence:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.loop())
        seq = Sequence(tokens)
        heapq.heappush(self.waiting, (priority, next(self.order), seq))
        self.stats["requests"] += 1
        self.stats["max_waiting"] = max(self.stats["max_waiting"], len(self.waiting))
        self.wake.set()
        return seq

    async def loop(self) -> None:
        while True:
            while self.waiting and len(self.running) < SLOTS:
                self.running.append(heapq.heappop(self.waiting)[2])
            if not self.running:
                self.wake.clear()
                await self.wake.wait()
                continue
            self.stats["max_running"] = max(self.stats["max_running"], len(self.running))
            await asyncio.sleep(STEP_S + PER_SEQ_S * (len(self.running) - 1))
            still = []
            for seq in self.running:
                seq.remaining -= 1
                self.stats["tokens"] += 1
                seq.queue.put_nowait(seq.remaining)
                if seq.remaining <= 0:
                    seq.queue.put_nowait(-1)
                else:
                    still.append(seq)
            self.running = still


SCHED = Scheduler()
JSON = [(b"content-type", b"application/json")]


async def _read(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _send_json(send, status: int, body) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


def _words(messages) -> int:
    total = 0
    for message in messages or ():
        content = message.get("content") if isinstance(message, dict) else None
        total += len(content.split()) if isinstance(content, str) else 0
    return total + 1


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/health":
        await _send_json(send, 200, {})
        return
    if path == "/_stats":
        await _send_json(send, 200, SCHED.stats)
        return
    if path == "/metrics":
        body = (
            f'vllm:num_requests_running{{model_name="bench"}} {len(SCHED.running)}\n'
            f'vllm:num_requests_waiting{{model_name="bench"}} {len(SCHED.waiting)}\n'
            'vllm:kv_cache_usage_perc{model_name="bench"} 0.1\n'
        ).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})
        return
    headers = dict(scope["headers"])
    if API_KEY and headers.get(b"authorization") != f"Bearer {API_KEY}".encode():
        await _send_json(send, 401, {"error": {"message": "bad engine key", "type": "auth", "code": 401}})
        return
    if path != "/v1/chat/completions":
        await _send_json(send, 404, {"error": {"message": "not found", "type": "not_found", "code": 404}})
        return
    body = orjson.loads(await _read(receive))
    tokens = int(body.get("max_tokens") or 16)
    prompt = _words(body.get("messages"))
    priority = int(body.get("priority") or 0)
    seq = SCHED.submit(tokens, priority)
    usage = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
    if not body.get("stream"):
        while await seq.queue.get() != -1:
            pass
        await _send_json(
            send,
            200,
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok " * tokens},
                        "finish_reason": "length",
                    }
                ],
                "usage": usage,
            },
        )
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    include_usage = (body.get("stream_options") or {}).get("include_usage") is True
    while (left := await seq.queue.get()) != -1:
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "model": body.get("model"),
            "choices": [
                {"index": 0, "delta": {"content": "tok "}, "finish_reason": None if left else "length"}
            ],
        }
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                "more_body": True,
            }
        )
    tail = b""
    if include_usage:
        final = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [], "usage": usage}
        tail = b"data: " + orjson.dumps(final) + b"\n\n"
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
