"""The content log: stored from the gateway's stream only for tenants that turned it on, purged."""

from __future__ import annotations

import datetime
import json
import time

import pytest
from django.utils import timezone

from berth.redis import names
from guardrails import content, policies
from guardrails.models import ContentLog
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def _push(redis_client, tenant, request_id: str, *, ago_days: float = 0) -> None:
    event = {
        "request_id": request_id,
        "ts_ms": int((time.time() - ago_days * 86400) * 1000),
        "tenant_id": str(tenant.pk),
        "key_id": None,
        "model": "m",
        "endpoint": "chat",
        "status": "ok",
        "http_status": 200,
        "prompt": "hello [EMAIL]",
        "completion": "{}",
    }
    redis_client.xadd(names().content_log(), {"e": json.dumps(event)})


def test_store_keeps_only_tenants_that_log_and_is_idempotent(redis_client):
    on, off = TenantFactory(), TenantFactory()
    policies.set_governance(tenant=on, log_content=True, content_retention_days=5)
    _push(redis_client, on, "req_1")
    _push(redis_client, off, "req_2")  # sent before the gateway saw "off": dropped
    _push(redis_client, on, "req_1")  # a replay
    redis_client.xadd(names().content_log(), {"e": "not json"})
    redis_client.xadd(names().content_log(), {"e": "[1, 2]"})
    assert content.store() == 2
    assert list(ContentLog.objects.values_list("request_id", "tenant_id")) == [("req_1", on.pk)]
    assert redis_client.xlen(names().content_log()) == 0
    assert ContentLog.objects.get().prompt == "hello [EMAIL]"


def test_purge_honours_each_tenants_retention(redis_client):
    short, default = TenantFactory(), TenantFactory()
    policies.set_governance(tenant=short, log_content=True, content_retention_days=2)
    now = timezone.now()
    for tenant, days in ((short, 1), (short, 3), (default, 3), (default, 31)):
        ContentLog.objects.create(
            request_id=f"{tenant.slug}-{days}",
            tenant=tenant,
            model="m",
            endpoint="chat",
            occurred_at=now - datetime.timedelta(days=days),
        )
    assert content.purge() == 2
    assert sorted(ContentLog.objects.values_list("request_id", flat=True)) == sorted(
        [f"{short.slug}-1", f"{default.slug}-3"]
    )


def test_beat_runs_the_guardrail_tasks_and_they_run(settings, redis_client):
    from berth.celery import app
    from guardrails import tasks

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    names_ = {
        "guardrails.tasks.resync_mirror",
        "guardrails.tasks.store_content_log",
        "guardrails.tasks.purge_content",
    }
    assert names_ <= scheduled and names_ <= set(app.tasks)
    tenant = TenantFactory()
    policies.set_governance(tenant=tenant, log_content=True, content_retention_days=1)
    _push(redis_client, tenant, "req_old", ago_days=2)
    assert tasks.store_content_log() == 1
    assert tasks.purge_content() == 1
    assert tasks.resync_mirror()["written"] == 1
