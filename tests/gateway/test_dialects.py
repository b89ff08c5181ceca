"""The typed-event stream reader and the usage mapping of ``gateway.dialects`` (pure functions)."""

from __future__ import annotations

import orjson
import pytest

from gateway.dialects import TypedStream, anthropic_error_body, cached_tokens, normalize_usage, prefix


def sse(kind: str, data: dict) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


RESPONSE = [
    sse("response.created", {"type": "response.created", "response": {"id": "resp_1", "usage": None}}),
    sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "a"}),
    sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "b"}),
    sse(
        "response.completed",
        {
            "type": "response.completed",
            "response": {"id": "resp_1", "usage": {"input_tokens": 9, "output_tokens": 2}},
        },
    ),
]
MESSAGE = [
    sse(
        "message_start",
        {"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 0}}},
    ),
    sse("content_block_delta", {"type": "content_block_delta", "delta": {"text": "x"}}),
    sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 3}}),  # Anthropic's own shape
    sse("message_stop", {"type": "message_stop"}),
]


def read_all(stream: bytes, endpoint: str, cut: int):
    typed = TypedStream(endpoint)
    rest, out, deltas, final, latest, first_usage = b"", b"", 0, None, None, None
    for piece in (stream[:cut], stream[cut:]):
        part = typed.rewrite(rest + piece)
        rest, out = part.rest, out + part.out
        deltas += part.content_chunks
        final = part.final_usage or final
        latest = part.latest_usage or latest
        first_usage = first_usage or part.usage
    return typed, out + rest, deltas, final, latest, first_usage


@pytest.mark.parametrize("cut", [0, 1, 17, 60, 150, 231, 400])
def test_a_response_stream_passes_unchanged_and_yields_its_usage_wherever_reads_split(cut):
    stream = b"".join(RESPONSE)
    typed, out, deltas, final, _, _ = read_all(stream, "responses", cut)
    assert out == stream
    assert deltas == 2
    assert final == {"prompt_tokens": 9, "completion_tokens": 2}
    assert typed.take_response_id() == "resp_1"


@pytest.mark.parametrize("cut", [0, 5, 80, 200])
def test_a_message_stream_knows_the_prompt_early_and_the_total_at_message_delta(cut):
    stream = b"".join(MESSAGE)
    _, out, deltas, final, latest, first = read_all(stream, "messages", cut)
    assert out == stream and deltas == 1
    assert first == {"prompt_tokens": 7}
    assert final == latest == {"prompt_tokens": 7, "completion_tokens": 3}


def test_usage_shapes_map_to_prompt_and_completion():
    assert normalize_usage({"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}) == {
        "prompt_tokens": 4,
        "completion_tokens": 1,
    }
    assert normalize_usage({"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 5}) == {
        "prompt_tokens": 8,
        "completion_tokens": 2,
        "cached_tokens": 5,
    }
    assert normalize_usage({"total_tokens": 11}) == {"prompt_tokens": 11, "completion_tokens": 0}
    assert normalize_usage({"prompt_tokens": -1}) is None
    assert normalize_usage("nope") is None


def test_cached_prompt_tokens_are_read_from_every_usage_shape():
    chat = {"prompt_tokens": 130, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 128}}
    assert normalize_usage(chat) == {"prompt_tokens": 130, "completion_tokens": 2, "cached_tokens": 128}
    assert cached_tokens(chat, 130) == 128  # a raw streamed usage chunk, read as it is
    responses = {"input_tokens": 70, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 64}}
    assert normalize_usage(responses) == {"prompt_tokens": 70, "completion_tokens": 1, "cached_tokens": 64}
    # vLLM without --enable-prompt-tokens-details, or nothing cached: no discount
    assert cached_tokens({"prompt_tokens": 9, "prompt_tokens_details": None}, 9) == 0
    assert "cached_tokens" not in normalize_usage(
        {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 0}}
    )
    # never more than the prompt, never negative, never a non-integer
    assert cached_tokens({"prompt_tokens_details": {"cached_tokens": 500}}, 130) == 130
    assert cached_tokens({"prompt_tokens_details": {"cached_tokens": -3}}, 130) == 0
    assert cached_tokens({"prompt_tokens_details": {"cached_tokens": "64"}}, 130) == 0
    assert cached_tokens(None, 130) == 0


def test_errors_become_anthropic_errors_by_status():
    body = orjson.loads(anthropic_error_body(429, b'{"error": {"message": "slow down", "type": "x"}}'))
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert orjson.loads(anthropic_error_body(503, b"garbage"))["error"]["type"] == "overloaded_error"
    assert orjson.loads(anthropic_error_body(502, b"{}"))["error"]["type"] == "api_error"


def test_prefix_routing_reads_the_system_text_first():
    body = {"system": "you are terse", "messages": [{"role": "user", "content": "hi"}]}
    assert prefix(body, "messages", 1000).startswith("you are terse\x1e")
    assert prefix({"input": "hello"}, "responses", 3) == "hel"
