"""OpenAI's Responses API on the chat core, in vLLM 0.33's wire format.

``POST /v1/responses`` turns ``instructions`` and ``input`` (a string, or message,
``function_call`` and ``function_call_output`` items) into a chat prompt and answers with a
``response`` object, or streams vLLM's typed events (``event: <type>`` plus ``data: <json>``, each
with a ``sequence_number``; no ``[DONE]``): ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done`` and
``response.completed``, whose ``response.usage`` is the bill (``input_tokens``,
``output_tokens``, ``total_tokens``, ``input_tokens_details.cached_tokens``). A reply cut by
``max_output_tokens`` has status ``incomplete`` with ``incomplete_details.reason``
``max_output_tokens`` and still ends with ``response.completed``, as in vLLM. Forced tool calls
(``cpu_engine.tools``) come back as ``function_call`` output items.

Storage follows vLLM's with ``VLLM_ENABLE_RESPONSES_API_STORE=1``: ``store`` (default true) keeps
the response in this process's memory, so ``GET /v1/responses/{id}`` returns it and
``previous_response_id`` continues its conversation; ``background: true`` (needs ``store``)
answers at once with status ``queued`` and generates in the engine, and
``POST /v1/responses/{id}/cancel`` cancels a ``queued`` or ``in_progress`` response (its status
becomes ``cancelled``); any other is refused with vLLM's 400 "Cannot cancel a synchronous
response.". The store is bounded (``STORE_SIZE`` responses, oldest finished ones go first) and
lost on restart, as vLLM's in-memory store is. Not supported, with a 400 that says so: streaming a
background response, ``GET ...?stream=true``, and input other than text (images, files).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field

from cpu_engine import routes
from cpu_engine.backends import SamplingParams
from cpu_engine.engine import Engine
from cpu_engine.errors import InputError, error_id, internal_message
from cpu_engine.schemas import SamplingRequest
from cpu_engine.tools import Tool, forced_tool, openai_tools
from cpu_engine.tools import call as tools_call

STORE_SIZE = 1024
FINISHED = ("completed", "incomplete", "failed", "cancelled")


class ResponsesRequest(SamplingRequest):
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    store: bool = True
    background: bool = False
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    parallel_tool_calls: bool = True


@dataclass
class Stored:
    """One response: the object clients see, the conversation it continues, its task."""

    body: dict[str, Any]
    conversation: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task | None = None


class ResponseStore:
    def __init__(self, size: int = STORE_SIZE):
        self.size = size
        self.items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, stored: Stored) -> None:
        self.items[stored.body["id"]] = stored
        self.items.move_to_end(stored.body["id"])
        while len(self.items) > self.size:
            oldest = next((k for k, v in self.items.items() if v.body["status"] in FINISHED), None)
            if oldest is None:
                break
            del self.items[oldest]

    def get(self, response_id: str) -> Stored:
        if not response_id.startswith("resp_"):
            raise InputError(
                f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'.",
                "response_id",
            )
        stored = self.items.get(response_id)
        if stored is None:
            raise InputError(f"Response with id '{response_id}' not found.", "response_id", status=404)
        return stored


def store_of(engine: Engine) -> ResponseStore:
    store = getattr(engine, "responses", None)
    if store is None:
        store = engine.responses = ResponseStore()  # type: ignore[attr-defined]
    return store


# -- input -----------------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"{where}: content must be a string or a list of parts", "input")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
            raise InputError(f"{where}: only text content is supported by this model (got {kind!r})", "input")
        parts.append(part["text"])
    return "".join(parts)


def conversation_of(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``input`` as chat-template messages."""
    if isinstance(items, str):
        if not items:
            raise InputError("input must not be empty", "input")
        return [{"role": "user", "content": items}]
    if not items:
        raise InputError("input must not be empty", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InputError(f"input[{i}]: role must be user, assistant, system or developer", "input")
            messages.append({"role": role, "content": _text(item.get("content"), f"input[{i}]")})
        elif kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments", "{}")
            if not isinstance(name, str) or not isinstance(arguments, str):
                raise InputError(f"input[{i}]: a function_call needs a name and arguments", "input")
            try:
                parsed = json.loads(arguments or "{}")
            except json.JSONDecodeError as exc:
                raise InputError(f"input[{i}]: arguments must be JSON", "input") from exc
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": name, "arguments": parsed},
            }
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            messages.append({"role": "tool", "content": text, "tool_call_id": item.get("call_id")})
        elif kind == "reasoning":
            continue
        else:
            raise InputError(
                f"input[{i}]: items of type {kind!r} are not supported by the CPU engine", "input"
            )
    return messages


# -- the response object ---------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_of(prompt: int, produced: int, cached: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": produced,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + produced,
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part] if status != "in_progress" else [],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def new_body(engine: Engine, body: ResponsesRequest, params: SamplingParams) -> dict[str, Any]:
    return {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "model": body.model or engine.served_name,  # a LoRA adapter's name when the request named one
        "status": "in_progress",
        "background": body.background,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": None,
        "metadata": body.metadata or {},
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "reasoning": None,
        "service_tier": "auto",
        "store": body.store,
        "temperature": params.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": body.tool_choice
        if body.tool_choice is not None
        else ("auto" if body.tools else "none"),
        "tools": body.tools or [],
        "top_logprobs": 0,
        "top_p": params.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
    }


def finish(
    response: dict[str, Any],
    output: list[dict[str, Any]],
    reason: str,
    prompt: int,
    produced: int,
    cached: int = 0,
) -> None:
    response["output"] = output
    response["usage"] = usage_of(prompt, produced, cached)
    if reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"


def output_conversation(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output as messages, for a later ``previous_response_id``."""
    items = [{k: v for k, v in item.items() if k != "id"} for item in output]
    return conversation_of(items) if items else []


# -- routes ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A parsed create request: the prompt, its sampling, and the forced tool if any."""

    body: ResponsesRequest
    conversation: list[dict[str, Any]]
    prompt_ids: list[int]
    params: SamplingParams
    tool: Tool | None


def plan(engine: Engine, body: ResponsesRequest) -> Plan:
    if body.stream_options is not None:
        raise InputError("stream_options is not a Responses API field", "stream_options")
    tools = openai_tools(body.tools, flat=True)
    tool = forced_tool(tools, body.tool_choice)
    conversation: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        try:
            previous = store_of(engine).get(body.previous_response_id)
        except InputError as exc:
            raise InputError(exc.message, "previous_response_id", status=exc.status) from exc
        if previous.body["status"] not in ("completed", "incomplete"):
            raise InputError("the previous response has not completed", "previous_response_id")
        conversation = previous.conversation + output_conversation(previous.body["output"])
    conversation += conversation_of(body.input)
    messages = (
        [{"role": "system", "content": body.instructions}] if body.instructions else []
    ) + conversation
    prompt_ids = engine.backend.chat_prompt_ids(messages, tools=[t.openai() for t in tools])
    params = engine.sampling_params(body, len(prompt_ids), body.max_output_tokens)
    return Plan(body=body, conversation=conversation, prompt_ids=prompt_ids, params=params, tool=tool)


async def create(request: Request) -> Response:
    engine = routes.engine_of(request)
    body = await routes.parse(request, ResponsesRequest)
    if body.background and not body.store:
        raise InputError("background can only be used when `store` is true", "background")
    if body.background and body.stream:
        raise InputError("streaming a background response is not supported by the CPU engine", "stream")
    made = plan(engine, body)
    response = new_body(engine, body, made.params)
    stored = Stored(body=response, conversation=made.conversation)
    if made.tool is not None:
        return tool_response(engine, made, stored)
    steps = engine.steps(body.model, made.prompt_ids, made.params, body.cache_salt)
    started = time.monotonic()
    if body.stream:
        return StreamingResponse(
            stream(request, engine, made, stored, steps, started), media_type="text/event-stream"
        )
    if body.background:
        response["status"] = "queued"
        stored.task = asyncio.create_task(background(engine, made, stored, steps, started))
        store_of(engine).put(stored)
        return JSONResponse(response)
    got = await routes.run(request, engine, len(made.prompt_ids), started, steps)
    if got is None:
        return Response(status_code=499)
    status = "incomplete" if got.reason == "length" else "completed"
    output = [message_item(_id("msg"), got.text, status)]
    finish(response, output, got.reason, len(made.prompt_ids), got.produced, got.cached_tokens)
    if body.store:
        store_of(engine).put(stored)
    return JSONResponse(response)


async def background(engine: Engine, made: Plan, stored: Stored, steps: Any, started: float) -> None:
    response = stored.body
    response["status"] = "in_progress"
    try:
        got = await routes.run(None, engine, len(made.prompt_ids), started, steps)
    except asyncio.CancelledError:
        response["status"] = "cancelled"
        raise
    except Exception:
        failure_id = f"engine-{uuid.uuid4().hex}"
        routes.logger.exception("background response %s failed (%s)", response["id"], failure_id)
        response["status"] = "failed"
        response["error"] = {"code": "server_error", "message": internal_message(failure_id)}
        return
    if got is None:  # no request to leave: only a cancel ends it early, and that raised above
        return
    status = "incomplete" if got.reason == "length" else "completed"
    output = [message_item(_id("msg"), got.text, status)]
    finish(response, output, got.reason, len(made.prompt_ids), got.produced, got.cached_tokens)


def tool_response(engine: Engine, made: Plan, stored: Stored) -> Response:
    if made.tool is None:
        raise ValueError("tool_response needs a forced tool")
    response, prompt_len = stored.body, len(made.prompt_ids)
    started = time.monotonic()
    call = tools_call(made.tool)
    produced = engine.backend.count_text_tokens(call.arguments)
    engine.metrics.finished("stop", prompt_tokens=prompt_len, completion_tokens=produced, started=started)
    item_id, call_id = _id("fc"), f"call_{uuid.uuid4().hex}"
    done = call_item(item_id, call_id, call.name, call.arguments, "completed")
    if made.body.stream:
        events = Events(response)
        out = [events.created(), events.in_progress()]
        out.append(
            events.emit(
                "response.output_item.added",
                output_index=0,
                item=call_item(item_id, call_id, call.name, "", "in_progress"),
            )
        )
        out.append(
            events.emit(
                "response.function_call_arguments.delta",
                output_index=0,
                item_id=item_id,
                delta=call.arguments,
            )
        )
        out.append(
            events.emit(
                "response.function_call_arguments.done",
                output_index=0,
                item_id=item_id,
                name=call.name,
                arguments=call.arguments,
            )
        )
        out.append(events.emit("response.output_item.done", output_index=0, item=done))
        finish(response, [done], "stop", prompt_len, produced)
        out.append(events.emit("response.completed", response=response))
        if made.body.store:
            store_of(engine).put(stored)

        async def send() -> AsyncIterator[bytes]:
            for event in out:
                yield event

        return StreamingResponse(send(), media_type="text/event-stream")
    finish(response, [done], "stop", prompt_len, produced)
    if made.body.store:
        store_of(engine).put(stored)
    return JSONResponse(response)


class Events:
    """vLLM's SSE framing of Responses events, numbered in order."""

    def __init__(self, response: dict[str, Any]):
        self.response = response
        self.sequence = 0

    def emit(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    def snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.response))

    def created(self) -> bytes:
        return self.emit("response.created", response=self.snapshot())

    def in_progress(self) -> bytes:
        return self.emit("response.in_progress", response=self.snapshot())


async def stream(
    request: Request, engine: Engine, made: Plan, stored: Stored, steps: Any, started: float
) -> AsyncIterator[bytes]:
    response, prompt_len = stored.body, len(made.prompt_ids)
    events = Events(response)
    item_id = _id("msg")
    metrics = engine.metrics
    produced, cached, reason, first, texts = 0, 0, "abort", True, []
    where = {"output_index": 0, "item_id": item_id, "content_index": 0}
    try:
        yield events.created()
        yield events.in_progress()
        yield events.emit(
            "response.output_item.added", output_index=0, item=message_item(item_id, "", "in_progress")
        )
        yield events.emit(
            "response.content_part.added",
            **where,
            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        )
        async for step in steps:
            if first:
                metrics.ttft.observe(time.monotonic() - started)
                first = False
            produced, cached = step.completion_tokens, step.cached_tokens
            if step.finish_reason is not None:
                reason = step.finish_reason
            if step.text:
                texts.append(step.text)
                yield events.emit("response.output_text.delta", **where, delta=step.text, logprobs=[])
        text = "".join(texts)
        status = "incomplete" if reason == "length" else "completed"
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        yield events.emit("response.output_text.done", **where, text=text, logprobs=[])
        yield events.emit("response.content_part.done", **where, part=part)
        item = message_item(item_id, text, status)
        yield events.emit("response.output_item.done", output_index=0, item=item)
        finish(response, [item], reason, prompt_len, produced, cached)
        if made.body.store:
            store_of(engine).put(stored)
        yield events.emit("response.completed", response=response)
    except Exception:  # mid-stream failure: the status line is gone, say it in-band
        reason = "error"
        failure_id = error_id(request)
        routes.logger.exception("response %s failed (%s)", response["id"], failure_id)
        response["status"] = "failed"
        response["error"] = {"code": "server_error", "message": internal_message(failure_id)}
        yield events.emit("response.failed", response=response)
    finally:
        await steps.aclose()
        metrics.finished(reason, prompt_tokens=prompt_len, completion_tokens=produced, started=started)


async def retrieve(request: Request, response_id: str) -> dict[str, Any]:
    if request.query_params.get("stream", "").lower() in ("1", "true"):
        raise InputError("streaming a stored response is not supported by the CPU engine", "stream")
    return store_of(routes.engine_of(request)).get(response_id).body


async def cancel(request: Request, response_id: str) -> dict[str, Any]:
    stored = store_of(routes.engine_of(request)).get(response_id)
    if stored.body["status"] not in ("queued", "in_progress"):
        raise InputError("Cannot cancel a synchronous response.", "response_id")
    stored.body["status"] = "cancelled"
    if stored.task is not None and not stored.task.done():
        stored.task.cancel()
        try:
            await stored.task
        except asyncio.CancelledError:
            pass
    return stored.body
