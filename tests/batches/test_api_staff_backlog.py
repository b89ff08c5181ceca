"""The staff dashboard's batch backlog: active batches per model, pending lines, oldest, deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from batches.models import Batch, BatchStatus, File
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db


def batch(tenant, *, model, status, total=0, completed=0, failed=0, age_hours=0):
    created = timezone.now() - timedelta(hours=age_hours)
    file = File.objects.create(tenant=tenant, purpose="batch", filename="in.jsonl")
    return Batch.objects.create(
        tenant=tenant, endpoint="/v1/embeddings", input_file=file, status=status, model=model,
        request_total=total, request_completed=completed, request_failed=failed,
        created_at=created, expires_at=created + timedelta(hours=24),
    )  # fmt: skip


def test_backlog_per_model(client):
    a, b = TenantFactory(), TenantFactory()
    batch(a, model="chat-x", status=BatchStatus.IN_PROGRESS, total=100, completed=30, failed=10, age_hours=5)
    batch(b, model="chat-x", status=BatchStatus.IN_PROGRESS, total=10, completed=0, age_hours=1)
    batch(a, model="embed-y", status=BatchStatus.CANCELLING, total=5, completed=1)
    batch(a, model="", status=BatchStatus.VALIDATING)
    batch(b, model="chat-x", status=BatchStatus.COMPLETED, total=1000, completed=1000)  # not backlog

    from staff.batches import backlog_rows

    rows = {r["model"]: r for r in backlog_rows()}
    assert set(rows) == {"chat-x", "embed-y", ""}
    assert rows["chat-x"]["batches"] == 2 and rows["chat-x"]["tenants"] == 2
    assert rows["chat-x"]["pending"] == 60 + 10
    assert rows["embed-y"]["pending"] == 4
    assert timezone.now() - rows["chat-x"]["oldest"] > timedelta(hours=4)

    staff = get_user_model().objects.create_user(
        email="ops@berth.test", password="x-Long-pass-1", is_staff=True
    )
    client.force_login(staff)
    page = client.get("/staff/batches/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "chat-x" in html and "being validated" in html and "(74 in all)" in html

    client.force_login(member(a))
    assert client.get("/staff/batches/").status_code == 403
