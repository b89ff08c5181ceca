"""Priority and fair share under saturation: FCFS (admission queue off) against Berth's admission
queue, in one run, through the real gateway.

    python bench/priority.py [--duration 60] [--batch 32] [--out bench/results/priority-<date>.txt]

The engine is a fake written here (asyncio) that models a continuous-batching scheduler: at most
``--batch`` sequences run; every decode step takes ``--step-ms`` + ``--step-per-seq-ms`` × running
and yields one token per running sequence; requests beyond the batch wait in the engine's own FCFS
queue (reported as ``vllm:num_requests_waiting`` on ``/metrics``, as vLLM does). So it has a
fixed token rate at a full batch, and whatever waits in it waits first come, first served.

Tenants (one key each; chat; the priority tenant streams, the others do not): a best-effort tenant (tier flex) flooding with
``--flood`` concurrent closed-loop clients; two standard tenants with fair-share weights 1 and 3,
``--standard`` concurrent clients each (equal demand, so any 1:3 split is the scheduler's doing);
a priority-band tenant (tier priority) sending interactive requests, Poisson at ``--rate`` per
second. Each mode runs the priority tenant alone first (its unloaded TTFT), then everything
together; figures are taken after ``--warmup`` seconds.

Reported per mode: the priority tenant's TTFT p50/p99 unloaded and under the flood; each tenant's
share of the tokens; Jain's fairness index of the two standard tenants' tokens divided by their
weights (1.0 = exactly 1:3); total tokens per second. Targets (issue 15): TTFT p99 under the
flood ≤ 2× unloaded; Jain ≥ 0.95; Berth's throughput within 5 % of FCFS.

It uses the dev data stores (embedded or from the environment) with Redis DB 13 and the key
prefix ``berthprio:``.
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
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREFIX = "berthprio:"
ENGINE_KEY = "prio-engine-key"
MODEL = "prio-model"


# ----------------------------------------------------------------------------- the fake engine


class BatchingEngine:
    """Continuous batching with a fixed step time: the decode loop of an LLM server, tokens only.

    ``priority_scheduling`` models vLLM's ``--scheduling-policy priority``: waiting requests are
    taken lowest ``priority`` first, and one that finds the batch full preempts the running
    request of the highest ``priority`` value above its own (which goes back to waiting, keeping
    its progress). Otherwise first come, first served, as vLLM's default."""

    def __init__(self, batch: int, step_s: float, per_seq_s: float, priority_scheduling: bool):
        self.batch = batch
        self.step_s = step_s
        self.per_seq_s = per_seq_s
        self.priority_scheduling = priority_scheduling
        self.waiting: list[list] = []  # [priority, arrival, tokens left, queue]
        self.running: list[list] = []
        self.arrivals = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def _schedule(self) -> None:
        if self.priority_scheduling:
            self.waiting.sort(key=lambda seq: (seq[0], seq[1]))
            while self.waiting and len(self.running) >= self.batch:
                worst = max(self.running, key=lambda seq: (seq[0], seq[1]))
                if worst[0] <= self.waiting[0][0]:
                    break
                self.running.remove(worst)
                self.waiting.append(worst)
                self.running.append(self.waiting.pop(0))
                self.waiting.sort(key=lambda seq: (seq[0], seq[1]))
        while self.waiting and len(self.running) < self.batch:
            self.running.append(self.waiting.pop(0))

    async def loop(self) -> None:
        while True:
            if not self.waiting and not self.running:
                self.wake.clear()
                await self.wake.wait()
            self._schedule()
            await asyncio.sleep(self.step_s + self.per_seq_s * len(self.running))
            still = []
            for seq in self.running:
                seq[2] -= 1
                seq[3].put_nowait(seq[2])
                if seq[2] > 0:
                    still.append(seq)
            self.running = still

    def submit(self, tokens: int, priority: int) -> asyncio.Queue:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.loop())
        queue: asyncio.Queue = asyncio.Queue()
        self.arrivals += 1
        self.waiting.append([priority, self.arrivals, tokens, queue])
        self.wake.set()
        return queue

    def cancel(self, queue: asyncio.Queue) -> None:
        self.waiting = [w for w in self.waiting if w[3] is not queue]
        for seq in self.running:
            if seq[3] is queue:
                seq[2] = 1  # finishes at the next step


# The engine's request priority: the body's ``priority`` (what Berth sends engines: RANK[tier]),
# else derived from ``service_tier`` the same way.
RANK = {"priority": 0, "default": 1, "flex": 2, "batch": 3}


def engine_app(engine: BatchingEngine):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/health":
            await _plain(send, 200, b"ok")
            return
        if path == "/metrics":
            kv = 0.8 * len(engine.running) / engine.batch
            text = (
                f'vllm:num_requests_running{{model_name="{MODEL}"}} {len(engine.running)}\n'
                f'vllm:num_requests_waiting{{model_name="{MODEL}"}} {len(engine.waiting)}\n'
                f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} {kv}\n'
            )
            await _plain(send, 200, text.encode())
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = json.loads(body)
        tokens = int(request.get("max_tokens") or 16)
        prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", [])) + 1
        priority = request.get("priority")
        if not isinstance(priority, int):
            priority = RANK.get(request.get("service_tier"), 1)
        queue = engine.submit(tokens, priority)
        stream = bool(request.get("stream"))
        if stream:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
        done = 0
        disconnected = asyncio.ensure_future(receive())
        try:
            while done < tokens:
                getter = asyncio.ensure_future(queue.get())
                finished, _ = await asyncio.wait({getter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in finished:
                    getter.cancel()
                    engine.cancel(queue)
                    return
                done += 1
                if not stream:
                    continue
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": "t "}, "finish_reason": None}],
                }
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                        "more_body": True,
                    }
                )
            usage = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
            if not stream:
                answer = {
                    "id": "c",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "t " * tokens},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": usage,
                }
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
                return
            last = {
                "id": "c",
                "object": "chat.completion.chunk",
                "model": MODEL,
                "choices": [],
                "usage": usage,
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n",
                    "more_body": False,
                }
            )
        finally:
            disconnected.cancel()

    return app


async def _plain(send, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body})


def run_engine(port: int, batch: int, step_ms: float, per_seq_ms: float, priority: bool) -> None:
    import uvicorn

    engine = BatchingEngine(batch, step_ms / 1000, per_seq_ms / 1000, priority)
    uvicorn.run(engine_app(engine), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")  # fmt: skip


# ----------------------------------------------------------------------------- set-up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(argv: list[str], env: dict[str, str], health: str) -> subprocess.Popen:
    import urllib.request

    proc = subprocess.Popen(  # noqa: S603 - our own command line
        argv, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=1):  # noqa: S310
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{argv} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def setup_tenants() -> dict[str, str]:
    """Four tenants on plans with no limits that matter here; their keys by role."""
    from django.core.management import call_command

    from tenants import mirror
    from tenants.keys import create_api_key
    from tenants.models import Plan, Tenant

    call_command("migrate", interactive=False, verbosity=0)
    keys = {}
    for role, band, weight in (
        ("flood", "best_effort", 1),
        ("standard-w1", "standard", 1),
        ("standard-w3", "standard", 3),
        ("priority", "priority", 1),
    ):
        plan, _ = Plan.objects.update_or_create(
            slug=f"prio-bench-{role}",
            defaults={
                "name": f"Priority bench {role}",
                "requests_per_minute": 10**9,
                "tokens_per_minute": 2 * 10**9,
                "max_concurrent_requests": 100_000,
                "monthly_token_budget": 10**15,
                "priority_band": band,
                "fair_share_weight": weight,
            },
        )
        tenant, _ = Tenant.objects.update_or_create(
            slug=f"prio-bench-{role}", defaults={"name": f"Priority bench {role}", "plan": plan}
        )
        created = create_api_key(tenant=tenant, name="bench")
        mirror.publish_tenant(tenant)
        mirror.publish_key(created.api_key)
        keys[role] = created.plaintext
    return keys


# ----------------------------------------------------------------------------- load


class Phase:
    def __init__(self, start_measuring: float, end: float):
        self.start = start_measuring
        self.end = end
        self.tokens: dict[str, int] = {}
        self.ttft: list[float] = []
        self.errors: dict[str, int] = {}


async def one_request(session, url: str, key: str, role: str, tier: str, tokens: int, phase: Phase) -> None:
    """The priority tenant streams (its TTFT is measured); the others do not (their tokens count
    when the answer arrives), which keeps the load generator's own CPU out of the figures."""
    stream = role == "priority"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "benchmark request words"}],
        "max_tokens": tokens,
        "stream": stream,
        "service_tier": tier,
    }
    sent = time.monotonic()
    first = True
    try:
        async with session.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as response:
            if response.status != 200:
                await response.read()
                if phase.start <= sent < phase.end:
                    phase.errors[role] = phase.errors.get(role, 0) + 1
                await asyncio.sleep(0.05)
                return
            if not stream:
                answer = await response.json()
                if phase.start <= time.monotonic() < phase.end:
                    phase.tokens[role] = phase.tokens.get(role, 0) + answer["usage"]["completion_tokens"]
                return
            async for line in response.content:
                if not line.startswith(b"data: {") or b'"content"' not in line:
                    continue
                now = time.monotonic()
                if first:
                    first = False
                    if phase.start <= sent < phase.end:
                        phase.ttft.append(now - sent)
                if phase.start <= now < phase.end:
                    phase.tokens[role] = phase.tokens.get(role, 0) + 1
    except Exception:  # noqa: BLE001 - counted; the bench goes on
        phase.errors[role] = phase.errors.get(role, 0) + 1


async def closed_loop(session, url, key, role, tier, tokens, phase: Phase) -> None:
    while time.monotonic() < phase.end:
        await one_request(session, url, key, role, tier, tokens, phase)


async def poisson(session, url, key, rate: float, tokens: int, phase: Phase, rng: random.Random) -> None:
    tasks = []
    next_at = time.monotonic()
    while next_at < phase.end:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        tasks.append(
            asyncio.ensure_future(one_request(session, url, key, "priority", "priority", tokens, phase))
        )
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)


def priority_client(url: str, key: str, rate: float, tokens: int, start: float, end: float) -> tuple:
    """The priority tenant's interactive traffic, in a process of its own so that the load
    generator's busy event loop does not add to the TTFT it measures: (TTFTs, tokens, errors).

    It sends from now on (through the warm-up, so the engine sees the same arrivals throughout);
    what it sent between ``start`` and ``end`` is measured."""
    import aiohttp

    async def run():
        phase = Phase(start, end)
        rng = random.Random(15)  # noqa: S311 - arrival times, not secrets
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=600)
        ) as session:
            await poisson(session, url, key, rate, tokens, phase, rng)
        return phase.ttft, phase.tokens.get("priority", 0), phase.errors.get("priority", 0)

    return asyncio.run(run())


async def run_phase(url: str, keys: dict[str, str], args, *, loaded: bool, seconds: float) -> Phase:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import aiohttp

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(time.sleep, 0).result()  # started before the clock runs
        now = time.monotonic()
        phase = Phase(now + args.warmup, now + args.warmup + seconds)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=600)
        priority = asyncio.get_running_loop().run_in_executor(
            pool,
            priority_client,
            url,
            keys["priority"],
            args.rate,
            args.priority_tokens,
            phase.start,
            phase.end,
        )
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            jobs = []
            if loaded:
                jobs += [
                    closed_loop(session, url, keys["flood"], "flood", "flex", args.tokens, phase)
                    for _ in range(args.flood)
                ]
                for role in ("standard-w1", "standard-w3"):
                    jobs += [
                        closed_loop(session, url, keys[role], role, "default", args.tokens, phase)
                        for _ in range(args.standard)
                    ]
            if os.environ.get("PRIORITY_BENCH_DEBUG") and loaded:
                jobs.append(sample_engine(session, url, phase))
            await asyncio.gather(*jobs)
        ttft, tokens, errors = await priority
    phase.ttft = ttft
    if tokens:
        phase.tokens["priority"] = tokens
    if errors:
        phase.errors["priority"] = errors
    return phase


async def sample_engine(session, url: str, phase: Phase) -> None:
    """Debug: the engine's running and waiting requests, averaged over the measured window."""
    engine = os.environ["PRIORITY_BENCH_ENGINE"]
    samples = []
    while time.monotonic() < phase.end:
        await asyncio.sleep(0.25)
        if time.monotonic() < phase.start:
            continue
        async with session.get(engine + "/metrics") as response:
            text = await response.text()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()[:2]]
        samples.append(values)
    if samples:
        running = statistics.mean(s[0] for s in samples)
        waiting = statistics.mean(s[1] for s in samples)
        print(f"engine: running {running:.1f}, waiting {waiting:.1f} on average", file=sys.stderr)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def jain(shares: list[float]) -> float:
    if not any(shares):
        return float("nan")
    return sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares))


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60, help="seconds measured under load, per mode")
    parser.add_argument("--unloaded", type=float, default=10, help="seconds measured unloaded, per mode")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--batch", type=int, default=32, help="the engine's max batch (max_num_seqs)")
    parser.add_argument("--step-ms", type=float, default=40.0)
    parser.add_argument("--step-per-seq-ms", type=float, default=0.25)
    parser.add_argument("--flood", type=int, default=32, help="best-effort closed-loop clients")
    parser.add_argument("--standard", type=int, default=32, help="closed-loop clients per standard tenant")
    parser.add_argument("--rate", type=float, default=2.0, help="priority requests per second (Poisson)")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of flood and standard requests")
    parser.add_argument("--priority-tokens", type=int, default=16)
    parser.add_argument("--headroom", type=int, default=4, help="BERTH_GATEWAY_ADMIT_PRIORITY_HEADROOM")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=2,
        help="BERTH_GATEWAY_ADMIT_PER_WORKER = batch + this: requests kept waiting in the engine to fill a slot at once",
    )
    parser.add_argument("--out", default="", help="also write the table here")
    parser.add_argument(
        "--engine", type=int, default=0, help=argparse.SUPPRESS
    )  # run the engine on this port
    parser.add_argument("--engine-priority", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        run_engine(args.engine, args.batch, args.step_ms, args.step_per_seq_ms, args.engine_priority)
        return

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")
    import django

    django.setup()
    from django.conf import settings

    from berth.redis import get_redis
    from contract.redis_names import RedisNames

    base = settings.REDIS_URL.split("?", 1)[0]
    scheme, _, rest = base.partition("://")
    settings.REDIS_URL = f"{scheme}://{rest.split('/', 1)[0]}/13"
    settings.REDIS_PREFIX = PREFIX
    get_redis.cache_clear()
    redis = get_redis()
    redis.flushdb()
    keys = setup_tenants()
    names = RedisNames(PREFIX)

    results = {}
    for mode in ("FCFS", "Berth"):
        engine_port, gateway_port = free_port(), free_port()
        engine = start(
            [sys.executable, str(Path(__file__).resolve()), "--engine", str(engine_port), "--batch", str(args.batch),
             "--step-ms", str(args.step_ms), "--step-per-seq-ms", str(args.step_per_seq_ms),
             *(["--engine-priority"] if mode == "Berth" else [])],
            {}, f"http://127.0.0.1:{engine_port}/health",
        )  # fmt: skip
        redis.hset(
            names.model(MODEL),
            mapping={"served_name": MODEL, "task": "chat", "visibility": "public", "tenants": "[]"},
        )
        redis.sadd(names.models(), MODEL)
        redis.delete(names.route(MODEL))
        redis.hset(
            names.route(MODEL),
            "w1",
            json.dumps({"url": f"http://127.0.0.1:{engine_port}", "api_key": ENGINE_KEY}),
        )
        env = {
            "REDIS_URL": settings.REDIS_URL,
            "BERTH_REDIS_PREFIX": PREFIX,
            "BERTH_KEY_PEPPERS": ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items()),
            "BERTH_GATEWAY_ACCESS_LOG": "0",
            "BERTH_GATEWAY_ADMISSION": "1" if mode == "Berth" else "0",
            "BERTH_GATEWAY_ADMIT_PER_WORKER": str(args.batch + args.prefetch),
            "BERTH_GATEWAY_ADMIT_PRIORITY_HEADROOM": str(args.headroom),
        }
        gateway = start(
            [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(gateway_port), "--log-level", "warning"],
            env, f"http://127.0.0.1:{gateway_port}/healthz",
        )  # fmt: skip
        url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        os.environ["PRIORITY_BENCH_ENGINE"] = f"http://127.0.0.1:{engine_port}"
        try:
            unloaded = asyncio.run(run_phase(url, keys, args, loaded=False, seconds=args.unloaded))
            loaded = asyncio.run(run_phase(url, keys, args, loaded=True, seconds=args.duration))
            if os.environ.get("PRIORITY_BENCH_DEBUG"):
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/metrics") as page:  # noqa: S310
                    for line in page.read().decode().splitlines():
                        if line.startswith("berth_gateway_admission") and (
                            "_sum" in line or "_count" in line or "total" in line
                        ):
                            print(mode, line, file=sys.stderr)
        finally:
            stop(gateway)
            stop(engine)
        results[mode] = (unloaded, loaded)
        print(f"{mode}: done", file=sys.stderr)
    redis.flushdb()
    report(results, args)


def report(results: dict, args) -> None:
    lines = []
    commit = subprocess.run(  # noqa: S603
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,  # noqa: S607
    ).stdout.strip()
    lines.append(f"bench/priority.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}")
    lines.append(
        f"engine: batch {args.batch}, step {args.step_ms:g} ms + {args.step_per_seq_ms:g} ms/seq (Berth: priority scheduling); load: flood "
        f"{args.flood} clients (flex), standard 2 × {args.standard} clients (weights 1, 3), priority Poisson "
        f"{args.rate:g}/s; {args.tokens} / {args.priority_tokens} tokens; {args.duration:g} s measured; "
        f"Berth: admit batch + {args.prefetch}, priority headroom {args.headroom}/worker"
    )
    header = f"| {'measure':<52} | {'FCFS':>10} | {'Berth':>10} | target |"
    lines += [header, "|" + "-" * 54 + "|" + "-" * 12 + "|" + "-" * 12 + "|--------|"]
    rows = []
    figures = {}
    for mode, (unloaded, loaded) in results.items():
        total = sum(loaded.tokens.values())
        w1, w3 = loaded.tokens.get("standard-w1", 0), loaded.tokens.get("standard-w3", 0)
        figures[mode] = {
            "unloaded_p50": percentile(unloaded.ttft, 50) * 1000,
            "unloaded_p99": percentile(unloaded.ttft, 99) * 1000,
            "p50": percentile(loaded.ttft, 50) * 1000,
            "p99": percentile(loaded.ttft, 99) * 1000,
            "jain": jain([w1 / 1, w3 / 3]),
            "throughput": total / args.duration,
            "shares": {k: v / total * 100 if total else 0 for k, v in sorted(loaded.tokens.items())},
            "ratio": w3 / w1 if w1 else float("nan"),
            "errors": sum(loaded.errors.values()),
            "n": len(loaded.ttft),
        }
    f, b = figures["FCFS"], figures["Berth"]
    rows.append(
        ("priority TTFT p50 unloaded (ms)", f"{f['unloaded_p50']:.0f}", f"{b['unloaded_p50']:.0f}", "")
    )
    rows.append(
        ("priority TTFT p99 unloaded (ms)", f"{f['unloaded_p99']:.0f}", f"{b['unloaded_p99']:.0f}", "")
    )
    rows.append(("priority TTFT p50 under flood (ms)", f"{f['p50']:.0f}", f"{b['p50']:.0f}", ""))
    rows.append(("priority TTFT p99 under flood (ms)", f"{f['p99']:.0f}", f"{b['p99']:.0f}", ""))
    for fig in figures.values():
        fig["p99_ratio"] = fig["p99"] / fig["unloaded_p99"]
    rows.append(
        ("  p99 under flood / unloaded p99", f"{f['p99_ratio']:.2f}×", f"{b['p99_ratio']:.2f}×", "≤ 2×")
    )
    rows.append(("standard tokens w3 : w1 (weights 3 : 1)", f"{f['ratio']:.2f}", f"{b['ratio']:.2f}", "≈ 3"))
    rows.append(
        ("Jain's index, standard tenants by weight", f"{f['jain']:.3f}", f"{b['jain']:.3f}", "≥ 0.95")
    )
    for role in ("priority", "standard-w3", "standard-w1", "flood"):
        rows.append(
            (
                f"token share: {role} (%)",
                f"{f['shares'].get(role, 0):.1f}",
                f"{b['shares'].get(role, 0):.1f}",
                "",
            )
        )
    rows.append(("total throughput (tokens/s)", f"{f['throughput']:.0f}", f"{b['throughput']:.0f}", ""))
    rows.append(("  Berth vs FCFS", "", f"{(b['throughput'] / f['throughput'] - 1) * 100:+.1f} %", "≥ −5 %"))
    rows.append(("refused or failed requests under load", f"{f['errors']}", f"{b['errors']}", ""))
    rows.append(("priority requests measured under load", f"{f['n']}", f"{b['n']}", ""))
    for name, fcfs, berth, target in rows:
        lines.append(f"| {name:<52} | {fcfs:>10} | {berth:>10} | {target:<6} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
