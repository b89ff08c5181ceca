"""Pushing Berth's invoices to Stripe, which collects them (``collection_method=send_invoice``).

Berth is the source of truth: an invoice and its lines are computed here (billing/invoicing.py)
and copied to Stripe as one invoice item per line. Every write to Stripe carries an idempotency
key derived from Berth's own ids (``berth-invoice-<uuid>``, ``berth-line-<id>``…), so a retry after
a crash or a timeout lands on the objects the first attempt created instead of charging twice.

The Stripe invoice id is saved as soon as Stripe returns it; ``stripe_synced_at`` is set only once
the invoice is finalized and sent, so an invoice interrupted half-way is picked up again by
:func:`sync_pending` and resumed (items already on the Stripe invoice are not created again, even
after Stripe's idempotency keys have expired).

Invoices settled by hand (billing/payments.py) are settled in Stripe too: paid out of band or
voided, with idempotency keys, so the customer cannot pay them a second time.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import stripe
from django.conf import settings
from django.utils import timezone

from billing import money
from billing.models import BillingAccount, Invoice, InvoiceLine, InvoiceStatus
from tenants.constants import Role
from tenants.models import Membership, Tenant

log = logging.getLogger("berth.billing")

# Network errors and 5xx answers are retried by the stripe library itself, with the same key.
MAX_NETWORK_RETRIES = 2


class SyncError(Exception):
    """Stripe accepted the calls but the result does not match Berth's invoice."""


def configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def client() -> stripe.StripeClient:
    secret = settings.STRIPE_SECRET_KEY
    if not secret:
        raise RuntimeError("STRIPE_SECRET_KEY is not set")
    api_base = settings.STRIPE_API_BASE
    return stripe.StripeClient(
        secret,
        max_network_retries=MAX_NETWORK_RETRIES,
        base_addresses={"api": api_base.rstrip("/")} if api_base else None,
    )


def _v1(stripe_client: stripe.StripeClient):
    """The v1 services (``client.v1`` from stripe 12 on; the client itself before)."""
    return getattr(stripe_client, "v1", stripe_client)


def customer_email(tenant: Tenant, account: BillingAccount) -> str:
    if account.billing_email:
        return account.billing_email
    owner = Membership.objects.filter(tenant=tenant, role=Role.OWNER).select_related("user").first()
    return owner.user.email if owner else ""


def ensure_customer(tenant: Tenant, stripe_client: stripe.StripeClient | None = None) -> str:
    """The tenant's Stripe customer id, creating the customer on first use."""
    account, _ = BillingAccount.objects.get_or_create(tenant=tenant)
    if account.stripe_customer_id:
        return account.stripe_customer_id
    stripe_client = stripe_client or client()
    params = {"name": tenant.name, "metadata": {"tenant_id": str(tenant.pk), "tenant_slug": tenant.slug}}
    email = customer_email(tenant, account)
    if email:
        params["email"] = email
    customer = _v1(stripe_client).customers.create(
        params=params, options={"idempotency_key": f"berth-customer-{tenant.pk}"}
    )
    # Another worker may have stored the same customer meanwhile (the key made it the same one).
    BillingAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(stripe_customer_id=customer.id)
    account.refresh_from_db(fields=["stripe_customer_id"])
    return account.stripe_customer_id


def _unit_price(per_million: Decimal, currency: str) -> str:
    """All the price's significant decimals (a tier's percent may give more than a cent's)."""
    exponent = Decimal(per_million).normalize().as_tuple().exponent  # an int: prices are finite
    places = max(money.minor_exponent(currency), -int(exponent))
    return money.format_price(Decimal(per_million).quantize(Decimal(1).scaleb(-places)), currency)


def line_description(line: InvoiceLine, currency: str) -> str:
    """E.g. ``tiny-chat — input tokens: 1,234,567 × $0.10/M``; a line in another tier than default
    names it (``tiny-chat — output tokens, flex: …``)."""
    text = f"{line.description}: {line.tokens:,} × {_unit_price(line.unit_price_per_million, currency)}/M"
    if line.late_requests:
        text += f" (includes {line.late_requests:,} late requests)"
    return text


def invoice_params(invoice: Invoice, customer_id: str) -> dict:
    return {
        "customer": customer_id,
        "currency": invoice.currency.lower(),
        "collection_method": "send_invoice",
        "days_until_due": settings.INVOICE_DAYS_UNTIL_DUE,
        "pending_invoice_items_behavior": "exclude",
        # Finalized and sent explicitly below, so Stripe does not send it a second time.
        "auto_advance": False,
        "description": f"Berth usage {invoice.period_start:%Y-%m-%d} – {invoice.period_end:%Y-%m-%d}",
        "metadata": {
            "berth_invoice_id": str(invoice.pk),
            "berth_invoice_number": invoice.number,
            "tenant_id": str(invoice.tenant_id),
        },
    }


def item_params(line: InvoiceLine, invoice: Invoice, customer_id: str, stripe_invoice_id: str) -> dict:
    return {
        "customer": customer_id,
        "invoice": stripe_invoice_id,
        "amount": money.to_minor_units(line.amount, invoice.currency),
        "currency": invoice.currency.lower(),
        "description": line_description(line, invoice.currency),
        "metadata": {
            "berth_line_id": str(line.pk),
            "berth_invoice_id": str(invoice.pk),
            "service_tier": line.service_tier,
        },
    }


def _existing_item_lines(stripe_client: stripe.StripeClient, stripe_invoice_id: str) -> set[str]:
    """Berth line ids already on a (resumed) Stripe invoice."""
    found = set()
    items = _v1(stripe_client).invoice_items.list(params={"invoice": stripe_invoice_id, "limit": 100})
    for item in items.auto_paging_iter():
        line_id = (item.to_dict().get("metadata") or {}).get("berth_line_id")
        if line_id:
            found.add(line_id)
    return found


def _check_total(remote, invoice: Invoice) -> None:
    expected = money.to_minor_units(invoice.total, invoice.currency)
    if remote.total != expected or remote.currency != invoice.currency.lower():
        raise SyncError(
            f"Stripe invoice {remote.id} is {remote.total} {remote.currency} in minor units; "
            f"Berth's {invoice.number} is {expected} {invoice.currency}"
        )


def sync_invoice(invoice: Invoice, stripe_client: stripe.StripeClient | None = None) -> bool:
    """Create, fill, finalize and send ``invoice`` in Stripe; False if there is nothing to do."""
    if invoice.status != InvoiceStatus.OPEN or invoice.total <= 0 or invoice.stripe_synced_at:
        return False
    stripe_client = stripe_client or client()
    customer_id = ensure_customer(invoice.tenant, stripe_client)
    key = invoice.pk
    resumed = bool(invoice.stripe_invoice_id)
    if resumed:
        remote = _v1(stripe_client).invoices.retrieve(invoice.stripe_invoice_id)
    else:
        remote = _v1(stripe_client).invoices.create(
            params=invoice_params(invoice, customer_id), options={"idempotency_key": f"berth-invoice-{key}"}
        )
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=remote.id)
        invoice.stripe_invoice_id = remote.id
    if (
        remote.status == "draft"
        and not Invoice.objects.filter(pk=invoice.pk, status=InvoiceStatus.OPEN).exists()
    ):
        # Paid or voided by hand while this sync ran: never send the customer a payable copy.
        _v1(stripe_client).invoices.delete(remote.id)
        log.info("invoice %s was settled meanwhile: Stripe draft %s deleted", invoice.number, remote.id)
        return False
    if remote.status == "draft":
        present = _existing_item_lines(stripe_client, remote.id) if resumed else set()
        for line in invoice.lines.order_by("position", "pk"):
            if str(line.pk) in present:
                continue
            _v1(stripe_client).invoice_items.create(
                params=item_params(line, invoice, customer_id, remote.id),
                options={"idempotency_key": f"berth-line-{line.pk}"},
            )
        # Never finalize an invoice that does not add up to Berth's total.
        _check_total(_v1(stripe_client).invoices.retrieve(remote.id), invoice)
        remote = _v1(stripe_client).invoices.finalize_invoice(
            remote.id, params={"auto_advance": False}, options={"idempotency_key": f"berth-finalize-{key}"}
        )
    _check_total(remote, invoice)
    if remote.status == "open":
        remote = _v1(stripe_client).invoices.send_invoice(
            remote.id, options={"idempotency_key": f"berth-send-{key}"}
        )
    invoice.stripe_hosted_url = getattr(remote, "hosted_invoice_url", None) or ""
    invoice.stripe_synced_at = timezone.now()
    invoice.save(update_fields=["stripe_invoice_id", "stripe_hosted_url", "stripe_synced_at"])
    log.info("invoice %s is Stripe invoice %s", invoice.number, remote.id)
    return True


def pending():
    return Invoice.objects.filter(
        status=InvoiceStatus.OPEN, total__gt=0, stripe_synced_at__isnull=True
    ).select_related("tenant")


def sync_pending() -> int:
    """Sync every open invoice not in Stripe yet; one failing invoice does not stop the others."""
    if not configured():
        return 0
    stripe_client = client()
    synced = 0
    for invoice in pending().order_by("created_at"):
        # No lock: two workers syncing the same invoice send the same idempotency keys.
        try:
            if sync_invoice(invoice, stripe_client):
                synced += 1
        except (stripe.StripeError, SyncError, ValueError):
            log.exception("could not sync invoice %s to Stripe; will retry", invoice.number)
    return synced


class SettleError(Exception):
    """Stripe cannot settle the invoice as asked (e.g. voiding one the customer already paid)."""


def pay_out_of_band(invoice: Invoice, stripe_client: stripe.StripeClient | None = None) -> str:
    """Mark ``invoice``'s Stripe invoice paid outside Stripe, so the customer cannot pay it again.

    Returns what was done: ``paid``, ``already paid``, ``draft deleted`` (never sent, so never
    payable) or ``not in Stripe``.
    """
    if not invoice.stripe_invoice_id:
        return "not in Stripe"
    v1 = _v1(stripe_client or client())
    remote = v1.invoices.retrieve(invoice.stripe_invoice_id)
    if remote.status == "paid":
        return "already paid"
    if remote.status == "draft":
        v1.invoices.delete(remote.id)
        return "draft deleted"
    if remote.status == "void":
        raise SettleError(f"Stripe invoice {remote.id} is void; it cannot be paid.")
    v1.invoices.pay(
        remote.id,
        params={"paid_out_of_band": True},
        options={"idempotency_key": f"berth-pay-{invoice.pk}"},
    )
    return "paid"


def void(invoice: Invoice, stripe_client: stripe.StripeClient | None = None) -> str:
    """Void ``invoice``'s Stripe invoice (delete it while it is a draft); see :func:`pay_out_of_band`."""
    if not invoice.stripe_invoice_id:
        return "not in Stripe"
    v1 = _v1(stripe_client or client())
    remote = v1.invoices.retrieve(invoice.stripe_invoice_id)
    if remote.status == "void":
        return "already void"
    if remote.status == "paid":
        raise SettleError(f"Stripe invoice {remote.id} is already paid; refund it in Stripe instead.")
    if remote.status == "draft":
        v1.invoices.delete(remote.id)
        return "draft deleted"
    v1.invoices.void_invoice(remote.id, options={"idempotency_key": f"berth-void-{invoice.pk}"})
    return "voided"
