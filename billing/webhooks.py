"""Stripe's webhook: invoice payments, failures, voids and write-offs flow back into Berth.

Each event is verified with ``STRIPE_WEBHOOK_SECRET`` (Stripe's signature scheme, five minutes of
tolerance) and stored as a ``StripeEvent`` in the same transaction as its effects, so a replayed
event (same id) is acknowledged and changes nothing. Events Berth does not act on, and events
about invoices Berth does not know, are stored and acknowledged with 200 so Stripe stops resending.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from audit import trail
from billing import dunning
from billing.models import Invoice, InvoiceStatus, StripeEvent
from webhooks import events as webhook_events
from webhooks.constants import EventType

log = logging.getLogger("berth.billing")


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        return _error(503, "Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET is not set).")
    signature = request.headers.get("Stripe-Signature")
    if not signature:
        return _error(400, "Missing Stripe-Signature header.")
    payload = request.body
    try:
        # What stripe.Webhook.construct_event verifies, without its parsing, which fails with an
        # AttributeError (a 500) on a correctly signed body that is not a JSON object.
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature, secret, stripe.Webhook.DEFAULT_TOLERANCE
        )
        event = json.loads(payload)
    except stripe.SignatureVerificationError:
        return _error(400, "Invalid Stripe signature.")
    except ValueError:  # not UTF-8 or not JSON
        return _error(400, "Invalid payload.")
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event.get("type"):
        return _error(400, "Not a Stripe event.")
    event_id, event_type = event["id"][:255], str(event["type"])[:100]
    with transaction.atomic():
        try:
            with transaction.atomic():
                stored = StripeEvent.objects.create(id=event_id, type=event_type, payload=event)
        except IntegrityError:
            log.info("Stripe event %s (%s) replayed: ignored", event_id, event_type)
            return JsonResponse({"received": True, "replayed": True})
        outcome = handle(event)
        stored.processed_at = timezone.now()
        stored.save(update_fields=["processed_at"])
    return JsonResponse({"received": True, "outcome": outcome})


def _object(event: dict) -> dict:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def find_invoice(obj: dict) -> Invoice | None:
    stripe_id = obj.get("id")
    if isinstance(stripe_id, str) and stripe_id:
        found = Invoice.objects.select_for_update().filter(stripe_invoice_id=stripe_id).first()
        if found:
            return found
    metadata = obj.get("metadata")
    berth_id = metadata.get("berth_invoice_id") if isinstance(metadata, dict) else None
    try:
        berth_uuid = uuid.UUID(str(berth_id))
    except ValueError:
        return None
    return Invoice.objects.select_for_update().filter(pk=berth_uuid).first()


def _timestamp(value) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return None


def handle(event: dict) -> str:
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return "ignored"
    obj = _object(event)
    invoice = find_invoice(obj)
    if invoice is None:
        log.warning("Stripe event %s (%s): unknown invoice %r", event["id"], event["type"], obj.get("id"))
        return "unknown invoice"
    return handler(invoice, obj)


def invoice_paid(invoice: Invoice, obj: dict) -> str:
    if invoice.status == InvoiceStatus.PAID:
        return "already paid"
    if invoice.status == InvoiceStatus.VOID:
        log.warning("invoice %s is void in Berth but paid in Stripe", invoice.number)
    transitions = obj.get("status_transitions")
    paid_at = _timestamp(transitions.get("paid_at")) if isinstance(transitions, dict) else None
    previous = invoice.status
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = paid_at or timezone.now()
    invoice.save(update_fields=["status", "paid_at"])
    resumed = dunning.settle(invoice.tenant)
    trail.record(  # recorded last: the chain's lock after every row lock (audit.trail)
        action="invoice.paid",
        tenant=invoice.tenant,
        actor_label="stripe",
        target=invoice,
        summary=f"{invoice.number} paid in Stripe ({invoice.currency} {invoice.total})",
        before={"status": previous},
        after={"status": invoice.status, "paid_at": invoice.paid_at},
    )
    webhook_events.invoice_on_commit(invoice=invoice, type=EventType.INVOICE_PAID)
    return "paid, tenant resumed" if resumed else "paid"


def invoice_payment_failed(invoice: Invoice, obj: dict) -> str:
    warned = dunning.payment_failed(invoice)
    return "payment failed, warning sent" if warned else "payment failed"


def _set_status(status: str):
    def apply(invoice: Invoice, obj: dict) -> str:
        if invoice.status == InvoiceStatus.PAID:
            log.warning("invoice %s is paid in Berth; Stripe says %s", invoice.number, status)
            return "already paid"
        invoice.status = status
        invoice.save(update_fields=["status"])
        dunning.settle(invoice.tenant)
        return status

    return apply


HANDLERS = {
    "invoice.paid": invoice_paid,
    "invoice.payment_succeeded": invoice_paid,
    "invoice.payment_failed": invoice_payment_failed,
    "invoice.voided": _set_status(InvoiceStatus.VOID),
    "invoice.marked_uncollectible": _set_status(InvoiceStatus.UNCOLLECTIBLE),
}
