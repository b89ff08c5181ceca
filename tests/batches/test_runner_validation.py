"""Validating a batch's input file: lines in, OpenAI-shaped errors with line numbers, or lines out.

No process is started: validation reads the file from the ``berth_files`` storage and writes
``BatchLine`` rows (PostgreSQL).
"""

from __future__ import annotations

import orjson
import pytest

from batches import runner, tasks
from batches.models import Batch, BatchLine, BatchStatus
from models_registry.constants import Visibility
from tests.batches.conftest import chat_line, make_batch
from tests.factories import TenantFactory
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db


def test_a_valid_file_becomes_one_line_per_request_with_its_own_request_id(
    django_capture_on_commit_callbacks,
):
    tenant = TenantFactory()
    model = ModelFactory().name
    lines = [chat_line(f"req-{i}", model, words=i + 1, max_tokens=2) for i in range(5)]
    raw = b"\n".join(orjson.dumps(line) for line in lines[:3]) + b"\n\n"
    raw += b"\n".join(orjson.dumps(line) for line in lines[3:]) + b"\n"
    batch = make_batch(tenant, [], raw=raw)
    with django_capture_on_commit_callbacks() as callbacks:
        assert tasks.validate_batch(batch.id) == BatchStatus.IN_PROGRESS
    assert len(callbacks) == 1  # run_batch is sent once the lines are committed
    batch.refresh_from_db()
    assert (batch.status, batch.model, batch.request_total) == (BatchStatus.IN_PROGRESS, model, 5)
    assert batch.in_progress_at is not None
    rows = list(BatchLine.objects.filter(batch=batch).order_by("index"))
    assert [r.custom_id for r in rows] == [f"req-{i}" for i in range(5)]
    assert [r.index for r in rows] == [0, 1, 2, 4, 5]  # the blank line keeps its number
    assert all(r.request_id == f"{batch.id}_{r.index}" and len(r.request_id) <= 64 for r in rows)
    assert rows[2].body == lines[2]["body"]

    # Validating again (a redelivered task) changes nothing.
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.VALIDATING)
    assert runner.validate(batch.id) == BatchStatus.IN_PROGRESS
    assert BatchLine.objects.filter(batch=batch).count() == 5


def test_bad_lines_fail_the_batch_with_line_numbered_errors():
    tenant = TenantFactory()
    model = ModelFactory().name
    other = ModelFactory().name
    good = chat_line("a", model, 1, 1)
    raw = b"\n".join(
        [
            orjson.dumps(good),
            b"{not json",
            b"[1, 2]",
            orjson.dumps({**good, "custom_id": "a"}),
            orjson.dumps({**good, "custom_id": "m", "method": "GET"}),
            orjson.dumps({**good, "custom_id": "u", "url": "/v1/embeddings"}),
            orjson.dumps({**good, "custom_id": "b", "body": "text"}),
            orjson.dumps({**good, "custom_id": "x", "body": {"model": other, "messages": []}}),
            orjson.dumps({**good, "custom_id": ""}),
        ]
    )
    batch = make_batch(tenant, [], raw=raw)
    assert runner.validate(batch.id) == BatchStatus.FAILED
    batch.refresh_from_db()
    assert batch.failed_at is not None
    assert [(e["code"], e["line"], e["param"]) for e in batch.errors] == [
        ("invalid_json_line", 2, None),
        ("invalid_json_line", 3, None),
        ("duplicate_custom_id", 4, "custom_id"),
        ("invalid_method", 5, "method"),
        ("invalid_url", 6, "url"),
        ("invalid_request", 7, "body"),
        ("mismatched_model", 8, "body.model"),
        ("invalid_custom_id", 9, "custom_id"),
    ]
    assert all(e["message"] for e in batch.errors)
    assert not BatchLine.objects.filter(batch=batch).exists()


def test_an_empty_file_and_another_tenants_private_model_fail():
    tenant, owner = TenantFactory(), TenantFactory()
    empty = make_batch(tenant, [], raw=b"\n\n")
    assert runner.validate(empty.id) == BatchStatus.FAILED
    empty.refresh_from_db()
    assert [e["code"] for e in empty.errors] == ["empty_file"]

    private = ModelFactory(visibility=Visibility.PRIVATE)
    private.allowed_tenants.add(owner)
    refused = make_batch(tenant, [chat_line("a", private.name, 1, 1)])
    assert runner.validate(refused.id) == BatchStatus.FAILED
    refused.refresh_from_db()
    assert refused.errors == [
        {
            "code": "model_not_found",
            "message": f"The model `{private.name}` does not exist or you do not have access to it.",
            "param": "body.model",
            "line": 1,
        }
    ]
    # The tenant it is granted to may batch on it.
    allowed = make_batch(owner, [chat_line("a", private.name, 1, 1)])
    assert runner.validate(allowed.id) == BatchStatus.IN_PROGRESS


def test_a_batch_cancelled_while_validating_is_left_to_the_cancel():
    tenant = TenantFactory()
    batch = make_batch(tenant, [chat_line("a", ModelFactory().name, 1, 1)])
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.CANCELLING)
    assert runner.validate(batch.id) == BatchStatus.CANCELLING
    assert not BatchLine.objects.filter(batch=batch).exists()


def test_the_tasks_are_registered_and_the_beat_runs_the_tick(settings):
    from berth import roles
    from berth.celery import app

    assert {"batches.tasks.validate_batch", "batches.tasks.run_batch", "batches.tasks.tick"} <= set(app.tasks)
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "batches.tasks.tick" in scheduled
    assert "batches" in roles.BY_NAME["worker"].what


def test_without_the_internal_token_a_batch_waits_instead_of_failing(settings):
    settings.INTERNAL_TOKEN = ""
    tenant = TenantFactory()
    batch = make_batch(tenant, [chat_line("a", ModelFactory().name, 1, 1)])
    runner.validate(batch.id)
    assert tasks.run_batch(batch.id) == runner.WAITING  # not sent again at once
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.IN_PROGRESS
    assert BatchLine.objects.get(batch=batch).status == "pending"
