"""Routing: prefix affinity with bounded load, engine metrics shared through Redis, cold start,
retry on another worker, and a request path free of Django."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from berth.redis import names
from contract import invalidation
from gateway.config import GatewaySettings
from gateway.routing import Router, Worker
from tests.gateway.conftest import (
    ROOT,
    engine_stats,
    free_port,
    make_key,
    make_tenant,
    register_model,
    set_routes,
)

WORKERS = [Worker(f"w{i}", f"http://127.0.0.1:{9000 + i}", "") for i in range(4)]


def router(policy: str = "prefix") -> Router:
    settings = GatewaySettings(key_peppers="dev:x", routing=policy)
    return Router(redis=None, settings=settings)


def test_prefix_routing_prefers_the_prefixs_worker():
    r = router()
    prefix = "You are a helpful assistant. " * 10
    chosen = {r.choose(WORKERS, prefix).worker_id for _ in range(20)}
    assert len(chosen) == 1
    spread = {r.choose(WORKERS, f"prompt number {i}").worker_id for i in range(200)}
    assert spread == {w.worker_id for w in WORKERS}


def test_prefix_routing_respects_bounded_load():
    r = router()
    prefix = "shared system prompt"
    preferred = r.choose(WORKERS, prefix)
    placed = []
    for _ in range(40):  # a hot prefix: requests pile up without finishing
        worker = r.choose(WORKERS, prefix)
        r.acquire(worker)
        placed.append(worker.worker_id)
    assert placed[0] == preferred.worker_id
    loads = [r.outstanding.get(w.worker_id, 0) for w in WORKERS]
    mean = sum(loads) / len(loads)
    assert max(loads) <= (1 + r.settings.bounded_load_eps) * mean + 2
    assert len(set(placed)) > 1


def test_least_load_uses_engine_metrics_and_round_robin_rotates():
    r = router("least_load")
    r.engine_load = {
        "w0": {"waiting": 5, "kv": 0.5},
        "w1": {"waiting": 0, "kv": 0.9},
        "w2": {"waiting": 1, "kv": 0},
        "w3": {"waiting": 3},
    }
    assert r.choose(WORKERS, None).worker_id == "w2"
    rr = router("round_robin")
    assert [rr.choose(WORKERS, "same").worker_id for _ in range(4)] == ["w0", "w1", "w2", "w3"]


@pytest.mark.django_db
def test_requests_sharing_a_prefix_land_on_one_worker(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, engines)
    for engine in engines:
        httpx.post(engine.url + "/_reset")
    system = "You are Berth's support bot. Answer briefly. " * 16  # longer than the 512 hashed characters
    for i in range(12):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={
                "model": model,
                "max_tokens": 1,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"question {i}"},
                ],
            },
            headers={"authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200
    counts = sorted(engine_stats(e)["requests"] for e in engines)
    assert counts == [0, 12]


@pytest.mark.django_db
def test_the_elected_scraper_shares_engine_metrics(gateway, engines, redis_client):
    register_model(redis_client, engines)
    key = names().engine_load()
    deadline = time.monotonic() + 5
    while not redis_client.hlen(key) and time.monotonic() < deadline:
        time.sleep(0.1)
    loads = {k: json.loads(v) for k, v in redis_client.hgetall(key).items()}
    assert set(loads) >= {"w1", "w2"}
    assert {"waiting", "running", "kv", "at"} <= set(loads["w1"])
    assert redis_client.get(names().engine_scraper_lock())


@pytest.mark.django_db
def test_cold_start_holds_the_request_until_a_worker_is_ready(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, [])
    result = {}

    def call():
        result["response"] = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    demand = names().demand(model)
    while not redis_client.get(demand) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abs(int(redis_client.get(demand)) - time.time()) < 5  # the autoscaler's signal (epoch s)
    assert 0 < redis_client.ttl(demand) <= 60
    assert thread.is_alive()  # held, not refused
    set_routes(redis_client, model, engines[:1])
    thread.join(10)
    assert result["response"].status_code == 200


@pytest.mark.django_db
def test_no_ready_worker_within_the_timeout_is_a_clear_503(gateway, redis_client, engines):
    tenant = make_tenant()
    model = register_model(redis_client, [])
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {make_key(tenant)}"},
        timeout=30,
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_ready"
    assert "became ready" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_a_worker_failing_before_the_first_byte_is_retried_on_another(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, engines[:1])
    dead = type("Dead", (), {"name": "dead", "url": f"http://127.0.0.1:{free_port()}", "api_key": ""})()
    set_routes(redis_client, model, [dead, engines[0]])
    # As provisioning does after every change: the gateway drops its cached table at once.
    redis_client.publish(names().invalidate_channel(), invalidation.route(model))
    time.sleep(0.1)
    for i in range(8):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": f"prompt {i}"}],
                "stream": i % 2 == 1,
            },
            headers={"authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200


def test_the_gateway_does_not_import_django():
    code = "import sys, gateway.app; assert not any(m.startswith('django') for m in sys.modules), 'django imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)  # noqa: S603
