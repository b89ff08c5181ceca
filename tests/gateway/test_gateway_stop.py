"""In-flight streams are billed whatever happens to the gateway process: SIGTERM (finish within the
grace period, record what was delivered for what must be cut) and SIGKILL (the consumer bills the
last checkpoint, exactly once)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import openai
import pytest

from berth.redis import names
from billing import checkpoints, usage
from billing.models import UsageRecord
from tests.gateway.conftest import (
    Proc,
    engine_stats,
    make_key,
    make_tenant,
    register_model,
    start_gateway,
)
from tests.gateway.test_unanswered import PROMPT, record, reset
from tests.gateway.test_usage import drain

pytestmark = pytest.mark.django_db


def gateway_process(*, grace: int = 30, **env: str) -> Proc:
    """A gateway started as deployments start it, with a grace period."""
    return start_gateway("--grace-seconds", str(grace), **env)


def open_stream(proc: Proc, key: str, model: str, *, max_tokens: int, delay: float):
    client = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0, timeout=30)
    return client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=max_tokens, stream=True, extra_body={"fake_delay": delay}
    )


def read_chunks(stream, count: int) -> int:
    seen = 0
    for _chunk in stream:
        seen += 1
        if seen == count:
            break
    return seen


def test_sigterm_lets_a_stream_finish_within_the_grace_period(engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engines[0]])
    proc = gateway_process(grace=20)
    stream = open_stream(proc, key, model, max_tokens=40, delay=0.05)
    request_id = stream.response.headers["x-request-id"]
    read_chunks(stream, 3)
    proc.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):  # it stopped accepting
        httpx.get(proc.url + "/healthz", timeout=2)
    rest = list(stream)  # …and the stream runs to its end
    assert 3 + len(rest) == 40
    assert proc.process.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    rec = record(request_id)
    assert (rec.status, rec.prompt_tokens, rec.completion_tokens) == ("ok", 8, 40)


def test_a_stream_cut_when_the_grace_period_ends_is_billed_as_delivered(engines, redis_client):
    key = make_key(make_tenant())
    engine = engines[0]
    model = register_model(redis_client, [engine])
    reset(engine)
    proc = gateway_process(grace=1)
    stream = open_stream(proc, key, model, max_tokens=400, delay=0.02)
    request_id = stream.response.headers["x-request-id"]
    read_chunks(stream, 10)
    proc.process.send_signal(signal.SIGTERM)
    seen = 10
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _chunk in stream:
            seen += 1
    proc.process.wait(20)
    rec = record(request_id)
    sent = engine_stats(engine)["completion_tokens_sent"]
    assert rec.status == "gateway_stopped"
    assert rec.prompt_tokens == 8
    assert seen <= rec.completion_tokens <= sent < 400  # what was delivered, not 0, not the whole
    assert rec.usage_source == "engine"


def test_a_sigkilled_gateways_stream_is_billed_once_from_its_last_checkpoint(engines, redis_client):
    key = make_key(make_tenant())
    engine = engines[0]
    model = register_model(redis_client, [engine])
    reset(engine)
    proc = gateway_process(
        BERTH_GATEWAY_CHECKPOINT_SECONDS="0.5",
        BERTH_GATEWAY_CHECKPOINT_TOKENS="10",
        BERTH_GATEWAY_CHECKPOINT_LOST_AFTER="2",
    )
    stream = open_stream(proc, key, model, max_tokens=400, delay=0.02)
    request_id = stream.response.headers["x-request-id"]
    seen = read_chunks(stream, 60)
    proc.stop(signal.SIGKILL)
    stream.close()
    drain()
    assert not UsageRecord.objects.filter(request_id=request_id).exists()  # no final event
    assert checkpoints.bill_lost_streams() == 0  # not due yet
    time.sleep(2.2)
    assert checkpoints.bill_lost_streams() == 1
    assert checkpoints.bill_lost_streams() == 0  # claimed once
    rec = record(request_id)
    assert (rec.status, rec.usage_source, rec.prompt_tokens) == ("gateway_lost", "checkpoint", 8)
    # The bound: no more than checkpoint_tokens (+ one read's worth) below what the client got.
    assert seen - 15 <= rec.completion_tokens <= engine_stats(engine)["completion_tokens_sent"]
    assert not redis_client.hlen(names().usage_checkpoints())
    # A second copy of the event (a consumer racing the claim) changes nothing.
    assert (
        usage.write_events([{"id": request_id, "t": str(rec.tenant_id), "m": model, "ts": 1, "c": 999}]) == 0
    )


def test_a_sigkilled_gateways_long_answer_is_billed_its_estimated_prompt(engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engines[0]])
    proc = gateway_process(BERTH_GATEWAY_CHECKPOINT_SECONDS="0.5", BERTH_GATEWAY_CHECKPOINT_LOST_AFTER="2")
    body = {"model": model, "messages": PROMPT, "max_tokens": 20, "fake_delay": 0.5}  # a 10 s answer

    def kill_soon():
        time.sleep(1.5)
        proc.stop(signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            proc.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
    killer.join()
    [request_id] = redis_client.hkeys(names().usage_checkpoints())
    time.sleep(2.2)
    assert checkpoints.bill_lost_streams() == 1
    rec = record(request_id)
    assert (rec.status, rec.usage_source, rec.completion_tokens) == ("gateway_lost", "checkpoint", 0)
    assert rec.prompt_tokens == (len(PROMPT[0]["content"]) + 16) // 4 + 1  # the gateway's estimate


def test_a_live_gateways_slow_stream_is_never_billed_as_lost(engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, [engines[0]])
    proc = gateway_process(
        BERTH_GATEWAY_CHECKPOINT_SECONDS="0.3",
        BERTH_GATEWAY_CHECKPOINT_TOKENS="5",
        BERTH_GATEWAY_CHECKPOINT_LOST_AFTER="1",
    )
    try:
        # 3 s of stream, with a pause longer than lost_after between chunks: the heartbeat holds.
        stream = open_stream(proc, key, model, max_tokens=3, delay=1.2)
        request_id = stream.response.headers["x-request-id"]
        moved = 0
        chunks = 0
        for _chunk in stream:
            chunks += 1
            moved += checkpoints.bill_lost_streams()
        assert chunks == 3
        assert moved == 0
        # A non-streaming answer outliving checkpoint_seconds: checkpointed, then removed.
        answer = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model=model, messages=PROMPT, max_tokens=3, extra_body={"fake_delay": 0.4}
        )
        assert answer.usage.completion_tokens == 3
    finally:
        proc.stop()
    rec = record(request_id)
    assert (rec.status, rec.completion_tokens, rec.usage_source) == ("ok", 3, "engine")
    assert record(answer._request_id).status == "ok"
    assert not redis_client.hlen(names().usage_checkpoints())
    assert not redis_client.zcard(names().usage_checkpoints_due())


def test_the_consumer_loop_bills_abandoned_checkpoints(redis_client):
    tenant = make_tenant()
    event = {"id": "req_lost", "t": str(tenant.pk), "k": None, "m": "m", "ep": "chat", "p": 4, "c": 7,
             "s": "gateway_lost", "h": 0, "l": 1, "f": None, "w": "w1", "ts": int(time.time() * 1000),
             "u": "checkpoint"}  # fmt: skip
    redis_client.hset(names().usage_checkpoints(), "req_lost", json.dumps(event))
    redis_client.zadd(names().usage_checkpoints_due(), {"req_lost": 1})
    usage.run(stop_after=1.5)
    rec = UsageRecord.objects.get(request_id="req_lost")
    assert (rec.prompt_tokens, rec.completion_tokens, rec.status, rec.usage_source) == (
        4,
        7,
        "gateway_lost",
        "checkpoint",
    )


def test_manage_gateway_execs_the_standalone_gateway_with_what_django_resolved(monkeypatch, settings):
    from berth.management.commands.gateway import Command

    captured = {}
    monkeypatch.setattr("os.execve", lambda path, argv, env: captured.update(argv=argv, env=env))
    Command().run_from_argv(["manage.py", "gateway", "--port", "9", "--grace-seconds", "5"])
    assert captured["argv"][1:] == ["-m", "gateway", "--port", "9", "--grace-seconds", "5"]
    env = captured["env"]
    assert env["REDIS_URL"] == settings.REDIS_URL
    assert env["BERTH_REDIS_PREFIX"] == settings.REDIS_PREFIX
    assert env["BERTH_KEY_PEPPERS"] == ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items())
