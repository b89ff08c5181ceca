"""The stream rewrite: an engine's server-sent events in, what the client asked for out.

The gateway always asks the engine for ``include_usage`` and ``continuous_usage_stats`` (so the
tokens are known even when the client goes away mid-stream) and takes out again what the client
did not ask for: the final usage chunk (``choices: []``) and the per-chunk ``usage``. A pure
function of the bytes read so far, so the proxy keeps only the I/O and the metering, and the
rewrite is tested on its own (``tests/gateway/test_sse.py``), reads split anywhere included.

Events pass as soon as they are complete (an SSE event ends with a blank line); an incomplete tail
is handed back to be prefixed to the next read, never buffered further. ``[DONE]`` is reported,
not copied: the proxy sends it after the usage event is recorded.

Only what metering needs is parsed (issue 20: this ran once per relayed token). vLLM writes a
chunk as compact JSON with ``usage`` as its last member, so a chunk is read as bytes: one without
a ``"usage"`` key passes untouched, and for one ending in ``,"usage":{...}}`` only that object is
parsed and, when the client did not ask for it, cut off (or replaced by ``null``) by slicing. The
tail is taken only when it is exactly one JSON value closed by the chunk's last brace, which a
``"usage"`` key nested deeper or quoted inside a string cannot be (a JSON string holds no bare
``"``). Anything else (the ``choices: []`` usage chunk, other spacing, odd shapes) takes the
general path: parse the whole event, re-serialise what changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

EVENT_END = b"\n\n"
DONE = b"data: [DONE]\n\n"
_USAGE_KEY = b'"usage"'
_USAGE_TAIL = b',"usage":'
_EMPTY_CHOICES = b'"choices":[]'


@dataclass(slots=True)
class Rewritten:
    """What one read of the engine's stream became."""

    out: bytes  # for the client now (may be empty)
    rest: bytes  # an incomplete event: prefix it to the next read
    content_chunks: int  # data events other than the usage chunk (one token each without usage)
    usage: dict[str, Any] | None  # the last per-chunk usage among them
    final_usage: dict[str, Any] | None  # the usage chunk's, when it came
    latest_usage: dict[str, Any] | None  # whichever of the two the engine sent last
    done: bool  # ``data: [DONE]`` came (not in ``out``)


def rewrite(data: bytes, *, client_usage: bool, client_continuous: bool) -> Rewritten:
    """Rewrite the complete events of ``data`` (the previous ``rest`` plus the new read).

    ``client_usage``/``client_continuous``: the client's own ``stream_options.include_usage`` and
    ``continuous_usage_stats``. Without ``include_usage`` the usage chunk is dropped; with it but
    without continuous stats, per-chunk usage becomes ``null`` as OpenAI sends it; with neither it
    is removed. Events that are not ``data:`` JSON objects pass unchanged.
    """
    if EVENT_END not in data:
        return Rewritten(b"", data, 0, None, None, None, False)
    *events, rest = data.split(EVENT_END)
    out: list[bytes] = []
    usage = final_usage = latest_usage = None
    content_chunks = 0
    done = False
    for raw_event in events:
        if not raw_event.startswith(b"data:"):
            if raw_event.strip():
                out.append(raw_event + EVENT_END)
            continue
        payload = raw_event[5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        if payload[:1] == b"{" and payload[-1:] == b"}" and _EMPTY_CHOICES not in payload:
            # The per-token fast path (see the module docstring).
            if _USAGE_KEY not in payload:
                out.append(raw_event + EVENT_END)
                content_chunks += 1
                continue
            at = payload.rfind(_USAGE_TAIL)
            if at > 0:
                try:
                    chunk_usage = orjson.loads(payload[at + len(_USAGE_TAIL) : -1])
                except orjson.JSONDecodeError:
                    chunk_usage = False  # not the top-level member: the general path
                if chunk_usage is None or isinstance(chunk_usage, dict):
                    if chunk_usage:
                        usage = latest_usage = chunk_usage
                    if client_continuous:
                        out.append(raw_event + EVENT_END)
                    elif client_usage:
                        out.append(b"data: " + payload[:at] + b',"usage":null}' + EVENT_END)
                    else:
                        out.append(b"data: " + payload[:at] + b"}" + EVENT_END)
                    content_chunks += 1
                    continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            out.append(raw_event + EVENT_END)
            continue
        if not isinstance(obj, dict):
            out.append(raw_event + EVENT_END)
            continue
        chunk_usage = obj.get("usage")
        if obj.get("choices") == [] and chunk_usage:
            final_usage = latest_usage = chunk_usage  # the include_usage chunk
            if client_usage:
                out.append(raw_event + EVENT_END)
            continue
        if chunk_usage:
            usage = latest_usage = chunk_usage
        if "usage" in obj and not client_continuous:
            if client_usage:
                obj["usage"] = None
            else:
                del obj["usage"]
            out.append(b"data: " + orjson.dumps(obj) + EVENT_END)
        else:
            out.append(raw_event + EVENT_END)
        content_chunks += 1
    return Rewritten(b"".join(out), rest, content_chunks, usage, final_usage, latest_usage, done)
