"""Gateway benchmark of record: the fake engine measured direct and through the gateway, in one run.

    python bench/gateway.py [--duration 5] [--rounds 3] [--flame] [--workers-check]
    python bench/gateway.py --only-guardrails [--rounds 5]   # just the guardrails phase

As an independent harness measures it: the gateway alone on CPU 0 (``taskset``), as deployments
start it (``python -m gateway``, one process), with auth, a plan with every quota set, metering on
and its access log written to a file; the fake engine (``tests/gateway/fake_upstream.py``), the
load generators, this driver and the Redis server on CPU 1. Every measure is taken direct (client →
fake engine) and through the gateway in the same round, rounds interleaved, medians reported:

* closed loop (``wrk -t1 -cN``, keep-alive) at concurrency 1, 16 and 64: req/s and the gateway's
  CPU per request (user + system time of the gateway process and its children from
  ``/proc/<pid>/stat``, divided by the requests served in the same window);
* open loop at 50 % and 80 % of the gateway's measured c=64 peak: a paced generator (below) that
  sends on a fixed schedule whatever the answers do, latency taken from the *scheduled* send time
  (no coordinated omission), added p50/p99 = gateway − direct;
* streams: 64 × 256 tokens at zero delay (tokens/s, CPU per token), 64 streams at 20 ms/token
  (added TTFT p50, CPU per token) and 1,000 streams at 20 ms/token (added time per output token
  p99, CPU per token);
* ``--workers-check``: the c=64 peak of ``--workers 2`` on both cores against one worker;
* usage ingestion into PostgreSQL.

``--flame`` records py-spy flame graphs (SVG) of the gateway under the c=64 and stream loads into
``bench/results/``. The table is printed and written to
``bench/results/gateway-<date>-<commit>.txt``.

The guardrails phase (``--guardrails`` or ``--only-guardrails``) sends the same requests and
streams with the keys of two tenants, one with no policy and one with a policy of every regex
detector (redact) and a blocked-terms list (flag) on prompts and completions, alternating them
against one gateway process, and reports the CPU the gateway spends per request and per streamed
token for each and the difference (medians over ``--rounds`` pairs): the policy's added cost.

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


def start(
    argv: list[str], env: dict[str, str], health: str, log=subprocess.DEVNULL, cwd: Path = ROOT
) -> subprocess.Popen:
    proc = subprocess.Popen(  # noqa: S603 - our own command line
        argv, env={**os.environ, **env}, cwd=cwd, stdout=log, stderr=subprocess.DEVNULL
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


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (``--workers``), from /proc.

    Children's time is read while they run (a reaped child's time would land in the parent's
    ``cutime``, which a running parent never shows), so it is read around each measured window.
    """
    total = _proc_cpu(pid)
    for child in _children(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


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
                    counted += chunk.count(b'"choices":[{')

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


class _OpenLoopConn(asyncio.Protocol):
    """One keep-alive connection of the open-loop generator; httptools parses the answers."""

    def __init__(self, gen: OpenLoop):
        import httptools

        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.scheduled = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.gen.conns.append(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.gen.done(self, self.parser.get_status_code())

    def connection_lost(self, exc) -> None:
        self.gen.lost(self)


class OpenLoop:
    """Sends requests at a fixed rate whatever the answers do (open loop, no coordinated omission).

    Request i is due at ``t0 + i / rate``; it goes out on an idle keep-alive connection, or a new
    one (up to ``max_connections``), else waits for the next free one. Its latency is counted from
    when it was due, so a server that falls behind shows its queue in the latency, as a client
    population that does not slow down when the server does would see it.
    """

    def __init__(self, host: str, port: int, path: str, key: str, body: bytes, max_connections: int = 512):
        self.host, self.port = host, port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.max_connections = max_connections
        self.idle: list[_OpenLoopConn] = []
        self.conns: list[_OpenLoopConn] = []
        self.open = 0
        self.backlog: list[float] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.completed = 0

    def done(self, conn: _OpenLoopConn, status: int) -> None:
        now = time.perf_counter()
        self.completed += 1
        self.latencies.append(now - conn.scheduled)
        if status != 200:
            self.errors += 1
        if self.backlog:
            self._send(conn, self.backlog.pop(0))
        else:
            self.idle.append(conn)

    def lost(self, conn: _OpenLoopConn) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def _send(self, conn: _OpenLoopConn, scheduled: float) -> None:
        conn.scheduled = scheduled
        conn.transport.write(self.request)

    async def _connect(self, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _OpenLoopConn(self), self.host, self.port)
        except OSError:
            self.open -= 1
            self.errors += 1
            return
        self._send(conn, scheduled)

    async def run(self, rate: float, duration: float) -> dict:
        loop = asyncio.get_running_loop()
        total = int(rate * duration)
        t0 = time.perf_counter() + 0.05
        sent = 0
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - t0) * rate) + 1) if now >= t0 else 0
            while sent < due:
                scheduled = t0 + sent / rate
                sent += 1
                if self.idle:
                    self._send(self.idle.pop(), scheduled)
                elif self.open < self.max_connections:
                    self.open += 1
                    loop.create_task(self._connect(scheduled))
                else:
                    self.backlog.append(scheduled)
            await asyncio.sleep(0.0005)
        deadline = time.perf_counter() + 30
        while self.completed + self.errors < total and time.perf_counter() < deadline:  # noqa: ASYNC110 - counters
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        for conn in self.conns:
            conn.transport.close()
        await asyncio.sleep(0.05)
        lat = sorted(self.latencies) or [0.0]
        return {
            "rate": rate,
            "achieved": self.completed / elapsed,
            "p50_ms": _pct(lat, 50) * 1000,
            "p99_ms": _pct(lat, 99) * 1000,
            "errors": self.errors + (total - self.completed),
        }


def _pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def open_loop(url: str, key: str, rate: float, duration: float) -> dict:
    from urllib.parse import urlparse

    import uvloop

    parsed = urlparse(url)
    gen = OpenLoop(parsed.hostname, parsed.port, parsed.path, key, json.dumps(BODY).encode())
    return uvloop.run(gen.run(rate, duration))


async def timed_streams(url: str, key: str, n: int, tokens: int, delay: float) -> dict:
    """``n`` concurrent streams: tokens/s, TTFT per stream, time per output token per stream."""
    import aiohttp

    body = {**BODY, "max_tokens": tokens, "stream": True, "fake_delay": delay}
    ttfts: list[float] = []
    tpots: list[float] = []
    counted = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def one():
            nonlocal counted, errors
            sent = time.perf_counter()
            first = last = None
            chunks = 0
            try:
                async with session.post(
                    url, json=body, headers={"Authorization": f"Bearer {key}"}
                ) as response:
                    if response.status != 200:
                        errors += 1
                        return
                    async for chunk in response.content.iter_any():
                        got = chunk.count(b'"choices":[{')
                        if got:
                            last = time.perf_counter()
                            if first is None:
                                first = last
                            chunks += got
            except (aiohttp.ClientError, OSError):
                errors += 1
                return
            counted += chunks
            if first is not None:
                ttfts.append(first - sent)
                if chunks > 1:
                    tpots.append((last - first) / (chunks - 1))

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        elapsed = time.perf_counter() - started
    ttfts.sort()
    tpots.sort()
    return {
        "tps": counted / elapsed,
        "tokens": counted,
        "ttft_p50_ms": _pct(ttfts, 50) * 1000,
        "tpot_p50_ms": _pct(tpots, 50) * 1000,
        "tpot_p99_ms": _pct(tpots, 99) * 1000,
        "errors": errors,
    }


class Flame:
    """py-spy recording of the gateway (and its workers) while a phase runs, pinned to CPU 1."""

    def __init__(self, enabled: bool, pid: int, out_dir: Path, stamp: str):
        self.enabled, self.pid, self.out_dir, self.stamp = enabled, pid, out_dir, stamp
        self.files: list[str] = []

    def record(self, name: str):
        if not self.enabled:
            return None
        spy = Path(sys.executable).with_name("py-spy")
        path = self.out_dir / f"flame-{name}-{self.stamp}.svg"
        self.files.append(path.name)
        return subprocess.Popen(  # noqa: S603
            [*pin(1), str(spy), "record", "--pid", str(self.pid), "--subprocesses", "--rate", "200",
             "--nonblocking", "--format", "flamegraph", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    @staticmethod
    def stop(proc) -> None:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


def _commit() -> str:
    try:
        git = ["git", "-C", str(ROOT)]
        out = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)  # noqa: S603
        status = [*git, "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, capture_output=True, text=True)  # noqa: S603
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _pin_redis(redis) -> str:
    """Put the Redis server on CPU 1 with the load (the gateway's core stays its own), if we may."""
    if CPUS < 2:
        return "Redis unpinned"
    try:
        pid = int(redis.info("server")["process_id"])
        subprocess.run(["taskset", "-a", "-pc", "1", str(pid)], check=True, capture_output=True)  # noqa: S603, S607
        return "Redis pinned to CPU 1"
    except (OSError, subprocess.CalledProcessError, KeyError, ValueError):
        return "Redis unpinned (not ours to pin)"


def compare_phase(gateway, stop, key: str, args) -> list[tuple[str, str, str]]:
    """This tree's gateway against a baseline's, alternated round by round on the same core.

    Both run at once (each idle while the other is measured), so the neighbours' noise falls on
    both alike; the ratios of CPU per request and per token are what to read.
    """
    import uvloop

    ports = {"after": free_port(), "before": free_port()}
    procs = {
        "after": gateway(root=ROOT, port=ports["after"]),
        "before": gateway(root=args.compare, port=ports["before"]),
    }
    cpu: dict[str, dict[str, list[float]]] = {
        name: {"req": [], "c1": [], "zero": [], "paced": []} for name in procs
    }
    rps: dict[str, list[float]] = {name: [] for name in procs}
    try:
        for port in ports.values():
            wrk(f"http://127.0.0.1:{port}/v1/chat/completions", key, duration=2, connections=64)
        for _ in range(args.rounds):
            for name, port in ports.items():
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                pid = procs[name].pid
                cpu0 = cpu_seconds(pid)
                result = wrk(url, key, duration=args.duration, connections=64)
                cpu[name]["req"].append((cpu_seconds(pid) - cpu0) / (result["rps"] * args.duration))
                rps[name].append(result["rps"])
                cpu0 = cpu_seconds(pid)
                result = wrk(url, key, duration=max(2, args.duration // 2), connections=1)
                cpu[name]["c1"].append(
                    (cpu_seconds(pid) - cpu0) / (result["rps"] * max(2, args.duration // 2))
                )
                for label, n, tokens, delay in (
                    ("zero", 64, args.stream_tokens, 0.0),
                    ("paced", 64, 50, args.token_delay),
                ):
                    cpu0 = cpu_seconds(pid)
                    got = uvloop.run(timed_streams(url, key, n, tokens, delay))
                    cpu[name][label].append((cpu_seconds(pid) - cpu0) / max(1, got["tokens"]))
    finally:
        for proc in procs.values():
            stop(proc)
    rows = []
    med = _median
    for label, title, unit in (
        ("req", "gateway CPU per request, c=64", 1e6),
        ("c1", "gateway CPU per request, c=1", 1e6),
        ("zero", "gateway CPU per token, 64 streams, zero delay", 1e6),
        ("paced", f"gateway CPU per token, 64 streams at {args.token_delay * 1000:.0f} ms/token", 1e6),
    ):
        before, after = med(cpu["before"][label]), med(cpu["after"][label])
        rows.append(
            (
                f"{title} (µs): before / after",
                f"{before * unit:,.1f} / {after * unit:,.1f}",
                f"× {after / before:.2f}",
            )
        )
    rows.append(("c=64 req/s: before / after", f"{med(rps['before']):,.0f} / {med(rps['after']):,.0f}", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured window")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved direct/gateway rounds (medians)")
    parser.add_argument("--stream-tokens", type=int, default=256, help="tokens per stream at zero delay")
    parser.add_argument("--paced-tokens", type=int, default=100, help="tokens per stream at 20 ms/token")
    parser.add_argument("--many-streams", type=int, default=1000)
    parser.add_argument(
        "--token-delay", type=float, default=0.02, help="seconds between a paced stream's tokens"
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--flame", action="store_true", help="py-spy flame graphs into bench/results/")
    parser.add_argument("--workers-check", action="store_true", help="also measure --workers 2 on both cores")
    parser.add_argument(
        "--servers", action="store_true", help="also compare httptools/h11 and raw ASGI/Starlette"
    )
    parser.add_argument("--guardrails", action="store_true", help="also run the guardrails phase")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-save", action="store_true", help="print only; no file in bench/results/")
    parser.add_argument(
        "--compare",
        type=Path,
        help="before/after: alternate this tree's gateway with one run from DIR (a `git archive` of the "
        "baseline's gateway/ and contract/), both on CPU 0, round by round; CPU per request and per token",
    )
    parser.add_argument(
        "--gateway-root",
        type=Path,
        help="run the gateway from this source tree (e.g. `git archive` of a baseline commit) for before/after",
    )
    parser.add_argument("--only-guardrails", action="store_true", help="run only the guardrails phase")
    parser.add_argument("--connections", type=int, default=64, help="guardrails phase: wrk connections")
    parser.add_argument("--guard-streams", type=int, default=200, help="guardrails phase: concurrent streams")
    args = parser.parse_args()
    global CPUS
    if args.no_pin:
        CPUS = 1  # pin() pins nothing below 2 CPUs
    if CPUS >= 2:
        os.sched_setaffinity(0, {1})  # this driver and the stream client run beside the load

    settings.REDIS_URL = _redis_url(14)
    settings.REDIS_PREFIX = PREFIX
    get_redis.cache_clear()
    redis = get_redis()
    redis.flushdb()
    redis_placement = _pin_redis(redis)
    tenant_id, key = setup()
    guard_key = setup_guarded()
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    commit = _commit() if args.gateway_root is None else args.gateway_root.name  # e.g. base-772c8b4
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)

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
        "LOG_LEVEL": "INFO",
    }
    access_log = tempfile.NamedTemporaryFile("wb", prefix="berth-gw-access-", suffix=".log", delete=False)  # noqa: SIM115

    def gateway(
        workers: int = 1, cpus: str = "0", root: Path | None = None, port: int = 0
    ) -> subprocess.Popen:
        # As deployments start it (berth/roles.py): python -m gateway; its access log to a file.
        taskset = ["taskset", "-c", cpus] if CPUS >= 2 else []
        port = port or gateway_port
        argv = [*taskset, sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning", "--workers", str(workers)]  # fmt: skip
        root = root or args.gateway_root or ROOT
        env = {**gw_env, "PYTHONPATH": str(root)}
        return start(argv, env, f"http://127.0.0.1:{port}/healthz", log=access_log, cwd=root)

    stuck: list[str] = []

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            stuck.append(" ".join(proc.args[-4:]))
            proc.kill()
            proc.wait(10)

    direct_url = f"http://127.0.0.1:{engine_port}/v1/chat/completions"
    gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
    rows: list[tuple[str, str, str]] = []
    errors = 0
    if args.compare:
        try:
            rows += compare_phase(gateway, stop, key, args)
        finally:
            stop(engine)
            access_log.close()
            os.unlink(access_log.name)
        redis.flushdb()
        save = None if args.no_save else results / f"gateway-compare-{stamp}-{commit.split('+')[0]}.txt"
        report(
            rows,
            args,
            commit=f"{commit} vs {args.compare.name}",
            stamp=stamp,
            redis_placement=redis_placement,
            save=save,
        )
        return
    if args.only_guardrails:
        try:
            gw = gateway()
            rows += guardrails_phase(gw, gateway_url, key, guard_key, args)
            stop(gw)
        finally:
            stop(engine)
        redis.flushdb()
        report(rows, args, commit=commit, stamp=stamp, redis_placement=redis_placement, save=None)
        return

    import uvloop

    def measured(gw, fn):
        cpu0 = cpu_seconds(gw.pid)
        result = fn()
        return result, cpu_seconds(gw.pid) - cpu0

    med = _median
    flame_files: list[str] = []
    try:
        gw = gateway()
        flame = Flame(args.flame, gw.pid, results, f"{stamp}-{commit.split('+')[0]}")
        wrk(gateway_url, key, duration=2, connections=64)  # warm-up: caches, scripts, connections
        closed: dict[int, dict[str, list[float]]] = {
            c: {"d": [], "g": [], "cpu": [], "p50": [], "dp50": []} for c in (1, 16, 64)
        }
        opened: dict[int, dict[str, list[float]]] = {
            p: {"dp50": [], "dp99": [], "gp50": [], "gp99": [], "ach": [], "rate": []} for p in (50, 80)
        }
        for r in range(args.rounds):
            for c in (1, 16, 64):
                d = wrk(direct_url, ENGINE_KEY, duration=args.duration, connections=c)
                spy = flame.record("c64") if (c == 64 and r == 0) else None
                g, cpu = measured(
                    gw, lambda c=c: wrk(gateway_url, key, duration=args.duration, connections=c)
                )
                Flame.stop(spy)
                served = g["rps"] * args.duration
                closed[c]["d"].append(d["rps"])
                closed[c]["g"].append(g["rps"])
                closed[c]["cpu"].append(cpu / served)
                closed[c]["p50"].append(g["p50_ms"])
                closed[c]["dp50"].append(d["p50_ms"])
                errors += d["errors"] + g["errors"]
            peak = closed[64]["g"][-1]
            for p in (50, 80):
                rate = peak * p / 100
                d = open_loop(direct_url, ENGINE_KEY, rate, args.duration)
                g = open_loop(gateway_url, key, rate, args.duration)
                o = opened[p]
                o["rate"].append(rate)
                o["dp50"].append(d["p50_ms"])
                o["dp99"].append(d["p99_ms"])
                o["gp50"].append(g["p50_ms"])
                o["gp99"].append(g["p99_ms"])
                o["ach"].append(g["achieved"])
                errors += d["errors"] + g["errors"]
        for c in (1, 16, 64):
            k = closed[c]
            rows.append(
                (f"closed loop c={c}: req/s direct / gateway", f"{med(k['d']):,.0f} / {med(k['g']):,.0f}", "")
            )
            target = {1: "≤ 250", 64: "≤ 150"}.get(c, "")
            rows.append((f"  gateway CPU per request, c={c} (µs)", f"{med(k['cpu']) * 1e6:,.0f}", target))
        rows.append(
            (
                "  req/s per gateway core at c=64 (1 / CPU per request)",
                f"{1 / med(closed[64]['cpu']):,.0f}",
                "≥ 6,000",
            )
        )
        added_c1 = med([g - d for g, d in zip(closed[1]["p50"], closed[1]["dp50"], strict=True)])
        rows.append(("  added p50 at c=1 (ms)", f"{added_c1:.2f}", ""))
        for p in (50, 80):
            o = opened[p]
            added50 = med([g - d for g, d in zip(o["gp50"], o["dp50"], strict=True)])
            added99 = med([g - d for g, d in zip(o["gp99"], o["dp99"], strict=True)])
            rows.append(
                (
                    f"open loop {p}% of peak ({med(o['rate']):,.0f} req/s): achieved, added p50 / p99 (ms)",
                    f"{med(o['ach']):,.0f}; {added50:.2f} / {added99:.2f}",
                    "≤ 1 / ≤ 5" if p == 50 else "no collapse",
                )
            )
        # Streams: zero delay, 64 at 20 ms/token, many at 20 ms/token; direct and gateway per round.
        cases = [
            ("zero", 64, args.stream_tokens, 0.0),
            ("paced64", 64, args.paced_tokens, args.token_delay),
            ("paced_many", args.many_streams, max(10, args.paced_tokens // 2), args.token_delay),
        ]
        streamed: dict[str, dict[str, list[float]]] = {name: {} for name, *_ in cases}
        for r in range(args.rounds):
            for name, n, tokens, delay in cases:
                d = uvloop.run(timed_streams(direct_url, ENGINE_KEY, n, tokens, delay))
                spy = flame.record(f"stream-{name}") if r == 0 and name in ("zero", "paced_many") else None
                g, cpu = measured(
                    gw, lambda n=n, t=tokens, dl=delay: uvloop.run(timed_streams(gateway_url, key, n, t, dl))
                )
                Flame.stop(spy)
                s = streamed[name]
                for label, value in (
                    ("dtps", d["tps"]), ("gtps", g["tps"]), ("cpu", cpu / max(1, g["tokens"])),
                    ("ttft", g["ttft_p50_ms"] - d["ttft_p50_ms"]), ("tpot99", g["tpot_p99_ms"] - d["tpot_p99_ms"]),
                    ("gtpot99", g["tpot_p99_ms"]),
                ):  # fmt: skip
                    s.setdefault(label, []).append(value)
                errors += d["errors"] + g["errors"]
        z, p64, many = streamed["zero"], streamed["paced64"], streamed["paced_many"]
        rows.append(
            (
                f"64 streams × {args.stream_tokens} tokens, zero delay: tokens/s direct / gateway",
                f"{med(z['dtps']):,.0f} / {med(z['gtps']):,.0f}",
                "",
            )
        )
        rows.append(("  gateway CPU per token, zero delay (µs)", f"{med(z['cpu']) * 1e6:,.1f}", "≤ 4"))
        rows.append(
            (
                f"64 streams at {args.token_delay * 1000:.0f} ms/token: added TTFT p50 (ms)",
                f"{med(p64['ttft']):,.2f}",
                "",
            )
        )
        rows.append(("  gateway CPU per token (µs)", f"{med(p64['cpu']) * 1e6:,.1f}", "≤ 15"))
        rows.append(
            (
                f"{args.many_streams} streams at {args.token_delay * 1000:.0f} ms/token: tokens/s direct / gateway",
                f"{med(many['dtps']):,.0f} / {med(many['gtps']):,.0f}",
                "",
            )
        )
        rows.append(("  added time per output token p99 (ms)", f"{med(many['tpot99']):,.2f}", "≤ 2"))
        rows.append(("  gateway CPU per token (µs)", f"{med(many['cpu']) * 1e6:,.1f}", ""))
        if args.guardrails:
            rows += guardrails_phase(gw, gateway_url, key, guard_key, args)
        stop(gw)
        flame_files = flame.files
        if args.workers_check and CPUS >= 2:
            one_peak: list[float] = []
            two_peak: list[float] = []
            two_cpu: list[float] = []
            for _ in range(args.rounds):
                for workers, sink in ((1, one_peak), (2, two_peak)):
                    gw = gateway(workers, "0" if workers == 1 else "0,1")
                    wrk(gateway_url, key, duration=2, connections=64)
                    g, cpu = measured(
                        gw, lambda: wrk(gateway_url, key, duration=args.duration, connections=64)
                    )
                    sink.append(g["rps"])
                    if workers == 2:
                        two_cpu.append(cpu / (g["rps"] * args.duration))
                    errors += g["errors"]
                    stop(gw)
            rows.append(
                (
                    "--workers 2 on CPUs 0,1 vs 1 worker on CPU 0: c=64 req/s",
                    f"{med(two_peak):,.0f} / {med(one_peak):,.0f} = {med(two_peak) / med(one_peak):.2f}×",
                    "≥ 1.8×",
                )
            )
            rows.append(("  CPU per request with 2 workers (µs)", f"{med(two_cpu) * 1e6:,.0f}", ""))
        if args.servers:
            rows += server_comparison(key, gw_env, args.duration)
        rows.append(("HTTP/socket errors (wrk, open loop, streams)", str(errors), "0"))
        if stuck:
            rows.append(("processes killed after 60 s of SIGTERM", "; ".join(stuck), "none"))
    finally:
        stop(engine)
        access_log.close()
        log_lines = sum(1 for _ in open(access_log.name, "rb"))  # noqa: SIM115, PTH123
        os.unlink(access_log.name)
    rows.append(("access log lines written to a file", f"{log_lines:,}", ""))
    rows.append(
        (
            f"usage ingestion into PostgreSQL ({args.events:,} events)",
            f"{ingestion(tenant_id, args.events):,.0f} events/s",
            "≥ 20,000",
        )
    )
    redis.flushdb()
    save = None if args.no_save else results / f"gateway-{stamp}-{commit.split('+')[0]}.txt"
    report(
        rows, args, commit=commit, stamp=stamp, redis_placement=redis_placement, save=save, flames=flame_files
    )


def report(
    rows, args, *, commit: str, stamp: str, redis_placement: str, save: Path | None, flames=()
) -> None:
    width = max(len(r[0]) for r in rows)
    lines = [
        f"bench/gateway.py — {stamp} UTC, commit {commit}",
        "",
        f"{'measure':<{width}}  {'result':>26}  target",
    ]
    lines.append("-" * (width + 38))
    lines += [f"{name:<{width}}  {value:>26}  {target}" for name, value, target in rows]
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines.append("")
    lines.append(f"load average at the end (1/5/15 min): {load} — other sessions share this machine")
    placement = (
        "gateway pinned to CPU 0; fake engine, wrk, open-loop and stream clients on CPU 1"
        if CPUS >= 2
        else "no CPU pinning"
    )
    lines.append(f"{os.cpu_count()} CPUs; {placement}; {redis_placement}; PostgreSQL unpinned.")
    lines.append(
        f"medians of {args.rounds} interleaved rounds of {args.duration} s windows; closed loop wrk -t1 keep-alive; "
        "open loop paced from scheduled send times; access log to a file."
    )
    if flames:
        lines.append("flame graphs: " + ", ".join(f"bench/results/{f}" for f in flames))
    text = "\n".join(lines) + "\n"
    print(text)
    if save is not None:
        save.write_text(text)
        print(f"written to {save.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
