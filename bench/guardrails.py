"""Micro-benchmark of the gateway's regex guardrails: µs per request, all detectors on.

The issue's bar is under 100 µs per request on a typical chat body. Each body (1 KB and 10 KB of
ordinary chat text, plus the same sizes with an e-mail address, a phone number and a card number
in them) is screened by ``Guardrails``' prompt path — every message's text found, every detector
and a blocked-terms list run, redactions written back — and compared with the same walk under no
policy, in the same run (the best of 25 short runs each, in CPU time of this process: on a shared
machine wall time also counts the neighbours). The last row is the completion side of a
stream: µs per streamed chunk of one token that ``StreamGuard.feed`` adds (with no policy the
gateway does not call it). The row before it is everything the gateway does for a request of
``bench/gateway.py``'s shape (a one-line chat prompt and its answer): ``Guardrails.check`` with
the tenant's policies cached, the answer screened, ``finish``. Run: ``python -P bench/guardrails.py`` (``-P``: this
folder's ``gateway.py`` would shadow the package).
"""

from __future__ import annotations

import asyncio
import copy
import time
from types import SimpleNamespace

import orjson

from gateway.guardrails import DETECTORS, Guardrails, RequestGuard, TenantPolicies

WORDS = (
    "The quarterly report shows that revenue grew by 12 percent while costs stayed flat. "
    "Please summarise the key points for the board and suggest three follow-up questions. "
)
PII = " Contact jane.roe@example.org or +1 415 555 0132; card 4111 1111 1111 1111. "
POLICY = {
    "id": "bench",
    "name": "bench",
    "prompts": True,
    "completions": True,
    "detectors": dict.fromkeys(DETECTORS, "redact"),
    "blocked_terms": ["project nightingale", "internal only", "confidential"],
    "blocked_terms_action": "flag",
}


def chat_body(size: int, pii: bool) -> dict:
    text = (WORDS * (size // len(WORDS) + 1))[: size - (len(PII) if pii else 0)]
    half = len(text) // 2
    if pii:  # in the last message, whole
        text = text[: half + half // 2] + PII + text[half + half // 2 :]
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text[:half]},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": [{"type": "text", "text": text[half:]}]},
        ],
    }


REPEATS = 25


class _Settings:
    redis_prefix = "bench:"
    key_cache_seconds = 1.0


def measure(body: dict, policies: list[dict], rounds: int) -> float:
    guardrails = Guardrails(SimpleNamespace(), _Settings())
    entry = TenantPolicies(policies, False)
    prompt, completion = entry.rules("key")

    async def run() -> float:
        bodies = [copy.deepcopy(body) for _ in range(rounds)]
        started = time.process_time()
        for item in bodies:
            guard = RequestGuard(guardrails, tenant_id="t", key_id="key", request_id="r", model="m",
                                 endpoint="chat", completion=completion, log_content=False)  # fmt: skip
            if not prompt.empty:
                await guardrails._screen_prompt(guard, prompt, item, "chat")
        return (time.process_time() - started) / rounds * 1e6

    return asyncio.run(run())


CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}'
)


def measure_stream(policies: list[dict], tokens: int = 100, streams: int = 20) -> float:
    """µs per one-token chunk through the completion-side screening of a stream."""
    guardrails = Guardrails(SimpleNamespace(), _Settings())
    _, completion = TenantPolicies(policies, False).rules("key")
    started = time.process_time()
    for _ in range(streams):
        guard = RequestGuard(guardrails, tenant_id="t", key_id="key", request_id="r", model="m",
                             endpoint="chat", completion=completion, log_content=False)  # fmt: skip
        screen = guard.stream()
        for _ in range(tokens):
            screen.feed(CHUNK)
        screen.flush()
    return (time.process_time() - started) / (streams * tokens) * 1e6


GATEWAY_BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hello to the benchmark please"}]}
GATEWAY_ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "tok " * 16}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22},
    }
)


class _MirrorRedis:
    """What ``Guardrails`` reads of Redis: the tenant's mirrored hash (cached after the first read)."""

    def __init__(self, policies: list[dict]) -> None:
        self.entry = {b"policies": orjson.dumps(policies), b"log_content": b"0"} if policies else {}

    async def hgetall(self, name: str) -> dict[bytes, bytes]:
        return self.entry


def measure_request(policies: list[dict], rounds: int = 500) -> float:
    """µs of CPU for the guardrails' whole part in one request of the gateway benchmark's shape."""
    guardrails = Guardrails(_MirrorRedis(policies), _Settings())

    async def run() -> float:
        bodies = [copy.deepcopy(GATEWAY_BODY) for _ in range(rounds)]
        await guardrails.tenant("t")
        started = time.process_time()
        for body in bodies:
            guard = await guardrails.check(tenant_id="t", key_id="key", request_id="r", model="m",
                                           endpoint="chat", body=body)  # fmt: skip
            if guard is not None:
                if guard.screens_answers:
                    guard.answer(GATEWAY_ANSWER)
                guard.finish(status="ok", http_status=200)
        return (time.process_time() - started) / rounds * 1e6

    return asyncio.run(run())


def main() -> None:
    print(f"{'body':<22}{'no policy µs':>14}{'all detectors µs':>18}")
    for size in (1024, 10240):
        for pii in (False, True):
            body = chat_body(size, pii)
            rounds = 200 if size < 5000 else 50
            measure(body, [POLICY], 50)  # warm-up
            # The best of several runs: on a shared machine the others measure the neighbours.
            baseline = min(measure(body, [], rounds) for _ in range(REPEATS))
            guarded = min(measure(body, [POLICY], rounds) for _ in range(REPEATS))
            label = f"{len(orjson.dumps(body)) // 1024} KB{' with PII' if pii else ''}"
            print(f"{label:<22}{baseline:>14.1f}{guarded:>18.1f}")
    baseline = min(measure_request([]) for _ in range(REPEATS))
    guarded = min(measure_request([POLICY]) for _ in range(REPEATS))
    print(f"{'gateway bench request':<22}{baseline:>14.1f}{guarded:>18.1f}")
    per_token = min(measure_stream([POLICY]) for _ in range(REPEATS))
    print(f"{'stream, per token':<22}{'—':>14}{per_token:>18.1f}")


if __name__ == "__main__":
    main()
