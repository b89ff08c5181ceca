"""Stripe's webhook (signed like Stripe signs it) and dunning: warn, suspend after grace, resume."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail

from berth.redis import names
from billing import dunning
from billing.models import BillingAccount, Invoice, InvoiceStatus, StripeEvent
from tenants.constants import Role, TenantStatus
from tenants.models import Tenant
from tests.billing.conftest import closed_invoice, invoice_event, post_event, sign
from tests.factories import TenantFactory, member
from tests.registry.factories import priced_model

URL = "/billing/stripe/webhook/"


def make_invoice(stripe_id: str = "in_test_1") -> Invoice:
    tenant = TenantFactory(name="Acme", slug="acme")
    member(tenant, Role.OWNER, email="owner@acme.test")
    member(tenant, Role.BILLING, email="ap@acme.test")
    member(tenant, Role.MEMBER, email="dev@acme.test")
    priced_model("tiny-chat", "0.10", "0.40")
    invoice = closed_invoice(tenant, [("tiny-chat", 10_000_000, 2_500_000)])
    invoice.stripe_invoice_id = stripe_id
    invoice.stripe_hosted_url = f"https://invoice.stripe.test/i/{stripe_id}"
    invoice.save()
    return invoice


@pytest.fixture
def invoice(db):
    return make_invoice()


# ---------------------------------------------------------------------------- verification


@pytest.mark.django_db
def test_a_bad_signature_is_refused_and_nothing_is_stored(client, webhook_secret, invoice):
    event = invoice_event("evt_1", "invoice.paid", invoice)
    response = post_event(client, event, secret="whsec_someone_else")
    assert response.status_code == 400
    assert "signature" in response.json()["error"].lower()
    assert not StripeEvent.objects.exists()
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN


@pytest.mark.django_db
def test_a_stale_timestamp_is_refused(client, webhook_secret, invoice):
    event = invoice_event("evt_1", "invoice.paid", invoice)
    response = post_event(client, event, timestamp=int(time.time()) - 3600)
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
def test_a_missing_signature_or_garbage_is_a_400(client, webhook_secret):
    assert client.post(URL, b"{}", content_type="application/json").status_code == 400
    garbage = b"not json"
    response = client.post(URL, garbage, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(garbage))
    assert response.status_code == 400
    not_an_event = json.dumps(["x"]).encode()
    response = client.post(
        URL, not_an_event, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(not_an_event)
    )
    assert response.status_code == 400
    assert response.json()["error"]
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
def test_without_a_webhook_secret_it_says_so(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    response = post_event(client, {"id": "evt_1", "type": "invoice.paid"})
    assert response.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET" in response.json()["error"]


@pytest.mark.django_db
def test_only_post_is_allowed(client, webhook_secret):
    assert client.get(URL).status_code == 405


# ---------------------------------------------------------------------------- invoice events


@pytest.mark.django_db
def test_invoice_paid_marks_the_invoice_paid_once(client, webhook_secret, invoice):
    paid_at = datetime(2026, 10, 5, 9, 30, tzinfo=UTC)
    event = invoice_event(
        "evt_paid", "invoice.paid", invoice, status_transitions={"paid_at": int(paid_at.timestamp())}
    )
    assert post_event(client, event).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID
    assert invoice.paid_at == paid_at
    stored = StripeEvent.objects.get()
    assert stored.id == "evt_paid" and stored.type == "invoice.paid" and stored.processed_at

    # Stripe redelivers the same event (with a later paid_at, to show nothing is applied again).
    event["data"]["object"]["status_transitions"]["paid_at"] = int(time.time())
    response = post_event(client, event)
    assert response.status_code == 200
    assert response.json()["replayed"] is True
    invoice.refresh_from_db()
    assert invoice.paid_at == paid_at
    assert StripeEvent.objects.count() == 1


@pytest.mark.django_db
def test_the_invoice_is_found_by_metadata_when_the_id_was_not_saved(client, webhook_secret, invoice):
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="")
    event = invoice_event("evt_paid", "invoice.payment_succeeded", invoice)
    event["data"]["object"]["id"] = "in_never_saved"
    assert post_event(client, event).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID and invoice.paid_at is not None


@pytest.mark.django_db
def test_unknown_invoices_and_event_types_are_stored_and_acknowledged(client, webhook_secret, invoice):
    unknown = {
        "id": "evt_unknown_invoice",
        "type": "invoice.paid",
        "data": {"object": {"id": "in_elsewhere", "metadata": {"berth_invoice_id": "not-a-uuid"}}},
    }
    assert post_event(client, unknown).status_code == 200
    other = {"id": "evt_customer", "type": "customer.updated", "data": {"object": {"id": "cus_1"}}}
    assert post_event(client, other).status_code == 200
    malformed = {"id": "evt_malformed", "type": "invoice.paid", "data": "nope"}
    assert post_event(client, malformed).status_code == 200
    assert set(StripeEvent.objects.values_list("id", flat=True)) == {
        "evt_unknown_invoice",
        "evt_customer",
        "evt_malformed",
    }
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN


@pytest.mark.django_db
def test_voided_and_uncollectible(client, webhook_secret, invoice):
    assert (
        post_event(client, invoice_event("evt_u", "invoice.marked_uncollectible", invoice)).status_code == 200
    )
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.UNCOLLECTIBLE
    assert post_event(client, invoice_event("evt_v", "invoice.voided", invoice)).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.VOID


@pytest.mark.django_db
def test_payment_failed_warns_once_and_keeps_the_tenant_active(client, webhook_secret, invoice, settings):
    settings.PAYMENT_GRACE_DAYS = 7
    before = datetime.now(UTC)
    assert post_event(client, invoice_event("evt_f1", "invoice.payment_failed", invoice)).status_code == 200
    assert post_event(client, invoice_event("evt_f2", "invoice.payment_failed", invoice)).status_code == 200

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == ["ap@acme.test", "owner@acme.test"]
    assert invoice.number in message.subject
    assert "$2.00" in message.body  # 10M input × $0.10/M + 2.5M output × $0.40/M
    account = BillingAccount.objects.get(tenant=invoice.tenant)
    assert before <= account.payment_failed_at
    suspend_on = account.payment_failed_at + timedelta(days=7)
    assert f"{suspend_on:%d %B %Y}" in message.body
    assert invoice.stripe_hosted_url in message.body
    assert account.payment_warning_sent_at is not None
    invoice.tenant.refresh_from_db()
    assert invoice.tenant.status == TenantStatus.ACTIVE
    # Nothing is suspended within the grace period.
    assert dunning.enforce_grace(now=account.payment_failed_at + timedelta(days=6)) == []


@pytest.mark.django_db
def test_the_billing_email_gets_the_warning_too(client, webhook_secret, invoice):
    BillingAccount.objects.create(tenant=invoice.tenant, billing_email="Finance@acme.test")
    post_event(client, invoice_event("evt_f1", "invoice.payment_failed", invoice))
    assert sorted(mail.outbox[0].to) == ["ap@acme.test", "finance@acme.test", "owner@acme.test"]


@pytest.mark.django_db
def test_a_failure_reported_after_payment_is_ignored(client, webhook_secret, invoice):
    post_event(client, invoice_event("evt_paid", "invoice.paid", invoice))
    post_event(client, invoice_event("evt_f1", "invoice.payment_failed", invoice))
    assert mail.outbox == []
    assert BillingAccount.objects.get(tenant=invoice.tenant).payment_failed_at is None


@pytest.mark.django_db
def test_a_tenant_suspended_by_staff_is_neither_suspended_nor_resumed_by_dunning(
    client, webhook_secret, invoice
):
    from tenants import accounts

    post_event(client, invoice_event("evt_f1", "invoice.payment_failed", invoice))
    accounts.set_status(tenant=invoice.tenant, status=TenantStatus.SUSPENDED)
    assert dunning.enforce_grace(now=datetime.now(UTC) + timedelta(days=30)) == []
    post_event(client, invoice_event("evt_paid", "invoice.paid", invoice))
    assert Tenant.objects.get(pk=invoice.tenant_id).status == TenantStatus.SUSPENDED


# ---------------------------------------------------------------------------- end to end


@pytest.mark.django_db(transaction=True)
def test_suspended_after_grace_and_resumed_on_payment(client, webhook_secret, settings, redis_client):
    settings.PAYMENT_GRACE_DAYS = 7
    invoice = make_invoice()
    tenant = invoice.tenant
    mirror_key = names().tenant(tenant.pk)

    post_event(client, invoice_event("evt_f1", "invoice.payment_failed", invoice))
    failed_at = BillingAccount.objects.get(tenant=tenant).payment_failed_at
    assert len(mail.outbox) == 1

    assert dunning.enforce_grace(now=failed_at + timedelta(days=7)) == [tenant]
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.SUSPENDED
    assert redis_client.hget(mirror_key, "status") == TenantStatus.SUSPENDED
    account = BillingAccount.objects.get(tenant=tenant)
    assert account.suspended_for_nonpayment
    assert len(mail.outbox) == 2
    assert "suspended" in mail.outbox[1].subject
    # Running again suspends nobody twice and sends nothing more.
    assert dunning.enforce_grace(now=failed_at + timedelta(days=8)) == []
    assert len(mail.outbox) == 2

    response = post_event(client, invoice_event("evt_paid", "invoice.paid", invoice))
    assert response.status_code == 200
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.ACTIVE
    assert redis_client.hget(mirror_key, "status") == TenantStatus.ACTIVE
    account.refresh_from_db()
    assert not account.suspended_for_nonpayment
    assert account.payment_failed_at is None and account.payment_warning_sent_at is None
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID


@pytest.mark.django_db(transaction=True)
def test_paying_one_of_two_failed_invoices_does_not_resume(client, webhook_secret, settings, redis_client):
    from billing import invoicing
    from billing.periods import period_containing
    from tests.billing.conftest import add_usage

    invoice = make_invoice()
    tenant = invoice.tenant
    add_usage(tenant, "tiny-chat", 1_000_000, 0, at=datetime(2026, 10, 10, tzinfo=UTC))
    october = invoicing.close_period(
        tenant=tenant,
        period=period_containing(datetime(2026, 10, 10, tzinfo=UTC), "month"),
        now=datetime(2026, 11, 2, tzinfo=UTC),
    ).invoice
    october.stripe_invoice_id = "in_test_2"
    october.save()
    post_event(client, invoice_event("evt_f1", "invoice.payment_failed", invoice))
    post_event(client, invoice_event("evt_f2", "invoice.payment_failed", october))
    failed_at = BillingAccount.objects.get(tenant=tenant).payment_failed_at
    assert dunning.enforce_grace(now=failed_at + timedelta(days=settings.PAYMENT_GRACE_DAYS)) == [tenant]

    post_event(client, invoice_event("evt_paid", "invoice.paid", invoice))
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.SUSPENDED
    post_event(client, invoice_event("evt_void", "invoice.voided", october))
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.ACTIVE
    assert redis_client.hget(names().tenant(tenant.pk), "status") == TenantStatus.ACTIVE


@pytest.mark.django_db
def test_the_celery_task_runs_enforcement(client, webhook_secret, invoice, settings):
    from billing.tasks import enforce_payment_grace

    settings.PAYMENT_GRACE_DAYS = 0
    post_event(client, invoice_event("evt_f1", "invoice.payment_failed", invoice))
    assert enforce_payment_grace() == 1
    assert Tenant.objects.get(pk=invoice.tenant_id).status == TenantStatus.SUSPENDED


def test_beat_schedules_the_billing_tasks(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {
        "billing.tasks.close_periods",
        "billing.tasks.sync_pending_invoices",
        "billing.tasks.enforce_payment_grace",
    } <= tasks
