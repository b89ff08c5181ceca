"""The gateway's audit:events stream moves into the trail once per event id."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from audit import gateway_events
from audit.models import AuditEntry
from berth.redis import names
from tenants import keys
from tests.factories import TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def _event(**overrides) -> dict:
    event = {
        "id": str(uuid.uuid4()),
        "ts_ms": int(time.time() * 1000),
        "action": "guardrail.flagged",
        "tenant_id": None,
        "key_id": None,
        "request_id": "req-1",
        "summary": "prompt matched a blocked term",
        "detail": {"policy": "blocked_terms", "term_count": 1},
    }
    event.update(overrides)
    return event


def test_events_are_recorded_once_with_tenant_and_key(redis_client):
    tenant = TenantFactory()
    api_key = keys.create_api_key(tenant=tenant, name="app", created_by=UserFactory()).api_key
    event = _event(tenant_id=str(tenant.pk), key_id=str(api_key.pk))
    stream = names().audit_events()
    redis_client.xadd(stream, {"e": json.dumps(event)})
    redis_client.xadd(stream, {"e": json.dumps(event)})  # the same event delivered twice
    assert gateway_events.consume() == 1
    entry = AuditEntry.objects.get(action="guardrail.flagged")
    assert entry.tenant_id == tenant.pk and entry.target_id == str(api_key.pk)
    assert entry.actor_kind == "api_key" and entry.actor_label == f"{api_key.display_prefix}…"
    assert entry.after == {"request_id": "req-1", "policy": "blocked_terms", "term_count": 1}
    assert str(entry.event_id) == event["id"]
    assert abs(entry.created_at.timestamp() * 1000 - event["ts_ms"]) < 1
    assert gateway_events.consume() == 0  # acknowledged: nothing left
    assert redis_client.xpending(stream, "audit")["pending"] == 0


def test_an_unreadable_event_is_acknowledged_and_skipped(redis_client):
    stream = names().audit_events()
    redis_client.xadd(stream, {"e": "{not json"})
    redis_client.xadd(stream, {"e": json.dumps(_event(summary="fine"))})
    assert gateway_events.consume() == 1
    assert AuditEntry.objects.get().summary == "fine"
    assert redis_client.xpending(stream, "audit")["pending"] == 0


def test_pending_events_of_a_crashed_run_are_recorded(redis_client):
    stream = names().audit_events()
    redis_client.xadd(stream, {"e": json.dumps(_event(summary="left pending"))})
    gateway_events._ensure_group(redis_client, stream)
    redis_client.xreadgroup("audit", gateway_events.CONSUMER, {stream: ">"})  # read, never acked
    assert gateway_events.consume() == 1
    assert AuditEntry.objects.get().summary == "left pending"
