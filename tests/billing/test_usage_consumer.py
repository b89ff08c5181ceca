"""The usage consumer under faults: trims only what every group acknowledged, parks what
PostgreSQL refuses, and — as a real process — survives PostgreSQL and Redis outages with every
event landing exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from django.conf import settings
from django.db import connection
from django.db.models import Count, Sum

from berth import embedded
from berth.redis import names
from billing import usage
from billing.models import UsageRecord
from tests.billing.tcp_proxy import TcpProxy
from tests.factories import TenantFactory

ROOT = Path(settings.BASE_DIR)


def event(tenant, request_id: str, **extra) -> dict:
    return {
        "id": request_id, "t": str(tenant.pk), "k": None, "m": "m", "ep": "chat", "p": 3, "c": 4,
        "s": "ok", "h": 200, "l": 5, "f": 1, "w": "w1", "ts": int(time.time() * 1000), **extra,
    }  # fmt: skip


def publish(client, events: list[dict]) -> None:
    for item in events:
        client.xadd(names().usage_stream(), {"e": json.dumps(item)})


@pytest.mark.django_db
def test_it_trims_only_what_every_group_has_acknowledged(redis_client):
    """Before: XDEL right after the billing group's XACK destroyed entries another group had not read."""
    tenant = TenantFactory()
    stream = names().usage_stream()
    usage.ensure_group()
    redis_client.xgroup_create(stream, "audit", id="0")
    publish(redis_client, [event(tenant, f"req_{i}") for i in range(5)])

    assert usage.consume_batch(consumer="c1", block_ms=None) == 5
    assert UsageRecord.objects.filter(tenant=tenant).count() == 5
    assert usage.trim_acknowledged() == 0
    assert redis_client.xlen(stream) == 5  # audit has read nothing yet

    read = redis_client.xreadgroup("audit", "a1", {stream: ">"}, count=3)[0][1]
    assert [json.loads(fields["e"])["id"] for _, fields in read] == ["req_0", "req_1", "req_2"]
    redis_client.xack(stream, "audit", read[0][0], read[1][0])
    assert usage.trim_acknowledged() == 2  # below audit's oldest pending entry
    assert redis_client.xpending(stream, "audit")["pending"] == 1

    rest = redis_client.xreadgroup("audit", "a1", {stream: ">"}, count=10)[0][1]
    assert len(rest) == 2 and all(fields for _, fields in rest)
    redis_client.xack(stream, "audit", read[2][0], *(entry_id for entry_id, _ in rest))
    assert usage.trim_acknowledged() == 3
    assert redis_client.xlen(stream) == 0


@pytest.mark.django_db
def test_consumers_that_hold_nothing_and_sleep_are_forgotten_but_not_those_with_pending_entries(redis_client):
    tenant = TenantFactory()
    usage.ensure_group()
    stream = names().usage_stream()
    publish(redis_client, [event(tenant, "held")])
    redis_client.xreadgroup(usage.GROUP, "gone-with-entries", {stream: ">"}, count=1)
    redis_client.xgroup_createconsumer(stream, usage.GROUP, "gone-empty")
    time.sleep(0.05)
    assert usage.forget_idle_consumers(redis_client, idle_ms=10) == 1
    consumers = {c["name"] for c in redis_client.xinfo_consumers(stream, usage.GROUP)}
    assert consumers == {"gone-with-entries"}


@pytest.mark.django_db
def test_events_postgresql_refuses_are_parked_and_do_not_block_the_stream(redis_client):
    """Before: one event PostgreSQL refused failed its whole batch, forever."""
    tenant = TenantFactory()
    usage.ensure_group()
    publish(
        redis_client, [event(tenant, "ok_1"), event(tenant, "bad", m="nul\u0000byte"), event(tenant, "ok_2")]
    )
    redis_client.xadd(names().usage_stream(), {"e": "not json"})  # malformed: parked too, not dropped

    assert usage.consume_batch(consumer="c1", block_ms=None) == 4
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {"ok_1", "ok_2"}
    assert redis_client.xpending(names().usage_stream(), usage.GROUP)["pending"] == 0
    parked = redis_client.xrange(names().usage_dead_letter())
    assert [json.loads(fields["e"])["id"] for _, fields in parked[:1]] == ["bad"]
    assert parked[1][1] == {"e": "not json", "error": "malformed"}


@pytest.mark.django_db
def test_the_lag_gauges_count_pending_and_unread_events(redis_client):
    tenant = TenantFactory()
    usage.ensure_group()
    stream = names().usage_stream()
    old = int(time.time() * 1000) - 90_000
    redis_client.xadd(stream, {"e": json.dumps(event(tenant, "old"))}, id=f"{old}-0")
    publish(redis_client, [event(tenant, "new")])
    redis_client.xreadgroup(usage.GROUP, "dead", {stream: ">"}, count=1)  # read, never written

    usage.METRICS.refresh(redis_client)
    assert usage.METRICS.stream_length._value.get() == 2
    assert usage.METRICS.pending._value.get() == 1
    assert 89 < usage.METRICS.oldest_pending_age._value.get() < 120
    assert 89 < usage.METRICS.oldest_unacked_age._value.get() < 120

    redis_client.xautoclaim(stream, usage.GROUP, "dead", 0, "0-0")  # (still pending)
    assert usage.consume_batch(consumer="dead", own_pending=True, block_ms=None) == 1
    usage.METRICS.refresh(redis_client)
    assert usage.METRICS.pending._value.get() == 0
    assert usage.METRICS.oldest_pending_age._value.get() == 0
    assert 0 <= usage.METRICS.oldest_unacked_age._value.get() < 30  # "new" is still unread


# --------------------------------------------------------------------------- the real process


class RedisServer:
    """The embedded Redis binary (AOF on, as in production) on a port of its own that survives restarts."""

    def __init__(self, base: Path):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [str(embedded._redis_bin()), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.base),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if redis_lib.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis_lib.RedisError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server, redis_lib.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    server.stop(signal.SIGKILL)


def consumer_process(tmp_path, database_url: str, redis_url: str):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "DATABASE_", "REDIS_"))},
        "DEBUG": "1",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BERTH_DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    log = open(tmp_path / "consumer.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "manage.py", "consume_usage", "--metrics-port", "0", "--batch", "50"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, log


def landed(ids) -> dict[str, int]:
    counts = dict.fromkeys(ids, 0)
    for request_id in UsageRecord.objects.filter(request_id__in=list(ids)).values_list(
        "request_id", flat=True
    ):
        counts[request_id] += 1
    return counts


def wait_landed(ids, process, log, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(landed(ids).values()):
            return
        assert process.poll() is None, f"the consumer died:\n{read(log)}"
        time.sleep(0.3)
    missing = [i for i, n in landed(ids).items() if not n]
    raise AssertionError(f"{len(missing)} event(s) never landed, e.g. {missing[:3]}\n{read(log)[-4000:]}")


def read(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def test_the_consumer_survives_postgresql_and_redis_outages_and_lands_each_event_once(
    transactional_db, tmp_path, own_redis
):
    """Before: a PostgreSQL outage crashed the consumer; its own unacknowledged entries then waited
    for XAUTOCLAIM's 60 s idle time (this test allows 45 s after each outage)."""
    server, client = own_redis
    tenant = TenantFactory()
    db = connection.settings_dict
    proxy = TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"]))
    database_url = f"postgresql://{db['USER']}:{db['PASSWORD'] or ''}@127.0.0.1:{proxy.port}/{db['NAME']}"
    process, log = consumer_process(tmp_path, database_url, server.url)
    everything: list[str] = []
    try:

        def batch(name: str, n: int) -> list[str]:
            ids = [f"{name}_{i}_{uuid.uuid4().hex[:6]}" for i in range(n)]
            publish(client, [event(tenant, request_id) for request_id in ids])
            everything.extend(ids)
            return ids

        wait_landed(batch("before", 20), process, log)

        # PostgreSQL goes away (open connections broken, new ones refused) while events arrive.
        proxy.cut()
        during = batch("pg_down", 30)
        time.sleep(3)
        assert not any(landed(during).values())
        assert client.xpending(names().usage_stream(), usage.GROUP)["pending"] > 0  # read, not written
        proxy.restore()
        wait_landed(during, process, log)
        assert "database unavailable" in read(log)

        # Redis stops (SIGTERM: the AOF is flushed) and comes back on the same port.
        server.stop(signal.SIGTERM)
        time.sleep(2)
        server.start()
        wait_landed(batch("redis_back", 20), process, log)
        assert "redis unavailable" in read(log)

        # Redis killed outright right after the consumer wrote a batch: its XACKs may be lost, so
        # the entries come back as its own pending ones, and are written again as no-ops.
        hard = batch("redis_killed", 20)
        wait_landed(hard, process, log)
        time.sleep(1.2)  # the AOF's fsync-every-second has the XADDs
        server.stop(signal.SIGKILL)
        time.sleep(1)
        server.start()
        wait_landed(batch("after_kill", 10), process, log)

        deadline = time.monotonic() + 30
        while client.xpending(names().usage_stream(), usage.GROUP)["pending"] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert client.xpending(names().usage_stream(), usage.GROUP)["pending"] == 0

        counts = landed(everything)
        assert set(counts.values()) == {1}, "every event exactly once"
        totals = UsageRecord.objects.filter(tenant=tenant).aggregate(
            requests=Count("pk"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
        )
        assert totals == {"requests": 100, "prompt": 300, "completion": 400}  # nothing doubled

        port = int(re.search(r"metrics on [\d.]+:(\d+)", read(log)).group(1))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert re.search(r'berth_usage_errors_total\{kind="database"\} [1-9]', metrics)
        assert re.search(r'berth_usage_errors_total\{kind="redis"\} [1-9]', metrics)
        assert re.search(r"berth_usage_events_consumed_total (\d+)", metrics)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        proxy.cut()
        log.close()
    assert process.returncode == 0  # SIGTERM: finishes its batch and exits cleanly
