"""Type checks on every request field the gateway reads, before any quota, routing or engine work.

The gateway estimates tokens from ``messages``/``prompt``/``input``, reserves ``max_tokens`` × the
number of choices, rewrites ``stream_options`` and routes on the prompt's prefix. A value of the
wrong shape there must be the client's 400 in OpenAI's shape (``param``, ``code``), never a
traceback and a 500. Fields the gateway does not read (``temperature``, ``tools``, …) are left to
the engine, which answers its own 400s.

Messages follow OpenAI's wording: ``Invalid type for 'messages': expected an array, but got an
integer instead.``; codes are ``missing_required_parameter``, ``invalid_type``, ``invalid_value``,
``integer_below_min_value`` and ``integer_above_max_value`` (``missing_model`` for ``model``, as
before). ``service_tier`` is checked here (a string, one of OpenAI's tiers, or Anthropic's ``auto``/
``standard_only`` on Messages); whether the plan allows it is ``gateway.tiers.serve``'s 400.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.tiers import REQUEST_TIERS
from gateway.errors import GatewayError, bad_request
from gateway.tiers import ANTHROPIC_REQUEST

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# OpenAI's own bounds: n ≤ 128 (chat and completions), best_of ≤ 20 (completions).
MAX_N = 128
MAX_BEST_OF = 20


@dataclass(frozen=True, slots=True)
class Checked:
    """What the rest of the request path needs from a validated body."""

    model: str
    stream: bool
    max_tokens: int | None
    choices: int  # sequences the engine generates: max(n, best_of), for each prompt of a batch
    service_tier: str | None = None  # the tier asked for (contract.tiers.REQUEST_TIERS), if any


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def _invalid_type(param: str, expected: str, value) -> GatewayError:
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _missing(param: str) -> GatewayError:
    return bad_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _integer(body: dict, param: str, low: int, high: int) -> int | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer", value)
    if value < low:
        raise bad_request(
            f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, but got {value} "
            "instead.",
            param=param,
            code="integer_below_min_value" if param in ("n", "best_of") else "invalid_value",
        )
    if value > high:
        raise bad_request(
            f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, but got {value} "
            "instead.",
            param=param,
            code="integer_above_max_value" if param in ("n", "best_of") else "invalid_value",
        )
    return value


def _is_token_ids(value) -> bool:
    return all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def _content(content, param: str, role: str) -> None:
    if content is None:
        if role == "assistant":  # an assistant turn that only called tools
            return
        raise _missing(param)
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid_type(param, "a string or an array of content parts", content)
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _invalid_type(where, "an object", part)
        kind = part.get("type")
        if not isinstance(kind, str):
            raise (
                _invalid_type(f"{where}.type", "a string", kind)
                if "type" in part
                else _missing(f"{where}.type")
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _invalid_type(f"{where}.text", "a string", part.get("text"))


def _messages(body: dict) -> None:
    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if not isinstance(role, str):
            raise _invalid_type(f"{where}.role", "a string", role)
        if role not in ROLES:
            raise bad_request(
                f"Invalid value: '{role[:64]}'. Supported values are: {', '.join(sorted(ROLES))}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        _content(message.get("content"), f"{where}.content", role)
        if "name" in message and message["name"] is not None and not isinstance(message["name"], str):
            raise _invalid_type(f"{where}.name", "a string", message["name"])


def _prompt_like(body: dict, param: str, *, allow_empty_string: bool) -> None:
    """``prompt`` / ``input``: a string, an array of strings, token ids, or arrays of token ids."""
    if param not in body or body[param] is None:
        raise _missing(param)
    value = body[param]
    expected = "a string, an array of strings, or an array of token ids"
    if isinstance(value, str):
        if not value and not allow_empty_string:
            raise bad_request(
                f"Invalid '{param}': empty string. Expected a non-empty string.",
                param=param,
                code="invalid_value",
            )
        return
    if not isinstance(value, list):
        raise _invalid_type(param, expected, value)
    if not value:
        raise bad_request(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            param=param,
            code="empty_array",
        )
    if all(isinstance(item, str) for item in value) or _is_token_ids(value):
        return
    for i, item in enumerate(value):
        if not (isinstance(item, list) and item and _is_token_ids(item)):
            raise _invalid_type(f"{param}[{i}]", "a string or an array of token ids", item)


def _stream_options(body: dict) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise _invalid_type("stream_options", "an object", options)
    for name in ("include_usage", "continuous_usage_stats"):
        value = options.get(name)
        if value is not None and not isinstance(value, bool):
            raise _invalid_type(f"stream_options.{name}", "a boolean", value)


def _service_tier(body: dict, choices: dict[str, str] | None = None) -> str | None:
    """``service_tier``: one of OpenAI's names (or Anthropic's, mapped), or absent/null."""
    value = body.get("service_tier")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid_type("service_tier", "a string", value)
    if choices is not None:
        tier = choices.get(value)
        if tier is not None:
            return tier
        supported = tuple(choices)
    elif value in REQUEST_TIERS:
        return value
    else:
        supported = REQUEST_TIERS
    raise bad_request(
        f"Invalid value: '{value[:64]}'. Supported values are: {', '.join(repr(t) for t in supported)}.",
        param="service_tier",
        code="invalid_value",
    )


def validate(body: dict, endpoint: str, *, max_tokens_limit: int) -> Checked:
    """Check the fields the gateway reads for ``endpoint`` (chat, completions, embeddings, and
    the surfaces of ``gateway.dialects``: responses, messages, count_tokens, rerank, score)."""
    model = body.get("model")
    if model is None or model == "":
        raise bad_request("You must provide a model parameter.", param="model", code="missing_model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    more = _MORE.get(endpoint)
    if more is not None:
        return more(body, model, max_tokens_limit)

    max_tokens = None
    if endpoint != "embeddings":
        for name in ("max_completion_tokens", "max_tokens"):
            value = _integer(body, name, 1, max_tokens_limit)
            if value is not None and max_tokens is None:
                max_tokens = value
    choices = 1
    if endpoint != "embeddings":
        n = _integer(body, "n", 1, MAX_N) or 1
        best_of = _integer(body, "best_of", 1, MAX_BEST_OF) if endpoint == "completions" else None
        if best_of is not None and best_of < n:
            raise bad_request(
                f"Invalid 'best_of': it must be at least 'n' ({n}); got {best_of}.",
                param="best_of",
                code="invalid_value",
            )
        choices = max(n, best_of or 1)

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    if endpoint != "embeddings":
        _stream_options(body)

    if endpoint == "chat":
        _messages(body)
    elif endpoint == "completions":
        _prompt_like(body, "prompt", allow_empty_string=True)
        prompt = body["prompt"]
        if isinstance(prompt, list) and not _is_token_ids(prompt):
            choices *= len(prompt)  # a batch of prompts: n (or best_of) sequences for each
    else:
        _prompt_like(body, "input", allow_empty_string=False)
    return Checked(
        model=model,
        stream=bool(stream) and endpoint != "embeddings",
        max_tokens=max_tokens,
        choices=choices,
        service_tier=_service_tier(body),
    )


# ---------------------------------------------------------------------------------- more surfaces
# Each checks what the gateway reads (and what would otherwise be a confusing engine error), in
# the caller's terms: the Anthropic paths' errors are reshaped by ``dialects.AnthropicErrorSend``.


def _stream_flag(body: dict) -> bool:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    return bool(stream)


def _tools(body: dict) -> None:
    """``tools`` pass through to the engine (its tool-call parser decides); only the shape here."""
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _invalid_type("tools", "an array", tools)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _invalid_type(f"tools[{i}]", "an object", tool)
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise _invalid_type("tool_choice", "a string or an object", choice)


def _responses(body: dict, model: str, max_tokens_limit: int) -> Checked:
    if "input" not in body or body["input"] is None:
        raise _missing("input")
    value = body["input"]
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise _invalid_type(f"input[{i}]", "an object", item)
    elif not isinstance(value, str):
        raise _invalid_type("input", "a string or an array of input items", value)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _invalid_type("instructions", "a string", instructions)
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise _invalid_type("previous_response_id", "a string", previous)
    if body.get("background") is True:
        raise bad_request(
            "Background responses are not supported here: send the request without 'background' "
            "(stream it if it is long).",
            param="background",
            code="unsupported_parameter",
        )
    _tools(body)
    max_tokens = _integer(body, "max_output_tokens", 1, max_tokens_limit)
    return Checked(
        model=model,
        stream=_stream_flag(body),
        max_tokens=max_tokens,
        choices=1,
        service_tier=_service_tier(body),
    )


def _anthropic_messages(body: dict) -> None:
    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise bad_request("messages: at least one message is required", param="messages", code="empty_array")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _invalid_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if not isinstance(role, str):
            # Other strings go to the engine: vLLM also takes "system", and maps the "ctx"/"msg"
            # roles recent coding agents send.
            raise _invalid_type(f"{where}.role", "a string ('user' or 'assistant')", role)
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise _invalid_type(f"{where}.content.{j}", "a content block object with a 'type'", block)
        elif not isinstance(content, str):
            raise _invalid_type(f"{where}.content", "a string or an array of content blocks", content)
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _invalid_type("system", "a string or an array of text blocks", system)


def _messages_api(body: dict, model: str, max_tokens_limit: int) -> Checked:
    _anthropic_messages(body)
    if body.get("max_tokens") is None:
        raise bad_request("max_tokens: Field required", param="max_tokens", code="missing_required_parameter")
    max_tokens = _integer(body, "max_tokens", 1, max_tokens_limit)
    _tools(body)
    return Checked(
        model=model,
        stream=_stream_flag(body),
        max_tokens=max_tokens,
        choices=1,
        service_tier=_service_tier(body, ANTHROPIC_REQUEST),
    )


def _count_tokens(body: dict, model: str, max_tokens_limit: int) -> Checked:
    _anthropic_messages(body)
    _tools(body)
    return Checked(model=model, stream=False, max_tokens=None, choices=1)


def _texts(body: dict, param: str, *, single: bool) -> None:
    """A string, a non-empty list of strings (or objects), or (multimodal) an object with ``content``."""
    if param not in body or body[param] is None:
        raise _missing(param)
    value = body[param]
    expected = "a string" if single else "an array of strings"
    if isinstance(value, dict):
        if not isinstance(value.get("content"), list):
            raise _invalid_type(f"{param}.content", "an array of content parts", value.get("content"))
        return
    if isinstance(value, str):
        if single:
            return
        raise _invalid_type(param, expected, value)
    if single or not isinstance(value, list):
        raise _invalid_type(param, expected, value)
    if not value:
        raise bad_request(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            param=param,
            code="empty_array",
        )
    for i, item in enumerate(value):
        # Cohere-style documents may be objects ({"text": ...}); the engine reads their fields.
        if not isinstance(item, str | dict):
            raise _invalid_type(f"{param}[{i}]", "a string or an object", item)


def _rerank(body: dict, model: str, max_tokens_limit: int) -> Checked:
    _texts(body, "query", single=True)
    _texts(body, "documents", single=False)
    _integer(body, "top_n", 0, 1_000_000)
    return Checked(model=model, stream=False, max_tokens=None, choices=1)


def _score(body: dict, model: str, max_tokens_limit: int) -> Checked:
    if "text_1" in body or "text_2" in body:
        pair = ("text_1", "text_2")
    else:
        pair = ("queries", "items" if "items" in body else "documents")
    for param in pair:
        if param not in body or body[param] is None:
            raise _missing(param)
        value = body[param]
        if isinstance(value, str | dict):
            _texts(body, param, single=True)
        else:
            _texts(body, param, single=False)
    return Checked(model=model, stream=False, max_tokens=None, choices=1)


_MORE = {
    "responses": _responses,
    "messages": _messages_api,
    "count_tokens": _count_tokens,
    "rerank": _rerank,
    "score": _score,
}
