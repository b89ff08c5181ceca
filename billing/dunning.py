"""Failed payments: a warning at once, suspension after ``PAYMENT_GRACE_DAYS``, resumption on payment.

An invoice *fails* when Stripe reports ``invoice.payment_failed`` for it (``Invoice.payment_failed_at``)
and keeps counting while it is open or uncollectible; paying or voiding it settles it. The account
carries the earliest failure of its failing invoices (``BillingAccount.payment_failed_at``), which
starts the grace period. Only suspensions made here (``suspended_for_nonpayment``) are lifted here:
a tenant suspended by staff stays suspended when it pays. Staff who resume a tenant suspended
here restart its grace period (``grace_restarted_at``, billing/payments.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from audit import trail
from billing import money, notify
from billing.models import BillingAccount, Invoice, InvoiceStatus
from tenants import accounts
from tenants.constants import TenantStatus
from tenants.models import Tenant

log = logging.getLogger("berth.billing")

UNPAID = (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)


def failing_invoices(tenant: Tenant):
    return Invoice.objects.filter(tenant=tenant, status__in=UNPAID, payment_failed_at__isnull=False)


def suspension_date(failed_at: datetime) -> datetime:
    return failed_at + timedelta(days=settings.PAYMENT_GRACE_DAYS)


def locked_account(tenant: Tenant) -> BillingAccount:
    """The tenant's billing account, row-locked for the current transaction."""
    BillingAccount.objects.get_or_create(tenant=tenant)
    return BillingAccount.objects.select_for_update().get(pk=tenant.pk)


def payment_failed(invoice: Invoice, *, at: datetime | None = None) -> bool:
    """Record a failed payment of ``invoice``; warn the tenant once. True if the warning was sent."""
    at = at or timezone.now()
    if invoice.status not in UNPAID:
        log.info("payment failure for %s ignored: it is %s", invoice.number, invoice.status)
        return False
    with transaction.atomic():
        account = locked_account(invoice.tenant)
        if invoice.payment_failed_at is None:
            invoice.payment_failed_at = at
            invoice.save(update_fields=["payment_failed_at"])
            trail.record(
                action="payment.failed",
                tenant=invoice.tenant,
                target=invoice,
                summary=f"payment of {invoice.number} ({invoice.currency} {invoice.total}) failed",
                after={"payment_failed_at": at},
            )
        if account.payment_failed_at is None:
            account.payment_failed_at = at
        warn = account.payment_warning_sent_at is None
        if warn:
            # Sent inside the transaction: if mail fails, nothing is recorded and Stripe redelivers.
            notify.send(invoice.tenant, *warning_email(invoice, suspension_date(account.payment_failed_at)))
            account.payment_warning_sent_at = timezone.now()
        account.save(update_fields=["payment_failed_at", "payment_warning_sent_at", "updated_at"])
    return warn


def warning_email(invoice: Invoice, suspend_on: datetime) -> tuple[str, str]:
    amount = money.format_money(invoice.total, invoice.currency)
    subject = f"Payment failed for invoice {invoice.number} ({amount})"
    lines = [
        f"Hello {invoice.tenant.name},",
        "",
        f"We could not collect the payment of {amount} for Berth invoice {invoice.number}.",
        f"Unless it is paid, the organization will be suspended on {suspend_on:%d %B %Y %H:%M} UTC:",
        "its API keys will then be refused until the invoice is paid.",
    ]
    if invoice.stripe_hosted_url:
        lines += ["", f"Pay the invoice here: {invoice.stripe_hosted_url}"]
    return subject, "\n".join(lines) + "\n"


def settle(tenant: Tenant) -> bool:
    """After an invoice was paid or voided: recompute the failure state; resume the tenant if it
    was suspended for non-payment and nothing is failing any more. True if it was resumed."""
    with transaction.atomic():
        account = locked_account(tenant)
        earliest = failing_invoices(tenant).aggregate(at=Min("payment_failed_at"))["at"]
        account.payment_failed_at = earliest
        if earliest is None:
            account.payment_warning_sent_at = None
            account.grace_restarted_at = None
        resume = earliest is None and account.suspended_for_nonpayment
        if resume:
            account.suspended_for_nonpayment = False
            tenant.refresh_from_db(fields=["status"])
            if tenant.status == TenantStatus.SUSPENDED:
                accounts.set_status(tenant=tenant, status=TenantStatus.ACTIVE)
            log.info("%s paid: resumed", tenant.slug)
        account.save()
    return resume


def suspended_email(tenant: Tenant, invoices: list[Invoice]) -> tuple[str, str]:
    owed = ", ".join(f"{i.number} ({money.format_money(i.total, i.currency)})" for i in invoices)
    subject = f"{tenant.name} is suspended for non-payment"
    body = (
        f"Hello {tenant.name},\n\n"
        f"Payment of {owed} is still outstanding after {settings.PAYMENT_GRACE_DAYS} days, so the "
        "organization is suspended: its API keys are refused.\n"
        "It is resumed automatically as soon as the invoice is paid.\n"
    )
    links = [i.stripe_hosted_url for i in invoices if i.stripe_hosted_url]
    if links:
        body += "\n" + "\n".join(f"Pay here: {link}" for link in links) + "\n"
    return subject, body


def enforce_grace(now: datetime | None = None) -> list[Tenant]:
    """Suspend the tenants whose grace period after a failed payment is over; returns them."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.PAYMENT_GRACE_DAYS)
    due = (
        BillingAccount.objects.filter(payment_failed_at__lte=cutoff, suspended_for_nonpayment=False)
        .filter(Q(grace_restarted_at__isnull=True) | Q(grace_restarted_at__lte=cutoff))
        .values_list("tenant_id", flat=True)
    )
    suspended = []
    for tenant in Tenant.objects.filter(pk__in=list(due)):
        with transaction.atomic():
            account = locked_account(tenant)
            failing = list(failing_invoices(tenant).filter(payment_failed_at__lte=cutoff))
            tenant.refresh_from_db(fields=["status"])
            if account.suspended_for_nonpayment or not failing:
                continue
            if tenant.status != TenantStatus.ACTIVE:
                # Suspended by staff for another reason: leave that decision alone.
                continue
            accounts.set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
            account.suspended_for_nonpayment = True
            account.save(update_fields=["suspended_for_nonpayment", "updated_at"])
        log.warning("%s suspended for non-payment of %s", tenant.slug, ", ".join(i.number for i in failing))
        suspended.append(tenant)
        try:
            notify.send(tenant, *suspended_email(tenant, failing))
        except Exception:  # the suspension stands; a lost email must not undo or repeat it
            log.exception("could not email %s about its suspension", tenant.slug)
    return suspended
