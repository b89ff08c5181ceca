"""LoRA adapters through the gateway to two real CPU engines (tiny model, PEFT adapters made here).

The adapter's mirror entry is written into Redis as the control plane publishes it (COMMON:
``parent``, ``adapter_source``, …); the real ``openai`` SDK calls it by its name, plain and
streaming. The gateway routes it to the base's workers, loads it where needed, prefers the
worker that holds it, reloads it after an engine evicts it, unloads it when it is deleted, and
meters the request under the adapter's name.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import httpx
import openai
import pytest

from berth.redis import names
from billing.models import UsageRecord
from contract import invalidation
from cpu_engine.tests.engine_process import (
    API_KEY,
    EngineArgs,
    free_port,
    start_engine,
    stop_engine,
    wait_ready,
)
from tests.gateway.conftest import make_key, make_tenant
from tests.gateway.test_usage import drain

pytestmark = [pytest.mark.django_db, pytest.mark.engine, pytest.mark.processes]

_ids = itertools.count()
MESSAGES = [{"role": "user", "content": "def main():"}]


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    from cpu_engine.tiny_adapter import make_tiny_adapter
    from cpu_engine.tiny_model import create_tiny_model

    root = tmp_path_factory.mktemp("lora-gw")
    base = create_tiny_model(root / "tiny")
    return base, make_tiny_adapter(root / "support", base, seed=1)


@pytest.fixture(scope="module")
def lora_engines(lora_files, tmp_path_factory):
    base, _ = lora_files
    logs = tmp_path_factory.mktemp("lora-gw-logs")
    engines = []
    try:
        for n in ("lw1", "lw2"):
            spec = EngineArgs(
                served_name="tiny-base",
                source=str(base),
                task="chat",
                host="127.0.0.1",
                port=free_port(),
                api_key=API_KEY,
                extra_args=("--max-loras", "2", "--max-cpu-loras", "4"),
            )
            engine = start_engine(spec, logs / f"{n}.log")
            engine.name = n  # the worker id in the routing table
            engines.append(engine)
        for engine in engines:
            wait_ready(engine)
        yield engines
    finally:
        for engine in engines:
            stop_engine(engine)


def held_by(engine) -> set[str]:
    data = httpx.get(f"{engine.base_url}/models", headers=engine.auth, timeout=10).json()["data"]
    return {card["id"] for card in data if card["parent"]}


def publish(
    redis, engines, tenant, *, source: str, base: str = "tiny-base", engine_kind: str = "", manifest: str = ""
) -> tuple[str, str]:
    """A base model routed to ``engines`` (route entries naming ``engine`` when given) and a private
    adapter of ``tenant`` on it (with ``manifest`` as its ``adapter_manifest`` when given)."""
    suffix = f"{next(_ids)}-{os.getpid()}"
    base_name, adapter = f"tiny-base-{suffix}", f"{tenant.slug}/support-v{suffix}"
    redis.hset(
        names().model(base_name),
        mapping={"served_name": base, "task": "chat", "visibility": "public", "tenants": "[]",
                 "created": "1700000000", "owned_by": "berth"},
    )  # fmt: skip
    for engine in engines:
        route = {"url": engine.url, "api_key": API_KEY, **({"engine": engine_kind} if engine_kind else {})}
        redis.hset(names().route(base_name), engine.name, json.dumps(route))
    redis.hset(
        names().model(adapter),
        mapping={
            "served_name": adapter,
            "task": "chat",
            "visibility": "private",
            "tenants": json.dumps([str(tenant.id)]),
            "created": "1700000001",
            "owned_by": tenant.slug,
            "context_length": "2048",
            "price_input_micros": "2000000",
            "price_output_micros": "4000000",
            "parent": base_name,
            "adapter_id": "6f1c1d1e-0000-4000-8000-000000000001",
            "adapter_source": source,
            "adapter_revision": "",
            "adapter_rank": "8",
            **({"adapter_manifest": manifest} if manifest else {}),
        },
    )
    redis.sadd(names().models(), base_name, adapter)
    for name in (base_name, adapter):  # as the control plane announces each mirror write
        redis.publish(names().invalidate_channel(), invalidation.model(name))
    return base_name, adapter


@pytest.fixture
def setup(gateway, lora_engines, lora_files, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    base_name, adapter = publish(redis_client, lora_engines, tenant, source=str(lora_files[1]))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    return tenant, client, base_name, adapter


def direct(engine, model: str) -> str:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 10, "temperature": 0}
    response = httpx.post(f"{engine.base_url}/chat/completions", json=body, headers=engine.auth, timeout=60)
    return response.json()["choices"][0]["message"]["content"]


def test_the_sdk_calls_an_adapter_plain_and_streaming_and_usage_is_the_adapters(setup, lora_engines):
    tenant, client, base_name, adapter = setup

    reply = client.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=10, temperature=0)
    base = client.chat.completions.create(model=base_name, messages=MESSAGES, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model=adapter, messages=MESSAGES, max_tokens=10, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert reply.model == adapter
    assert reply.usage.completion_tokens == 10
    assert streamed == reply.choices[0].message.content
    assert reply.choices[0].message.content != base.choices[0].message.content  # the adapter answered
    holders = [e for e in lora_engines if adapter in held_by(e)]
    assert len(holders) == 1  # loaded once, on one worker, and both calls went there
    assert direct(holders[0], adapter) == reply.choices[0].message.content

    drain()
    records = UsageRecord.objects.filter(tenant_id=tenant.id, model=adapter)
    assert records.count() == 2
    assert sorted(r.completion_tokens for r in records) == [10, 10]
    assert {r.worker_id for r in records} == {holders[0].name}
    assert UsageRecord.objects.filter(tenant_id=tenant.id, model=base_name).count() == 1


def test_another_tenant_gets_404_and_does_not_see_the_adapter(setup, gateway):
    _, client, _, adapter = setup
    other = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(make_tenant()), max_retries=0)

    with pytest.raises(openai.NotFoundError) as caught:
        other.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=2)
    assert caught.value.code == "model_not_found"
    time.sleep(1.1)  # past the gateway's model-list cache: the adapter is published by now
    assert adapter not in {m.id for m in other.models.list()}
    assert adapter in {m.id for m in client.models.list()}


def test_models_lists_the_adapter_with_its_parent(setup):
    _, client, base_name, adapter = setup
    deadline = time.monotonic() + 3
    listed = {}
    while adapter not in listed and time.monotonic() < deadline:  # the invalidation is asynchronous
        listed = {m.id: m.model_extra.get("parent") for m in client.models.list()}
    assert listed[adapter] == base_name
    assert listed[base_name] is None


def test_affinity_keeps_an_adapter_on_the_worker_that_holds_it(setup, lora_engines, redis_client):
    _, client, _, adapter = setup
    for _ in range(5):
        client.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=2)

    holders = [e for e in lora_engines if adapter in held_by(e)]
    assert len(holders) == 1  # five requests, one load: every later request found the holder
    record = redis_client.hgetall(names().lora_held(holders[0].name))
    assert adapter in record
    assert json.loads(record[adapter])["parent"].startswith("tiny-base-")
    other = next(e for e in lora_engines if e is not holders[0])
    assert adapter not in redis_client.hgetall(names().lora_held(other.name))


def test_an_evicted_adapter_is_loaded_again(setup, lora_engines):
    _, client, _, adapter = setup
    client.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=2)
    holder = next(e for e in lora_engines if adapter in held_by(e))
    # What the engine's LRU does when it needs the slot: the adapter is gone from the worker.
    httpx.post(f"{holder.url}/v1/unload_lora_adapter", json={"lora_name": adapter}, headers=holder.auth)

    reply = client.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=3)

    assert reply.usage.completion_tokens == 3
    assert any(adapter in held_by(e) for e in lora_engines)


def test_a_deleted_adapter_is_unloaded_from_its_workers(setup, lora_engines, redis_client):
    _, client, _, adapter = setup
    client.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=2)
    assert any(adapter in held_by(e) for e in lora_engines)

    redis_client.delete(names().model(adapter))
    redis_client.srem(names().models(), adapter)
    redis_client.publish(names().invalidate_channel(), invalidation.model(adapter))

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(adapter in held_by(e) for e in lora_engines):
        time.sleep(0.1)
    assert not any(adapter in held_by(e) for e in lora_engines)
    assert not any(adapter in redis_client.hgetall(names().lora_held(e.name)) for e in lora_engines)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=2)


def test_an_adapter_that_cannot_load_gets_a_clear_error(gateway, lora_engines, redis_client):
    tenant = make_tenant()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    _, adapter = publish(redis_client, lora_engines, tenant, source="/nowhere/no-adapter")

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=2)

    assert caught.value.status_code == 502
    assert caught.value.code == "adapter_load_failed"
    assert "could not be loaded" in caught.value.message
    assert "/nowhere" not in caught.value.message  # operator paths stay in the gateway log


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
def test_tenants_cannot_reach_the_engines_adapter_routes(setup, gateway, lora_engines, lora_files, path):
    tenant, client, _, _ = setup
    response = httpx.post(
        gateway.url + path,
        json={"lora_name": f"{tenant.slug}/sneaky", "lora_path": str(lora_files[1])},
        headers={"Authorization": f"Bearer {client.api_key}"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert not any(f"{tenant.slug}/sneaky" in held_by(e) for e in lora_engines)


def test_a_cpu_engine_refuses_adapter_files_that_do_not_match_the_manifest(
    gateway, lora_engines, lora_files, redis_client, tmp_path
):
    """The gateway hands a CPU engine the adapter's manifest; a changed byte is refused, by name."""
    import shutil

    from integrity import manifest_for_folder

    folder = tmp_path / "adapter"
    shutil.copytree(lora_files[1], folder)
    manifest = manifest_for_folder(folder, source="acme-ml/support", revision="abc123")
    tenant = make_tenant()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    _, good = publish(
        redis_client, lora_engines, tenant, source=str(folder), engine_kind="cpu",
        manifest=manifest.canonical_json().decode(),
    )  # fmt: skip
    assert client.chat.completions.create(model=good, messages=MESSAGES, max_tokens=2).choices

    weights = next(p for p in folder.iterdir() if p.name.startswith("adapter_model"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    _, tampered = publish(
        redis_client, lora_engines, tenant, source=str(folder), engine_kind="cpu",
        manifest=manifest.canonical_json().decode(),
    )  # fmt: skip
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=tampered, messages=MESSAGES, max_tokens=2)
    assert (caught.value.status_code, caught.value.code) == (502, "adapter_load_failed")
    assert not any(tampered in held_by(e) for e in lora_engines)

    # The engine's own answer names the file that changed.
    engine = lora_engines[0]
    response = httpx.post(
        f"{engine.base_url}/load_lora_adapter",
        json={"lora_name": "direct", "lora_path": str(folder), "expected_manifest": manifest.as_dict()},
        headers=engine.auth,
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "adapter_verification_failed"
    assert f"{weights.name} does not match the manifest" in error["message"]

    # A vLLM worker (or a route entry without an engine) is sent vLLM's body only: no manifest,
    # so nothing is checked and the same files load.
    _, unchecked = publish(
        redis_client, lora_engines, tenant, source=str(folder), engine_kind="vllm",
        manifest=manifest.canonical_json().decode(),
    )  # fmt: skip
    assert client.chat.completions.create(model=unchecked, messages=MESSAGES, max_tokens=2).choices


def test_counting_an_adapters_tokens_uses_its_bases_workers(setup, gateway, lora_engines):
    # Before anything loaded it: count_tokens for an adapter goes to a base worker as the base.
    tenant, client, base_name, adapter = setup
    key = client.api_key
    body = {"model": adapter, "max_tokens": 16, "messages": [{"role": "user", "content": "Hello there"}]}
    counted = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens", json=body, headers={"x-api-key": key}, timeout=60
    )
    as_base = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens",
        json={**body, "model": base_name},
        headers={"x-api-key": key},
        timeout=60,
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] == as_base.json()["input_tokens"] > 0
    assert not any(adapter in held_by(engine) for engine in lora_engines)  # nothing was loaded for it
