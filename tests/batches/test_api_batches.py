"""``/v1/batches`` with the real ``openai`` SDK through the gateway: shapes and state rules."""

from __future__ import annotations

import json

import openai
import pytest
from django.utils import timezone
from openai.types import Batch as SdkBatch

from batches.models import Batch, BatchStatus, File
from batches.submission import VALIDATE_TASK
from tests.batches.api_fixtures import (  # noqa: F401
    _files_gateway_process,
    caller,
    files_gateway,
    other,
    sent_tasks,
)

pytestmark = pytest.mark.django_db(transaction=True)

LINES = b"".join(
    json.dumps(
        {
            "custom_id": f"c{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        }
    ).encode()
    + b"\n"
    for n in range(3)
)


def upload(who) -> str:
    return who.client.files.create(file=("in.jsonl", LINES), purpose="batch").id


def test_create_retrieve_list(caller, sent_tasks):  # noqa: F811
    file_id = upload(caller)
    raw = caller.client.batches.with_raw_response.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "nightly"},
    )
    body = raw.http_response.json()
    # OpenAI's Batch object, every field and nothing else.
    assert set(body) == set(SdkBatch.model_fields) - {"output_expires_after", "usage"}
    batch = raw.parse()
    assert batch.id.startswith("batch_") and batch.object == "batch"
    assert batch.status == "validating"
    assert batch.input_file_id == file_id and batch.endpoint == "/v1/chat/completions"
    assert batch.completion_window == "24h"
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert batch.metadata == {"project": "nightly"}
    assert body["errors"] is None and body["output_file_id"] is None and body["in_progress_at"] is None
    # Handed to the runner once committed, by task name.
    assert sent_tasks == [(VALIDATE_TASK, [batch.id])]

    row = Batch.objects.get(pk=batch.id)
    assert row.tenant_id == caller.tenant.pk and row.api_key_id is not None
    row.status = BatchStatus.FAILED
    row.errors = [{"code": "invalid_model", "message": "no such model", "param": "body.model", "line": 1}]
    row.request_total = 3
    row.failed_at = timezone.now()
    row.save()
    again = caller.client.batches.retrieve(batch.id)
    assert again.status == "failed" and again.failed_at is not None
    assert again.errors.data[0].line == 1 and again.errors.object == "list"
    assert again.request_counts.total == 3

    second = caller.client.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert [b.id for b in caller.client.batches.list()] == [second.id, batch.id]
    page = caller.client.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    assert [b.id for b in caller.client.batches.list(limit=1, after=second.id).data] == [batch.id]
    assert [b.id for b in caller.client.batches.list(limit=1)] == [second.id, batch.id]  # auto-paging


def test_cancel_follows_openai(caller, sent_tasks):  # noqa: F811
    file_id = upload(caller)
    batch = caller.client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = caller.client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    assert caller.client.batches.cancel(batch.id).cancelling_at == cancelled.cancelling_at  # idempotent
    Batch.objects.filter(pk=batch.id).update(status=BatchStatus.IN_PROGRESS, cancelling_at=None)
    assert caller.client.batches.cancel(batch.id).status == "cancelling"
    for status in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.FINALIZING, BatchStatus.CANCELLED):
        Batch.objects.filter(pk=batch.id).update(status=status)
        with pytest.raises(openai.ConflictError) as err:
            caller.client.batches.cancel(batch.id)
        assert status in err.value.message
        assert Batch.objects.get(pk=batch.id).status == status


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"endpoint": "/v1/images/generations"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({"metadata": {"k": 5}}, "metadata.k"),
        ({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 64),
        ({"input_file_id": ""}, "input_file_id"),
    ],
)
def test_create_refuses_bad_parameters(caller, sent_tasks, change, param):  # noqa: F811
    args = {"input_file_id": upload(caller), "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with pytest.raises(openai.BadRequestError) as err:
        caller.client.batches.create(**{**args, **change})
    assert err.value.param == param
    assert not Batch.objects.exists() and sent_tasks == []


def test_input_must_be_the_tenants_batch_file(caller, other, sent_tasks):  # noqa: F811
    theirs = upload(other)
    with pytest.raises(openai.NotFoundError) as err:
        caller.client.batches.create(
            input_file_id=theirs, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert err.value.param == "input_file_id"
    output = File.objects.create(tenant=caller.tenant, purpose="batch_output", filename="o.jsonl")
    with pytest.raises(openai.BadRequestError) as err:
        caller.client.batches.create(
            input_file_id=output.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "purpose 'batch'" in err.value.message
    # The input of a batch still being validated cannot be deleted (the runner is reading it).
    mine = upload(caller)
    caller.client.batches.create(input_file_id=mine, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.ConflictError):
        caller.client.files.delete(mine)
    assert sent_tasks and all(name == VALIDATE_TASK for name, _ in sent_tasks)


def test_another_tenants_batch_is_404(caller, other, sent_tasks):  # noqa: F811
    batch = caller.client.batches.create(
        input_file_id=upload(caller), endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        other.client.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.client.batches.cancel(batch.id)
    assert list(other.client.batches.list()) == []
    assert Batch.objects.get(pk=batch.id).status == BatchStatus.VALIDATING


def test_bad_json_body_is_400(files_gateway, caller):  # noqa: F811
    import httpx

    answer = httpx.post(
        files_gateway.url + "/v1/batches",
        content=b"{nope",
        headers={"Authorization": f"Bearer {caller.key}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_json"
