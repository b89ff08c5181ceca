"""Running batches end to end: the runner, the real gateway (batch path), fake engines, PostgreSQL.

Each line goes through ``python -m gateway`` with the internal token, is metered there (the usage
consumer is drained in-process into ``billing.UsageRecord``), and its result is written once; the
output and error files are read back from the ``berth_files`` storage.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import orjson
import pytest
from django.utils import timezone

from batches import runner, tasks
from batches.models import Batch, BatchLine, BatchStatus, FilePurpose, LineStatus
from berth.redis import names
from billing.models import UsageRecord
from contract import tiers
from tests.batches.conftest import chat_line, make_batch, read_jsonl
from tests.gateway.conftest import make_tenant, register_model, set_routes
from tests.gateway.test_usage import drain
from tests.registry.factories import ModelFactory

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

LINES = 1000


def model_for(redis_client, engines, **kwargs) -> str:
    """A model the registry knows (validation) and the gateway routes (its Redis mirror)."""
    name = register_model(redis_client, engines, **kwargs)
    ModelFactory(name=name)
    return name


def embedding_line(custom_id: str, model: str, inputs: list[str]) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": model, "input": inputs},
    }


def run_in_thread(batch_id: str, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target():
        from django.db import connection

        try:
            out["status"] = runner.run(batch_id, **kwargs)
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_thousand_line_chat_batch_completes_with_outputs_matching_line_by_line(
    runner_settings, engines, redis_client
):
    tenant = make_tenant(requests_per_minute=1, tokens_per_minute=10)  # batch lines ignore both
    model = model_for(redis_client, engines)
    lines = [chat_line(f"c-{i}", model, words=1 + i % 13, max_tokens=1 + i % 5) for i in range(LINES)]
    batch = make_batch(tenant, lines)
    assert tasks.validate_batch(batch.id) == BatchStatus.IN_PROGRESS
    assert runner.run(batch.id) == BatchStatus.COMPLETED

    batch.refresh_from_db()
    assert (batch.request_total, batch.request_completed, batch.request_failed) == (LINES, LINES, 0)
    assert batch.finalizing_at and batch.completed_at and batch.error_file is None
    assert batch.output_file.purpose == FilePurpose.BATCH_OUTPUT
    assert batch.output_file.tenant_id == tenant.id
    output = read_jsonl(batch.output_file)
    assert batch.output_file.bytes == sum(len(orjson.dumps(o)) + 1 for o in output)
    assert [o["custom_id"] for o in output] == [f"c-{i}" for i in range(LINES)]
    assert len({o["id"] for o in output}) == LINES
    for i, record in enumerate(output):
        assert record["id"].startswith("batch_req_") and record["error"] is None
        response = record["response"]
        assert response["status_code"] == 200
        assert response["request_id"] == f"{batch.id}_{i}"
        body = response["body"]
        assert body["choices"][0]["message"]["content"] == "tok " * (1 + i % 5)
        assert body["usage"] == {
            "prompt_tokens": 2 + i % 13,
            "completion_tokens": 1 + i % 5,
            "total_tokens": 3 + i % 13 + i % 5,
        }

    drain()
    records = {r.request_id: r for r in UsageRecord.objects.filter(batch_id=batch.id)}
    assert len(records) == LINES
    for i in range(LINES):
        record = records[f"{batch.id}_{i}"]
        assert record.service_tier == tiers.BATCH
        assert (record.prompt_tokens, record.completion_tokens) == (2 + i % 13, 1 + i % 5)
        assert record.tenant_id == tenant.id and record.api_key_id is None


def test_a_thousand_line_embeddings_batch_completes(runner_settings, engines, redis_client):
    tenant = make_tenant()
    model = model_for(redis_client, engines, task="embedding")
    lines = [embedding_line(f"e-{i}", model, ["a b"] * (1 + i % 3)) for i in range(LINES)]
    batch = make_batch(tenant, lines, endpoint="/v1/embeddings")
    assert tasks.validate_batch(batch.id) == BatchStatus.IN_PROGRESS
    assert runner.run(batch.id) == BatchStatus.COMPLETED
    batch.refresh_from_db()
    output = read_jsonl(batch.output_file)
    assert [o["custom_id"] for o in output] == [f"e-{i}" for i in range(LINES)]
    for i, record in enumerate(output):
        body = record["response"]["body"]
        assert len(body["data"]) == 1 + i % 3
        assert body["usage"]["prompt_tokens"] == 3 * (1 + i % 3)
    drain()
    assert UsageRecord.objects.filter(batch_id=batch.id, service_tier=tiers.BATCH).count() == LINES


def test_engine_errors_fail_their_line_and_go_to_the_error_file(runner_settings, engines, redis_client):
    tenant = make_tenant()
    model = model_for(redis_client, engines)
    lines = [chat_line(f"c-{i}", model, 2, 2) for i in range(6)]
    lines[1]["body"]["fake_error"] = 400
    lines[4]["body"]["max_tokens"] = "many"  # the gateway's own 400
    batch = make_batch(tenant, lines)
    tasks.validate_batch(batch.id)
    assert runner.run(batch.id) == BatchStatus.COMPLETED
    batch.refresh_from_db()
    assert (batch.request_completed, batch.request_failed) == (4, 2)
    assert [o["custom_id"] for o in read_jsonl(batch.output_file)] == ["c-0", "c-2", "c-3", "c-5"]
    errors = read_jsonl(batch.error_file)
    assert batch.error_file.purpose == FilePurpose.BATCH_ERROR
    assert [e["custom_id"] for e in errors] == ["c-1", "c-4"]
    assert [e["response"]["status_code"] for e in errors] == [400, 400]
    assert errors[1]["response"]["body"]["error"]["param"] == "max_tokens"
    assert errors[1]["response"]["request_id"] == f"{batch.id}_4"
    assert BatchLine.objects.get(batch=batch, index=1).error["message"]


def test_cancel_stops_the_runner_and_keeps_what_finished(runner_settings, engines, redis_client):
    runner_settings.BATCH_CONCURRENCY = 2
    tenant = make_tenant()
    model = model_for(redis_client, engines)
    lines = [chat_line(f"c-{i}", model, 2, 4, fake_delay=0.05) for i in range(60)]  # 0.2 s a line
    batch = make_batch(tenant, lines)
    tasks.validate_batch(batch.id)
    thread, out = run_in_thread(batch.id)
    wait_for(lambda: Batch.objects.get(pk=batch.pk).request_completed >= 4, what="some lines")
    assert runner.has_live_runner(batch.id)
    # What the Batches API does on cancel.
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.CANCELLING, cancelling_at=timezone.now())
    thread.join(30)
    assert out["status"] == BatchStatus.CANCELLED
    batch.refresh_from_db()
    assert batch.cancelled_at is not None
    assert 4 <= batch.request_completed < 60 and batch.request_failed == 0
    output = read_jsonl(batch.output_file)
    done = list(
        BatchLine.objects.filter(batch=batch, status=LineStatus.OK).values_list("custom_id", flat=True)
    )
    assert sorted(o["custom_id"] for o in output) == sorted(done)
    assert len(done) == batch.request_completed
    assert batch.error_file is None
    assert not runner.has_live_runner(batch.id)


def test_a_batch_past_its_window_expires_with_the_rest_in_the_error_file(
    runner_settings, engines, redis_client
):
    runner_settings.BATCH_CONCURRENCY = 2
    tenant = make_tenant()
    model = model_for(redis_client, engines)
    lines = [chat_line(f"c-{i}", model, 2, 4, fake_delay=0.05) for i in range(40)]
    batch = make_batch(tenant, lines)
    tasks.validate_batch(batch.id)
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() + timedelta(seconds=1.5))
    assert runner.run(batch.id) == BatchStatus.EXPIRED
    batch.refresh_from_db()
    assert batch.expired_at is not None
    assert 0 < batch.request_completed < 40
    assert batch.request_completed + batch.request_failed == 40
    errors = read_jsonl(batch.error_file)
    assert len(errors) == batch.request_failed
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)
    ids = [o["custom_id"] for o in read_jsonl(batch.output_file)] + [e["custom_id"] for e in errors]
    assert sorted(ids) == sorted(f"c-{i}" for i in range(40))

    # A batch whose window passed with no runner at all expires whole on its next turn.
    idle = make_batch(tenant, lines[:3])
    tasks.validate_batch(idle.id)
    Batch.objects.filter(pk=idle.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert runner.run(idle.id) == BatchStatus.EXPIRED
    idle.refresh_from_db()
    assert (idle.request_completed, idle.request_failed, idle.output_file) == (0, 3, None)


def test_a_batch_on_a_model_scaled_to_zero_asks_for_it_and_waits(
    runner_settings, engines, redis_client, monkeypatch
):
    monkeypatch.setattr(runner, "BACKOFF_MAX", 0.5)
    tenant = make_tenant()
    model = model_for(redis_client, [])  # no worker: the gateway signals demand, answers 503
    batch = make_batch(tenant, [chat_line(f"c-{i}", model, 2, 2) for i in range(10)])
    tasks.validate_batch(batch.id)
    thread, out = run_in_thread(batch.id)
    wait_for(lambda: redis_client.exists(names().demand(model)), what="the demand signal")
    time.sleep(2.5)  # the gateway's 1 s cold-start wait ran out at least once
    assert Batch.objects.get(pk=batch.pk).request_completed == 0
    set_routes(redis_client, model, engines)  # the autoscaler started a worker
    thread.join(60)
    assert out["status"] == BatchStatus.COMPLETED
    batch.refresh_from_db()
    assert (batch.request_completed, batch.request_failed) == (10, 0)
    assert max(BatchLine.objects.filter(batch=batch).values_list("attempts", flat=True)) > 1


def test_a_second_runner_for_the_same_batch_returns_at_once(runner_settings, engines, redis_client):
    tenant = make_tenant()
    model = model_for(redis_client, engines)
    batch = make_batch(tenant, [chat_line(f"c-{i}", model, 2, 4, fake_delay=0.05) for i in range(30)])
    tasks.validate_batch(batch.id)
    thread, out = run_in_thread(batch.id)
    wait_for(lambda: runner.has_live_runner(batch.id), what="the runner's lock")
    assert runner.run(batch.id) == "busy"
    thread.join(60)
    assert out["status"] == BatchStatus.COMPLETED
