"""The stream rewrite: an engine's server-sent events in, what the client asked for out.

The gateway always asks the engine for ``include_usage`` and ``continuous_usage_stats`` (so the
tokens are known even when the client goes away mid-stream) and takes out again what the client
did not ask for: the final usage chunk (``choices: []``) and the per-chunk ``usage``. A pure
function of the bytes read so far, so the proxy keeps only the I/O and the metering, and the
rewrite is tested on its own (``tests/gateway/test_sse.py``), reads split anywhere included.

Events pass as soon as they are complete (an SSE event ends with a blank line); an incomplete tail
is handed back to be prefixed to the next read, never buffered further. ``[DONE]`` is reported,
not copied: the proxy sends it after the usage event is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

EVENT_END = b"\n\n"
DONE = b"data: [DONE]\n\n"


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
