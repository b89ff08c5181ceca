"""Billing fires the hooks: invoice.created and invoice.paid, spend.threshold once per threshold."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from billing import payments, spend
from billing.models import BillingAccount, InvoiceStatus
from tests.billing.conftest import closed_invoice
from tests.billing.usage import record
from tests.factories import TenantFactory, UserFactory
from tests.registry.factories import priced_model
from webhooks.constants import EventType
from webhooks.models import WebhookEndpoint, WebhookEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def subscribed(allow_private, queued):
    priced_model("chat-s", "1.00", "2.00")
    tenant = TenantFactory()
    WebhookEndpoint.objects.create(
        tenant=tenant,
        url="http://127.0.0.1:9/hooks",
        events=[EventType.INVOICE_CREATED, EventType.INVOICE_PAID, EventType.SPEND_THRESHOLD],
    )
    return tenant


def test_closing_and_paying_an_invoice_emit_once_each(subscribed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invoice = closed_invoice(subscribed, [("chat-s", 1_000_000, 0)])
    (created,) = WebhookEvent.objects.filter(type=EventType.INVOICE_CREATED)
    assert created.data["invoice"]["number"] == invoice.number and created.data["invoice"]["total"] == "1.00"
    assert not WebhookEvent.objects.filter(type=EventType.INVOICE_PAID).exists()
    staff = UserFactory(is_staff=True)
    with django_capture_on_commit_callbacks(execute=True):
        payments.mark_paid(invoice=invoice, user=staff)
    (paid,) = WebhookEvent.objects.filter(type=EventType.INVOICE_PAID)
    assert paid.data["invoice"]["status"] == InvoiceStatus.PAID
    assert paid.deliveries.count() == 1


def test_a_rolled_back_close_sends_nothing(subscribed, django_capture_on_commit_callbacks):
    from django.db import transaction

    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            closed_invoice(subscribed, [("chat-s", 1_000_000, 0)])
            raise RuntimeError("rolled back")
    assert not WebhookEvent.objects.exists()


def test_spend_alerts_emit_spend_threshold_once(subscribed, redis_client, django_capture_on_commit_callbacks):
    from django.utils import timezone

    BillingAccount.objects.create(tenant=subscribed, spend_limit=Decimal("10.00"), alert_thresholds=[50, 100])
    now = timezone.now()
    record(subscribed, "chat-s", now - timedelta(minutes=1), 6_000_000, 0)  # $6: 50 %
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            spend.check_tenant(tenant=subscribed, now=now)
    (event,) = WebhookEvent.objects.filter(type=EventType.SPEND_THRESHOLD)
    assert event.data["threshold_percent"] == 50 and event.data["spend"] == "6.00"
    assert event.data["limit"] == "10.00" and event.data["blocked"] is False
