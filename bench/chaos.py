"""Chaos benchmark: is every token an engine produces billed exactly once while processes die?

    python bench/chaos.py              # ~4 minutes: 7 phases of 30 s
    python bench/chaos.py --short      # ~2 minutes: what the test suite runs

It runs the money path as separate processes — the gateway (``python -m gateway``, the
production entry point), the usage consumer (``manage.py consume_usage``), a Redis server of its
own (AOF on, so it can be restarted), PostgreSQL (a scratch database on the configured server,
reached through a TCP doorway the bench can shut) and two fake engines (``bench/ledger_engine.py``)
that write a ledger of the tokens they produced per request id — and sends mixed traffic from
three tenants (chat, completions, embeddings, streams, ``n`` > 1, clients that hang up
mid-stream) while a schedule injects one fault per phase, halfway through it:

    baseline          nothing
    gateway SIGTERM   graceful stop, then a new gateway
    gateway SIGKILL   killed outright, then a new gateway
    consumer SIGKILL  the usage consumer killed and restarted
    Redis restart     Redis stopped (AOF) and started again
    PostgreSQL down   the doorway refuses connections for 20 s (6 s with --short)
    engine SIGKILL    an engine killed mid-stream and started again

Then it waits for the usage stream and the stream checkpoints to drain and compares, per phase
(a request belongs to the phase in which the engine saw it), the engines' ledgers with
``billing.UsageRecord``: requests, tokens produced, tokens billed, the difference, requests with
no record, requests an engine ran twice (a retry after the request reached an engine), requests
billed more than produced, and 5xx answers the clients saw. Targets: 0 difference and 0 missing
records in every phase but the gateway SIGKILL, where each stream loses at most the checkpoint
bound (non-streaming requests killed there are reported apart, as ``non_stream_loss``); 0
duplicates and 0 over-billed everywhere. The exit status is 1 when a target is missed.

One thing no proxy can bill exactly is counted apart, as ``in_flight``: when a client hangs up,
the chunk its engine was writing at that instant may be dropped by the gateway's closing socket
without either side knowing whether it arrived; such a stream is short by exactly one token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")

TOKEN_DELAY = 0.01
ENGINE_KEY = "chaos-engine-key"
CHAT, EMBED = "chaos-chat", "chaos-embed"
# How often the gateway checkpoints a stream, and how long the consumer waits for a stream to
# close before it bills the last checkpoint: short, so the bench's settle time stays short.
CHECKPOINT_SECONDS = 1.0
CHECKPOINT_TOKENS = 32
CHECKPOINT_STALE_SECONDS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 60, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class Service:
    """One supervised process of the bench, restartable with the same command line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int | None, log_dir: Path):
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own command lines
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if self.port:
            wait_port(self.port, process=self.process)

    def signal(self, sig: int, wait: float = 60) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        self.signal(signal.SIGTERM, wait=15)
        self.log.close()


@dataclass
class Outcome:
    phase: str
    kind: str
    status: int | str  # HTTP status, or the exception's name when there was no answer


@dataclass
class Traffic:
    base_url: str
    keys: list[str]
    phase: str = "setup"
    stopping: bool = False
    outcomes: list[Outcome] = field(default_factory=list)

    KINDS = (
        ("chat", 4),
        ("chat-stream", 4),
        ("long-stream", 1),
        ("completions", 2),
        ("completions-stream", 2),
        ("embeddings", 2),
        ("n2", 1),
        ("disconnect", 2),
    )

    def request(self, kind: str, rng: random.Random) -> tuple[str, dict, int | None]:
        """(path, body, chunks to read before hanging up)."""
        text = " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(rng.randint(3, 40)))
        tokens = rng.randint(4, 60)
        chat = {"model": CHAT, "messages": [{"role": "user", "content": text}], "max_tokens": tokens}
        if kind == "chat":
            return "/chat/completions", chat, None
        if kind == "chat-stream":
            return "/chat/completions", {**chat, "stream": True}, None
        if kind == "long-stream":
            return "/chat/completions", {**chat, "max_tokens": rng.randint(150, 400), "stream": True}, None
        if kind == "completions":
            return "/completions", {"model": CHAT, "prompt": text, "max_tokens": tokens}, None
        if kind == "completions-stream":
            return "/completions", {"model": CHAT, "prompt": text, "max_tokens": tokens, "stream": True}, None
        if kind == "embeddings":
            return "/embeddings", {"model": EMBED, "input": [text, text[:20]]}, None
        if kind == "n2":
            return "/chat/completions", {**chat, "n": 2}, None
        return "/chat/completions", {**chat, "max_tokens": 200, "stream": True}, rng.randint(1, 30)

    async def loop(self, client, seed: int) -> None:
        import httpx

        rng = random.Random(seed)  # noqa: S311 - a traffic mix, not a secret
        kinds = [k for k, weight in self.KINDS for _ in range(weight)]
        while not self.stopping:
            kind = rng.choice(kinds)
            path, body, hang_up_after = self.request(kind, rng)
            headers = {"Authorization": f"Bearer {rng.choice(self.keys)}"}
            phase = self.phase
            try:
                if body.get("stream"):
                    async with client.stream(
                        "POST", self.base_url + path, json=body, headers=headers
                    ) as response:
                        status = response.status_code
                        seen = 0
                        async for line in response.aiter_lines():
                            seen += line.startswith("data:")
                            if hang_up_after is not None and seen >= hang_up_after:
                                break
                else:
                    response = await client.post(self.base_url + path, json=body, headers=headers)
                    status = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
                await asyncio.sleep(0.2)  # the gateway is down: don't spin
            self.outcomes.append(Outcome(phase, kind, status))

    async def run(self, concurrency: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(self.loop(client, seed) for seed in range(concurrency)))


streams: set[str] = set()  # request ids that were streams (read_ledgers fills it)


def read_ledgers(paths: list[Path]) -> dict[str, dict[str, tuple[int, int, float]]]:
    """request id → engine → (prompt, completion, first seen) from the engines' ledgers."""
    runs: dict[str, dict[str, tuple[int, int, float]]] = defaultdict(dict)
    streams.clear()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) != 6:
                continue  # a line cut by the engine's SIGKILL
            request_id, engine, endpoint, prompt, completion, at = parts
            if endpoint.endswith("-stream"):
                streams.add(request_id)
            first = runs[request_id].get(engine, (0, 0, float(at)))[2]
            runs[request_id][engine] = (int(prompt), int(completion), first)
    return runs


def phase_of(at: float, windows: list[tuple[str, float, float]]) -> str:
    for name, start, end in windows:
        if start <= at < end:
            return name
    return windows[-1][0] if at >= windows[-1][1] else windows[0][0]


def report(windows, ledgers, records, statuses, outcomes, bound: int) -> tuple[list[dict], bool]:
    """Per phase; ``statuses`` maps request id → the record's status."""
    rows: dict[str, dict] = {
        name: {
            "phase": name,
            "requests": 0,
            "produced": 0,
            "billed": 0,
            "difference": 0,
            "missing": 0,
            "duplicates": 0,
            "over_billed": 0,
            "max_loss": 0,
            "in_flight": 0,
            "non_stream_loss": 0,
            "5xx": 0,
        }
        for name, _, _ in windows
    }
    for request_id, engines in ledgers.items():
        row = rows[phase_of(min(at for _, _, at in engines.values()), windows)]
        produced = sum(p + c for p, c, _ in engines.values())
        billed = records.get(request_id)
        row["requests"] += 1
        row["produced"] += produced
        row["duplicates"] += len(engines) > 1
        if billed is None:
            row["missing"] += 1
            billed = 0
        row["billed"] += billed
        row["over_billed"] += billed > produced
        if statuses.get(request_id) == "client_disconnected" and produced - billed == 1:
            # The chunk the engine wrote as the gateway hung up on it: neither side can know it
            # reached the other. Reported apart, never more than one token per client-cut stream.
            row["in_flight"] += 1
        elif request_id in streams or row["phase"] != "gateway SIGKILL":
            row["max_loss"] = max(row["max_loss"], produced - billed)
        else:
            row["non_stream_loss"] += produced - billed
    for outcome in outcomes:
        if isinstance(outcome.status, int) and outcome.status >= 500 and outcome.phase in rows:
            rows[outcome.phase]["5xx"] += 1
    ok = True
    for row in rows.values():
        row["difference"] = row["produced"] - row["billed"] - row["in_flight"]
        if row["phase"] == "gateway SIGKILL":
            row["target"] = f"loss ≤ {bound} tokens per stream, no duplicates"
            row["met"] = row["max_loss"] <= bound and not row["duplicates"] and not row["over_billed"]
        else:
            row["target"] = "0 difference, 0 missing, no duplicates"
            row["met"] = not (row["difference"] or row["missing"] or row["duplicates"] or row["over_billed"])
        ok = ok and row["met"]
    return list(rows.values()), ok


def print_table(rows: list[dict]) -> None:
    columns = (
        "phase",
        "requests",
        "produced",
        "billed",
        "difference",
        "missing",
        "duplicates",
        "over_billed",
        "max_loss",
        "in_flight",
        "non_stream_loss",
        "5xx",
        "met",
    )
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="8 s phases and a 6 s PostgreSQL outage")
    parser.add_argument("--phase-seconds", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument(
        "--mismatches", type=Path, help="write every request billed ≠ produced here (JSON lines)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, ledgers)")
    args = parser.parse_args()
    phase_seconds = args.phase_seconds or (8.0 if args.short else 30.0)
    pg_outage = 6.0 if args.short else 20.0

    scratch_dir = Path(tempfile.mkdtemp(prefix="berth-chaos-"))
    redis_port = free_port()
    (scratch_dir / "redis").mkdir()
    from berth.embedded import _redis_bin

    redis_server = Service(
        "redis",
        [
            str(_redis_bin()),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(scratch_dir / "redis"),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "no",
        ],
        dict(os.environ),
        redis_port,
        scratch_dir,
    )
    redis_server.start()
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"

    import django

    django.setup()
    import logging

    from tests.billing.tcp_proxy import TcpProxy

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    services: list[Service] = [redis_server]
    original_db = connection.settings_dict["NAME"]
    scratch_db = f"berth_chaos_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{scratch_db}"')
    connection.close()
    connection.settings_dict["NAME"] = scratch_db
    try:
        started = time.monotonic()
        call_command("migrate", interactive=False, verbosity=0)
        keys = create_tenants()
        db = connection.settings_dict
        doorway = TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DEBUG": "0",
            "DATABASE_URL": f"postgresql://{db['USER']}:{db['PASSWORD']}@127.0.0.1:{doorway.port}/{scratch_db}",
            "REDIS_URL": os.environ["REDIS_URL"],
            "SECRET_KEY": secrets.token_urlsafe(60),
            "BERTH_KEY_PEPPERS": ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items()),
            "BERTH_INTERNAL_TOKEN": secrets.token_urlsafe(32),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "BERTH_GATEWAY_ACCESS_LOG": "0",
            "BERTH_USAGE_METRICS_PORT": str(free_port()),
            "BERTH_GATEWAY_CHECKPOINT_SECONDS": str(CHECKPOINT_SECONDS),
            "BERTH_GATEWAY_CHECKPOINT_TOKENS": str(CHECKPOINT_TOKENS),
            "BERTH_GATEWAY_CHECKPOINT_LOST_AFTER": str(CHECKPOINT_STALE_SECONDS),
        }
        engines = []
        for name in ("e1", "e2"):
            port = free_port()
            engine_env = {
                **os.environ,
                "LEDGER": str(scratch_dir / f"ledger-{name}.tsv"),
                "ENGINE_KEY": ENGINE_KEY,
                "ENGINE_NAME": name,
                "TOKEN_DELAY": str(TOKEN_DELAY),
            }
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.ledger_engine:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ]
            engine = Service(f"engine-{name}", argv, engine_env, port, scratch_dir)
            engine.start()
            engines.append(engine)
        route_models(engines)
        gateway_port = free_port()
        # The gateway as deployments run it: its own program, without the database or Django's secret.
        gateway_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
        gateway = Service(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
                "--workers",
                "1",
            ],
            gateway_env,
            gateway_port,
            scratch_dir,
        )
        consumer = Service("usage", [sys.executable, "manage.py", "consume_usage"], env, None, scratch_dir)
        gateway.start()
        consumer.start()
        services += [*engines, gateway, consumer]
        print(f"setup {time.monotonic() - started:.1f} s; logs and ledgers in {scratch_dir}", flush=True)

        def restart(service: Service, sig: int, pause: float = 0.5):
            def fault() -> None:
                service.signal(sig)
                time.sleep(pause)
                service.start()

            return fault

        schedule = [
            ("baseline", None),
            ("gateway SIGTERM", restart(gateway, signal.SIGTERM)),
            ("gateway SIGKILL", restart(gateway, signal.SIGKILL)),
            ("consumer SIGKILL", restart(consumer, signal.SIGKILL, pause=1)),
            ("Redis restart", restart(redis_server, signal.SIGTERM, pause=1)),
            ("PostgreSQL down", lambda: refuse(doorway, pg_outage)),
            ("engine SIGKILL", lambda: kill_engine_mid_stream(engines[0])),
        ]
        traffic = Traffic(f"http://127.0.0.1:{gateway_port}/v1", keys)
        windows = asyncio.run(run_schedule(traffic, schedule, phase_seconds, args.concurrency))
        settle(CHECKPOINT_STALE_SECONDS + 60)

        from billing.models import UsageRecord

        rows_db = UsageRecord.objects.filter(model__in=(CHAT, EMBED)).values_list(
            "request_id", "prompt_tokens", "completion_tokens", "status", "usage_source"
        )
        records = {rid: p + c for rid, p, c, _, _ in rows_db}
        details = {rid: (status, source) for rid, _, _, status, source in rows_db}
        ledgers = read_ledgers([scratch_dir / f"ledger-{name}.tsv" for name in ("e1", "e2")])
        bound = CHECKPOINT_TOKENS + 1  # one checkpoint's worth of tokens per choice, plus a chunk in flight
        rows, ok = report(
            windows,
            ledgers,
            records,
            {rid: status for rid, (status, _) in details.items()},
            traffic.outcomes,
            bound,
        )
        print(
            f"\n{len(traffic.outcomes)} client requests; {len(ledgers)} reached an engine; {len(records)} usage records"
        )
        print_table(rows)
        print("\nall targets met" if ok else "\nTARGETS MISSED")
        if args.mismatches:
            with args.mismatches.open("w") as out:
                for rid, engines in ledgers.items():
                    produced = sum(p + c for p, c, _ in engines.values())
                    if records.get(rid) != produced or len(engines) > 1:
                        at = min(a for _, _, a in engines.values())
                        row = {
                            "id": rid,
                            "phase": phase_of(at, windows),
                            "engines": engines,
                            "produced": produced,
                            "billed": records.get(rid),
                            "record": details.get(rid),
                        }
                        out.write(json.dumps(row) + "\n")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0 if ok else 1
    finally:
        for service in reversed(services):
            service.stop()
        connection.close()
        connection.settings_dict["NAME"] = original_db
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)')
        connection.close()
        if not args.keep:
            shutil.rmtree(scratch_dir, ignore_errors=True)


def refuse(doorway, seconds: float) -> None:
    """PostgreSQL refuses every connection (and open ones break) for ``seconds``."""
    doorway.cut()
    threading.Timer(seconds, doorway.restore).start()


def kill_engine_mid_stream(engine: Service) -> None:
    """The engine SIGKILLs itself inside its next stream (so its ledger is exact), then restarts."""
    import httpx

    httpx.post(f"http://127.0.0.1:{engine.port}/_die", timeout=5)
    try:
        engine.process.wait(30)
    except subprocess.TimeoutExpired:
        engine.process.kill()  # no stream came along: kill it anyway
        engine.process.wait()
    time.sleep(1)
    engine.start()


def create_tenants() -> list[str]:
    from models_registry.mirror import publish_model
    from models_registry.models import Model
    from tenants import mirror
    from tenants.keys import create_api_key
    from tenants.models import Plan, Tenant

    plan = Plan.objects.create(
        slug="chaos",
        name="Chaos",
        requests_per_minute=10**6,
        tokens_per_minute=10**9,
        max_concurrent_requests=10**4,
        monthly_token_budget=10**12,
    )
    keys = []
    for n in range(3):
        tenant = Tenant.objects.create(slug=f"chaos-{n}", name=f"Chaos {n}", plan=plan)
        mirror.publish_tenant(tenant)
        created = create_api_key(tenant=tenant, name="chaos")
        mirror.publish_key(created.api_key)
        keys.append(created.plaintext)
    for name, task in ((CHAT, "chat"), (EMBED, "embedding")):
        model = Model.objects.create(
            name=name, source="/dev/null", source_kind="local", task=task, context_length=4096
        )
        publish_model(model)
    return keys


def route_models(engines: list[Service]) -> None:
    from berth.redis import get_redis, names

    client = get_redis()
    for model in (CHAT, EMBED):
        for engine in engines:
            entry = {
                "worker_id": engine.name,
                "url": f"http://127.0.0.1:{engine.port}",
                "api_key": ENGINE_KEY,
            }
            client.hset(names().route(model), engine.name, json.dumps(entry))
        client.sadd(names().routes(), model)


async def run_schedule(traffic: Traffic, schedule, phase_seconds: float, concurrency: int):
    runner = asyncio.create_task(traffic.run(concurrency))
    windows = []
    for name, fault in schedule:
        traffic.phase = name
        start = time.time()
        print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)
        await asyncio.sleep(phase_seconds / 2)
        if fault is not None:
            await asyncio.to_thread(fault)
        await asyncio.sleep(max(0.0, start + phase_seconds - time.time()))
        windows.append((name, start, time.time()))
    traffic.stopping = True
    await runner
    return windows


def unconsumed(client, stream: str) -> int:
    """Entries of the usage stream that the consumer group has not read, or read but not acknowledged."""
    if not client.exists(stream):
        return 0
    last = client.xinfo_stream(stream)["last-generated-id"]
    groups = client.xinfo_groups(stream)
    if not groups:
        return client.xlen(stream)
    behind = sum(group["last-delivered-id"] != last for group in groups)
    return behind + sum(group["pending"] for group in groups)


def settle(timeout: float) -> None:
    """Wait until the usage stream is consumed and no stream checkpoint is left to bill."""
    from berth.redis import get_redis, names

    client = get_redis()
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        try:
            left = unconsumed(client, names().usage_stream())
            checkpoints = client.zcard(names().usage_checkpoints_due())
        except Exception:  # noqa: BLE001 - Redis may still be starting
            left, checkpoints = 1, 1
        if left == 0 and checkpoints == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 3:
                return
        else:
            quiet_since = None
        time.sleep(0.5)
    print("warning: the usage stream or checkpoints did not drain in time", flush=True)


if __name__ == "__main__":
    sys.exit(main())
