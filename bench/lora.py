"""LoRA benchmark: many adapters on one base deployment, Zipf-like traffic through the gateway.

    python bench/lora.py [--adapters 50] [--requests 300] [--concurrency 4] [--max-loras 4]
                         [--max-cpu-loras 8] [--zipf 1.1]

Two real CPU engine workers serve the tiny model (made offline) with ``--max-loras`` /
``--max-cpu-loras``; ``--adapters`` PEFT adapters for it are made offline too and published in the
model mirror as the control plane publishes them (``parent``, ``adapter_source``). One request
trace — adapters drawn with probability ∝ 1/rank^s, greedy, a few tokens each — is sent through
the gateway three times in the same run: to the base model (the baseline for added latency),
then to the adapters with LoRA affinity (``BERTH_GATEWAY_LORA_ROUTING=affinity``), then with
plain least-load (``least_load``). Before each adapter phase the engines unload everything and a
fresh gateway starts, so both phases begin cold. Prints a table.

"Cold" is the first request for an adapter in a phase (it is on no worker and must be loaded);
"warm" is every later one (held, or reloaded after an eviction or on a second worker). Added
latency is against the base model's requests of the same trace. Loads and evictions come from
the gateway's Prometheus counters. Uses the dev data stores with Redis DB 13 and the key prefix
``berthlora:``; writes no usage rows (no usage consumer runs).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402

from berth.redis import get_redis  # noqa: E402
from contract.redis_names import RedisNames  # noqa: E402

PREFIX = "berthlora:"
ENGINE_KEY = "bench-lora-engine-key"
INTERNAL_TOKEN = "bench-lora-internal-token"  # noqa: S105 - a local benchmark's own gateway
BASE = "bench-tiny-base"
WORKERS = ("lw1", "lw2")
NAMES = RedisNames(PREFIX)
PROMPT = [{"role": "user", "content": "def handler(request):"}]


def _redis_url(db: int) -> str:
    base = settings.REDIS_URL.split("?", 1)[0]
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/{db}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def make_files(folder: Path, count: int) -> tuple[Path, list[Path]]:
    """The tiny model and ``count`` adapters for it, made once and kept in ``folder``."""
    from cpu_engine.tiny_adapter import make_tiny_adapter
    from cpu_engine.tiny_model import create_tiny_model

    base = create_tiny_model(folder / "tiny")
    adapters = []
    for i in range(count):
        path = folder / f"adapter-{i:03d}"
        if not (path / "adapter_model.safetensors").is_file():
            make_tiny_adapter(path, base, seed=1000 + i)
        adapters.append(path)
    return base, adapters


def start_engine(base: Path, port: int, args, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "cpu_engine", "--task", "chat", "--model", str(base),
            "--served-model-name", BASE, "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
            "--max-loras", str(args.max_loras), "--max-cpu-loras", str(args.max_cpu_loras)]  # fmt: skip
    env = {**os.environ, "VLLM_API_KEY": ENGINE_KEY, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603


def start_gateway(port: int, policy: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "REDIS_URL": settings.REDIS_URL,
        "BERTH_REDIS_PREFIX": PREFIX,
        "BERTH_KEY_PEPPERS": ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items()),
        "BERTH_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "BERTH_GATEWAY_ACCESS_LOG": "0",
        "BERTH_GATEWAY_ROUTING": "least_load",
        "BERTH_GATEWAY_LORA_ROUTING": policy,
        "BERTH_GATEWAY_SCRAPE_INTERVAL": "0.5",
    }
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, 30)
    return proc


def setup_tenant() -> tuple[str, str]:
    from django.core.management import call_command

    from tenants import mirror
    from tenants.keys import create_api_key
    from tenants.models import Plan, Tenant

    call_command("migrate", interactive=False, verbosity=0)
    plan, _ = Plan.objects.update_or_create(
        slug="bench",
        defaults={"name": "Bench", "requests_per_minute": 10**9, "tokens_per_minute": 2 * 10**9,
                  "max_concurrent_requests": 100_000, "monthly_token_budget": 10**15},
    )  # fmt: skip
    tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "Bench", "plan": plan})
    created = create_api_key(tenant=tenant, name="bench-lora")
    mirror.publish_tenant(tenant)
    mirror.publish_key(created.api_key)
    return str(tenant.pk), created.plaintext


def publish(redis, tenant_id: str, engines: dict[str, str], adapters: list[Path]) -> list[str]:
    common = {"task": "chat", "created": "1700000000", "context_length": "2048"}
    redis.hset(
        NAMES.model(BASE),
        mapping={**common, "served_name": BASE, "visibility": "public", "tenants": "[]", "owned_by": "berth"},
    )
    for worker_id, url in engines.items():
        redis.hset(NAMES.route(BASE), worker_id, json.dumps({"url": url, "api_key": ENGINE_KEY}))
    names = []
    for i, path in enumerate(adapters):
        name = f"bench/adapter-{i:03d}"
        redis.hset(
            NAMES.model(name),
            mapping={**common, "served_name": name, "visibility": "private", "tenants": json.dumps([tenant_id]),
                     "owned_by": "bench", "parent": BASE, "adapter_id": f"00000000-0000-4000-8000-{i:012d}",
                     "adapter_source": str(path), "adapter_revision": "", "adapter_rank": "8"},
        )  # fmt: skip
        names.append(name)
    redis.sadd(NAMES.models(), BASE, *names)
    return names


def reset_engines(redis, engines: dict[str, str]) -> None:
    """Unload every adapter from every engine and forget the gateways' record: a cold start."""
    headers = {"Authorization": f"Bearer {ENGINE_KEY}"}
    for worker_id, url in engines.items():
        cards = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"]
        for card in cards:
            if card.get("parent"):
                httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": card["id"]}, headers=headers)
        redis.delete(NAMES.lora_held(worker_id))


def zipf_trace(names: list[str], n: int, s: float, seed: int) -> list[str]:
    weights = [1 / (rank**s) for rank in range(1, len(names) + 1)]
    order = names[:]
    random.Random(seed).shuffle(order)  # noqa: S311 - popularity is not alphabetical
    return random.Random(seed + 1).choices(order, weights=weights, k=n)  # noqa: S311 - a traffic model


async def run_trace(url: str, key: str, trace: list[str], *, concurrency: int, max_tokens: int) -> dict:
    """Send ``trace`` in order over ``concurrency`` connections; per-request latency and kind."""
    results: list[tuple[str, float, bool, int]] = []  # model, seconds, cold, status
    seen: set[str] = set()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for model in trace:
        queue.put_nowait(model)
    headers = {"Authorization": f"Bearer {key}"}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            model = queue.get_nowait()
            cold = model not in seen
            seen.add(model)
            body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
            started = time.perf_counter()
            response = await client.post(url, json=body, headers=headers)
            results.append((model, time.perf_counter() - started, cold, response.status_code))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"results": results, "elapsed": elapsed}


def gateway_counters(port: int) -> dict[str, float]:
    text = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}, timeout=10
    ).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'(berth_gateway_lora_\w+?)_total\{(?:.*result="(\w+)")?.*\} ([0-9.e+]+)', line)
        if match:
            name = match.group(1) + (f"_{match.group(2)}" if match.group(2) else "")
            totals[name] = totals.get(name, 0.0) + float(match.group(3))
    return totals


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def summary(phase: dict, counters: dict[str, float] | None = None) -> dict[str, float]:
    ok = [r for r in phase["results"] if r[3] == 200]
    out = {
        "rps": len(ok) / phase["elapsed"],
        "errors": len(phase["results"]) - len(ok),
        "p50": pct([r[1] for r in ok], 0.5),
        "p99": pct([r[1] for r in ok], 0.99),
        "cold_n": sum(1 for r in ok if r[2]),
        "cold_p50": pct([r[1] for r in ok if r[2]], 0.5),
        "cold_p99": pct([r[1] for r in ok if r[2]], 0.99),
        "warm_p50": pct([r[1] for r in ok if not r[2]], 0.5),
        "warm_p99": pct([r[1] for r in ok if not r[2]], 0.99),
        "mean": statistics.fmean(r[1] for r in ok) * 1000 if ok else float("nan"),
    }
    if counters is not None:
        out["loads"] = counters.get("berth_gateway_lora_loads", 0)
        out["evictions"] = counters.get("berth_gateway_lora_evictions", 0)
        out["failures"] = counters.get("berth_gateway_lora_load_failures", 0)
        hits, misses = (
            counters.get("berth_gateway_lora_affinity_hit", 0),
            counters.get("berth_gateway_lora_affinity_miss", 0),
        )
        out["hit_rate"] = hits / (hits + misses) if hits + misses else float("nan")
    return out


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-loras", type=int, default=4)
    parser.add_argument("--max-cpu-loras", type=int, default=8)
    parser.add_argument("--zipf", type=float, default=1.1, help="popularity exponent s (weight ∝ 1/rank^s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--files", default=str(ROOT / "var" / "bench-lora"), help="where the model and adapters are kept"
    )
    args = parser.parse_args()

    settings.REDIS_URL = _redis_url(13)
    settings.REDIS_PREFIX = PREFIX
    get_redis.cache_clear()
    redis = get_redis()
    redis.flushdb()
    tenant_id, key = setup_tenant()
    made = time.perf_counter()
    base, adapter_files = make_files(Path(args.files), args.adapters)
    print(f"model and {args.adapters} adapters ready in {time.perf_counter() - made:.1f}s", file=sys.stderr)

    logs = Path(args.files) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ports = {w: free_port() for w in WORKERS}
    procs = [start_engine(base, ports[w], args, logs / f"{w}.log") for w in WORKERS]
    engines = {w: f"http://127.0.0.1:{ports[w]}" for w in WORKERS}
    gateway = None
    try:
        for proc, url in zip(procs, engines.values(), strict=True):
            wait_http(f"{url}/health", proc, 180)
        names = publish(redis, tenant_id, engines, adapter_files)
        trace = zipf_trace(names, args.requests, args.zipf, args.seed)
        distinct = len(set(trace))
        phases: dict[str, dict] = {}
        for label, policy in (("base", "affinity"), ("affinity", "affinity"), ("least_load", "least_load")):
            reset_engines(redis, engines)
            port = free_port()
            gateway = start_gateway(port, policy)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            models = [BASE] * len(trace) if label == "base" else trace
            # One warm-up request on the base, so connection set-up is in no phase's numbers.
            httpx.post(url, json={"model": BASE, "messages": PROMPT, "max_tokens": 1},
                       headers={"Authorization": f"Bearer {key}"}, timeout=60)  # fmt: skip
            before = gateway_counters(port)
            phase = asyncio.run(
                run_trace(url, key, models, concurrency=args.concurrency, max_tokens=args.max_tokens)
            )
            after = gateway_counters(port)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            phases[label] = summary(phase, None if label == "base" else delta)
            statuses = collections.Counter(r[3] for r in phase["results"])
            print(
                f"{label}: {len(phase['results'])} requests in {phase['elapsed']:.1f}s, HTTP {dict(statuses)}",
                file=sys.stderr,
            )
            gateway.terminate()
            gateway.wait(30)
            gateway = None
    finally:
        if gateway is not None:
            gateway.terminate()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        redis.flushdb()

    print_table(args, distinct, phases)


def print_table(args, distinct: int, phases: dict[str, dict]) -> None:
    base, aff, ll = phases["base"], phases["affinity"], phases["least_load"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}×" if b else "—"

    rows = [
        ("throughput (req/s)", f"{base['rps']:.1f}", f"{aff['rps']:.1f}", f"{ll['rps']:.1f}", ratio(aff["rps"], ll["rps"])),
        ("latency p50 / p99 (ms)", f"{base['p50']:.0f} / {base['p99']:.0f}", f"{aff['p50']:.0f} / {aff['p99']:.0f}",
         f"{ll['p50']:.0f} / {ll['p99']:.0f}", ratio(aff["p50"], ll["p50"])),
        ("cold requests (first per adapter)", "—", f"{aff['cold_n']}", f"{ll['cold_n']}", ""),
        ("added p50 / p99, cold (ms)", "—", f"{aff['cold_p50'] - base['p50']:.0f} / {aff['cold_p99'] - base['p99']:.0f}",
         f"{ll['cold_p50'] - base['p50']:.0f} / {ll['cold_p99'] - base['p99']:.0f}", ""),
        ("added p50 / p99, warm (ms)", "—", f"{aff['warm_p50'] - base['p50']:.0f} / {aff['warm_p99'] - base['p99']:.0f}",
         f"{ll['warm_p50'] - base['p50']:.0f} / {ll['warm_p99'] - base['p99']:.0f}", ratio(aff["warm_p50"], ll["warm_p50"])),
        ("adapter loads", "—", f"{aff['loads']:.0f}", f"{ll['loads']:.0f}", ratio(aff["loads"], ll["loads"])),
        ("evictions seen (404 → reload)", "—", f"{aff['evictions']:.0f}", f"{ll['evictions']:.0f}", ""),
        ("affinity hit rate", "—", f"{100 * aff['hit_rate']:.0f}%", "—", ""),
        ("load failures / HTTP errors", f"— / {base['errors']}", f"{aff['failures']:.0f} / {aff['errors']}",
         f"{ll['failures']:.0f} / {ll['errors']}", ""),
    ]  # fmt: skip
    print(
        f"\n{args.requests} requests, {args.adapters} adapters ({distinct} drawn, Zipf s={args.zipf}), "
        f"2 CPU engine workers (tiny model, --max-loras {args.max_loras} --max-cpu-loras {args.max_cpu_loras}), "
        f"{args.concurrency} concurrent, {args.max_tokens} tokens each\n"
    )
    header = ("", "base model", "adapters, LoRA affinity", "adapters, least-load", "affinity / least-load")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
