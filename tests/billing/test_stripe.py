"""Invoices pushed to Stripe (through the real stripe client, against a local Stripe-wire server)."""

from __future__ import annotations

import pytest
import stripe

from billing import money, stripe_sync
from billing.models import BillingAccount, Invoice, InvoiceStatus
from tenants.constants import Role
from tests.billing.conftest import closed_invoice
from tests.billing.fake_stripe import FakeStripe
from tests.factories import TenantFactory, member
from tests.registry.factories import priced_model

pytestmark = pytest.mark.django_db

INVOICE_ITEM = r"/v1/invoiceitems"
INVOICES = r"/v1/invoices"
FINALIZE = r"/v1/invoices/[^/]+/finalize"
SEND = r"/v1/invoices/[^/]+/send"


@pytest.fixture
def invoice():
    tenant = TenantFactory(name="Acme", slug="acme")
    member(tenant, Role.OWNER, email="owner@acme.test")
    priced_model("tiny-chat", "0.10", "0.40")
    priced_model("big-chat", "2.50", "10.00")
    invoice = closed_invoice(
        tenant, [("tiny-chat", 1_234_567, 345_678), ("tiny-chat", 1000, 10), ("big-chat", 333_333, 77_777)]
    )
    assert invoice.status == InvoiceStatus.OPEN and invoice.total > 0
    return invoice


def stripe_invoice(fake: FakeStripe) -> dict:
    (only,) = fake.state.invoices.values()
    return fake._invoice(only["id"])


def test_sync_creates_one_customer_one_invoice_and_an_item_per_line(fake_stripe, invoice):
    assert stripe_sync.sync_pending() == 1

    assert len(fake_stripe.creates(r"/v1/customers")) == 1
    assert len(fake_stripe.creates(INVOICES)) == 1
    lines = list(invoice.lines.order_by("position"))
    assert len(lines) == 4
    assert len(fake_stripe.creates(INVOICE_ITEM)) == len(lines)
    assert len(fake_stripe.creates(FINALIZE)) == 1
    remote = stripe_invoice(fake_stripe)
    assert remote["status"] == "open"
    assert fake_stripe.state.sent == [remote["id"]]

    invoice.refresh_from_db()
    assert invoice.stripe_invoice_id == remote["id"]
    assert invoice.stripe_hosted_url == remote["hosted_invoice_url"]
    assert invoice.stripe_synced_at is not None
    account = BillingAccount.objects.get(tenant=invoice.tenant)
    (customer,) = fake_stripe.state.customers.values()
    assert account.stripe_customer_id == customer["id"]
    assert customer["email"] == "owner@acme.test"
    assert customer["name"] == "Acme"
    assert customer["metadata"] == {"tenant_id": str(invoice.tenant_id), "tenant_slug": "acme"}

    created = fake_stripe.creates(INVOICES)[0].params
    assert created["collection_method"] == "send_invoice"
    assert created["currency"] == "usd"
    assert created["days_until_due"] == "14"
    assert created["pending_invoice_items_behavior"] == "exclude"
    assert created["metadata"]["berth_invoice_id"] == str(invoice.pk)
    assert created["metadata"]["berth_invoice_number"] == invoice.number


def test_item_amounts_are_the_line_amounts_in_minor_units(fake_stripe, invoice):
    stripe_sync.sync_pending()

    items = {i["metadata"]["berth_line_id"]: i for i in fake_stripe.state.items.values()}
    for line in invoice.lines.all():
        item = items[str(line.pk)]
        assert item["amount"] == money.to_minor_units(line.amount, "USD")
        assert item["currency"] == "usd"
        assert item["invoice"] == stripe_invoice(fake_stripe)["id"]
    remote = stripe_invoice(fake_stripe)
    assert remote["total"] == remote["amount_due"] == money.to_minor_units(invoice.total, "USD")
    descriptions = sorted(i["description"] for i in items.values())
    assert "tiny-chat — input tokens: 1,235,567 × $0.10/M" in descriptions
    assert "big-chat — output tokens: 77,777 × $10.00/M" in descriptions


def test_every_write_carries_a_key_derived_from_berth_ids(fake_stripe, invoice):
    stripe_sync.sync_pending()

    keys = {
        r.path: r.idempotency_key
        for r in fake_stripe.requests
        if r.method == "POST" and "items" not in r.path
    }
    stripe_id = stripe_invoice(fake_stripe)["id"]
    assert keys == {
        "/v1/customers": f"berth-customer-{invoice.tenant_id}",
        "/v1/invoices": f"berth-invoice-{invoice.pk}",
        f"/v1/invoices/{stripe_id}/finalize": f"berth-finalize-{invoice.pk}",
        f"/v1/invoices/{stripe_id}/send": f"berth-send-{invoice.pk}",
    }
    item_keys = sorted(r.idempotency_key for r in fake_stripe.calls("POST", INVOICE_ITEM))
    assert item_keys == sorted(f"berth-line-{line.pk}" for line in invoice.lines.all())


def test_a_second_sync_creates_nothing(fake_stripe, invoice):
    assert stripe_sync.sync_pending() == 1
    before = len(fake_stripe.requests)

    assert stripe_sync.sync_pending() == 0
    assert len(fake_stripe.requests) == before


def test_a_crash_after_the_invoice_was_created_lands_on_the_same_objects(fake_stripe, invoice, monkeypatch):
    """The process dies after Stripe created the invoice but before Berth saved its id."""
    real_filter = Invoice.objects.filter

    class Crash(Exception):
        pass

    def crash_when_saving_the_id(*args, **kwargs):
        queryset = real_filter(*args, **kwargs)
        original_update = queryset.update

        def update(**fields):
            if "stripe_invoice_id" in fields:
                raise Crash
            return original_update(**fields)

        queryset.update = update
        return queryset

    monkeypatch.setattr(Invoice.objects, "filter", crash_when_saving_the_id)
    with pytest.raises(Crash):
        stripe_sync.sync_invoice(Invoice.objects.get(pk=invoice.pk))
    monkeypatch.undo()
    assert Invoice.objects.get(pk=invoice.pk).stripe_invoice_id == ""
    assert len(fake_stripe.state.invoices) == 1

    assert stripe_sync.sync_pending() == 1

    assert len(fake_stripe.state.invoices) == 1
    assert len(fake_stripe.state.customers) == 1
    creates = fake_stripe.calls("POST", INVOICES)
    assert [r.idempotency_key for r in creates] == [f"berth-invoice-{invoice.pk}"] * 2
    assert [r.replayed for r in creates] == [False, True]
    invoice.refresh_from_db()
    assert invoice.stripe_invoice_id == stripe_invoice(fake_stripe)["id"]
    assert len(fake_stripe.state.items) == invoice.lines.count()
    assert stripe_invoice(fake_stripe)["total"] == money.to_minor_units(invoice.total, "USD")


def test_a_lost_response_is_retried_with_the_same_key(fake_stripe, invoice):
    """Stripe created the invoice but the connection dropped: the client's retry is replayed."""
    fake_stripe.fail("POST", INVOICES, mode="drop_after")

    assert stripe_sync.sync_pending() == 1

    creates = fake_stripe.calls("POST", INVOICES)
    assert len(creates) == 2
    assert creates[0].dropped and not creates[1].dropped
    assert creates[0].idempotency_key == creates[1].idempotency_key == f"berth-invoice-{invoice.pk}"
    assert creates[1].replayed
    assert len(fake_stripe.state.invoices) == 1


def test_a_failed_finalize_is_retried_and_finishes_one_invoice(fake_stripe, invoice):
    fake_stripe.fail("POST", FINALIZE, mode="error", status=500)

    assert stripe_sync.sync_pending() == 1

    finalizes = fake_stripe.calls("POST", FINALIZE)
    assert [r.status for r in finalizes] == [500, 200]
    assert {r.idempotency_key for r in finalizes} == {f"berth-finalize-{invoice.pk}"}
    assert len(fake_stripe.state.invoices) == 1
    assert stripe_invoice(fake_stripe)["status"] == "open"
    assert len(fake_stripe.state.sent) == 1


def test_an_interrupted_sync_resumes_without_duplicating_items(fake_stripe, invoice, settings):
    """Items fail for good (retries exhausted) after the id was saved; the next run resumes."""
    fake_stripe.fail("POST", INVOICE_ITEM, mode="drop", times=3)

    assert stripe_sync.sync_pending() == 0
    invoice.refresh_from_db()
    assert invoice.stripe_invoice_id and invoice.stripe_synced_at is None
    assert stripe_invoice(fake_stripe)["status"] == "draft"
    # Even with Stripe's idempotency keys expired (24 h), no item is created twice.
    fake_stripe.state.idempotent.clear()

    assert stripe_sync.sync_pending() == 1

    assert len(fake_stripe.state.invoices) == 1
    assert len(fake_stripe.state.items) == invoice.lines.count()
    assert stripe_invoice(fake_stripe)["total"] == money.to_minor_units(invoice.total, "USD")
    invoice.refresh_from_db()
    assert invoice.stripe_synced_at is not None


def test_one_failing_tenant_does_not_block_the_others(fake_stripe, invoice):
    other = TenantFactory(name="Beta", slug="beta")
    member(other, Role.OWNER)
    second = closed_invoice(other, [("tiny-chat", 5_000_000, 0)])
    fake_stripe.fail("POST", r"/v1/customers", mode="error", status=400)

    assert stripe_sync.sync_pending() == 1

    synced = set(Invoice.objects.exclude(stripe_synced_at=None).values_list("pk", flat=True))
    assert len(synced) == 1 and synced <= {invoice.pk, second.pk}
    assert stripe_sync.sync_pending() == 1
    assert Invoice.objects.filter(stripe_synced_at=None).count() == 0


def test_an_invoice_that_does_not_add_up_is_not_finalized(fake_stripe, invoice, caplog):
    Invoice.objects.filter(pk=invoice.pk).update(total=invoice.total + 1)

    assert stripe_sync.sync_pending() == 0

    assert stripe_invoice(fake_stripe)["status"] == "draft"
    assert fake_stripe.calls("POST", FINALIZE) == []
    assert "could not sync invoice" in caplog.text
    assert Invoice.objects.get(pk=invoice.pk).stripe_synced_at is None


def test_a_wrong_key_is_refused_by_stripe(fake_stripe, invoice, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_wrong"
    with pytest.raises(stripe.AuthenticationError):
        stripe_sync.sync_invoice(invoice)
    assert stripe_sync.sync_pending() == 0
    assert fake_stripe.state.invoices == {}


def test_the_fake_refuses_a_reused_key_with_other_params(fake_stripe):
    client = stripe_sync.client()
    client.v1.customers.create(params={"name": "A"}, options={"idempotency_key": "k1"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"name": "B"}, options={"idempotency_key": "k1"})
    assert len(fake_stripe.state.customers) == 1


def test_zero_and_synced_invoices_are_not_pending(fake_stripe, invoice):
    Invoice.objects.filter(pk=invoice.pk).update(status=InvoiceStatus.PAID)
    assert stripe_sync.sync_pending() == 0
    assert fake_stripe.requests == []


def test_billing_email_is_the_customer_email(fake_stripe, invoice):
    BillingAccount.objects.create(tenant=invoice.tenant, billing_email="ap@acme.test")
    stripe_sync.sync_pending()
    (customer,) = fake_stripe.state.customers.values()
    assert customer["email"] == "ap@acme.test"


def test_without_a_key_nothing_is_sent(settings, invoice):
    server = FakeStripe().start()
    try:
        settings.STRIPE_SECRET_KEY = ""
        settings.STRIPE_API_BASE = server.url
        assert not stripe_sync.configured()
        assert stripe_sync.sync_pending() == 0
        assert server.requests == []
        invoice.refresh_from_db()
        assert invoice.stripe_invoice_id == "" and invoice.status == InvoiceStatus.OPEN
    finally:
        server.stop()
