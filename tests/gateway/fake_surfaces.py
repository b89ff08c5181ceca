"""The fake engine's Responses, Messages, rerank and score routes, in vLLM 0.33's wire formats.

Served by ``tests.gateway.fake_upstream`` (which hands these paths here). Counting rules match it:
prompt tokens = whitespace-separated words of the input (+1), output tokens = ``max_output_tokens``
(``max_tokens`` for Messages), default 8, each token the text ``"tok "``.

* ``POST /v1/responses`` (plain and ``stream``): a ``ResponsesResponse``; streams are vLLM's typed
  events (``response.created`` … ``response.output_text.delta`` … ``response.completed`` with the
  usage), no ``[DONE]``. Answers are stored in this process (``GET /v1/responses/{id}``; another
  fake engine does not know them, as vLLM keeps them in the worker's memory);
  ``POST /v1/responses/{id}/cancel`` answers vLLM's 400 for a response that is not a background one.
  ``fake_tool_call`` (a tool name) with ``tools``: the output is that function call.
* ``POST /v1/messages`` (plain and ``stream``: ``message_start`` … ``message_delta`` with
  ``input_tokens``/``output_tokens`` … ``message_stop``), ``POST /v1/messages/count_tokens``.
* ``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``): ``usage.total_tokens`` only, as vLLM's
  ``RerankUsage``; ``POST /v1/score`` (and ``/score``): ``usage.prompt_tokens``/``total_tokens``.
* ``LAST`` keeps the last body each path got (``GET /_last?path=…``); ``fake_delay`` (seconds)
  paces the delta events of a stream.
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson

PATHS = frozenset(
    {
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/rerank",
        "/v2/rerank",
        "/v1/score",
        "/score",
    }
)
STORED: dict[str, dict] = {}
LAST: dict[str, dict] = {}


def handles(path: str) -> bool:
    return path in PATHS or path.startswith("/v1/responses/")


def _sse(kind: str, data: dict) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


async def handle(path: str, method: str, body: dict | None, scope, send) -> None:
    from tests.gateway import fake_upstream as up

    if path.startswith("/v1/responses/"):
        response_id, _, tail = path[len("/v1/responses/") :].partition("/")
        stored = STORED.get(response_id)
        if stored is None:
            await up._json(send, 404, up._error(404, f"Response with id '{response_id}' not found."))
        elif tail == "cancel":
            await up._json(send, 400, up._error(400, "Cannot cancel a synchronous response."))
        else:
            await up._json(send, 200, stored)
        return
    body = body or {}
    LAST[path] = body
    if path == "/v1/responses":
        await _responses(body, send, up)
    elif path == "/v1/messages":
        await _messages(body, send, up)
    elif path == "/v1/messages/count_tokens":
        await up._json(send, 200, {"input_tokens": _message_words(body, up) + 1})
    elif path.endswith("/rerank"):
        documents = body.get("documents") or []
        query = up._words(body.get("query") or "")
        total = sum(query + up._words(d) + 2 for d in documents)
        results = [
            {"index": i, "document": {"text": d}, "relevance_score": 1.0 / (i + 1)}
            for i, d in enumerate(documents)
        ]
        top_n = body.get("top_n") or len(results)
        await up._json(
            send,
            200,
            {
                "id": "rerank-" + os.urandom(6).hex(),
                "model": body.get("model"),
                "usage": {"total_tokens": total},
                "results": results[:top_n],
            },
        )
    else:  # score
        first, second = body.get("text_1"), body.get("text_2")
        seconds = second if isinstance(second, list) else [second]
        total = sum(up._words(first) + up._words(s) + 2 for s in seconds)
        await up._json(
            send,
            200,
            {
                "id": "score-" + os.urandom(6).hex(),
                "object": "list",
                "created": int(time.time()),
                "model": body.get("model"),
                "data": [{"index": i, "object": "score", "score": 0.5} for i in range(len(seconds))],
                "usage": {"prompt_tokens": total, "total_tokens": total, "completion_tokens": 0},
            },
        )


def _message_words(body: dict, up) -> int:
    words = up._words(body.get("messages") or [])
    system = body.get("system")
    return words + (up._words(system) if system else 0)


async def _responses(body: dict, send, up) -> None:
    prompt = up._words(body.get("input") or "") + up._words(body.get("instructions") or "") + 1
    n = body.get("max_output_tokens") or 8
    rid = "resp_" + os.urandom(12).hex()
    mid = "msg_" + os.urandom(8).hex()
    tool = body.get("fake_tool_call") if body.get("tools") else None
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + n,
    }
    if tool:
        item = {
            "type": "function_call",
            "id": "fc_" + os.urandom(6).hex(),
            "call_id": "call_" + os.urandom(6).hex(),
            "name": tool,
            "arguments": '{"city": "Paris"}',
            "status": "completed",
        }
    else:
        item = {
            "type": "message",
            "id": mid,
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "tok " * n, "annotations": [], "logprobs": None}],
        }
    response = {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "model": body.get("model"),
        "status": "completed",
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "temperature": 1.0,
        "top_p": 1.0,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": body.get("previous_response_id"),
        "error": None,
        "incomplete_details": None,
        "metadata": {},
        "usage": usage,
    }
    if body.get("store", True):
        STORED[rid] = response
    if not body.get("stream"):
        await up._json(send, 200, response)
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    seq = iter(range(1_000_000))
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [
        _sse(
            "response.created",
            {"type": "response.created", "sequence_number": next(seq), "response": started},
        ),
        _sse(
            "response.in_progress",
            {"type": "response.in_progress", "sequence_number": next(seq), "response": started},
        ),
    ]
    if tool:
        events.append(
            _sse(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": {**item, "arguments": "", "status": "in_progress"},
                },
            )
        )
        events.append(
            _sse(
                "response.function_call_arguments.delta",
                {
                    "type": "response.function_call_arguments.delta",
                    "sequence_number": next(seq),
                    "item_id": item["id"],
                    "output_index": 0,
                    "delta": item["arguments"],
                },
            )
        )
    else:
        events.append(
            _sse(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": {**item, "status": "in_progress", "content": []},
                },
            )
        )
        events.append(
            _sse(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "sequence_number": next(seq),
                    "item_id": mid,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            )
        )
        for _ in range(n):
            events.append(
                _sse(
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": mid,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": "tok ",
                        "logprobs": [],
                    },
                )
            )
        events.append(
            _sse(
                "response.output_text.done",
                {
                    "type": "response.output_text.done",
                    "sequence_number": next(seq),
                    "item_id": mid,
                    "output_index": 0,
                    "content_index": 0,
                    "text": "tok " * n,
                    "logprobs": [],
                },
            )
        )
    events.append(
        _sse(
            "response.output_item.done",
            {
                "type": "response.output_item.done",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": item,
            },
        )
    )
    events.append(
        _sse(
            "response.completed",
            {"type": "response.completed", "sequence_number": next(seq), "response": response},
        )
    )
    await _send_events(events, body, send)


async def _messages(body: dict, send, up) -> None:
    prompt = _message_words(body, up) + 1
    n = body.get("max_tokens") or 8
    mid = "msg_" + os.urandom(8).hex()
    tool = body.get("fake_tool_call") if body.get("tools") else None
    if tool:
        content = [
            {
                "type": "tool_use",
                "id": "toolu_" + os.urandom(6).hex(),
                "name": tool,
                "input": {"city": "Paris"},
            }
        ]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": "tok " * n}]
        stop = "max_tokens"
    message = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": body.get("model"),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": n},
    }
    if not body.get("stream"):
        await up._json(send, 200, message)
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    events = [
        _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": prompt, "output_tokens": 0},
                },
            },
        ),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    for _ in range(n):
        events.append(
            _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok "}},
            )
        )
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"input_tokens": prompt, "output_tokens": n},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    await _send_events(events, body, send)


async def _send_events(events: list[bytes], body: dict, send) -> None:
    """``fake_delay``: seconds before each delta event (a slow stream to hang up on)."""
    delay = float(body.get("fake_delay") or 0)
    for event in events:
        if delay and b"delta" in event.split(b"\n", 1)[0]:
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
