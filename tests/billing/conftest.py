"""Billing fixtures: a local Stripe-wire server, webhook signing, and invoices built from usage."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from datetime import UTC, datetime

import pytest

from billing import invoicing
from billing.models import UsageRecord
from billing.periods import period_containing
from tests.billing.fake_stripe import API_KEY, FakeStripe

# The real gateway and fake engines, for end-to-end billing (session-scoped, started on first use).
from tests.gateway.conftest import engines, gateway  # noqa: F401

WEBHOOK_SECRET = "whsec_berth_test"
PAST = datetime(2026, 9, 15, 12, tzinfo=UTC)
CLOSED_AT = datetime(2026, 10, 2, tzinfo=UTC)
_request_ids = itertools.count(1)


@pytest.fixture
def fake_stripe(settings):
    server = FakeStripe().start()
    settings.STRIPE_SECRET_KEY = API_KEY
    settings.STRIPE_API_BASE = server.url
    yield server
    server.stop()


@pytest.fixture
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return WEBHOOK_SECRET


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header as Stripe builds it: HMAC-SHA256 of ``"<t>.<payload>"``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def post_event(client, event: dict, **kwargs):
    payload = json.dumps(event).encode()
    headers = {"HTTP_STRIPE_SIGNATURE": kwargs.pop("signature", None) or sign(payload, **kwargs)}
    return client.post("/billing/stripe/webhook/", payload, content_type="application/json", **headers)


def invoice_event(event_id: str, type_: str, invoice, **fields) -> dict:
    obj = {
        "id": invoice.stripe_invoice_id or "in_unknown",
        "object": "invoice",
        "metadata": {"berth_invoice_id": str(invoice.pk)},
        **fields,
    }
    return {"id": event_id, "object": "event", "type": type_, "data": {"object": obj}}


def add_usage(tenant, model_name: str, prompt: int, completion: int, at: datetime = PAST) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=f"req-{next(_request_ids)}",
        tenant=tenant,
        model=model_name,
        endpoint="chat",
        prompt_tokens=prompt,
        completion_tokens=completion,
        status="ok",
        http_status=200,
        occurred_at=at,
    )


def closed_invoice(tenant, usage: list[tuple[str, int, int]]):
    """Close September 2026 for ``tenant`` after recording ``usage`` as (model, prompt, completion)."""
    for model_name, prompt, completion in usage:
        add_usage(tenant, model_name, prompt, completion)
    result = invoicing.close_period(tenant=tenant, period=period_containing(PAST, "month"), now=CLOSED_AT)
    assert result.created
    return result.invoice
