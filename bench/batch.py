"""Batch benchmark: batch throughput on idle capacity, and interactive TTFT with and without a batch.

    python bench/batch.py [--lines 2000] [--batch-tokens 32] [--rate 4] [--seconds 20] [--json out.json]

One run, three phases on one model served by a fake batching engine (``bench/batch_engine.py``:
``--slots`` sequences per step, a fixed step time, waiting requests admitted by vLLM's request
``priority``), behind the real gateway (``python -m gateway``) with the batch path on:

1. **interactive alone**: streaming chat requests of one tenant arrive at ``--rate`` per second
   (Poisson) for ``--seconds``; TTFT (first content chunk at the client) p50/p99;
2. **interactive while a batch runs**: the same load while the batch runner (``batches.runner``, in
   this process, ``--concurrency`` lines in flight, ``BERTH_BATCH_CONCURRENCY``) works through a
   ``--lines`` batch of the same tenant on the same model; TTFT p50/p99 and the ratio to phase 1
   (target: p50 and p99 within 20 %);
3. the batch runs on to the end alone: lines/s and completion tokens/s over the whole batch.

The batch's lines carry ``priority`` 3 to the engine (tier batch); interactive requests carry none
(0). Without the gateway's admission queue the batch's share of the engine is bounded by
``--concurrency`` against ``--slots``: at ``--concurrency`` below ``--slots`` the batch takes what
interactive traffic leaves idle (the default, 8 of 16, met the 20 % target on a 2-core machine:
p50 ×1.12, p99 ×1.13 at 10.7 lines/s; 12 of 16 gave ×1.22/×2.20 at 15.4 lines/s, and 32, a
saturated engine with priority admission but no preemption, ×2.18/×4.28 at 19.0 lines/s). Uses the dev data stores with Redis DB 14 and the key prefix
``berthbench:``; the batch rows it writes are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
import orjson  # noqa: E402
from django.conf import settings  # noqa: E402

from berth import redis as berth_redis  # noqa: E402
from contract.redis_names import RedisNames  # noqa: E402

PREFIX = "berthbench:"
ENGINE_KEY = "bench-engine-key"
MODEL = "bench-batch-model"
TOKEN = "bench-internal-token-" + "0123456789abcdef" * 2


def _redis_url(db: int) -> str:
    base = settings.REDIS_URL.split("?", 1)[0]
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/{db}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(argv: list[str], env: dict[str, str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen(  # noqa: S603 - our own command line
        argv, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(health, timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(
        f"{argv[:4]} did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
    )


def setup() -> tuple[object, str]:
    from django.core.management import call_command

    from models_registry.models import Model
    from tenants import mirror
    from tenants.keys import create_api_key
    from tenants.models import Plan, Tenant

    call_command("migrate", interactive=False, verbosity=0)
    plan, _ = Plan.objects.update_or_create(
        slug="bench-batch",
        defaults={
            "name": "Bench batch",
            "requests_per_minute": 10**9,
            "tokens_per_minute": 2 * 10**9,
            "max_concurrent_requests": 100_000,
            "monthly_token_budget": 10**15,
            "monthly_batch_token_budget": None,
        },
    )
    tenant, _ = Tenant.objects.get_or_create(
        slug="bench-batch", defaults={"name": "Bench batch", "plan": plan}
    )
    Model.objects.get_or_create(name=MODEL, defaults={"source": "/models/bench", "source_kind": "local"})
    created = create_api_key(tenant=tenant, name="bench-batch")
    mirror.publish_tenant(tenant)
    mirror.publish_key(created.api_key)
    return tenant, created.plaintext


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def interactive(url: str, key: str, rate: float, seconds: float, tokens: int, seed: int) -> list[float]:
    """Poisson arrivals of streaming chat requests; the TTFT of each, in milliseconds."""
    rng = random.Random(seed)  # noqa: S311 - arrival times, not secrets
    ttfts: list[float] = []
    failures = 0
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "an interactive question for the benchmark"}],
        "max_tokens": tokens,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one() -> None:
            nonlocal failures
            began = time.perf_counter()
            async with client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    failures += 1
                    await response.aread()
                    return
                first = None
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: {") and '"content"' in line:
                        first = time.perf_counter()
                if first is not None:
                    ttfts.append((first - began) * 1000)

        tasks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    if failures:
        print(f"  ({failures} interactive request(s) failed)", file=sys.stderr)
    return ttfts


def line_tokens(index: int, mean: int) -> int:
    """Lines of different lengths (mean ``mean``), so they do not finish in lockstep."""
    return max(1, mean // 2 + (index * 7919) % max(1, mean))


def make_batch(tenant, lines: int, tokens: int):
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages
    from django.utils import timezone

    from batches import runner
    from batches.models import Batch, File, FilePurpose

    data = b"".join(
        orjson.dumps(
            {
                "custom_id": f"b-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"batch question number {i}"}],
                    "max_tokens": line_tokens(i, tokens),
                },
            }
        )
        + b"\n"
        for i in range(lines)
    )
    row = File(tenant=tenant, purpose=FilePurpose.BATCH, filename="bench.jsonl", bytes=len(data))
    row.storage_name = storages["berth_files"].save(f"{tenant.pk}/{row.id}", ContentFile(data))
    row.save()
    batch = Batch.objects.create(
        tenant=tenant,
        endpoint="/v1/chat/completions",
        input_file=row,
        expires_at=timezone.now() + timedelta(hours=24),
    )
    status = runner.validate(batch.id)
    if status != "in_progress":
        raise SystemExit(f"the benchmark batch did not validate: {status}")
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000, help="lines in the batch")
    parser.add_argument("--batch-tokens", type=int, default=32, help="max_tokens of each batch line")
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens of each interactive request")
    parser.add_argument("--rate", type=float, default=4.0, help="interactive requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each interactive phase")
    parser.add_argument("--slots", type=int, default=16, help="engine: sequences per step (max_num_seqs)")
    parser.add_argument("--step-ms", type=float, default=20.0, help="engine: one decode step")
    parser.add_argument(
        "--step-per-seq-ms", type=float, default=0.25, help="engine: added per running sequence"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="batch lines in flight (BERTH_BATCH_CONCURRENCY)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--run-batch", help=argparse.SUPPRESS)  # the runner's own process
    args = parser.parse_args()
    if args.run_batch:
        settings.REDIS_URL = _redis_url(14)
        settings.REDIS_PREFIX = PREFIX
        from batches import runner

        runner.run(args.run_batch, slice_seconds=3600)
        return

    settings.REDIS_URL = _redis_url(14)
    settings.REDIS_PREFIX = PREFIX
    berth_redis.get_redis.cache_clear()
    redis = berth_redis.get_redis()
    redis.flushdb()
    tenant, key = setup()
    names = RedisNames(PREFIX)

    engine_port, gateway_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    batch = None
    try:
        procs.append(
            start(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "batch_engine:app",
                 "--host", "127.0.0.1", "--port", str(engine_port), "--log-level", "warning", "--no-access-log"],
                {
                    "FAKE_API_KEY": ENGINE_KEY,
                    "BENCH_ENGINE_SLOTS": str(args.slots),
                    "BENCH_ENGINE_STEP_MS": str(args.step_ms),
                    "BENCH_ENGINE_STEP_PER_SEQ_MS": str(args.step_per_seq_ms),
                },
                f"http://127.0.0.1:{engine_port}/health",
            )
        )  # fmt: skip
        redis.hset(
            names.model(MODEL),
            mapping={"served_name": MODEL, "task": "chat", "visibility": "public", "tenants": "[]"},
        )
        redis.sadd(names.models(), MODEL)
        redis.hset(
            names.route(MODEL),
            "w1",
            json.dumps({"url": f"http://127.0.0.1:{engine_port}", "api_key": ENGINE_KEY}),
        )
        procs.append(
            start(
                [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(gateway_port),
                 "--log-level", "warning"],
                {
                    "REDIS_URL": settings.REDIS_URL,
                    "BERTH_REDIS_PREFIX": PREFIX,
                    "BERTH_KEY_PEPPERS": ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items()),
                    "BERTH_INTERNAL_TOKEN": TOKEN,
                    "BERTH_GATEWAY_ACCESS_LOG": "0",
                    # The admission queue at the engine's capacity, as the README tells operators:
                    # batch lines beyond it wait in the gateway, behind interactive requests.
                    "BERTH_GATEWAY_ADMIT_PER_WORKER": str(args.slots),
                },
                f"http://127.0.0.1:{gateway_port}/healthz",
            )
        )  # fmt: skip
        gateway = f"http://127.0.0.1:{gateway_port}"
        url = gateway + "/v1/chat/completions"
        from batches.models import Batch

        asyncio.run(interactive(url, key, args.rate, 3, args.tokens, 0))  # warm-up
        print(f"phase 1: interactive alone, {args.rate:g}/s for {args.seconds:g}s", file=sys.stderr)
        alone = asyncio.run(interactive(url, key, args.rate, args.seconds, args.tokens, 1))

        batch = make_batch(tenant, args.lines, args.batch_tokens)
        result: dict = {}

        print(f"phase 2: the same while a {args.lines}-line batch runs", file=sys.stderr)
        # The runner in a process of its own, as a Celery worker runs it.
        began = time.perf_counter()
        worker = subprocess.Popen(  # noqa: S603 - our own command line
            [sys.executable, __file__, "--run-batch", batch.id],
            env={
                **os.environ,
                "BERTH_INTERNAL_TOKEN": TOKEN,
                "BERTH_GATEWAY_INTERNAL_URL": gateway,
                "BERTH_BATCH_CONCURRENCY": str(args.concurrency),
            },
            cwd=ROOT,
        )
        procs.append(worker)
        time.sleep(1.0)  # the runner has filled its concurrency
        during = asyncio.run(interactive(url, key, args.rate, args.seconds, args.tokens, 2))
        done_during = Batch.objects.get(pk=batch.pk).request_completed
        print("phase 3: the batch runs to its end", file=sys.stderr)
        worker.wait()
        result["seconds"] = time.perf_counter() - began
        batch.refresh_from_db()
        result["status"] = batch.status
        engine_stats = httpx.get(f"http://127.0.0.1:{engine_port}/_stats").json()
        # What the gateway's admission queue did, by tier (dispatched at once, after a wait, refused).
        exposition = httpx.get(gateway + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        admission = [
            line
            for line in exposition.splitlines()
            if line.startswith("berth_gateway_admission_dispatches_total")
        ]
        print("\n".join(admission) or "no admission dispatches recorded", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if batch is not None:
            from batches.models import Batch as BatchModel
            from batches.models import File

            files = [f for f in (batch.input_file_id, batch.output_file_id, batch.error_file_id) if f]
            BatchModel.objects.filter(pk=batch.pk).delete()
            for row in File.objects.filter(pk__in=files):
                from django.core.files.storage import storages

                storages["berth_files"].delete(row.storage_name)
                row.delete()
        redis.flushdb()

    seconds = result["seconds"]
    rows = {
        "interactive_alone": {
            "n": len(alone),
            "p50_ms": percentile(alone, 50),
            "p99_ms": percentile(alone, 99),
        },
        "interactive_with_batch": {
            "n": len(during),
            "p50_ms": percentile(during, 50),
            "p99_ms": percentile(during, 99),
        },
        "batch": {
            "status": result["status"],
            "lines": args.lines,
            "completed": batch.request_completed,
            "failed": batch.request_failed,
            "seconds": seconds,
            "lines_per_s": batch.request_completed / seconds,
            "completion_tokens_per_s": sum(line_tokens(i, args.batch_tokens) for i in range(args.lines))
            / seconds,
            "lines_during_phase_2": done_during,
        },
        "engine": engine_stats,
        "args": vars(args),
    }
    a, d = rows["interactive_alone"], rows["interactive_with_batch"]
    ratio50, ratio99 = d["p50_ms"] / a["p50_ms"], d["p99_ms"] / a["p99_ms"]
    b = rows["batch"]
    print()
    print(f"engine: {args.slots} slots, step {args.step_ms:g} ms + {args.step_per_seq_ms:g} ms/seq; "
          f"batch concurrency {args.concurrency}")  # fmt: skip
    print("| phase | requests | TTFT p50 (ms) | TTFT p99 (ms) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| interactive alone | {a['n']} | {a['p50_ms']:.1f} | {a['p99_ms']:.1f} |")
    print(f"| interactive + batch | {d['n']} | {d['p50_ms']:.1f} | {d['p99_ms']:.1f} |")
    print(f"| ratio (target ≤ 1.20) | | {ratio50:.2f} | {ratio99:.2f} |")
    print()
    print(
        f"batch: {b['completed']}/{b['lines']} lines ({b['failed']} failed, {b['status']}) in {seconds:.1f} s: "
        f"{b['lines_per_s']:.1f} lines/s, {b['completion_tokens_per_s']:.0f} completion tokens/s "
        f"(engine peak {engine_stats['max_running']} running, {engine_stats['max_waiting']} waiting)"
    )
    rows["ttft_ratio_p50"], rows["ttft_ratio_p99"] = ratio50, ratio99
    rows["mean_ttft_alone_ms"] = statistics.fmean(alone) if alone else None
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
