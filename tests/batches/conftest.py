"""Fixtures for batch execution: a gateway that takes batch lines, batches made from JSONL.

The gateway is the real process (``python -m gateway``) with ``BERTH_INTERNAL_TOKEN`` set, in front
of the shared fake engines (``tests/gateway/conftest.py``); the runner reaches it at
``BERTH_GATEWAY_INTERNAL_URL`` with the same token, as a deployment's Celery worker does.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import orjson
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

from batches.models import Batch, File, FilePurpose
from tests.gateway.conftest import engines, start_gateway  # noqa: F401 - the session fixture

TOKEN = "batch-test-internal-token-0123456789abcdef"
_files = itertools.count()


@pytest.fixture(scope="session")
def batch_gateway(_use_test_redis_db, engines):  # noqa: F811
    proc = start_gateway(BERTH_INTERNAL_TOKEN=TOKEN, BERTH_GATEWAY_COLD_START_TIMEOUT="1")
    yield proc
    proc.stop()


@pytest.fixture
def runner_settings(settings, batch_gateway):
    """The test process's runner talks to the batch gateway with the internal token."""
    settings.INTERNAL_TOKEN = TOKEN
    settings.GATEWAY_INTERNAL_URL = batch_gateway.url
    settings.BATCH_CONCURRENCY = 8
    return settings


def upload(tenant, lines: list, *, raw: bytes | None = None) -> File:
    """An input file as the Files API stores it (purpose ``batch``)."""
    data = raw if raw is not None else b"".join(orjson.dumps(line) + b"\n" for line in lines)
    row = File(
        tenant=tenant, purpose=FilePurpose.BATCH, filename=f"input-{next(_files)}.jsonl", bytes=len(data)
    )
    row.storage_name = storages["berth_files"].save(f"{tenant.id}/{row.id}", ContentFile(data))
    row.save()
    return row


def make_batch(
    tenant, lines: list, *, endpoint: str = "/v1/chat/completions", raw: bytes | None = None
) -> Batch:
    """A batch as the Batches API creates it: ``validating``, 24 hours to run."""
    return Batch.objects.create(
        tenant=tenant,
        endpoint=endpoint,
        input_file=upload(tenant, lines, raw=raw),
        expires_at=timezone.now() + timedelta(hours=24),
    )


def chat_line(custom_id: str, model: str, words: int, max_tokens: int, **extra) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
            "max_tokens": max_tokens,
            **extra,
        },
    }


def read_jsonl(file: File) -> list[dict]:
    with storages["berth_files"].open(file.storage_name, "rb") as handle:
        return [orjson.loads(line) for line in handle.read().splitlines() if line.strip()]
