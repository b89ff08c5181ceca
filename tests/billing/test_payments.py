"""Operator payment actions (billing/payments.py): the admin's Mark paid / Void and the staff
dashboard's Suspend / Resume go through dunning and Stripe."""

from __future__ import annotations

from datetime import timedelta

import pytest
import stripe
from django.urls import reverse

from billing import dunning, payments, stripe_sync
from billing.models import BillingAccount, Invoice, InvoiceStatus
from tenants.constants import Role, TenantStatus
from tests.billing.conftest import closed_invoice
from tests.factories import TenantFactory, UserFactory, member
from tests.registry.factories import priced_model

pytestmark = pytest.mark.django_db

ADMIN_INVOICES = "/admin/billing/invoice/"
PAY = r"/v1/invoices/[^/]+/pay"
VOID = r"/v1/invoices/[^/]+/void"


@pytest.fixture
def staff():
    return UserFactory(is_staff=True, is_superuser=True, email="ops@berth.test")


def _invoice(slug="acme"):
    tenant = TenantFactory(name=slug.title(), slug=slug)
    member(tenant, Role.OWNER, email=f"owner@{slug}.test")
    priced_model(f"chat-{slug}", "1.00", "2.00")
    return closed_invoice(tenant, [(f"chat-{slug}", 3_000_000, 1_000_000)])


@pytest.fixture
def suspended(fake_stripe, settings):
    """An invoice sent through Stripe, its payment failed, the tenant suspended after the grace."""
    invoice = _invoice()
    assert stripe_sync.sync_invoice(invoice)
    invoice.refresh_from_db()
    dunning.payment_failed(invoice)
    failed_at = BillingAccount.objects.get(tenant=invoice.tenant).payment_failed_at
    assert dunning.enforce_grace(now=failed_at + timedelta(days=settings.PAYMENT_GRACE_DAYS)) == [
        invoice.tenant
    ]
    invoice.tenant.refresh_from_db()
    assert invoice.tenant.status == TenantStatus.SUSPENDED
    invoice.refresh_from_db()
    return invoice


def _admin_action(client, action, invoice):
    response = client.post(
        ADMIN_INVOICES, {"action": action, "_selected_action": [str(invoice.pk)]}, follow=True
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def test_mark_paid_resumes_the_tenant_and_settles_stripe_out_of_band(client, staff, suspended, fake_stripe):
    client.force_login(staff)
    shown = _admin_action(client, "mark_paid", suspended)

    assert "1 invoice(s) marked paid." in shown and any("Resumed" in m and "Acme" in m for m in shown)
    suspended.refresh_from_db()
    assert suspended.status == InvoiceStatus.PAID and suspended.paid_at is not None
    suspended.tenant.refresh_from_db()
    assert suspended.tenant.status == TenantStatus.ACTIVE
    account = BillingAccount.objects.get(tenant=suspended.tenant)
    assert not account.suspended_for_nonpayment and account.payment_failed_at is None
    (pay,) = fake_stripe.calls("POST", PAY)
    assert pay.params == {"paid_out_of_band": "true"}
    assert pay.idempotency_key == f"berth-pay-{suspended.pk}"
    remote = fake_stripe.state.invoices[suspended.stripe_invoice_id]
    assert remote["status"] == "paid" and remote["paid_out_of_band"] is True
    # The customer can no longer pay it a second time on Stripe's page.
    assert not fake_stripe.customer_pays(suspended.stripe_invoice_id)
    assert fake_stripe.state.payments == [(suspended.stripe_invoice_id, "out_of_band")]
    # Marking it paid again is refused with a message, without another Stripe call.
    shown = _admin_action(client, "mark_paid", suspended)
    assert any("nothing to pay" in m for m in shown)
    assert len(fake_stripe.calls("POST", PAY)) == 1


def test_void_voids_in_stripe_and_resumes_the_tenant(client, staff, suspended, fake_stripe):
    client.force_login(staff)
    shown = _admin_action(client, "mark_void", suspended)

    assert "1 invoice(s) voided." in shown
    suspended.refresh_from_db()
    assert suspended.status == InvoiceStatus.VOID
    assert fake_stripe.state.invoices[suspended.stripe_invoice_id]["status"] == "void"
    (call,) = fake_stripe.calls("POST", VOID)
    assert call.idempotency_key == f"berth-void-{suspended.pk}"
    suspended.tenant.refresh_from_db()
    assert suspended.tenant.status == TenantStatus.ACTIVE
    assert not fake_stripe.customer_pays(suspended.stripe_invoice_id)


def test_a_paid_invoice_cannot_be_voided_nor_one_the_customer_paid_in_stripe(client, staff, fake_stripe):
    invoice = _invoice()
    stripe_sync.sync_invoice(invoice)
    invoice.refresh_from_db()
    assert fake_stripe.customer_pays(invoice.stripe_invoice_id)  # the webhook has not arrived yet
    client.force_login(staff)
    shown = _admin_action(client, "mark_void", invoice)
    assert any("already paid" in m for m in shown)
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN
    # Mark paid agrees with Stripe without paying it again there.
    outcome = payments.mark_paid(invoice=invoice, user=staff)
    assert outcome.stripe == "already paid" and outcome.invoice.status == InvoiceStatus.PAID
    assert fake_stripe.calls("POST", PAY) == []


def test_when_stripe_fails_nothing_changes_and_staff_are_told(client, staff, suspended, fake_stripe):
    fake_stripe.fail("POST", PAY, status=500, times=10)
    client.force_login(staff)
    shown = _admin_action(client, "mark_paid", suspended)
    assert any("Stripe did not answer or refused" in m for m in shown)
    suspended.refresh_from_db()
    assert suspended.status == InvoiceStatus.OPEN
    suspended.tenant.refresh_from_db()
    assert suspended.tenant.status == TenantStatus.SUSPENDED


def test_an_invoice_in_stripe_is_not_settled_by_hand_without_stripe_configured(suspended, staff, settings):
    settings.STRIPE_SECRET_KEY = ""
    with pytest.raises(payments.PaymentActionError, match="STRIPE_SECRET_KEY"):
        payments.mark_paid(invoice=suspended, user=staff)
    assert Invoice.objects.get(pk=suspended.pk).status == InvoiceStatus.OPEN


def test_an_invoice_not_in_stripe_is_marked_paid_without_stripe(staff):
    invoice = _invoice()
    outcome = payments.mark_paid(invoice=invoice, user=staff)
    assert outcome.stripe == "not in Stripe" and outcome.invoice.status == InvoiceStatus.PAID


def test_a_draft_in_stripe_is_deleted_when_the_invoice_is_settled_by_hand(staff, fake_stripe):
    invoice = _invoice()
    # A sync cut off after Stripe created the invoice, before its items: a draft stays there.
    fake_stripe.fail("POST", r"/v1/invoiceitems", status=500, times=10)
    with pytest.raises(stripe.StripeError):
        stripe_sync.sync_invoice(invoice)
    invoice.refresh_from_db()
    (remote,) = fake_stripe.state.invoices.values()
    assert invoice.stripe_invoice_id == remote["id"] and remote["status"] == "draft"

    outcome = payments.void(invoice=invoice, user=staff)

    assert outcome.stripe == "draft deleted" and fake_stripe.state.invoices == {}
    assert not stripe_sync.sync_invoice(Invoice.objects.get(pk=invoice.pk))


def test_a_sync_racing_a_manual_payment_deletes_its_draft(staff, fake_stripe, monkeypatch):
    invoice = _invoice()
    real_params = stripe_sync.invoice_params

    def paid_meanwhile(invoice, customer_id):
        payments.mark_paid(invoice=Invoice.objects.get(pk=invoice.pk), user=staff)  # not in Stripe yet
        return real_params(invoice, customer_id)

    monkeypatch.setattr(stripe_sync, "invoice_params", paid_meanwhile)
    assert not stripe_sync.sync_invoice(invoice)
    assert fake_stripe.state.invoices == {} and fake_stripe.state.sent == []


# --------------------------------------------------------------------------- staff Resume / Suspend


def test_staff_resume_clears_the_nonpayment_flag_and_restarts_the_grace(client, staff, suspended, settings):
    tenant = suspended.tenant
    client.force_login(staff)
    html = client.get(reverse("staff:tenants")).content.decode()
    assert "for non-payment" in html.split(f'id="tenant-{tenant.pk}"')[1].split("</tr>")[0]

    url = reverse("staff:tenant-status", args=[tenant.pk])
    response = client.post(url, {"status": "active", "confirmed": "1"}, HTTP_HX_REQUEST="true")

    assert response.status_code == 200 and "resumed" in response.content.decode()
    assert "for non-payment" not in response.content.decode()
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE
    account = BillingAccount.objects.get(tenant=tenant)
    assert not account.suspended_for_nonpayment and account.grace_restarted_at is not None
    # Still unpaid: dunning waits a new grace period before suspending again.
    restarted = account.grace_restarted_at
    assert dunning.enforce_grace(now=restarted + timedelta(days=1)) == []
    grace = timedelta(days=settings.PAYMENT_GRACE_DAYS)
    assert dunning.enforce_grace(now=restarted + grace) == [tenant]


def test_a_staff_suspension_is_not_lifted_by_a_payment(client, staff, suspended):
    tenant = suspended.tenant
    client.force_login(staff)
    url = reverse("staff:tenant-status", args=[tenant.pk])
    client.post(url, {"status": "active", "confirmed": "1"})
    client.post(url, {"status": "suspended", "confirmed": "1"})  # now for another reason

    payments.mark_paid(invoice=suspended, user=staff)

    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.SUSPENDED
