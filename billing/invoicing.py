"""Closing billing periods into invoices.

``close_period`` is idempotent: an invoice is unique per (tenant, period start), and usage records
are *claimed* by the invoice that bills them (``UsageRecord.invoice``) in the same transaction. A
record that arrives after its period was closed is still unclaimed, so the next period's invoice
claims it (its line counts it under ``late_requests``): nothing is billed twice or dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import money, pricing
from billing.models import Invoice, InvoiceLine, InvoiceStatus, UsageRecord
from billing.periods import Period, period_containing
from tenants.models import Tenant

log = logging.getLogger("berth.billing")


@dataclass
class CloseResult:
    tenant: Tenant
    invoice: Invoice | None
    created: bool

    @property
    def message(self) -> str:
        if self.invoice is None:
            return f"{self.tenant.slug}: no unbilled usage"
        verb = "created" if self.created else "already closed"
        return (
            f"{self.tenant.slug}: {self.invoice.number} {verb}, {self.invoice.currency} {self.invoice.total}"
        )


def invoice_number(tenant: Tenant, period: Period) -> str:
    return f"{tenant.slug[:20].upper()}-{period.start:%Y%m%d}"


def close_period(*, tenant: Tenant, period: Period, now: datetime | None = None) -> CloseResult:
    """Invoice ``tenant``'s unbilled usage up to ``period.end``; a no-op if already closed."""
    now = now or timezone.now()
    if period.end > now:
        raise ValueError(f"the period {period.label} has not ended yet")
    existing = Invoice.objects.filter(tenant=tenant, period_start=period.start).first()
    if existing is not None:
        return CloseResult(tenant, existing, created=False)
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
            claimed = UsageRecord.objects.filter(
                tenant=tenant, invoice__isnull=True, occurred_at__lt=period.end
            ).update(invoice=invoice)
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
            invoice.subtotal = sum((row.amount for row in rows), money.round_money(0, currency))
            invoice.total = invoice.subtotal
            invoice.status = InvoiceStatus.OPEN
            invoice.finalized_at = now
            invoice.due_at = now + timedelta(days=settings.INVOICE_DAYS_UNTIL_DUE)
            if invoice.total == 0:
                invoice.status, invoice.paid_at = InvoiceStatus.PAID, now
            invoice.save()
    except IntegrityError:
        # Another closer won the race for this (tenant, period): its invoice stands.
        existing = Invoice.objects.filter(tenant=tenant, period_start=period.start).first()
        if existing is None:
            raise
        return CloseResult(tenant, existing, created=False)
    log.info("closed %s for %s: %s %s", invoice.number, tenant.slug, invoice.currency, invoice.total)
    return CloseResult(tenant, invoice, created=True)


def close_all(*, period: Period | None = None, tenant: Tenant | None = None, now=None) -> list[CloseResult]:
    """Close ``period`` (the last ended one by default) for one tenant or every tenant."""
    now = now or timezone.now()
    period = period or period_containing(now).previous()
    tenants = [tenant] if tenant else Tenant.objects.order_by("slug")
    results = []
    for each in tenants:
        try:
            results.append(close_period(tenant=each, period=period, now=now))
        except pricing.CurrencyMismatch:
            log.exception("cannot close %s for %s", period.label, each.slug)
    return results
