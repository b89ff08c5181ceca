"""Metering: usage equals what the engine reported, survives a killed gateway, bills disconnects
for delivered tokens only, and is ingested into PostgreSQL idempotently."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import httpx
import openai
import pytest
from django.db.models import Count, Sum

from berth.redis import names
from billing import usage
from billing.models import UsageRecord
from tests.gateway.conftest import engine_stats, make_key, make_tenant, register_model, start_gateway

pytestmark = pytest.mark.django_db


def drain() -> int:
    usage.ensure_group()
    total = 0
    while handled := usage.consume_batch(consumer="test", block_ms=None, claim_idle_ms=0):
        total += handled
    return total


def test_usage_equals_engine_reported_tokens_over_mixed_requests(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, engines)
    embedder = register_model(redis_client, engines, task="embedding")
    rng = random.Random(7)

    async def run():
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        expected = {"p": 0, "c": 0, "n": 0}

        async def one(i):
            kind = i % 5
            words = " ".join("w" for _ in range(rng.randint(1, 30)))
            max_tokens = rng.randint(1, 40)
            if kind == 0:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": words}], max_tokens=max_tokens
                )
                p, c = r.usage.prompt_tokens, r.usage.completion_tokens
            elif kind == 1:
                s = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": words}],
                    max_tokens=max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [c async for c in s]
                p, c = chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens
            elif kind == 2:
                s = await client.completions.create(
                    model=model, prompt=words, max_tokens=max_tokens, stream=True
                )
                n = len([c async for c in s])
                p, c = len(words.split()) + 1, n  # the fake's rule: words + 1, one token per chunk
            elif kind == 3:
                r = await client.completions.create(model=model, prompt=words, max_tokens=max_tokens)
                p, c = r.usage.prompt_tokens, r.usage.completion_tokens
            else:
                r = await client.embeddings.create(model=embedder, input=words)
                p, c = r.usage.prompt_tokens, 0
            expected["p"] += p
            expected["c"] += c
            expected["n"] += 1

        await asyncio.gather(*(one(i) for i in range(200)))
        await client.close()
        return expected

    expected = asyncio.run(run())
    assert drain() == 200
    records = UsageRecord.objects.filter(tenant=tenant)
    totals = records.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    assert records.count() == 200
    assert (totals["p"], totals["c"]) == (expected["p"], expected["c"])
    assert set(records.values_list("status", flat=True)) == {"ok"}
    assert records.filter(endpoint="chat", ttft_ms__isnull=False).exists()


def test_a_disconnect_mid_stream_is_billed_for_what_the_engine_produced(gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    engine = engines[0]
    model = register_model(redis_client, [engine])
    httpx.post(engine.url + "/_reset")
    seen = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 400,
                "stream": True,
                "fake_delay": 0.02,
            },
            headers={"authorization": f"Bearer {key}"},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen == 10:
                break
    deadline = time.monotonic() + 5
    while engine_stats(engine)["aborted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = engine_stats(engine)
    assert stats["aborted"] == 1  # the gateway closed the upstream: the engine stopped
    drain()
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.status == "client_disconnected"
    assert 10 <= record.completion_tokens <= stats["completion_tokens_sent"] < 400
    # The concurrency lease and token reservation were settled too.
    assert not redis_client.zcard(names().quota_concurrency(tenant.pk))


def test_a_killed_gateway_loses_no_completed_requests_usage(engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, engines)
    proc = start_gateway()
    completed: list[str] = []

    async def one(client, gate, i):
        async with gate:  # hundreds of httpx pool waiters starve the pool on a busy machine
            await send(client, i)

    async def send(client, i):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20,
            "fake_delay": 0.01,
        }
        headers = {"authorization": f"Bearer {key}"}
        try:
            if i % 2:
                async with client.stream(
                    "POST", proc.url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers
                ) as r:
                    lines = [line async for line in r.aiter_lines()]
                    if r.status_code == 200 and "data: [DONE]" in lines:
                        completed.append(r.headers["x-request-id"])
            else:
                r = await client.post(proc.url + "/v1/chat/completions", json=body, headers=headers)
                if r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20:
                    completed.append(r.headers["x-request-id"])
        except httpx.HTTPError:
            pass

    async def load():
        gate = asyncio.Semaphore(50)
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as client:
            tasks = [asyncio.create_task(one(client, gate, i)) for i in range(600)]
            deadline = time.monotonic() + 20
            while len(completed) < 30 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            proc.stop(signal.SIGKILL)  # mid-run: hundreds of requests are still in flight
            await asyncio.gather(*tasks)

    asyncio.run(load())
    assert 0 < len(completed) < 600
    drain()
    recorded = set(UsageRecord.objects.filter(request_id__in=completed).values_list("request_id", flat=True))
    assert recorded == set(completed)


def test_ingestion_is_idempotent_and_reclaims_a_dead_consumers_entries(redis_client):
    tenant = make_tenant()
    usage.ensure_group()
    stream = names().usage_stream()
    now = int(time.time() * 1000)
    events = [
        {
            "id": f"req_{i}",
            "t": str(tenant.pk),
            "k": None,
            "m": "m",
            "ep": "chat",
            "p": 3,
            "c": 4,
            "s": "ok",
            "h": 200,
            "l": 5,
            "f": 1,
            "w": "w1",
            "ts": now,
        }
        for i in range(10)
    ]
    for event in events:
        redis_client.xadd(stream, {"e": json.dumps(event)})
    redis_client.xadd(stream, {"e": json.dumps(events[0])})  # a duplicate delivery
    redis_client.xadd(stream, {"e": "not json"})
    redis_client.xadd(
        stream, {"e": json.dumps({**events[1], "id": "req_bad", "ts": 1.5})}
    )  # would fail the batch
    # A consumer reads everything and dies before writing/acknowledging.
    redis_client.xreadgroup(usage.GROUP, "dead", {stream: ">"}, count=100)
    assert usage.consume_batch(consumer="alive", block_ms=None, claim_idle_ms=60_000) == 0  # not idle yet
    assert usage.consume_batch(consumer="alive", block_ms=None, claim_idle_ms=0) == 13
    assert redis_client.xpending(stream, usage.GROUP)["pending"] == 0
    assert UsageRecord.objects.filter(tenant=tenant).count() == 10
    # Re-delivering the same events changes nothing.
    assert usage.write_events(events) == 0
    totals = UsageRecord.objects.filter(tenant=tenant, model="m").aggregate(
        n=Count("pk"), p=Sum("prompt_tokens"), c=Sum("completion_tokens")
    )
    assert (totals["n"], totals["p"], totals["c"]) == (10, 30, 40)


def test_the_consumer_loop_recreates_a_lost_group(redis_client):
    tenant = make_tenant()
    usage.ensure_group()
    redis_client.delete(names().usage_stream())  # e.g. Redis restarted without persistence
    event = {"id": "req_after_loss", "t": str(tenant.pk), "k": None, "m": "m", "ep": "chat", "p": 1, "c": 2,
             "s": "ok", "h": 200, "l": 1, "f": None, "w": "", "ts": int(time.time() * 1000)}  # fmt: skip
    redis_client.xadd(names().usage_stream(), {"e": json.dumps(event)})
    usage.run(stop_after=1.5)
    assert UsageRecord.objects.filter(request_id="req_after_loss").exists()
