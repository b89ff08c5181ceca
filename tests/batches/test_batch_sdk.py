"""The whole Batch API with the ``openai`` SDK: upload, create, run, poll, download the output.

The SDK talks to the real gateway, which forwards ``/v1/files`` and ``/v1/batches`` to the control
plane (Django's live server) and serves the batch lines the runner sends it (fake engines behind
it); the worker's part (validation, the runner) runs in this process.
"""

from __future__ import annotations

import json

import openai
import pytest

from batches import runner
from batches.models import BatchStatus
from tests.batches import api_fixtures  # the Files and Batches API's fixtures
from tests.gateway.conftest import register_model
from tests.registry.factories import ModelFactory

_files_gateway_process = api_fixtures._files_gateway_process
files_gateway = api_fixtures.files_gateway
caller = api_fixtures.caller
other = api_fixtures.other
sent_tasks = api_fixtures.sent_tasks

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def test_the_sdk_submits_a_batch_polls_it_and_downloads_results_line_by_line(
    files_gateway, caller, other, sent_tasks, engines, redis_client, settings
):
    settings.GATEWAY_INTERNAL_URL = files_gateway.url  # the worker's runner reaches the same gateway
    model = register_model(redis_client, engines)
    ModelFactory(name=model)
    lines = [
        {
            "custom_id": f"row-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": "w " * (i + 1)}],
                "max_tokens": 1 + i % 3,
            },
        }
        for i in range(20)
    ]
    lines[7]["body"]["fake_error"] = 400
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    client = caller.client
    uploaded = client.files.create(file=("rows.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    assert sent_tasks == [("batches.tasks.validate_batch", [batch.id])]

    assert runner.validate(batch.id) == BatchStatus.IN_PROGRESS  # what the worker does with the task
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.request_counts.total == 20
    assert runner.run(batch.id) == BatchStatus.COMPLETED

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 20, "completed": 19, "failed": 1}
    assert done.completed_at and done.finalizing_at and done.in_progress_at
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [f"row-{i}" for i in range(20) if i != 7]
    for record in output:
        i = int(record["custom_id"].split("-")[1])
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200 and record["error"] is None
        assert body["usage"]["prompt_tokens"] == i + 2
        assert body["choices"][0]["message"]["content"] == "tok " * (1 + i % 3)
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("row-7", 400)]
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"

    # The results are the tenant's own.
    with pytest.raises(openai.NotFoundError):
        other.client.files.content(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        other.client.batches.retrieve(batch.id)
