"""The engine's HTTP routes: vLLM's OpenAI-compatible surface over the ``Engine`` of the app.

Each route is a plain function that takes the request and finds the engine on
``request.app.state.engine``; ``cpu_engine.app`` registers them. Every difference from vLLM that a
client could see is decided here or in ``cpu_engine.app``: OpenAI-shaped errors,
``stream_options`` (``include_usage`` and ``continuous_usage_stats``), the ``[DONE]`` terminator,
``/v1/models`` and ``/tokenize``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from cpu_engine.backends import SamplingParams
from cpu_engine.engine import Engine
from cpu_engine.errors import InputError, error_body, error_id, internal_message, validation_message
from cpu_engine.schemas import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
)
from cpu_engine.tools import Tool, forced_tool, openai_tools
from cpu_engine.tools import call as tools_call

logger = logging.getLogger("berth.cpu_engine")

Body = TypeVar("Body", bound=BaseModel)


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


async def parse(request: Request, model_cls: type[Body]) -> Body:
    """The JSON body as ``model_cls``, or an ``InputError`` phrased like vLLM's 400s."""
    try:
        raw = await request.body()
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError("request body must be a JSON object")
    try:
        body = model_cls.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise InputError(message, param) from exc
    engine_of(request).check_model(getattr(body, "model", None))
    return body


# -- routes without a model call -------------------------------------------------------------------


async def health(request: Request) -> Response:
    return Response(status_code=200 if engine_of(request).backend.is_alive() else 503)


async def prometheus(request: Request) -> Response:
    return Response(generate_latest(engine_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def models(request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    card = {
        "id": engine.served_name,
        "object": "model",
        "created": engine.created,
        "owned_by": "berth",
        "root": str(engine.backend.model_path),
        "parent": None,
        "max_model_len": engine.backend.max_model_len,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": engine.created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": False,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
    adapters = engine.lora.cards(engine.created) if engine.lora is not None else []
    return {"object": "list", "data": [card, *adapters]}


async def tokenize(request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    backend = engine.backend
    try:
        data = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not (isinstance(data.get("prompt"), str) or "messages" in data):
        raise InputError("send 'prompt' (a string) or 'messages'", "prompt")
    engine.check_model(data.get("model"))
    if "messages" in data:
        if engine.task == "embedding":
            raise InputError("this model has no chat template", "messages")
        try:
            messages = [ChatMessage.model_validate(m) for m in data["messages"]]
        except (ValidationError, TypeError) as exc:
            raise InputError("messages must be a list of chat messages", "messages") from exc
        tools = openai_tools(data.get("tools"))
        ids = backend.chat_prompt_ids([m.for_template() for m in messages], tools=[t.openai() for t in tools])
    else:
        add_special = bool(data.get("add_special_tokens", True))
        ids = list(backend.tokenizer(data["prompt"], add_special_tokens=add_special)["input_ids"])
    return {"count": len(ids), "max_model_len": backend.max_model_len, "tokens": ids}


# -- embeddings ------------------------------------------------------------------------------------


async def embeddings(request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    backend = engine.backend
    body = await parse(request, EmbeddingRequest)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InputError("input must not be empty", "input")
    if not all(isinstance(t, str) for t in texts):
        raise InputError(
            "token-array input is not supported by the CPU embedding engine; send a string or a list "
            "of strings",
            "input",
        )
    if any(t == "" for t in texts):
        raise InputError("input strings must not be empty", "input")
    if len(texts) > 2048:
        raise InputError("at most 2048 inputs per request", "input")
    if body.dimensions is not None and body.dimensions != backend.dimensions:
        raise InputError(
            f"this model only produces {backend.dimensions}-dimensional embeddings", "dimensions"
        )
    started = time.monotonic()
    lengths = backend.count_tokens(texts)
    vectors = await backend.embed(texts)
    data = []
    for i, vector in enumerate(vectors):
        if body.encoding_format == "base64":
            embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        else:
            embedding = vector.tolist()
        data.append({"index": i, "object": "embedding", "embedding": embedding})
    prompt_tokens = sum(lengths)
    engine.metrics.finished("stop", prompt_tokens=prompt_tokens, completion_tokens=0, started=started)
    return {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": engine.served_name,
        "data": data,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0,
        },
    }


# -- chat and completions --------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    engine = engine_of(request)
    body = await parse(request, ChatRequest)
    tools = openai_tools(body.tools)
    forced = forced_tool(tools, body.tool_choice)
    messages = [m.for_template() for m in body.messages]
    prompt_ids = engine.backend.chat_prompt_ids(messages, tools=[t.openai() for t in tools])
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = engine.sampling_params(body, len(prompt_ids), requested)
    if forced is not None:
        return tool_reply(engine, body, forced, len(prompt_ids))
    return await generate(
        request,
        engine,
        kind="chat",
        model=body.model,
        prompt_ids=prompt_ids,
        params=params,
        stream=body.stream,
        options=body.stream_options,
        cache_salt=body.cache_salt,
    )


def tool_reply(engine: Engine, body: ChatRequest, tool: Tool, prompt_len: int) -> Response:
    """The forced call of ``tool`` (see ``cpu_engine.tools``), whole or streamed as vLLM does:
    the call's id and name first, then its arguments, then finish_reason "tool_calls"."""
    reply = Reply(kind="chat", model=body.model or engine.served_name, prompt_len=prompt_len)
    made = tools_call(tool)
    produced = engine.backend.count_text_tokens(made.arguments)
    engine.metrics.finished(
        "stop", prompt_tokens=prompt_len, completion_tokens=produced, started=reply.started
    )
    called = {"id": made.id, "type": "function", "function": {"name": made.name, "arguments": made.arguments}}
    if not body.stream:
        whole = reply.whole("", "tool_calls", produced, 0)
        whole["choices"][0]["message"].update(content=None, tool_calls=[called])
        return JSONResponse(whole)
    options = body.stream_options
    include_usage = bool(options and options.include_usage)
    continuous = include_usage and bool(options and options.continuous_usage_stats)

    def running(done: int) -> dict[str, int] | None:
        return usage(prompt_len, done) if continuous else None

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    opening = {"index": 0, **called, "function": {"name": made.name, "arguments": ""}}
    events = [
        reply.chunk(reply.delta(None, None, role=True), running(0)),
        reply.chunk(choice({"tool_calls": [opening]}), running(0)),
        reply.chunk(
            choice({"tool_calls": [{"index": 0, "function": {"arguments": made.arguments}}]}),
            running(produced),
        ),
        reply.chunk(choice({}, "tool_calls"), running(produced)),
    ]
    if include_usage:
        events.append(reply.chunk(None, usage(prompt_len, produced, 0)))
    events.append(b"data: [DONE]\n\n")

    async def send() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return StreamingResponse(send(), media_type="text/event-stream")


async def completions(request: Request) -> Response:
    engine = engine_of(request)
    backend = engine.backend
    body = await parse(request, CompletionRequest)
    if body.echo or body.suffix:
        raise InputError(
            "echo and suffix are not supported by the CPU engine", "echo" if body.echo else "suffix"
        )
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise InputError("the CPU engine takes one prompt per request", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise InputError("prompt must not be empty", "prompt")
        prompt_ids = backend.text_prompt_ids(prompt)
    else:
        if not prompt:
            raise InputError("prompt must not be empty", "prompt")
        prompt_ids = list(prompt)
        backend.check_token_ids(prompt_ids)
    default_max = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's completions default
    params = engine.sampling_params(body, len(prompt_ids), default_max)
    return await generate(
        request,
        engine,
        kind="completion",
        model=body.model,
        prompt_ids=prompt_ids,
        params=params,
        stream=body.stream,
        options=body.stream_options,
        cache_salt=body.cache_salt,
    )


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; with ``cached`` (the final usage) also ``prompt_tokens_details``
    with the prompt tokens the prefix cache served, as vLLM's ``--enable-prompt-tokens-details``
    reports them (0, the field present, when nothing was cached)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


@dataclass
class Reply:
    """One chat or completion reply: its id, and the chunk and choice shapes of its kind."""

    kind: str  # "chat" or "completion"
    model: str
    prompt_len: int
    started: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))  # one "created" for every chunk, as vLLM
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.kind == "chat" else "cmpl-") + uuid.uuid4().hex

    def chunk(self, choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice is not None else [],
        }
        if usage is not None:
            payload["usage"] = usage
        return sse(payload)

    def delta(self, text: str | None, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        """A streamed choice."""
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def whole(self, text: str, finish: str, produced: int, cached: int) -> dict[str, Any]:
        """The non-streamed response."""
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": self.id,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(self.prompt_len, produced, cached),
        }


async def generate(
    request: Request,
    engine: Engine,
    *,
    kind: str,
    model: str | None = None,
    prompt_ids: list[int],
    params: SamplingParams,
    stream: bool,
    options: StreamOptions | None,
    cache_salt: str | None,
) -> Response:
    reply = Reply(kind=kind, model=model or engine.served_name, prompt_len=len(prompt_ids))
    steps = engine.steps(model, prompt_ids, params, cache_salt)
    if stream:
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options and options.continuous_usage_stats)
        events = stream_events(
            request, engine, reply, steps, include_usage=include_usage, continuous=continuous
        )
        return StreamingResponse(events, media_type="text/event-stream")
    return await collect(request, engine, reply, steps)


async def stream_events(
    request: Request,
    engine: Engine,
    reply: Reply,
    steps: Any,
    *,
    include_usage: bool,
    continuous: bool,
) -> AsyncIterator[bytes]:
    metrics, prompt_len = engine.metrics, reply.prompt_len
    produced, cached, reason, first = 0, 0, "abort", True
    try:
        if reply.kind == "chat":
            yield reply.chunk(
                reply.delta(None, None, role=True), usage(prompt_len, 0) if continuous else None
            )
        async for step in steps:
            if first:
                metrics.ttft.observe(time.monotonic() - reply.started)
                first = False
            produced, cached = step.completion_tokens, step.cached_tokens
            if step.finish_reason is not None:
                reason = step.finish_reason
            # As vLLM: the last piece of text rides on the chunk that carries finish_reason.
            running = usage(prompt_len, produced) if continuous else None
            yield reply.chunk(reply.delta(step.text, step.finish_reason), running)
        if include_usage:
            yield reply.chunk(None, usage(prompt_len, produced, cached))
        yield b"data: [DONE]\n\n"
    except Exception:  # mid-stream failure: the status line is gone, say it in-band
        reason = "error"
        failure_id = error_id(request)
        logger.exception("generation of %s failed", failure_id)
        yield sse(error_body(internal_message(failure_id), type_="internal_server_error"))
        yield b"data: [DONE]\n\n"
    finally:
        await steps.aclose()  # cancels generation when the client went away
        metrics.finished(reason, prompt_tokens=prompt_len, completion_tokens=produced, started=reply.started)


@dataclass
class Collected:
    """A whole generation: its text, token count, why it ended and the stop string that did."""

    texts: list[str] = field(default_factory=list)
    produced: int = 0
    reason: str = "abort"
    stop_sequence: str | None = None
    cached_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.texts)


async def run(
    request: Request | None, engine: Engine, prompt_len: int, started: float, steps: Any
) -> Collected | None:
    """Generate to the end and count it in the metrics; None if the client left first (generation
    stops then). A generation failure is re-raised (a 500). Without a request (a background
    response) only cancelling the caller's task stops it early."""
    metrics = engine.metrics
    got = Collected()

    async def read_steps() -> None:
        async for step in steps:
            if not got.texts:
                metrics.ttft.observe(time.monotonic() - started)
            got.texts.append(step.text)
            got.produced = step.completion_tokens
            got.cached_tokens = step.cached_tokens
            if step.finish_reason:
                got.reason = step.finish_reason
                got.stop_sequence = step.stop_sequence

    async def watch_disconnect() -> None:
        if request is None:
            await asyncio.Event().wait()  # nobody to watch: wait for the collector
            return
        # The body has been read, so the next ASGI message can only be the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collector = asyncio.ensure_future(read_steps())
    watcher = asyncio.ensure_future(watch_disconnect())
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()  # the client left: stop generating for nobody
            with contextlib.suppress(asyncio.CancelledError):
                await collector
        await steps.aclose()
        failed = collector.done() and not collector.cancelled() and collector.exception() is not None
        metrics.finished(
            "error" if failed else got.reason,
            prompt_tokens=prompt_len,
            completion_tokens=got.produced,
            started=started,
        )
    if collector.cancelled():
        return None
    collector.result()  # re-raise a generation failure as a 500
    return got


async def collect(request: Request, engine: Engine, reply: Reply, steps: Any) -> Response:
    """The whole reply at once; generation stops if the client leaves before it is done."""
    got = await run(request, engine, reply.prompt_len, reply.started, steps)
    if got is None:
        return Response(status_code=499)
    return JSONResponse(reply.whole(got.text, got.reason, got.produced, got.cached_tokens))
