"""Deliveries: signed, retried with backoff under one event id, never to disabled or private targets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from tests.factories import TenantFactory
from webhooks import delivery, events, signing, tasks
from webhooks.constants import DeliveryState, EventType
from webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

pytestmark = pytest.mark.django_db


def endpoint_for(tenant, url, events_=(EventType.INVOICE_CREATED,), **fields) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(tenant=tenant, url=url, events=list(events_), **fields)


def emit(tenant, key="inv-1", type_=EventType.INVOICE_CREATED):
    return events.emit(tenant=tenant, type=type_, key=key, data={"invoice": {"number": key}})


def test_a_delivery_is_signed_and_carries_the_event(
    receiver, allow_private, queued, django_capture_on_commit_callbacks
):
    tenant = TenantFactory()
    endpoint = endpoint_for(tenant, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        event = emit(tenant)
    assert event.id.startswith("evt_")
    (delivery_id,) = queued
    result = delivery.attempt(delivery_id=delivery_id)
    assert result.state == DeliveryState.SUCCEEDED
    ((headers, body),) = receiver.received
    assert signing.verify(endpoint.secret, body, headers["berth-signature"])
    assert not signing.verify("whsec_other", body, headers["berth-signature"])
    assert not signing.verify(endpoint.secret, body + b" ", headers["berth-signature"])
    sent = json.loads(body)
    assert sent["id"] == event.id == headers["berth-event-id"]
    assert sent["type"] == "invoice.created" and sent["organization"] == tenant.slug
    assert sent["data"] == {"invoice": {"number": "inv-1"}}
    (logged,) = result.attempt.delivery.attempt_log.all()
    assert logged.status_code == 200 and '"ok"' in logged.response_snippet


def test_a_500_is_retried_with_backoff_and_the_same_event_id(receiver, allow_private, queued):
    tenant = TenantFactory()
    endpoint_for(tenant, receiver.url)
    receiver.statuses = [500]
    emit(tenant)
    (pending,) = WebhookDelivery.objects.all()
    now = timezone.now()
    first = delivery.attempt(delivery_id=pending.pk, now=now)
    assert first.state == DeliveryState.PENDING and first.retry_in == 60
    assert first.attempt.status_code == 500 and first.attempt.response_snippet == "upstream broke"
    # Not due yet: nothing is sent, whoever asks (the sweep, a duplicated task).
    assert delivery.attempt(delivery_id=pending.pk, now=now + timedelta(seconds=30)) is None
    assert delivery.due(now=now + timedelta(seconds=30)) == []
    later = now + timedelta(seconds=61)
    assert delivery.due(now=later) == [str(pending.pk)]
    second = delivery.attempt(delivery_id=pending.pk, now=later)
    assert second.state == DeliveryState.SUCCEEDED
    assert delivery.attempt(delivery_id=pending.pk, now=later + timedelta(hours=1)) is None  # done
    bodies = [json.loads(body) for _, body in receiver.received]
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert [h["berth-delivery-attempt"] for h, _ in receiver.received] == ["1", "2"]
    pending.refresh_from_db()
    assert pending.attempts == 2
    assert [a.status_code for a in pending.attempt_log.order_by("number")] == [500, 200]


def test_attempts_are_bounded_and_backoff_grows(receiver, allow_private, queued, settings):
    settings.WEBHOOKS_MAX_ATTEMPTS = 3
    tenant = TenantFactory()
    endpoint_for(tenant, receiver.url)
    receiver.statuses = [503, 503, 503, 503]
    emit(tenant)
    (pending,) = WebhookDelivery.objects.all()
    now, waits = timezone.now(), []
    for _ in range(3):
        result = delivery.attempt(delivery_id=pending.pk, now=now)
        waits.append(result.retry_in)
        now += timedelta(seconds=(result.retry_in or 0) + 1)
    assert waits == [60, 300, None]
    assert result.state == DeliveryState.FAILED
    assert delivery.attempt(delivery_id=pending.pk, now=now + timedelta(days=1)) is None
    assert len(receiver.received) == 3


def test_emitting_the_same_event_twice_sends_it_once(
    receiver, allow_private, queued, django_capture_on_commit_callbacks
):
    tenant = TenantFactory()
    endpoint_for(tenant, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        first, again = emit(tenant), emit(tenant)
    assert first.id == again.id
    assert WebhookEvent.objects.count() == 1 and len(queued) == 1


def test_nothing_goes_to_a_disabled_or_unsubscribed_endpoint(receiver, allow_private, queued):
    tenant = TenantFactory()
    endpoint_for(tenant, receiver.url, enabled=False)
    endpoint_for(tenant, receiver.url, events_=[EventType.USAGE_DAILY])
    assert emit(tenant) is None
    assert not WebhookDelivery.objects.exists()
    # Disabled after the event was recorded: the pending delivery is cancelled, not sent.
    live = endpoint_for(tenant, receiver.url)
    emit(tenant, key="inv-2")
    live.enabled = False
    live.save()
    (pending,) = WebhookDelivery.objects.all()
    assert delivery.attempt(delivery_id=pending.pk).state == DeliveryState.CANCELLED
    assert receiver.received == []


def test_private_addresses_are_refused_unless_allowed(receiver, queued, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    tenant = TenantFactory()
    endpoint_for(tenant, receiver.url)
    emit(tenant)
    (pending,) = WebhookDelivery.objects.all()
    result = delivery.attempt(delivery_id=pending.pk)
    assert result.attempt.status_code is None
    assert "private or reserved address" in result.attempt.error
    assert receiver.received == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.0.0.8/",
        "http://169.254.169.254/latest",
        "http://[::1]/",
        "http://localhost/",
    ],
)
def test_the_address_check_refuses_internal_targets(url, settings):
    from webhooks import addresses

    settings.WEBHOOKS_ALLOW_PRIVATE = False
    with pytest.raises(addresses.UnsafeURL):
        addresses.resolve(url)


def test_the_test_event_goes_to_its_endpoint_only(receiver, allow_private, queued):
    tenant = TenantFactory()
    one, other = endpoint_for(tenant, receiver.url), endpoint_for(tenant, receiver.url)
    event = events.send_test(endpoint=one)
    assert event.type == "webhook.test"
    assert list(WebhookDelivery.objects.values_list("endpoint", flat=True)) == [one.pk]
    assert other.deliveries.count() == 0


def test_the_deliver_task_schedules_the_retry(receiver, allow_private, queued):
    tenant = TenantFactory()
    endpoint_for(tenant, receiver.url)
    receiver.statuses = [500]
    emit(tenant)
    (pending,) = WebhookDelivery.objects.all()
    assert tasks.deliver(str(pending.pk)) == DeliveryState.PENDING
    assert queued == [str(pending.pk)]  # re-queued with a countdown


def test_usage_daily_sums_yesterday_per_model(receiver, allow_private, queued):
    from tests.billing.usage import record
    from tests.registry.factories import priced_model

    priced_model("chat-s", "1.00", "2.00")
    tenant, other = TenantFactory(), TenantFactory()
    endpoint_for(tenant, receiver.url, events_=[EventType.USAGE_DAILY])
    day = datetime(2026, 11, 20, tzinfo=UTC)
    record(tenant, "chat-s", day + timedelta(hours=3), 1_000_000, 500_000)
    record(tenant, "chat-s", day + timedelta(hours=23), 1_000_000, 0)
    record(tenant, "chat-s", day + timedelta(days=1, minutes=1), 9, 9)  # the next day
    record(other, "chat-s", day + timedelta(hours=1), 7, 7)  # another tenant
    event = events.usage_daily(tenant=tenant, day=day.date())
    (row,) = event.data["models"]
    assert row["model"] == "chat-s" and row["requests"] == 2
    assert row["prompt_tokens"] == 2_000_000 and row["completion_tokens"] == 500_000
    assert row["cost"] == "3.000000"  # 2 M × $1 + 0.5 M × $2
    assert event.data["date"] == "2026-11-20" and event.data["totals"]["cost"] == "3.000000"
    assert events.usage_daily(tenant=tenant, day=day.date()).id == event.id
    assert events.usage_daily(tenant=other, day=day.date()) is None  # no endpoint


def test_the_log_is_pruned_after_its_days_but_not_while_pending(receiver, allow_private, queued, settings):
    settings.WEBHOOKS_LOG_DAYS = 30
    tenant = TenantFactory()
    endpoint_for(tenant, receiver.url)
    done, pending = emit(tenant, key="done"), emit(tenant, key="pending")
    delivery.attempt(delivery_id=done.deliveries.get().pk)
    later = timezone.now() + timedelta(days=31)
    assert delivery.prune(now=later) == 1
    assert list(WebhookEvent.objects.values_list("id", flat=True)) == [pending.id]


def test_beat_runs_the_daily_usage_event_and_the_sweep():
    from django.conf import settings

    tasks_ = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"webhooks.tasks.usage_daily", "webhooks.tasks.sweep"} <= tasks_
    assert {tasks.usage_daily.name, tasks.sweep.name} <= tasks_
