"""The stream rewrite on its own: bytes in, bytes out and counts (``gateway/sse.py``)."""

from __future__ import annotations

import json

import pytest

from gateway.sse import DONE, rewrite


def data(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk(text: str, usage: dict | None = None) -> dict:
    obj: dict = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    if usage is not None:
        obj["usage"] = usage
    return obj


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# What an engine sends when asked for include_usage and continuous_usage_stats.
ENGINE = [
    data(chunk("a", usage(4, 1))),
    data(chunk("b", usage(4, 2))),
    data(chunk("c", usage(4, 3))),
    data({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage(4, 3)}),
    DONE,
]
STREAM = b"".join(ENGINE)


def events(out: bytes) -> list[object]:
    found: list[object] = []
    for event in out.split(b"\n\n"):
        if event:
            assert event.startswith(b"data: ")
            payload = event[6:]
            found.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return found


def feed(reads: list[bytes], **client: bool) -> tuple[bytes, int, dict | None, dict | None, bool]:
    """Run a stream through ``rewrite`` read by read, as the proxy does."""
    out, rest, chunks, final, latest, done = b"", b"", 0, None, None, False
    for read in reads:
        part = rewrite(rest + read, **client)
        out += part.out
        rest = part.rest
        chunks += part.content_chunks
        final = part.final_usage or final
        latest = part.latest_usage or latest
        done = done or part.done
    assert rest == b""
    return out, chunks, final, latest, done


def test_a_client_that_asked_for_nothing_gets_no_usage_at_all():
    out, chunks, final, latest, done = feed([STREAM], client_usage=False, client_continuous=False)
    assert events(out) == [chunk("a"), chunk("b"), chunk("c")]
    assert chunks == 3 and final == usage(4, 3) and latest == usage(4, 3) and done


def test_include_usage_keeps_the_usage_chunk_and_nulls_per_chunk_usage():
    out, chunks, final, _, _ = feed([STREAM], client_usage=True, client_continuous=False)
    found = events(out)
    assert [e["usage"] for e in found] == [None, None, None, usage(4, 3)]  # type: ignore[index]
    assert found[-1]["choices"] == [] and chunks == 3 and final == usage(4, 3)  # type: ignore[index]


def test_continuous_usage_passes_every_chunk_unchanged():
    out, *_ = feed([STREAM], client_usage=True, client_continuous=True)
    assert out == b"".join(ENGINE[:4])  # byte for byte, [DONE] excepted (the proxy sends it)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 50])
def test_reads_split_anywhere_give_the_same_output(size):
    reads = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    whole = feed([STREAM], client_usage=False, client_continuous=False)
    assert feed(reads, client_usage=False, client_continuous=False) == whole


def test_an_incomplete_event_is_held_back_not_sent():
    first = data(chunk("a", usage(4, 1)))
    part = rewrite(first + first[:10], client_usage=False, client_continuous=False)
    assert events(part.out) == [chunk("a")]
    assert part.rest == first[:10] and part.content_chunks == 1
    assert part.usage == usage(4, 1) and part.final_usage is None and not part.done
    nothing = rewrite(b'data: {"choi', client_usage=False, client_continuous=False)
    assert nothing.out == b"" and nothing.rest == b'data: {"choi' and nothing.content_chunks == 0


def test_per_chunk_usage_is_reported_even_when_removed():
    part = rewrite(ENGINE[0] + ENGINE[1], client_usage=False, client_continuous=False)
    assert b"usage" not in part.out
    assert part.usage == usage(4, 2) and part.latest_usage == usage(4, 2) and part.final_usage is None


def test_latest_usage_is_the_last_the_engine_sent():
    part = rewrite(ENGINE[3] + data(chunk("late", usage(4, 9))), client_usage=False, client_continuous=False)
    assert part.final_usage == usage(4, 3) and part.latest_usage == usage(4, 9)


def test_done_is_reported_and_left_to_the_caller():
    part = rewrite(DONE, client_usage=True, client_continuous=True)
    assert part.done and part.out == b"" and part.content_chunks == 0


def test_chunks_without_usage_are_counted_and_pass_unchanged():
    plain = data(chunk("x")) + data(chunk("y"))
    part = rewrite(plain, client_usage=False, client_continuous=False)
    assert part.out == plain and part.content_chunks == 2 and part.latest_usage is None


@pytest.mark.parametrize(
    "event",
    [b": keep-alive comment\n\n", b"event: ping\n\n", b"data: not json\n\n", b"data: [1, 2]\n\n"],
    ids=["comment", "other-field", "not-json", "not-an-object"],
)
def test_what_is_not_a_json_object_passes_unchanged_and_uncounted(event):
    part = rewrite(event, client_usage=False, client_continuous=False)
    assert part.out == event and part.content_chunks == 0


def test_blank_events_are_dropped():
    part = rewrite(b"\n\n\n\n" + data(chunk("a")), client_usage=False, client_continuous=False)
    assert events(part.out) == [chunk("a")]


# The per-token fast path reads chunks as bytes; these shapes must come out as the general path's.
@pytest.mark.parametrize(
    "obj",
    [
        # a "usage" key nested in the last member: not the chunk's usage
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "a"}}], "x": {"y": 1, "usage": {"z": 2}}},
        # text that looks like a usage member, inside a string
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": ',"usage":{"prompt_tokens":9}}'}}]},
        # usage first, not last
        {"usage": usage(4, 1), "id": "c1", "choices": [{"index": 0, "delta": {"content": "a"}}]},
        # usage null, and usage empty
        chunk("a", None) | {"usage": None},
        chunk("a", {}),
    ],
    ids=["nested-usage", "usage-in-a-string", "usage-first", "usage-null", "usage-empty"],
)
@pytest.mark.parametrize(
    "client", [(False, False), (True, False), (True, True)], ids=["none", "usage", "continuous"]
)
def test_odd_chunks_come_out_as_a_full_parse_would_give_them(obj, client):
    client_usage, client_continuous = client
    part = rewrite(data(obj), client_usage=client_usage, client_continuous=client_continuous)
    expected = dict(obj)
    if "usage" in obj and not client_continuous:
        if client_usage:
            expected["usage"] = None
        else:
            del expected["usage"]
    assert events(part.out) == [expected]
    assert part.content_chunks == 1
    real = obj.get("usage") or None
    assert part.latest_usage == real


def test_spaced_json_from_another_engine_is_rewritten_too():
    raw = b"data: " + json.dumps(chunk("a", usage(4, 1))).encode() + b"\n\n"  # ", " and ": "
    part = rewrite(raw, client_usage=False, client_continuous=False)
    assert events(part.out) == [chunk("a")] and part.usage == usage(4, 1)


def test_the_fast_path_slices_without_reserialising():
    raw = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"\\u00e9 a"}}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}\n\n'
    part = rewrite(raw, client_usage=False, client_continuous=False)
    # The escape is kept byte for byte (a re-serialisation would write the character itself).
    assert part.out == b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"\\u00e9 a"}}]}\n\n'
    assert part.usage == usage(4, 1)
