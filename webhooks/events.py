"""Emitting events: one ``WebhookEvent`` per thing that happened, one delivery per endpoint.

Billing calls the ``*_on_commit`` helpers inside its own transactions: the event is written after
that commit (an invoice rolled back sends nothing) and a failure here never undoes the billing
write. Each event has a key (the invoice, the day, the period and threshold), so emitting it again
(a task rerun, a Stripe webhook redelivered) returns the existing event and sends nothing more.
"""

from __future__ import annotations

import logging
import time
from datetime import date

from django.db import IntegrityError, transaction

from webhooks.constants import EventType
from webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

log = logging.getLogger("berth.webhooks")


def envelope(event: WebhookEvent) -> dict:
    """The JSON body every delivery of ``event`` carries (the same bytes on every retry)."""
    return {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created": int(event.created_at.timestamp()),
        "organization": event.tenant.slug,
        "data": event.data,
    }


def _queue(deliveries: list[WebhookDelivery]) -> None:
    from webhooks import tasks

    ids = [str(d.pk) for d in deliveries]
    if ids:
        transaction.on_commit(lambda: [tasks.deliver.delay(i) for i in ids])


def emit(*, tenant, type: str, key: str, data: dict, endpoints=None) -> WebhookEvent | None:
    """Record the event and queue its deliveries; None when no endpoint wants it.

    ``endpoints`` overrides the subscribers (the test event goes to one endpoint).
    """
    targets = list(endpoints if endpoints is not None else WebhookEndpoint.objects.subscribed(tenant, type))
    if not targets:
        return None
    try:
        with transaction.atomic():
            event, created = WebhookEvent.objects.get_or_create(
                tenant=tenant, type=type, key=key, defaults={"data": data}
            )
            if not created:
                return event
            deliveries = WebhookDelivery.objects.bulk_create(
                [WebhookDelivery(event=event, endpoint=endpoint) for endpoint in targets]
            )
            _queue(deliveries)
    except IntegrityError:  # a concurrent emitter recorded it first
        return WebhookEvent.objects.get(tenant=tenant, type=type, key=key)
    log.info("webhook event %s %s for %s: %s deliveries", event.id, type, tenant.slug, len(deliveries))
    return event


def emit_on_commit(*, tenant, type: str, key: str, data: dict) -> None:
    """``emit`` after the caller's transaction commits; errors are logged, never raised."""

    def run() -> None:
        try:
            emit(tenant=tenant, type=type, key=key, data=data)
        except Exception:  # noqa: BLE001 - billing has committed; a lost hook must not fail it
            log.exception("could not emit webhook event %s for %s", type, tenant.slug)

    transaction.on_commit(run)


def send_test(*, endpoint: WebhookEndpoint) -> WebhookEvent:
    event = emit(
        tenant=endpoint.tenant,
        type=EventType.TEST,
        key=f"test-{time.time_ns()}",
        data={"message": "A test event from Berth.", "endpoint": str(endpoint.pk)},
        endpoints=[endpoint],
    )
    if event is None:  # endpoints given: emit always records the event
        raise RuntimeError("the test event was not recorded")
    return event


def _money(value) -> str:
    return f"{value}"


def invoice_data(invoice) -> dict:
    return {
        "invoice": {
            "id": str(invoice.pk),
            "number": invoice.number,
            "status": invoice.status,
            "currency": invoice.currency,
            "subtotal": _money(invoice.subtotal),
            "total": _money(invoice.total),
            "period_start": invoice.period_start.isoformat(),
            "period_end": invoice.period_end.isoformat(),
            "due_at": invoice.due_at.isoformat() if invoice.due_at else None,
            "paid_at": invoice.paid_at.isoformat() if invoice.paid_at else None,
        }
    }


def invoice_on_commit(*, invoice, type: str) -> None:
    """``invoice.created`` or ``invoice.paid`` for ``invoice``, once per invoice."""
    emit_on_commit(tenant=invoice.tenant, type=type, key=str(invoice.pk), data=invoice_data(invoice))


def spend_threshold_on_commit(*, tenant, period, threshold: int, spend, limit, currency: str) -> None:
    emit_on_commit(
        tenant=tenant,
        type=EventType.SPEND_THRESHOLD,
        key=f"{period.start.isoformat()}:{threshold}",
        data={
            "threshold_percent": threshold,
            "spend": _money(spend),
            "limit": _money(limit),
            "currency": currency,
            "period_start": period.start.isoformat(),
            "period_end": period.end.isoformat(),
            "blocked": spend >= limit,
        },
    )


def usage_daily(*, tenant, day: date) -> WebhookEvent | None:
    """``usage.daily`` for ``day`` (UTC): tokens and estimated cost per model."""
    from django.conf import settings

    from billing import reports

    if not WebhookEndpoint.objects.subscribed(tenant, EventType.USAGE_DAILY).exists():
        return None
    rows = reports.usage_by_day(tenant, *reports.day_bounds(day, day))
    totals = reports.totals(rows)
    models = [
        {
            "model": row.model,
            "requests": row.requests,
            "errors": row.errors,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.total_tokens,
            "cost": f"{row.cost:.6f}",
        }
        for row in rows
    ]
    totals["cost"] = f"{totals['cost']:.6f}"
    data = {
        "date": day.isoformat(),
        "currency": settings.BILLING_CURRENCY,
        "models": models,
        "totals": totals,
    }
    return emit(tenant=tenant, type=EventType.USAGE_DAILY, key=day.isoformat(), data=data)
