"""The admission queue across two gateway processes: shared capacity, band order, fair shares by
weight, bounded waits, a killed gateway's slots and entries expiring, disconnects while queued,
and queue time reaching the usage record (real Redis, real gateways, the fake engine)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import httpx
import openai
import pytest

from berth.redis import names
from billing.models import UsageRecord
from tests.gateway.conftest import engine_stats, make_key, make_tenant, register_model, start_gateway
from tests.gateway.test_usage import drain

pytestmark = pytest.mark.django_db
HI = [{"role": "user", "content": "hi"}]


@contextlib.contextmanager
def gateways(count: int = 2, **env: str):
    """``count`` gateway processes sharing the test Redis, the admission queue tuned by ``env``."""
    settings = {
        "BERTH_GATEWAY_ADMIT_HEARTBEAT_SECONDS": "0.2",
        "BERTH_GATEWAY_ADMIT_POLL_SECONDS": "0.2",
        **{f"BERTH_GATEWAY_{k.upper()}": v for k, v in env.items()},
    }
    procs = [start_gateway(**settings) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def client(gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=60)


def slots(redis_client, model: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in redis_client.hgetall(names().admission_slots(model)).items()}


def waiting(redis_client, model: str) -> int:
    return redis_client.hlen(names().admission_entries(model))


async def _chat(c: openai.AsyncOpenAI, model: str, *, tokens: int, delay: float, **extra):
    return await c.chat.completions.with_raw_response.create(
        model=model, messages=HI, max_tokens=tokens, extra_body={"fake_delay": delay}, **extra
    )


def test_two_gateways_together_never_exceed_the_capacity(engines, redis_client):
    engine = engines[0]
    model = register_model(redis_client, [engine])
    key = make_key(make_tenant())
    httpx.post(engine.url + "/_reset")
    with gateways(admit_per_worker="3") as (a, b):

        async def run():
            clients = [client(a, key), client(b, key)]
            answers = await asyncio.gather(
                *(_chat(clients[i % 2], model, tokens=5, delay=0.01) for i in range(40))
            )
            for c in clients:
                await c.close()
            return answers

        answers = asyncio.run(run())
        assert all(r.http_response.status_code == 200 for r in answers)
        stats = engine_stats(engine)
        assert stats["requests"] == 40
        assert stats["max_running"] == 3  # full use of the capacity, never more
        assert sum(slots(redis_client, model).values()) <= 3
        assert waiting(redis_client, model) == 0
    drain()
    queued = UsageRecord.objects.filter(model=model, queue_ms__gt=0)
    assert queued.exists()  # the time spent queued reaches the usage record
    assert UsageRecord.objects.filter(model=model).count() == 40


def test_priority_is_served_before_default_before_flex(engines, redis_client):
    engine = engines[0]
    model = register_model(redis_client, [engine])
    key = make_key(make_tenant(priority_band="priority"))
    # No priority headroom: the priority requests wait for the one slot too, served first.
    with gateways(admit_per_worker="1", admit_priority_headroom="0") as (a, b):

        async def run():
            clients = [client(a, key), client(b, key)]
            finished: list[str] = []
            blocker = asyncio.create_task(_chat(clients[0], model, tokens=20, delay=0.05))
            await asyncio.sleep(0.4)  # the one slot is taken

            async def one(i: int, tier: str):
                await _chat(clients[i % 2], model, tokens=2, delay=0.05, service_tier=tier)
                finished.append(tier)

            tasks = []
            for i, tier in enumerate(["flex", "flex", "default", "default", "priority", "priority"]):
                tasks.append(asyncio.create_task(one(i, tier)))
                await asyncio.sleep(0.05)
            await asyncio.gather(blocker, *tasks)
            for c in clients:
                await c.close()
            return finished

        assert asyncio.run(run()) == ["priority", "priority", "default", "default", "flex", "flex"]
    drain()
    assert UsageRecord.objects.filter(model=model, queue_ms__gte=200).count() == 6


def test_weights_one_to_three_get_token_shares_near_one_to_three(engines, redis_client):
    engine = engines[0]
    model = register_model(redis_client, [engine])
    light = make_key(make_tenant(fair_share_weight=1))
    heavy = make_key(make_tenant(fair_share_weight=3))
    with gateways(admit_per_worker="2") as (a, b):

        async def run():
            clients = {
                "light": [client(a, light), client(b, light)],
                "heavy": [client(a, heavy), client(b, heavy)],
            }
            blockers = [asyncio.create_task(_chat(clients["light"][0], model, tokens=10, delay=0.05))]
            blockers.append(asyncio.create_task(_chat(clients["heavy"][1], model, tokens=10, delay=0.05)))
            await asyncio.sleep(0.2)  # both slots taken: everything below queues
            served: list[tuple[str, int]] = []

            async def one(who: str, i: int):
                answer = await _chat(clients[who][i % 2], model, tokens=8, delay=0.005)
                served.append((who, answer.parse().usage.total_tokens))

            # The light tenant sends first and twice as many: neither order nor volume buys share.
            tasks = [asyncio.create_task(one("light", i)) for i in range(60)]
            await asyncio.sleep(0.1)
            tasks += [asyncio.create_task(one("heavy", i)) for i in range(30)]
            await asyncio.gather(*blockers, *tasks)
            for pair in clients.values():
                for c in pair:
                    await c.close()
            return served

        served = asyncio.run(run())
    window = served[:40]  # while both tenants still have requests waiting
    tokens = {who: sum(t for w, t in window if w == who) for who in ("light", "heavy")}
    ratio = tokens["heavy"] / max(1, tokens["light"])
    assert 2.0 <= ratio <= 4.0, (ratio, tokens)  # 1.0 without weights; 3.0 exactly in the limit
    shares = [tokens["light"] / 1, tokens["heavy"] / 3]
    jain = sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares))
    assert jain >= 0.95


def test_a_priority_request_takes_the_headroom_at_once(engines, redis_client):
    engine = engines[0]
    model = register_model(redis_client, [engine])
    key = make_key(make_tenant(priority_band="priority"))
    with gateways(admit_per_worker="1", admit_priority_headroom="1") as (a, b):

        async def run():
            ca, cb = client(a, key), client(b, key)
            blocker = asyncio.create_task(_chat(ca, model, tokens=30, delay=0.05))
            await asyncio.sleep(0.3)
            # On a priority plan "auto" is priority: this one asks for the default tier.
            waiting_default = asyncio.create_task(_chat(cb, model, tokens=1, delay=0, service_tier="default"))
            started = time.monotonic()
            answer = await _chat(cb, model, tokens=1, delay=0, service_tier="priority")
            took = time.monotonic() - started
            assert not waiting_default.done()  # the default request still waits for the capacity
            await asyncio.gather(blocker, waiting_default)
            await ca.close()
            await cb.close()
            return answer, took

        answer, took = asyncio.run(run())
    assert answer.http_response.status_code == 200
    assert took < 0.5  # not behind the 1.5 s blocker


def test_waits_are_bounded_with_503_or_429_and_retry_after(engines, redis_client):
    engine = engines[0]
    model = register_model(redis_client, [engine])
    key = make_key(make_tenant(priority_band="priority"))
    with gateways(
        admit_per_worker="1", admit_max_wait="0.6", admit_max_wait_background="0.6", admit_queue_max="3"
    ) as (a, b):

        async def run():
            ca, cb = client(a, key), client(b, key)
            blocker = asyncio.create_task(_chat(ca, model, tokens=80, delay=0.05))
            await asyncio.sleep(0.3)
            outcomes = {}
            for tier in ("default", "flex"):
                started = time.monotonic()
                try:
                    await _chat(cb, model, tokens=1, delay=0, service_tier=tier)
                except openai.APIStatusError as exc:
                    outcomes[tier] = (exc, time.monotonic() - started)
            # The flex band holds 3: the 4th, 5th… are refused at once.
            flood = await asyncio.gather(
                *(_chat(ca, model, tokens=1, delay=0, service_tier="flex") for _ in range(6)),
                return_exceptions=True,
            )
            await blocker
            await ca.close()
            await cb.close()
            return outcomes, flood

        outcomes, flood = asyncio.run(run())
    overloaded, waited = outcomes["default"]
    assert overloaded.status_code == 503
    assert overloaded.body["code"] == "server_overloaded"
    assert int(overloaded.response.headers["retry-after"]) >= 1
    assert 0.5 <= waited < 2
    busy, _ = outcomes["flex"]
    assert busy.status_code == 429
    assert busy.body["code"] == "rate_limit_exceeded"
    assert "retry-after" in busy.response.headers
    refused = [r for r in flood if isinstance(r, openai.APIStatusError)]
    assert len(refused) == 6  # 3 refused at once (full), 3 after their wait
    assert all(r.status_code == 429 for r in refused)
    assert waiting(redis_client, model) == 0


def test_a_killed_gateways_slots_and_queue_entries_expire(engines, redis_client):
    engine = engines[0]
    model = register_model(redis_client, [engine])
    key = make_key(make_tenant())
    with gateways(admit_per_worker="2", admit_gateway_ttl="1") as (doomed, survivor):
        payload = {"model": model, "messages": HI, "max_tokens": 400, "fake_delay": 0.05}
        headers = {"authorization": f"Bearer {key}"}

        async def fill():
            async with httpx.AsyncClient(timeout=60) as http:
                # Two hold the slots (20 s each), two wait behind them: all on the doomed gateway.
                tasks = [
                    asyncio.create_task(
                        http.post(doomed.url + "/v1/chat/completions", json=payload, headers=headers)
                    )
                    for _ in range(4)
                ]
                deadline = time.monotonic() + 5
                while waiting(redis_client, model) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - polling Redis
                    await asyncio.sleep(0.05)
                assert sum(slots(redis_client, model).values()) == 2
                assert waiting(redis_client, model) == 2
                doomed.stop(signal.SIGKILL)
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(fill())

        async def after():
            started = time.monotonic()
            c = client(survivor, key)
            answer = await _chat(c, model, tokens=1, delay=0)
            await c.close()
            return answer, time.monotonic() - started

        answer, took = asyncio.run(after())
        assert answer.http_response.status_code == 200
        assert took < 5  # the dead gateway's slots were dropped after its heartbeat expired
        held = slots(redis_client, model)
        assert sum(held.values()) <= 1  # the dead gateway's two are gone (the survivor may keep its one)
        assert waiting(redis_client, model) == 0


def test_a_client_that_hangs_up_while_queued_leaves_the_queue(engines, redis_client):
    engine = engines[0]
    model = register_model(redis_client, [engine])
    tenant = make_tenant()
    key = make_key(tenant)
    with gateways(admit_per_worker="1") as (a, b):

        async def run():
            ca = client(a, key)
            blocker = asyncio.create_task(_chat(ca, model, tokens=30, delay=0.05))
            await asyncio.sleep(0.3)
            impatient = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0, timeout=0.5)
            with pytest.raises(openai.APITimeoutError):
                await _chat(impatient, model, tokens=1, delay=0)
            await impatient.close()
            deadline = time.monotonic() + 3
            while waiting(redis_client, model) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling Redis
                await asyncio.sleep(0.05)
            left = waiting(redis_client, model)
            held = sum(slots(redis_client, model).values())
            await blocker
            after = await _chat(client(b, key), model, tokens=1, delay=0)
            await ca.close()
            return left, held, after

        left, held, after = asyncio.run(run())
    assert left == 0  # its entry left the queue
    assert held == 1  # and it freed nothing: the blocker's slot is still the only one taken
    assert after.http_response.status_code == 200
    drain()
    gone = UsageRecord.objects.get(tenant=tenant, status="client_disconnected")
    assert gone.http_status == 499 and gone.completion_tokens == 0
    # The quota concurrency lease of the request that left was settled too.
    assert not redis_client.zcard(names().quota_concurrency(tenant.pk))
