"""Throughput of an OpenAI-compatible chat server at 1 and 4 concurrent requests (prints figures).

    python bench/cpu_engine.py --base-url http://127.0.0.1:8000/v1 --model NAME [--api-key K] [--pid PID]

Each request asks for exactly ``--max-tokens`` tokens (``ignore_eos`` is not portable, so the
count comes from ``usage``). With ``--pid`` it also prints the server's peak RSS from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import openai


async def one(client: openai.AsyncOpenAI, model: str, max_tokens: int) -> int:
    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        max_tokens=max_tokens,
        temperature=1.0,
    )
    return reply.usage.completion_tokens


def peak_rss_mb(pid: int) -> float | None:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--pid", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, timeout=300)
    # Warm-up: the first requests after start-up run several times slower on both engines.
    for _ in range(2):
        await asyncio.gather(*[one(client, args.model, args.max_tokens) for _ in range(4)])
    for concurrency in (1, 4):
        rates = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            tokens = await asyncio.gather(
                *[one(client, args.model, args.max_tokens) for _ in range(concurrency)]
            )
            rates.append(sum(tokens) / (time.perf_counter() - started))
        best = max(rates)
        print(
            f"concurrency {concurrency}: {best:.0f} tok/s (best of {args.rounds}; {sorted(round(r) for r in rates)})"
        )
    if args.pid:
        print(f"peak RSS: {peak_rss_mb(args.pid):.0f} MB")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
