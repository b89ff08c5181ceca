"""Gateway benchmark: the fake engine measured direct and through the gateway, in one run.

    python bench/gateway.py [--duration 10] [--streams 1000] [--events 200000] [--servers]
    python bench/gateway.py --only-guardrails [--rounds 5]   # just the guardrails phase

Auth, quotas (a plan with limits set, so every Lua check runs) and metering (usage events to the
Redis stream, access log) are on. Non-streaming load comes from ``wrk`` (``apt install wrk``);
streams from an asyncio/aiohttp client on uvloop. On a 2-core machine the gateway is pinned to
CPU 0 and everything else (fake engine, wrk, Redis, PostgreSQL) to CPU 1, so "req/s on one
gateway core" is what CPU 0 sustains while the other core feeds it. Prints a table.

The guardrails phase sends the same requests and streams with the keys of two tenants, one with
no policy and one with a policy of every regex detector (redact) and a blocked-terms list (flag)
on prompts and completions, alternating them against one gateway process, and reports the CPU
the gateway spends per request and per streamed token for each and the difference (medians over
``--rounds`` pairs): the policy's added cost.

It uses the dev data stores (embedded or from the environment) with Redis DB 14 and the key
prefix ``berthbench:``, and deletes the usage rows it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from berth.redis import get_redis  # noqa: E402
from contract.redis_names import RedisNames  # noqa: E402
from contract.usage import UsageEvent  # noqa: E402

PREFIX = "berthbench:"
ENGINE_KEY = "bench-engine-key"
MODEL = "bench-model"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello to the benchmark please"}],
    "max_tokens": 16,
}
CPUS = os.cpu_count() or 1


def _redis_url(db: int) -> str:
    base = settings.REDIS_URL.split("?", 1)[0]
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/{db}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if CPUS >= 2 else []


def start(argv: list[str], env: dict[str, str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen(  # noqa: S603 - our own command line
        argv, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=1):  # noqa: S310
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{argv} did not start")


def uvicorn_argv(app: str, port: int, cpu: int, http: str = "httptools") -> list[str]:
    return [
        *pin(cpu),
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        http,
    ]


def uvicorn(app: str, port: int, cpu: int, env: dict[str, str], health: str) -> subprocess.Popen:
    argv = uvicorn_argv(app, port, cpu)
    return start(argv, env, f"http://127.0.0.1:{port}{health}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to measure cost per request under contention."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, key: str, *, duration: int, connections: int, rate: float | None = None) -> dict:
    """Run wrk with a POST body; with ``rate`` each connection paces itself (wrk's delay())."""
    delay_ms = 1000 * connections / rate if rate else 0
    script = f"""
wrk.method = "POST"
wrk.body = [[{json.dumps(BODY)}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
function delay() return {delay_ms:.3f} end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    out = subprocess.run(  # noqa: S603
        [*pin(1), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", handle.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(handle.name)
    match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", out)
    requests, micros, p50, p99, errors = match.groups()
    return {
        "rps": int(requests) / (int(micros) / 1e6),
        "p50_ms": float(p50) / 1000,
        "p99_ms": float(p99) / 1000,
        "errors": int(errors),
    }


async def streams(url: str, key: str, n: int, tokens: int, delay: float) -> float:
    """Open ``n`` concurrent streams; return content tokens received per second."""
    import aiohttp

    body = {**BODY, "max_tokens": tokens, "stream": True, "fake_delay": delay}
    counted = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def one():
            nonlocal counted
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
                if response.status != 200:
                    raise RuntimeError(await response.text())
                async for chunk in response.content.iter_any():
                    counted += chunk.count(b'data: {"id"')

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        elapsed = time.perf_counter() - started
    return counted / elapsed


def server_comparison(key: str, env: dict[str, str], duration: int) -> list[tuple[str, str, str]]:
    """Gateway CPU per request: httptools vs h11 (proxied chat), raw ASGI vs Starlette (/healthz)."""
    rows = []
    cases = [
        ("gateway.app:app", "httptools", "/v1/chat/completions"),
        ("gateway.app:app", "h11", "/v1/chat/completions"),
        ("gateway.app:app", "httptools", "/healthz"),
        ("bench.starlette_healthz:app", "httptools", "/healthz"),
    ]
    for app, http, path in cases:
        port = free_port()
        argv = uvicorn_argv(app, port, 0, http)
        proc = start(argv, env, f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}{path}"
        if path == "/healthz":
            cpu0 = cpu_seconds(proc.pid)
            out = subprocess.run(  # noqa: S603
                [*pin(1), "wrk", "-t1", "-c64", f"-d{duration}s", url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        else:
            wrk(url, key, duration=2, connections=64)
            cpu0 = cpu_seconds(proc.pid)
            rps = wrk(url, key, duration=duration, connections=64)["rps"]
        per = (cpu_seconds(proc.pid) - cpu0) / (rps * duration)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        rows.append(
            (
                f"server: {app.split(':')[0]} on {http}, {path}",
                f"{rps:,.0f} req/s, {per * 1e6:,.0f} µs CPU",
                "",
            )
        )
    return rows


def ingestion(tenant_id: str, events: int) -> float:
    from billing import usage
    from billing.models import UsageRecord

    client = get_redis()
    stream = RedisNames(PREFIX).usage_stream()
    client.delete(stream)
    usage.ensure_group(client)
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i in range(events):
        event = UsageEvent(
            request_id=f"bench_{now}_{i}",
            tenant_id=tenant_id,
            model=MODEL,
            occurred_at_ms=now,
            endpoint="chat",
            prompt_tokens=12,
            completion_tokens=16,
            status="ok",
            http_status=200,
            latency_ms=3,
            ttft_ms=1,
            worker="w1",
        )
        pipe.xadd(stream, event.to_fields())
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    started = time.perf_counter()
    handled = 0
    while handled < events:
        handled += usage.consume_batch(consumer="bench", count=5000, block_ms=None, client=client)
    elapsed = time.perf_counter() - started
    if UsageRecord.objects.filter(request_id__startswith=f"bench_{now}_").count() != events:
        raise RuntimeError("not every usage event reached PostgreSQL")
    UsageRecord.objects.filter(request_id__startswith="bench_").delete()
    return events / elapsed


def setup() -> tuple[str, str]:
    from django.core.management import call_command

    from tenants import mirror
    from tenants.keys import create_api_key
    from tenants.models import Plan, Tenant

    call_command("migrate", interactive=False, verbosity=0)
    plan, _ = Plan.objects.update_or_create(
        slug="bench",
        defaults={
            "name": "Bench",
            "requests_per_minute": 10**9,
            "tokens_per_minute": 2 * 10**9,
            "max_concurrent_requests": 100_000,
            "monthly_token_budget": 10**15,
        },
    )
    tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "Bench", "plan": plan})
    created = create_api_key(tenant=tenant, name="bench")
    mirror.publish_tenant(tenant)
    mirror.publish_key(created.api_key)
    return str(tenant.pk), created.plaintext


GUARD_POLICY = {
    "detectors": {name: "redact" for name in ("email", "phone", "card", "iban", "secret")},
    "blocked_terms": ["project nightingale", "internal only", "confidential"],
    "blocked_terms_action": "flag",
}


def setup_guarded() -> str:
    """A second tenant on the same plan whose policy runs every regex rule both ways; its key."""
    from guardrails import mirror as guard_mirror
    from guardrails.models import GuardrailPolicy
    from tenants import mirror
    from tenants.keys import create_api_key
    from tenants.models import Plan, Tenant

    plan = Plan.objects.get(slug="bench")
    tenant, _ = Tenant.objects.get_or_create(
        slug="bench-guard", defaults={"name": "Bench guard", "plan": plan}
    )
    GuardrailPolicy.objects.update_or_create(
        tenant=tenant,
        name="bench",
        defaults={**GUARD_POLICY, "applies_to_prompts": True, "applies_to_completions": True},
    )
    created = create_api_key(tenant=tenant, name="bench")
    mirror.publish_tenant(tenant)
    mirror.publish_key(created.api_key)
    guard_mirror.publish_tenant(tenant.pk)
    return created.plaintext


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def guardrails_phase(
    gw: subprocess.Popen, url: str, plain: str, guarded: str, args
) -> list[tuple[str, str, str]]:
    """Gateway CPU per request and per streamed token without and with a regex policy (see above)."""
    import uvloop

    duration = max(2, args.duration // 2)
    per_request: dict[str, list[float]] = {"plain": [], "guarded": []}
    per_token: dict[str, list[float]] = {"plain": [], "guarded": []}
    rates: dict[str, list[float]] = {"plain": [], "guarded": []}
    errors = 0
    wrk(url, guarded, duration=2, connections=args.connections)  # warm-up (and the policy cached)
    for _ in range(args.rounds):
        for name, key in (("plain", plain), ("guarded", guarded)):
            cpu0 = cpu_seconds(gw.pid)
            result = wrk(url, key, duration=duration, connections=args.connections)
            per_request[name].append((cpu_seconds(gw.pid) - cpu0) / (result["rps"] * duration))
            errors += result["errors"]
        for name, key in (("plain", plain), ("guarded", guarded)):
            cpu0 = cpu_seconds(gw.pid)
            rates[name].append(
                uvloop.run(streams(url, key, args.guard_streams, args.stream_tokens, args.token_delay))
            )
            per_token[name].append((cpu_seconds(gw.pid) - cpu0) / (args.guard_streams * args.stream_tokens))
    added = _median([g - p for p, g in zip(per_request["plain"], per_request["guarded"], strict=True)])
    added_token = _median([g - p for p, g in zip(per_token["plain"], per_token["guarded"], strict=True)])
    return [
        (
            "guardrails: gateway CPU per request, no policy / regex policy (µs)",
            f"{_median(per_request['plain']) * 1e6:,.0f} / {_median(per_request['guarded']) * 1e6:,.0f}",
            "",
        ),
        ("  added by the regex policy per request (µs)", f"{added * 1e6:,.1f}", "< 100"),
        (
            f"guardrails: {args.guard_streams} streams tokens/s, no policy / completion policy",
            f"{_median(rates['plain']):,.0f} / {_median(rates['guarded']):,.0f}",
            "",
        ),
        (
            "  gateway CPU per streamed token, no policy / policy (µs)",
            f"{_median(per_token['plain']) * 1e6:,.1f} / {_median(per_token['guarded']) * 1e6:,.1f}",
            "",
        ),
        ("  added by the completion policy per streamed token (µs)", f"{added_token * 1e6:,.1f}", ""),
        ("guardrails phase: HTTP/socket errors reported by wrk", str(errors), "0"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-tokens", type=int, default=100)
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between a stream's tokens")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--servers", action="store_true", help="also compare httptools/h11 and raw ASGI/Starlette"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--only-guardrails", action="store_true", help="run only the guardrails phase")
    parser.add_argument("--rounds", type=int, default=5, help="guardrails phase: no policy/policy pairs")
    parser.add_argument("--guard-streams", type=int, default=200, help="guardrails phase: concurrent streams")
    args = parser.parse_args()
    global CPUS
    if args.no_pin:
        CPUS = 1  # pin() pins nothing below 2 CPUs

    settings.REDIS_URL = _redis_url(14)
    settings.REDIS_PREFIX = PREFIX
    get_redis.cache_clear()
    redis = get_redis()
    redis.flushdb()
    tenant_id, key = setup()
    guard_key = setup_guarded()

    engine_port, gateway_port = free_port(), free_port()
    engine = uvicorn(
        "tests.gateway.fake_upstream:app",
        engine_port,
        1,
        {"FAKE_API_KEY": ENGINE_KEY, "FAKE_NAME": MODEL},
        "/health",
    )
    redis.hset(
        RedisNames(PREFIX).model(MODEL),
        mapping={"served_name": MODEL, "task": "chat", "visibility": "public", "tenants": "[]"},
    )
    redis.sadd(RedisNames(PREFIX).models(), MODEL)
    redis.hset(
        RedisNames(PREFIX).route(MODEL),
        "w1",
        json.dumps({"url": f"http://127.0.0.1:{engine_port}", "api_key": ENGINE_KEY}),
    )
    gw_env = {
        "REDIS_URL": settings.REDIS_URL,
        "BERTH_REDIS_PREFIX": PREFIX,
        "BERTH_KEY_PEPPERS": ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items()),
        "BERTH_GATEWAY_ACCESS_LOG": "1",
    }

    def gateway() -> subprocess.Popen:
        # As deployments start it (berth/roles.py): python -m gateway, pinned to CPU 0.
        argv = [*pin(0), sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(gateway_port),
                "--log-level", "warning"]  # fmt: skip
        return start(argv, gw_env, f"http://127.0.0.1:{gateway_port}/healthz")

    direct_url = f"http://127.0.0.1:{engine_port}/v1/chat/completions"
    gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
    rows = []
    if args.only_guardrails:
        try:
            gw = gateway()
            rows += guardrails_phase(gw, gateway_url, key, guard_key, args)
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
        finally:
            engine.send_signal(signal.SIGTERM)
            engine.wait(30)
        redis.flushdb()
        report(rows, args)
        return
    try:
        gw = gateway()
        wrk(gateway_url, key, duration=2, connections=args.connections)  # warm-up
        direct = wrk(direct_url, ENGINE_KEY, duration=args.duration, connections=args.connections)
        cpu0 = cpu_seconds(gw.pid)
        through = wrk(gateway_url, key, duration=args.duration, connections=args.connections)
        per_request = (cpu_seconds(gw.pid) - cpu0) / (through["rps"] * args.duration)
        rows.append(("non-streaming max req/s, direct (fake engine)", f"{direct['rps']:,.0f}", ""))
        rows.append(
            (
                "non-streaming max req/s, through gateway (1 process, 1 core)",
                f"{through['rps']:,.0f}",
                "≥ 2,000",
            )
        )
        rows.append(
            (
                "  gateway CPU per request (µs) → req/s per free core",
                f"{per_request * 1e6:,.0f} → {1 / per_request:,.0f}",
                "",
            )
        )
        half = through["rps"] / 2
        d_half = wrk(direct_url, ENGINE_KEY, duration=args.duration, connections=32, rate=half)
        g_half = wrk(gateway_url, key, duration=args.duration, connections=32, rate=half)
        rows.append(
            (
                f"latency at ~{half:,.0f} req/s direct p50 / p99 (ms)",
                f"{d_half['p50_ms']:.2f} / {d_half['p99_ms']:.2f}",
                "",
            )
        )
        rows.append(
            (
                f"latency at ~{half:,.0f} req/s gateway p50 / p99 (ms)",
                f"{g_half['p50_ms']:.2f} / {g_half['p99_ms']:.2f}",
                "",
            )
        )
        rows.append(
            (
                "added latency p50 / p99 (ms)",
                f"{g_half['p50_ms'] - d_half['p50_ms']:.2f} / {g_half['p99_ms'] - d_half['p99_ms']:.2f}",
                "≤ 1 / ≤ 5",
            )
        )
        rows.append(
            ("  achieved rates direct / gateway (req/s)", f"{d_half['rps']:,.0f} / {g_half['rps']:,.0f}", "")
        )
        errors = direct["errors"] + through["errors"] + d_half["errors"] + g_half["errors"]
        import uvloop

        s_direct = uvloop.run(
            streams(direct_url, ENGINE_KEY, args.streams, args.stream_tokens, args.token_delay)
        )
        cpu0 = cpu_seconds(gw.pid)
        s_gateway = uvloop.run(streams(gateway_url, key, args.streams, args.stream_tokens, args.token_delay))
        per_token = (cpu_seconds(gw.pid) - cpu0) / (args.streams * args.stream_tokens)
        rows.append(
            (
                f"{args.streams} concurrent streams tokens/s direct / gateway",
                f"{s_direct:,.0f} / {s_gateway:,.0f}",
                "",
            )
        )
        rows.append(("  streaming ratio gateway / direct", f"{100 * s_gateway / s_direct:.1f}%", "≥ 95%"))
        rows.append(
            (
                "  gateway CPU per streamed token (µs) → tokens/s per free core",
                f"{per_token * 1e6:,.1f} → {1 / per_token:,.0f}",
                "",
            )
        )
        rows += guardrails_phase(gw, gateway_url, key, guard_key, args)
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
        if args.servers:
            rows += server_comparison(key, gw_env, args.duration)
        rows.append(("HTTP/socket errors reported by wrk", str(errors), "0"))
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(30)
    rows.append(
        (
            f"usage ingestion into PostgreSQL ({args.events:,} events)",
            f"{ingestion(tenant_id, args.events):,.0f} events/s",
            "≥ 20,000",
        )
    )
    redis.flushdb()
    report(rows, args)


def report(rows: list[tuple[str, str, str]], args) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'result':>24}  target")
    print("-" * (width + 36))
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>24}  {target}")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at the end (1/5/15 min): {load} — other sessions share this machine")
    placement = "gateway pinned to CPU 0, wrk and fake engine to CPU 1" if CPUS >= 2 else "no CPU pinning"
    print(
        f"{os.cpu_count()} CPUs; {placement} (Redis/PostgreSQL unpinned); wrk -t1 -c{args.connections} -d{args.duration}s; "
        f"half load paced by wrk delay() over 32 connections; streams: {args.stream_tokens} tokens, {args.token_delay * 1000:.0f} ms apart."
    )


if __name__ == "__main__":
    main()
