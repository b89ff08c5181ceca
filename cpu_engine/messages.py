"""Anthropic's Messages API on the chat core, as vLLM 0.33 serves it.

``POST /v1/messages`` takes ``system`` (a string or text blocks), ``messages`` (``user`` and
``assistant`` turns whose content is a string or ``text``, ``tool_use`` and ``tool_result``
blocks), ``max_tokens`` (required), ``stop_sequences``, ``temperature``, ``top_p``, ``top_k``,
``tools``/``tool_choice`` (see ``cpu_engine.tools``) and ``stream``. The reply is a ``message``
with ``stop_reason`` ``end_turn``, ``max_tokens``, ``stop_sequence`` (and which one) or
``tool_use``, and ``usage`` ``input_tokens``/``output_tokens``. Streamed, it is Anthropic's event
sequence: ``message_start`` (input tokens), ``content_block_start``, ``content_block_delta``...,
``content_block_stop``, ``message_delta`` (stop reason and the final ``usage``: the bill) and
``message_stop``. ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": n}`` for the same
body without ``max_tokens``.

Errors on these paths leave in Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``
(``cpu_engine.app`` picks the shape by path), and ``x-api-key`` is accepted as the key there.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from cpu_engine import routes
from cpu_engine.backends import SamplingParams
from cpu_engine.engine import Engine
from cpu_engine.errors import InputError, error_id, internal_message
from cpu_engine.tools import Tool, anthropic_tools, forced_anthropic_tool
from cpu_engine.tools import call as tools_call

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def is_messages_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class Turn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Turn] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesRequest(CountRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None
    cache_salt: str | None = None  # vLLM's prefix-cache isolation, as on chat
    priority: int = 0  # vLLM's request priority, as on chat (lower runs first)


def _block_text(block: dict[str, Any], where: str) -> str:
    if block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise InputError(f"{where}: only text blocks are supported by this model (got {block.get('type')!r})")
    return block["text"]


def _result_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(_block_text(b, where) for b in content if isinstance(b, dict))
    raise InputError(f"{where}: tool_result content must be a string or text blocks")


def template_messages(body: CountRequest) -> list[dict[str, Any]]:
    """System and turns as chat-template messages (tool use as OpenAI-shaped tool calls)."""
    messages: list[dict[str, Any]] = []
    if body.system:
        system = body.system
        text = system if isinstance(system, str) else "".join(_block_text(b, "system") for b in system)
        messages.append({"role": "system", "content": text})
    for i, turn in enumerate(body.messages):
        where = f"messages.{i}.content"
        if isinstance(turn.content, str):
            messages.append({"role": turn.role, "content": turn.content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in turn.content:
            kind = block.get("type")
            if kind == "tool_use" and turn.role == "assistant":
                if not isinstance(block.get("name"), str):
                    raise InputError(f"{where}: a tool_use block needs a name")
                function = {"name": block["name"], "arguments": block.get("input") or {}}
                calls.append({"id": block.get("id"), "type": "function", "function": function})
            elif kind == "tool_result" and turn.role == "user":
                text = _result_text(block.get("content"), where)
                messages.append({"role": "tool", "content": text, "tool_call_id": block.get("tool_use_id")})
            else:
                texts.append(_block_text(block, where))
        if texts or calls or not turn.content:
            message: dict[str, Any] = {"role": turn.role, "content": "".join(texts)}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
    return messages


def prompt_of(engine: Engine, body: CountRequest) -> tuple[list[int], list[Tool]]:
    tools = anthropic_tools(body.tools)
    ids = engine.backend.chat_prompt_ids(template_messages(body), tools=[t.openai() for t in tools])
    return ids, tools


def sampling(engine: Engine, body: MessagesRequest, prompt_len: int) -> SamplingParams:
    stops = tuple(s for s in (body.stop_sequences or ()) if s)
    return SamplingParams(
        max_tokens=engine.backend.resolve_max_tokens(prompt_len, body.max_tokens),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or None,
        stop=stops,
        priority=body.priority,
    )


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload}, separators=(',', ':'))}\n\n".encode()


def message(
    engine: Engine,
    message_id: str,
    content: list[dict[str, Any]],
    usage: dict[str, int],
    model: str | None = None,
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model or engine.served_name,  # a LoRA adapter's name when the request named one
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


# -- routes ----------------------------------------------------------------------------------------


async def count_tokens(request: Request) -> dict[str, int]:
    engine = routes.engine_of(request)
    body = await routes.parse(request, CountRequest)
    ids, _ = prompt_of(engine, body)
    return {"input_tokens": len(ids)}


async def create(request: Request) -> Response:
    engine = routes.engine_of(request)
    body = await routes.parse(request, MessagesRequest)
    prompt_ids, tools = prompt_of(engine, body)
    tool = forced_anthropic_tool(tools, body.tool_choice)
    params = sampling(engine, body, len(prompt_ids))
    message_id = f"msg_{uuid.uuid4().hex}"
    if tool is not None:
        return tool_use(engine, body, tool, message_id, len(prompt_ids))
    steps = engine.steps(body.model, prompt_ids, params, body.cache_salt)
    started = time.monotonic()
    if body.stream:
        events = stream(request, engine, message_id, len(prompt_ids), steps, started, model=body.model)
        return StreamingResponse(events, media_type="text/event-stream")
    got = await routes.run(request, engine, len(prompt_ids), started, steps)
    if got is None:
        return Response(status_code=499)
    whole = message(
        engine,
        message_id,
        [{"type": "text", "text": got.text}],
        {"input_tokens": len(prompt_ids), "output_tokens": got.produced},
        body.model,
    )
    whole["stop_reason"] = "stop_sequence" if got.stop_sequence else STOP_REASONS.get(got.reason, "end_turn")
    whole["stop_sequence"] = got.stop_sequence
    return JSONResponse(whole)


def tool_use(engine: Engine, body: MessagesRequest, tool: Tool, message_id: str, prompt_len: int) -> Response:
    """The forced call (see ``cpu_engine.tools``) as a ``tool_use`` block; stop_reason ``tool_use``."""
    started = time.monotonic()
    made = tools_call(tool)
    produced = engine.backend.count_text_tokens(made.arguments)
    engine.metrics.finished("stop", prompt_tokens=prompt_len, completion_tokens=produced, started=started)
    block_id = f"toolu_{uuid.uuid4().hex}"
    block = {"type": "tool_use", "id": block_id, "name": made.name, "input": json.loads(made.arguments)}
    if not body.stream:
        whole = message(
            engine, message_id, [block], {"input_tokens": prompt_len, "output_tokens": produced}, body.model
        )
        whole["stop_reason"] = "tool_use"
        return JSONResponse(whole)
    opening = message(engine, message_id, [], {"input_tokens": prompt_len, "output_tokens": 0}, body.model)
    events = [
        sse("message_start", {"message": opening}),
        sse("content_block_start", {"index": 0, "content_block": {**block, "input": {}}}),
        sse(
            "content_block_delta",
            {"index": 0, "delta": {"type": "input_json_delta", "partial_json": made.arguments}},
        ),
        sse("content_block_stop", {"index": 0}),
        sse(
            "message_delta",
            {
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"input_tokens": prompt_len, "output_tokens": produced},
            },
        ),
        sse("message_stop", {}),
    ]

    async def send() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return StreamingResponse(send(), media_type="text/event-stream")


async def stream(
    request: Request,
    engine: Engine,
    message_id: str,
    prompt_len: int,
    steps: Any,
    started: float,
    model: str | None = None,
) -> AsyncIterator[bytes]:
    metrics = engine.metrics
    produced, reason, stop_sequence, first = 0, "abort", None, True
    try:
        opening = message(engine, message_id, [], {"input_tokens": prompt_len, "output_tokens": 0}, model)
        yield sse("message_start", {"message": opening})
        yield sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        async for step in steps:
            if first:
                metrics.ttft.observe(time.monotonic() - started)
                first = False
            produced = step.completion_tokens
            if step.finish_reason is not None:
                reason, stop_sequence = step.finish_reason, step.stop_sequence
            if step.text:
                yield sse(
                    "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": step.text}}
                )
        yield sse("content_block_stop", {"index": 0})
        stop_reason = "stop_sequence" if stop_sequence else STOP_REASONS.get(reason, "end_turn")
        yield sse(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"input_tokens": prompt_len, "output_tokens": produced},
            },
        )
        yield sse("message_stop", {})
    except Exception:  # mid-stream failure: Anthropic's in-band error event
        reason = "error"
        failure_id = error_id(request)
        routes.logger.exception("message %s failed (%s)", message_id, failure_id)
        yield sse("error", {"error": anthropic_error(500, internal_message(failure_id))["error"]})
    finally:
        await steps.aclose()
        metrics.finished(reason, prompt_tokens=prompt_len, completion_tokens=produced, started=started)
