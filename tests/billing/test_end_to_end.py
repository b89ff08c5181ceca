"""Issue-level check: traffic through the gateway (openai SDK) → ``close_billing_period`` → an
invoice whose lines equal the usage records × prices to the cent → a PDF that opens → exactly one
invoice at the Stripe-speaking server, however often the command runs."""

from __future__ import annotations

import io
from collections import defaultdict
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import openai
import pytest
from django.core.management import call_command
from django.utils import timezone
from pypdf import PdfReader

from billing import pdf
from billing.models import Invoice, UsageRecord
from billing.money import format_money
from billing.periods import period_containing
from models_registry.models import Price
from tests.gateway.conftest import make_key, make_tenant, register_model
from tests.gateway.test_usage import drain
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db


def test_gateway_traffic_is_invoiced_to_the_cent_and_sent_to_stripe_once(
    gateway, engines, redis_client, fake_stripe, time_machine
):
    tenant = make_tenant()
    chat = register_model(redis_client, engines)
    embed = register_model(redis_client, engines, task="embedding")
    prices = {
        chat: (Decimal("3500"), Decimal("14000")),
        embed: (Decimal("133"), Decimal("0")),
    }
    for name, (inp, out) in prices.items():
        Price.objects.create(model=ModelFactory(name=name), input_per_million=inp, output_per_million=out)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    for i in range(12):
        client.chat.completions.create(
            model=chat, messages=[{"role": "user", "content": "word " * (i + 1)}], max_tokens=3 + i
        )
        stream = client.chat.completions.create(
            model=chat,
            messages=[{"role": "user", "content": "stream " * (i + 2)}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        for _ in stream:
            pass
        client.embeddings.create(model=embed, input=["text " * (i + 1)])
    drain()
    records = list(UsageRecord.objects.filter(tenant=tenant))
    assert len(records) == 36

    # The period ends; beat (or an operator) closes it.
    period = period_containing(timezone.now())
    time_machine.move_to(period.end + timedelta(hours=1), tick=False)
    call_command("close_billing_period")
    call_command("close_billing_period")  # idempotent: no second invoice, nothing new at Stripe

    invoice = Invoice.objects.get(tenant=tenant)  # read after both runs: Stripe ids saved
    tokens = defaultdict(int)
    for r in records:
        tokens[(r.model, "input")] += r.prompt_tokens
        tokens[(r.model, "output")] += r.completion_tokens
    expected = {}
    for (model, kind), count in tokens.items():
        if count:
            unit = prices[model][0 if kind == "input" else 1]
            exact = Decimal(count) * unit / Decimal(1_000_000)
            expected[(model, kind)] = (count, exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    got = {(line.model, line.kind): (line.tokens, line.amount) for line in invoice.lines.all()}
    assert got == expected
    assert invoice.total == sum(amount for _, amount in expected.values())

    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.render(invoice))).pages)
    assert invoice.number in text and format_money(invoice.total, "USD") in text

    assert invoice.total > Decimal("1")
    assert len(fake_stripe.creates("/v1/invoices")) == 1
    assert len(fake_stripe.creates("/v1/customers")) == 1
    assert len(fake_stripe.creates("/v1/invoiceitems")) == len(expected)
    assert invoice.stripe_invoice_id and invoice.stripe_hosted_url
