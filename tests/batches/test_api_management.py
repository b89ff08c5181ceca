"""``/api/v1/batches`` and ``/api/v1/files``: the management API's read and cancel, tenant-scoped."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from batches import storage
from batches.models import Batch, BatchStatus, File
from tenants.constants import Role
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db


def make_batch(tenant, status=BatchStatus.IN_PROGRESS):
    file = File(tenant=tenant, purpose="batch", filename="in.jsonl", bytes=3)
    file.storage_name = storage.save(tenant_id=tenant.pk, file_id=file.id, content=io.BytesIO(b"{}\n"))
    file.save()
    now = timezone.now()
    return Batch.objects.create(
        tenant=tenant, endpoint="/v1/chat/completions", input_file=file, status=status,
        created_at=now, expires_at=now + timedelta(hours=24),
    )  # fmt: skip


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_read_and_cancel_own_batches():
    tenant, other = TenantFactory(), TenantFactory()
    mine, theirs = make_batch(tenant), make_batch(other)
    api = client_for(member(tenant, Role.MEMBER))

    listed = api.get("/api/v1/batches").json()
    assert [b["id"] for b in listed["results"]] == [mine.id]
    detail = api.get(f"/api/v1/batches/{mine.id}").json()
    assert detail["object"] == "batch" and detail["status"] == "in_progress"
    assert detail["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert api.get(f"/api/v1/batches/{theirs.id}").status_code == 404
    assert api.post(f"/api/v1/batches/{theirs.id}/cancel").status_code == 404

    cancelled = api.post(f"/api/v1/batches/{mine.id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelling"
    Batch.objects.filter(pk=mine.id).update(status=BatchStatus.COMPLETED)
    refused = api.post(f"/api/v1/batches/{mine.id}/cancel")
    assert refused.status_code == 409 and "completed" in refused.json()["detail"]

    files = api.get("/api/v1/files").json()
    assert [f["id"] for f in files["results"]] == [mine.input_file_id]
    content = api.get(f"/api/v1/files/{mine.input_file_id}/content")
    assert content.status_code == 200 and b"".join(content.streaming_content) == b"{}\n"
    assert api.get(f"/api/v1/files/{theirs.input_file_id}/content").status_code == 404


def test_billing_members_read_but_cannot_cancel():
    tenant = TenantFactory()
    batch = make_batch(tenant)
    api = client_for(member(tenant, Role.BILLING))
    assert api.get(f"/api/v1/batches/{batch.id}").status_code == 200
    assert api.post(f"/api/v1/batches/{batch.id}/cancel").status_code == 403
    assert Batch.objects.get(pk=batch.id).status == BatchStatus.IN_PROGRESS
