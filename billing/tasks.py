"""Celery beat tasks of billing: close periods, push invoices to Stripe, spend checks, dunning."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger("berth.billing")


@shared_task(name="billing.tasks.close_periods")
def close_periods() -> int:
    """Close the last ended period for every tenant (idempotent), then sync new invoices to Stripe."""
    from billing import invoicing

    results = invoicing.close_all()
    created = [r for r in results if r.created]
    for result in created:
        log.info(result.message)
    sync_pending_invoices()
    return len(created)


@shared_task(name="billing.tasks.sync_pending_invoices")
def sync_pending_invoices() -> int:
    """Create in Stripe every open invoice not there yet (a no-op without STRIPE_SECRET_KEY)."""
    from billing import stripe_sync

    return stripe_sync.sync_pending()


@shared_task(name="billing.tasks.check_spend")
def check_spend() -> int:
    """Spend limits and budget alerts for every tenant (billing/spend.py)."""
    from billing import spend

    return spend.check_all()


@shared_task(name="billing.tasks.enforce_payment_grace")
def enforce_payment_grace() -> int:
    """Suspend tenants whose failed payment is still unpaid after PAYMENT_GRACE_DAYS."""
    from billing import dunning

    return len(dunning.enforce_grace())
