"""Operator payment actions: what staff do by hand about an invoice or a tenant's payment state.

The admin's invoice actions and the staff dashboard call these instead of updating rows, so a
payment recorded by hand goes the way one reported by Stripe goes: through ``dunning.settle`` (a
tenant suspended for non-payment is resumed once nothing fails) and through Stripe (the invoice
is paid out of band or voided there too, so the customer cannot pay it a second time). Stripe is
called first, with an idempotency key: if Berth's own write fails afterwards, the ``invoice.paid``
or ``invoice.voided`` webhook records the same outcome. Each action takes the acting user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import stripe
from django.db import transaction
from django.utils import timezone

from audit import trail
from billing import dunning, stripe_sync
from billing.models import Invoice, InvoiceStatus
from tenants import accounts
from tenants.constants import TenantStatus
from tenants.models import Tenant
from webhooks import events as webhook_events
from webhooks.constants import EventType

log = logging.getLogger("berth.billing")

PAYABLE = (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)
VOIDABLE = (InvoiceStatus.DRAFT, InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)


class PaymentActionError(Exception):
    """The action cannot be done; the message is for the operator."""


@dataclass
class Outcome:
    invoice: Invoice
    stripe: str  # what happened in Stripe (stripe_sync.pay_out_of_band / void)
    resumed: bool  # the tenant was resumed (it had been suspended for non-payment)


def _who(user) -> str:
    return getattr(user, "email", "") or str(user)


def _in_stripe(invoice: Invoice, action) -> str:
    if not invoice.stripe_invoice_id:
        return "not in Stripe"
    if not stripe_sync.configured():
        raise PaymentActionError(
            f"{invoice.number} is Stripe invoice {invoice.stripe_invoice_id}, but STRIPE_SECRET_KEY is "
            "not set: settle it in Stripe as well, or configure Stripe first."
        )
    try:
        return action(invoice)
    except stripe_sync.SettleError as exc:
        raise PaymentActionError(f"{invoice.number}: {exc}") from None
    except stripe.StripeError as exc:
        log.warning("Stripe refused to settle %s: %s", invoice.number, exc)
        raise PaymentActionError(
            f"{invoice.number}: Stripe did not answer or refused ({exc.user_message or exc}); nothing was changed."
        ) from None


def mark_paid(*, invoice: Invoice, user, now: datetime | None = None) -> Outcome:
    """Record a payment received outside Stripe (bank transfer, cheque)."""
    now = now or timezone.now()
    if invoice.status not in PAYABLE:
        raise PaymentActionError(
            f"{invoice.number} is {invoice.get_status_display().lower()}: nothing to pay."
        )
    remote = _in_stripe(invoice, stripe_sync.pay_out_of_band)
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().select_related("tenant").get(pk=invoice.pk)
        if locked.status != InvoiceStatus.PAID:  # else Stripe's webhook recorded it meanwhile
            previous = locked.status
            locked.status, locked.paid_at = InvoiceStatus.PAID, now
            locked.save(update_fields=["status", "paid_at"])
        else:
            previous = None
        resumed = dunning.settle(locked.tenant)
        if previous is not None:  # recorded last: the chain's lock after every row lock (audit.trail)
            trail.record(
                action="invoice.paid",
                tenant=locked.tenant,
                actor=user,
                target=locked,
                summary=f"{locked.number} marked paid ({locked.currency} {locked.total}) outside Stripe",
                before={"status": previous},
                after={"status": locked.status, "paid_at": now},
            )
            webhook_events.invoice_on_commit(invoice=locked, type=EventType.INVOICE_PAID)
    log.info("%s marked paid by %s (Stripe: %s)", locked.number, _who(user), remote)
    return Outcome(locked, remote, resumed)


def void(*, invoice: Invoice, user) -> Outcome:
    """Cancel an unpaid invoice; its usage stays claimed by it, so it is not billed again."""
    if invoice.status not in VOIDABLE:
        raise PaymentActionError(
            f"{invoice.number} is {invoice.get_status_display().lower()}: it cannot be voided."
        )
    remote = _in_stripe(invoice, stripe_sync.void)
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().select_related("tenant").get(pk=invoice.pk)
        if locked.status == InvoiceStatus.PAID:
            raise PaymentActionError(f"{locked.number} was paid meanwhile: it cannot be voided.")
        previous = locked.status
        locked.status = InvoiceStatus.VOID
        locked.save(update_fields=["status"])
        resumed = dunning.settle(locked.tenant)
        trail.record(  # recorded last: the chain's lock after every row lock (audit.trail)
            action="invoice.voided",
            tenant=locked.tenant,
            actor=user,
            target=locked,
            summary=f"{locked.number} voided ({locked.currency} {locked.total})",
            before={"status": previous},
            after={"status": locked.status},
        )
    log.info("%s voided by %s (Stripe: %s)", locked.number, _who(user), remote)
    return Outcome(locked, remote, resumed)


def resume_tenant(*, tenant: Tenant, user, now: datetime | None = None) -> Tenant:
    """Staff lift a suspension. One made for non-payment is lifted too, and the grace period
    restarts now: dunning suspends the tenant again only if its invoices stay unpaid that long."""
    now = now or timezone.now()
    with transaction.atomic():
        account = dunning.locked_account(tenant)
        if account.suspended_for_nonpayment:
            account.suspended_for_nonpayment = False
            if account.payment_failed_at is not None:
                account.grace_restarted_at = now
            account.save(update_fields=["suspended_for_nonpayment", "grace_restarted_at", "updated_at"])
        accounts.set_status(tenant=tenant, status=TenantStatus.ACTIVE)
    log.info("%s resumed by %s", tenant.slug, _who(user))
    return tenant


def suspend_tenant(*, tenant: Tenant, user) -> Tenant:
    """Staff suspend a tenant: their decision, which a later payment does not lift."""
    with transaction.atomic():
        account = dunning.locked_account(tenant)
        if account.suspended_for_nonpayment:
            account.suspended_for_nonpayment = False
            account.save(update_fields=["suspended_for_nonpayment", "updated_at"])
        accounts.set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    log.info("%s suspended by %s", tenant.slug, _who(user))
    return tenant


def set_tenant_status(*, tenant: Tenant, status: str, user) -> Tenant:
    if TenantStatus(status) == TenantStatus.SUSPENDED:
        return suspend_tenant(tenant=tenant, user=user)
    return resume_tenant(tenant=tenant, user=user)
