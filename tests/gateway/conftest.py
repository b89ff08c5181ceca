"""Fixtures: real processes — two fake engines and a gateway (``python -m gateway``, the entry point
every deployment runs) — on the test Redis DB.

The gateway process reads only Redis (db 15, flushed before each test by ``redis_client``), so each
test writes the keys, tenants, models and routes it needs; the gateway's ≤1 s caches never span
tests because every test creates fresh keys and its own model names.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from berth.redis import names
from tenants import mirror
from tenants.keys import create_api_key
from tenants.models import Plan
from tests.factories import TenantFactory

ROOT = Path(__file__).resolve().parents[2]
_names = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], url: str, health: str):
        self.url = url
        self.process = subprocess.Popen(  # noqa: S603
            argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_http(url + health)
        except RuntimeError:
            self.stop()
            raise RuntimeError(self.process.stderr.read().decode()[-3000:]) from None

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def uvicorn(app: str, port: int, env: dict[str, str], health: str) -> Proc:
    argv = [
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
        "httptools",
    ]
    return Proc(argv, {**os.environ, **env}, f"http://127.0.0.1:{port}", health)


def gateway_env(**extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": settings.REDIS_URL,
        "BERTH_KEY_PEPPERS": ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items()),
        "BERTH_REDIS_PREFIX": settings.REDIS_PREFIX,
        "BERTH_GATEWAY_COLD_START_TIMEOUT": "3",
        "BERTH_GATEWAY_ACCESS_LOG": "0",
        "BERTH_GATEWAY_SCRAPE_INTERVAL": "0.5",
        "BERTH_GATEWAY_LAST_USED_FLUSH_SECONDS": "0.2",
        **extra,
    }


def gateway_argv(port: int, *args: str) -> list[str]:
    """The gateway as deployments start it (``berth/roles.py``), quieter."""
    return [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", *args]  # fmt: skip


def start_gateway(*args: str, **extra: str) -> Proc:
    port = free_port()
    return Proc(
        gateway_argv(port, *args),
        {**os.environ, **gateway_env(**extra)},
        f"http://127.0.0.1:{port}",
        "/healthz",
    )


@pytest.fixture(scope="session")
def engines(_use_test_redis_db):
    procs = [
        uvicorn(
            "tests.gateway.fake_upstream:app",
            free_port(),
            {"FAKE_API_KEY": f"engine-{n}", "FAKE_NAME": n},
            "/health",
        )
        for n in ("w1", "w2")
    ]
    for proc, name in zip(procs, ("w1", "w2"), strict=True):
        proc.name = name
        proc.api_key = f"engine-{name}"
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def gateway(_use_test_redis_db, engines):
    proc = start_gateway()
    yield proc
    proc.stop()


def engine_stats(engine) -> dict:
    return httpx.get(engine.url + "/_stats").json()


def register_model(
    redis, engines, *, name: str | None = None, visibility="public", tenants=(), task="chat", served_name=None
) -> str:
    name = name or f"model-{next(_names)}-{os.getpid()}"
    redis.hset(
        names().model(name),
        mapping={
            "served_name": served_name or name,
            "task": task,
            "visibility": visibility,
            "tenants": json.dumps([str(t) for t in tenants]),
            "created": "1700000000",
            "owned_by": "berth",
        },
    )
    redis.sadd(names().models(), name)
    set_routes(redis, name, engines)
    return name


def set_routes(redis, model: str, engines) -> None:
    key = names().route(model)
    redis.delete(key)
    for engine in engines:
        redis.hset(key, engine.name, json.dumps({"url": engine.url, "api_key": engine.api_key}))


def unlimited_plan(**limits) -> Plan:
    plan, _ = Plan.objects.get_or_create(slug=f"test-{next(_names)}", defaults={"name": "Test"})
    for field, value in limits.items():
        setattr(plan, field, value)
    plan.save()
    return plan


def make_tenant(**limits):
    tenant = TenantFactory(plan=unlimited_plan(**limits))
    mirror.publish_tenant(tenant)
    return tenant


def make_key(tenant, **kwargs) -> str:
    created = create_api_key(tenant=tenant, name="test", **kwargs)
    assert mirror.publish_key(created.api_key)
    return created.plaintext
