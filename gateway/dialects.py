"""The API surfaces beyond chat, completions and embeddings, as vLLM 0.33 serves them.

``/v1/responses`` (OpenAI's Responses API), ``/v1/messages`` (Anthropic's Messages API),
``/v1/rerank`` (also ``/rerank`` and Cohere's ``/v2/rerank``) and ``/v1/score`` (also
``/score``) go through the same proxy as chat — authentication, quotas, spend limits, routing,
metering — and differ only in what this module knows about them:

* **their usage**: Responses and Messages count ``input_tokens``/``output_tokens``, rerank
  ``total_tokens`` (vLLM's ``RerankUsage``; newer engines add ``prompt_tokens``), score OpenAI's
  ``prompt_tokens``. ``normalize_usage`` turns each into the ``prompt_tokens``/``completion_tokens``
  the usage event records, so billing has no new dimension;
* **their streams**: typed server-sent events (``event: response.output_text.delta`` …,
  ``event: message_start`` … ``message_stop``) instead of chat chunks. ``rewrite_typed`` passes
  them through unchanged (no ``[DONE]`` is added: neither API sends one) and reads the usage on
  the way: ``response.completed`` (or ``.incomplete``/``.failed``) carries the final usage of a
  response; ``message_start`` the prompt's tokens and ``message_delta`` the final counts of a
  message, so the event is recorded before those bytes leave, as for chat;
* **their prompt size** (``estimate_tokens``), for the token reservation before the engine counts.

Prefix-cache isolation: the proxy salts chat, completions, responses and messages per tenant.
vLLM reads ``cache_salt`` on the first three; its Messages request model has no such field and
ignores it (the converted chat request is built from Anthropic's fields only), so on a shared vLLM
worker ``/v1/messages`` shares the prefix cache across tenants, as vLLM does for any request
without a salt. Berth's CPU engine reads it on Messages too.

What never reaches an engine from a tenant: ``background: true`` on ``/v1/responses`` (the answer
would be generated after the request ended, so nothing could meter it; refused with a 400).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.sse import EVENT_END, Rewritten

# path -> endpoint label (UsageRecord.endpoint, the metrics' endpoint label)
ENDPOINTS = {
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/rerank": "rerank",
    "/rerank": "rerank",
    "/v2/rerank": "rerank",
    "/v1/score": "score",
    "/score": "score",
}
# Anthropic's token counter: answered by the engine, never billed (see ``gateway.passthrough``).
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
ANTHROPIC_PATHS = ("/v1/messages", COUNT_TOKENS_PATH)

# Endpoints that generate no output tokens: the reservation is the prompt alone.
POOLING = frozenset({"embeddings", "rerank", "score"})
# Endpoints whose body carries ``cache_salt`` (vLLM reads it on chat, completions and responses).
SALTED = frozenset({"chat", "completions", "responses", "messages"})
# Endpoints whose streams are chat-style chunks (``stream_options`` and ``[DONE]``).
CHUNKED = frozenset({"chat", "completions"})
TYPED_STREAMS = frozenset({"responses", "messages"})
ESTIMATED = frozenset({"responses", "messages", "count_tokens", "rerank", "score"})

# Terminal events of a response stream: each carries the response with its final usage.
RESPONSE_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
RESPONSE_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.function_call_arguments.delta",
        "response.refusal.delta",
    }
)


def is_anthropic(path: str) -> bool:
    return path in ANTHROPIC_PATHS


def _count(value) -> int | None:
    return value if type(value) is int and value >= 0 else None


def normalize_usage(usage: Any) -> dict[str, int] | None:
    """Any engine usage object as ``{"prompt_tokens", "completion_tokens"}`` (what is known of them).

    OpenAI's shape passes as it is; ``input_tokens``/``output_tokens`` (Responses, Messages) are
    mapped; rerank's lone ``total_tokens`` is all prompt. None when nothing usable is in it.
    """
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is None:
        prompt = _count(usage.get("input_tokens"))
        if prompt is not None:
            # Anthropic reports cached prompt tokens apart from input_tokens: they were read too.
            for extra in ("cache_read_input_tokens", "cache_creation_input_tokens"):
                prompt += _count(usage.get(extra)) or 0
    if completion is None:
        completion = _count(usage.get("output_tokens"))
    if prompt is None and completion is None:
        total = _count(usage.get("total_tokens"))
        if total is None:
            return None
        prompt, completion = total, 0
    result: dict[str, int] = {}
    if prompt is not None:
        result["prompt_tokens"] = prompt
        cached = cached_tokens(usage, prompt)
        if cached:
            result["cached_tokens"] = cached
    if completion is not None:
        result["completion_tokens"] = completion
    return result


def cached_tokens(usage: Any, prompt_tokens: int) -> int:
    """Of ``prompt_tokens``, how many the engine served from its prefix cache (0 when unsaid).

    Read from the dict the usage already is (no parse): a normalized usage's ``cached_tokens``,
    OpenAI's ``prompt_tokens_details.cached_tokens`` (chat, completions),
    ``input_tokens_details.cached_tokens`` (Responses) or Anthropic's ``cache_read_input_tokens``
    (Messages). Never more than the prompt, so a confused engine cannot bill below zero.
    """
    if not isinstance(usage, dict):
        return 0
    found = _count(usage.get("cached_tokens"))
    if found is None:
        for name in ("prompt_tokens_details", "input_tokens_details"):
            details = usage.get(name)
            if isinstance(details, dict):
                found = _count(details.get("cached_tokens"))
                if found is not None:
                    break
    if found is None:
        found = _count(usage.get("cache_read_input_tokens"))
    return min(found or 0, max(prompt_tokens, 0))


def answer_usage(answer: Any) -> dict[str, int] | None:
    """The usage of a complete (non-streamed) answer of any endpoint."""
    return normalize_usage(answer.get("usage")) if isinstance(answer, dict) else None


# ---------------------------------------------------------------------------------- estimates


def _text_chars(value: Any, depth: int = 0) -> int:
    """Characters of text in a content value: a string, content parts, input items."""
    if depth > 6:
        return 0
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(item, depth + 1) + 4 for item in value)
    if isinstance(value, dict):
        chars = 0
        for name in ("text", "content", "input", "output", "arguments", "thinking"):
            if name in value:
                chars += _text_chars(value[name], depth + 1)
        return chars
    return 0


def estimate_tokens(body: dict, endpoint: str) -> int:
    """A cheap prompt-size estimate (≈4 characters per token) for this module's endpoints."""
    if endpoint == "responses":
        chars = _text_chars(body.get("input")) + _text_chars(body.get("instructions"))
    elif endpoint == "messages":
        chars = _text_chars(body.get("messages")) + _text_chars(body.get("system"))
    elif endpoint == "rerank":
        documents = body.get("documents")
        count = len(documents) if isinstance(documents, list) else 1
        # A cross-encoder reads the query once per document.
        chars = _text_chars(documents) + _text_chars(body.get("query")) * max(1, count)
    elif endpoint == "score":
        first = body.get("text_1", body.get("queries"))
        second = body.get("text_2", body.get("documents", body.get("items")))
        pairs = len(second) if isinstance(second, list) else 1
        chars = _text_chars(second) + _text_chars(first) * max(1, pairs)
    else:
        chars = 0
    if isinstance(body.get("tools"), list):
        chars += len(orjson.dumps(body["tools"]))
    return chars // 4 + 1


def prefix(body: dict, endpoint: str, limit: int) -> str | None:
    """What prefix-affinity routing hashes: the instructions/system text, then the conversation."""
    if endpoint == "responses":
        head, rest = body.get("instructions"), body.get("input")
    elif endpoint == "messages":
        head, rest = body.get("system"), body.get("messages")
    else:
        return None
    parts = [] if head is None else [head if isinstance(head, str) else orjson.dumps(head).decode()]
    if isinstance(rest, str):
        parts.append(rest)
    elif isinstance(rest, list):
        for item in rest:
            parts.append(orjson.dumps(item).decode())
            if sum(map(len, parts)) >= limit:
                break
    return "\x1e".join(parts)[:limit] or None


# ---------------------------------------------------------------------------------- streams


def _event_parts(raw_event: bytes) -> tuple[str, bytes | None]:
    """An SSE event's ``event:`` name and its ``data:`` payload (joined when multi-line)."""
    name = ""
    data: list[bytes] = []
    for line in raw_event.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            data.append(line[5:].strip())
    return name, (b"\n".join(data) if data else None)


def rewrite_typed(data: bytes, endpoint: str) -> Rewritten:
    """The complete events of a Responses or Messages stream, unchanged, with the usage read.

    ``usage``/``latest_usage``: the prompt as soon as the engine tells it (``message_start``);
    ``final_usage``: the counts of the terminal event, when it came. ``content_chunks`` counts the
    delta events (time to first token; a stand-in for output tokens without usage).
    """
    if EVENT_END not in data:
        return Rewritten(b"", data, 0, None, None, None, False)
    *events, rest = data.split(EVENT_END)
    out: list[bytes] = []
    usage = final_usage = latest_usage = None
    deltas = 0
    for raw_event in events:
        if not raw_event.strip():
            continue
        out.append(raw_event + EVENT_END)
        name, payload = _event_parts(raw_event)
        if payload is None or payload == b"[DONE]":
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type") if isinstance(obj.get("type"), str) else name
        if endpoint == "responses":
            if kind in RESPONSE_DELTAS:
                deltas += 1
            elif kind in RESPONSE_FINAL:
                response = obj.get("response")
                found = normalize_usage(response.get("usage")) if isinstance(response, dict) else None
                if found is not None:  # without usage the proxy counts what it saw at the end
                    final_usage = latest_usage = found
        elif kind == "content_block_delta":
            deltas += 1
        elif kind == "message_start":
            message = obj.get("message")
            found = normalize_usage(message.get("usage")) if isinstance(message, dict) else None
            if found and found.get("prompt_tokens"):
                usage = latest_usage = {"prompt_tokens": found["prompt_tokens"]}
        elif kind == "message_delta":
            found = normalize_usage(obj.get("usage"))
            if found is not None:
                # vLLM repeats input_tokens here; Anthropic's own stream has only output_tokens.
                if "prompt_tokens" not in found or not found["prompt_tokens"]:
                    known = (latest_usage or {}).get("prompt_tokens")
                    if known is not None:
                        found["prompt_tokens"] = known
                final_usage = latest_usage = found
    return Rewritten(b"".join(out), rest, deltas, usage, final_usage, latest_usage, False)


class TypedStream:
    """One Responses or Messages stream: ``rewrite_typed`` plus the response id when it shows.

    The id of a response is in its first event (``response.created``); the proxy records it
    (``gateway.responses``) before passing more on, so a retrieval right after the stream finds it.
    """

    __slots__ = ("endpoint", "response_id", "_seen", "_prompt")

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.response_id: str | None = None
        self._seen = endpoint != "responses"
        self._prompt: int | None = None  # message_start's input_tokens, for a later message_delta

    def rewrite(self, data: bytes) -> Rewritten:
        part = rewrite_typed(data, self.endpoint)
        if part.usage is not None and "prompt_tokens" in part.usage:
            self._prompt = part.usage["prompt_tokens"]
        if self._prompt is not None:
            for usage in (part.final_usage, part.latest_usage):
                if usage is not None and not usage.get("prompt_tokens"):
                    usage["prompt_tokens"] = self._prompt
        if not self._seen and part.out:
            for raw_event in part.out.split(EVENT_END):
                _, payload = _event_parts(raw_event)
                if payload is None or b'"response"' not in payload:
                    continue
                try:
                    obj = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                response = obj.get("response") if isinstance(obj, dict) else None
                if isinstance(response, dict) and isinstance(response.get("id"), str):
                    self.response_id, self._seen = response["id"], True
                    break
        return part

    def take_response_id(self) -> str:
        response_id, self.response_id = self.response_id or "", None
        return response_id


# ---------------------------------------------------------------------------------- errors

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(status: int, raw: bytes) -> bytes:
    """An error answer (Berth's OpenAI shape, or an engine's) in Anthropic's shape.

    ``{"type": "error", "error": {"type", "message"}}``: the type follows the status as
    Anthropic's API does; the message is kept, so is the request id in it.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = f"The request failed (HTTP {status})."
    return orjson.dumps(
        {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    )


class AnthropicErrorSend:
    """Wraps ``send`` on the Messages paths: every error answer leaves in Anthropic's shape.

    Errors come from everywhere (authentication, validation, quotas, the engine's own 4xx) in
    OpenAI's shape; rewriting them at the edge keeps one error path in the gateway. Streams and
    successful answers pass untouched.
    """

    def __init__(self, send):
        self._send = send
        self._start: dict | None = None
        self._body: list[bytes] = []

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400:
                self._start = message
                return
            await self._send(message)
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, self._start = self._start, None
        body = anthropic_error_body(start["status"], b"".join(self._body))
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self._send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
