"""Closing billing periods into invoices.

``close_period`` is idempotent: an invoice is unique per (tenant, period start), and usage records
are *claimed* by the invoice that bills them (``UsageRecord.invoice``) in the same transaction. A
record that arrives after its period was closed is still unclaimed, so the next period's invoice
claims it (its line counts it under ``late_requests``): nothing is billed twice or dropped.

Invoice numbers take their serial from a PostgreSQL sequence, so they are unique whatever the
tenants' slugs. ``close_all`` closes each tenant in its own transaction: one tenant's failure is
logged and recorded on its billing account (shown to staff in the admin and on the staff tenants
page), never stops the tenants after it, and is retried on the next run — from the failed period
on, even after later periods have ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit import trail
from billing import money, pricing
from billing.models import BillingAccount, Invoice, InvoiceLine, InvoiceStatus, UsageRecord
from billing.periods import Period, period_containing
from tenants.models import Tenant
from webhooks import events as webhook_events
from webhooks.constants import EventType

log = logging.getLogger("berth.billing")


# Room for the serial in Invoice.number (32 characters): slug prefix, period day, serial.
NUMBER_SLUG_CHARS = 10
ERROR_CHARS = 2000


@dataclass
class CloseResult:
    tenant: Tenant
    invoice: Invoice | None
    created: bool
    period: Period | None = None
    error: str = ""

    @property
    def message(self) -> str:
        if self.error:
            return f"{self.tenant.slug}: closing {self.period.label if self.period else 'the period'} failed: {self.error}"
        if self.invoice is None:
            return f"{self.tenant.slug}: no unbilled usage"
        verb = "created" if self.created else "already closed"
        return (
            f"{self.tenant.slug}: {self.invoice.number} {verb}, {self.invoice.currency} {self.invoice.total}"
        )


def invoice_number(tenant: Tenant, period: Period) -> str:
    """E.g. ``UNIVERSITY-20261001-42``: readable prefix, unique serial from the database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('billing_invoice_number_seq')")
        (serial,) = cursor.fetchone()
    prefix = tenant.slug[:NUMBER_SLUG_CHARS].upper().rstrip("-")
    return f"{prefix}-{period.start:%Y%m%d}-{serial}"


def close_period(*, tenant: Tenant, period: Period, now: datetime | None = None) -> CloseResult:
    """Invoice ``tenant``'s unbilled usage up to ``period.end``; a no-op if already closed."""
    now = now or timezone.now()
    if period.end > now:
        raise ValueError(f"the period {period.label} has not ended yet")
    existing = Invoice.objects.filter(tenant=tenant, period_start=period.start).first()
    if existing is not None:
        return CloseResult(tenant, existing, created=False)
    unbilled = UsageRecord.objects.filter(tenant=tenant, invoice__isnull=True, occurred_at__lt=period.end)
    if not unbilled.exists():
        return CloseResult(tenant, None, created=False)  # and no invoice number drawn
    currency = settings.BILLING_CURRENCY
    try:
        with transaction.atomic():
            invoice = Invoice.objects.create(
                tenant=tenant,
                number=invoice_number(tenant, period),
                period_start=period.start,
                period_end=period.end,
                currency=currency,
                status=InvoiceStatus.DRAFT,
            )
            claimed = unbilled.update(invoice=invoice)
            if not claimed:
                transaction.set_rollback(True)
                return CloseResult(tenant, None, created=False)
            lines = pricing.priced_lines(
                UsageRecord.objects.filter(invoice=invoice), currency=currency, late_before=period.start
            )
            rows = [
                InvoiceLine(
                    invoice=invoice,
                    model=line.model,
                    kind=line.kind,
                    service_tier=line.tier,
                    tokens=line.tokens,
                    unit_price_per_million=line.unit_price,
                    price=line.price,
                    amount=line.amount(currency),
                    requests=line.requests,
                    late_requests=line.late_requests,
                    position=position,
                )
                for position, line in enumerate(lines)
            ]
            InvoiceLine.objects.bulk_create(rows)
            invoice.subtotal = sum((row.amount for row in rows), money.round_money(Decimal(0), currency))
            invoice.total = invoice.subtotal
            invoice.status = InvoiceStatus.OPEN
            invoice.finalized_at = now
            invoice.due_at = now + timedelta(days=settings.INVOICE_DAYS_UNTIL_DUE)
            if invoice.total == 0:
                invoice.status, invoice.paid_at = InvoiceStatus.PAID, now
            invoice.save()
            trail.record(
                action="invoice.finalized",
                tenant=tenant,
                target=invoice,
                summary=f"{invoice.number} for {period.label}: {invoice.currency} {invoice.total}",
                after={"number": invoice.number, "total": invoice.total, "status": invoice.status},
            )
            webhook_events.invoice_on_commit(invoice=invoice, type=EventType.INVOICE_CREATED)
            if invoice.status == InvoiceStatus.PAID:
                webhook_events.invoice_on_commit(invoice=invoice, type=EventType.INVOICE_PAID)
    except IntegrityError:
        # Another closer won the race for this (tenant, period): its invoice stands.
        existing = Invoice.objects.filter(tenant=tenant, period_start=period.start).first()
        if existing is None:
            raise
        return CloseResult(tenant, existing, created=False)
    log.info("closed %s for %s: %s %s", invoice.number, tenant.slug, invoice.currency, invoice.total)
    return CloseResult(tenant, invoice, created=True)


def close_all(*, period: Period | None = None, tenant: Tenant | None = None, now=None) -> list[CloseResult]:
    """Close ``period`` (the last ended one by default) for one tenant or every tenant.

    Each tenant closes on its own: a failure is logged, recorded on its billing account and
    returned as a result with ``error``; the next run retries from the failed period on.
    """
    now = now or timezone.now()
    period = period or period_containing(now).previous()
    tenants = [tenant] if tenant else Tenant.objects.order_by("slug")
    results = []
    for each in tenants:
        for todo in periods_to_close(tenant=each, period=period):
            result = _close_recorded(each, todo, now)
            results.append(result)
            if result.error:
                # Later periods wait: closing them first would bill this period's usage as late.
                break
    return results


def periods_to_close(*, tenant: Tenant, period: Period) -> list[Period]:
    """``period``, preceded by every period since an earlier failed close of ``tenant``."""
    failed = (
        BillingAccount.objects.filter(tenant=tenant)
        .values_list("close_failed_period_start", flat=True)
        .first()
    )
    if failed is None or failed >= period.start:
        return [period]
    todo, each = [], period_containing(failed, period.kind)
    while each.start < period.start:
        todo.append(each)
        each = each.next()
    return [*todo, period]


def _close_recorded(tenant: Tenant, period: Period, now: datetime) -> CloseResult:
    try:
        result = close_period(tenant=tenant, period=period, now=now)
    except Exception as exc:  # noqa: BLE001 - one tenant's failure must not stop the others
        log.exception("cannot close %s for %s; the next run retries", period.label, tenant.slug)
        error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        _record_failure(tenant, period, error, now)
        return CloseResult(tenant, None, created=False, period=period, error=error)
    BillingAccount.objects.filter(tenant=tenant, close_failed_period_start__lte=period.start).update(
        close_failed_at=None, close_failed_period_start=None, close_error=""
    )
    result.period = period
    return result


def _record_failure(tenant: Tenant, period: Period, error: str, now: datetime) -> None:
    from billing.spend import account_for

    try:
        with transaction.atomic():
            account = account_for(tenant)
            failed = account.close_failed_period_start
            BillingAccount.objects.filter(pk=account.pk).update(
                close_failed_at=now,
                close_failed_period_start=min(failed, period.start) if failed else period.start,
                close_error=error,
            )
    except Exception:  # noqa: BLE001 - e.g. PostgreSQL is down: the log above is all there is
        log.exception("could not record the failed close of %s for %s", period.label, tenant.slug)
