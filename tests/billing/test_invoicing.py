"""Closing periods into invoices: exact lines across a price change, idempotence, late usage."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.core.management import call_command

from billing import invoicing, money
from billing.models import Invoice, InvoiceLine, InvoiceStatus, UsageRecord
from billing.periods import parse_period, period_containing
from tests.billing.usage import record
from tests.factories import TenantFactory
from tests.registry.factories import ModelFactory, PriceFactory

pytestmark = pytest.mark.django_db

OCT = parse_period("2026-10", "month")
NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)


@pytest.fixture
def catalogue():
    chat = ModelFactory(name="chat-a")
    embed = ModelFactory(name="embed-b", task="embedding")
    change = datetime(2026, 10, 15, 9, 30, 17, tzinfo=UTC)  # mid-hour on purpose
    PriceFactory(
        model=chat,
        input_per_million=Decimal("0.15"),
        output_per_million=Decimal("0.60"),
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    PriceFactory(
        model=chat,
        input_per_million=Decimal("0.125"),
        output_per_million=Decimal("0.455"),
        effective_from=change,
    )
    PriceFactory(
        model=embed,
        input_per_million=Decimal("0.02"),
        output_per_million=Decimal("0"),
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return change


def test_a_month_of_mixed_usage_across_a_price_change_is_exact(catalogue):
    change = catalogue
    tenant = TenantFactory()
    rng = random.Random(7)
    expected_tokens: dict[tuple, int] = {}
    at = OCT.start
    while at < OCT.end:
        model = rng.choice(["chat-a", "embed-b"])
        prompt = rng.randint(1, 5000)
        completion = rng.randint(0, 3000) if model == "chat-a" else 0
        record(tenant, model, at, prompt, completion)
        era = "new" if (model == "chat-a" and at >= change) else "old"
        for kind, tokens in (("input", prompt), ("output", completion)):
            if tokens:
                expected_tokens[(model, era, kind)] = expected_tokens.get((model, era, kind), 0) + tokens
        at += timedelta(minutes=rng.randint(7, 95))
    # Two records a second either side of the change land on different prices.
    record(tenant, "chat-a", change - timedelta(seconds=1), 1_000_000, 0)
    record(tenant, "chat-a", change, 1_000_000, 0)
    expected_tokens[("chat-a", "old", "input")] += 1_000_000
    expected_tokens[("chat-a", "new", "input")] += 1_000_000
    # Usage after the period is not on this invoice.
    record(tenant, "chat-a", OCT.end, 999, 999)

    result = invoicing.close_period(tenant=tenant, period=OCT, now=NOW)

    assert result.created
    invoice = result.invoice
    prices = {
        ("chat-a", "old", "input"): Decimal("0.15"),
        ("chat-a", "old", "output"): Decimal("0.60"),
        ("chat-a", "new", "input"): Decimal("0.125"),
        ("chat-a", "new", "output"): Decimal("0.455"),
        ("embed-b", "old", "input"): Decimal("0.02"),
    }
    lines = list(invoice.lines.all())
    got = {}
    for line in lines:
        era = "new" if line.price and line.price.effective_from == change else "old"
        got[(line.model, era, line.kind)] = line
    assert set(got) == set(expected_tokens)
    total = Decimal("0")
    for key, tokens in expected_tokens.items():
        line = got[key]
        assert line.tokens == tokens
        assert line.unit_price_per_million == prices[key]
        # Rounded once per line, half-up to the cent, from the exact product.
        exact = Decimal(tokens) * prices[key] / Decimal(1_000_000)
        assert line.amount == exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        total += line.amount
    assert invoice.subtotal == invoice.total == total
    assert invoice.status == InvoiceStatus.OPEN
    assert invoice.currency == "USD"
    assert invoice.period_start == OCT.start and invoice.period_end == OCT.end
    # Every record of October is claimed by the invoice, the November one is not.
    assert UsageRecord.objects.filter(tenant=tenant, invoice__isnull=True).count() == 1


def test_rounding_happens_once_per_line_not_per_request(catalogue):
    tenant = TenantFactory()
    # 300 requests of 10 prompt tokens at $0.02/M: each request is $0.0000002, rounding each would
    # bill $0; the line is 3,000 tokens -> $0.00006 -> $0.00. At 400,000 tokens it is $0.008 -> $0.01.
    for _ in range(40):
        record(tenant, "embed-b", OCT.start + timedelta(hours=1), 10_000, 0)
    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice
    (line,) = invoice.lines.all()
    assert line.tokens == 400_000
    assert line.amount == Decimal("0.01")
    assert money.line_amount(400_000, Decimal("0.02"), "USD") == Decimal("0.01")
    assert money.line_amount(250_000, Decimal("0.02"), "USD") == Decimal("0.01")  # 0.005 rounds half-up


def test_closing_twice_makes_one_invoice(catalogue):
    tenant = TenantFactory()
    record(tenant, "chat-a", OCT.start + timedelta(days=2), 1000, 500)
    first = invoicing.close_period(tenant=tenant, period=OCT, now=NOW)
    second = invoicing.close_period(tenant=tenant, period=OCT, now=NOW)
    call_command("close_billing_period", "--period", "2026-10", "--tenant", tenant.slug, "--no-stripe")
    assert first.created and not second.created
    assert second.invoice.pk == first.invoice.pk
    assert Invoice.objects.filter(tenant=tenant).count() == 1
    assert InvoiceLine.objects.filter(invoice__tenant=tenant).count() == 2


def test_a_late_event_goes_to_the_next_invoice(catalogue):
    tenant = TenantFactory()
    record(tenant, "chat-a", OCT.start + timedelta(days=3), 2_000_000, 0)
    october = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice
    assert october.total == Decimal("0.30")

    # A usage event for October arrives after October was closed (e.g. a gateway's backlog).
    late = record(tenant, "chat-a", OCT.start + timedelta(days=4), 4_000_000, 0)
    record(tenant, "chat-a", OCT.end + timedelta(days=1), 1_000_000, 0)
    assert invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice.total == Decimal("0.30")

    november = period_containing(OCT.end, "month")
    nov_invoice = invoicing.close_period(tenant=tenant, period=november, now=november.end).invoice
    late.refresh_from_db()
    assert late.invoice_id == nov_invoice.pk
    late_line, current_line = nov_invoice.lines.all()
    # The late request is priced at the price in effect when it ran (0.15/M before the change on
    # the 15th), November's at the newer price (0.125/M): 4M x 0.15 = 0.60, 1M x 0.125 = 0.125.
    assert (late_line.tokens, late_line.unit_price_per_million, late_line.amount) == (
        4_000_000,
        Decimal("0.15"),
        Decimal("0.60"),
    )
    assert (late_line.requests, late_line.late_requests) == (1, 1)
    assert (current_line.tokens, current_line.amount, current_line.late_requests) == (
        1_000_000,
        Decimal("0.13"),
        0,
    )
    assert nov_invoice.total == Decimal("0.73")
    october.refresh_from_db()
    assert october.total == Decimal("0.30")


def test_a_period_that_has_not_ended_cannot_be_closed(catalogue):
    tenant = TenantFactory()
    with pytest.raises(ValueError, match="not ended"):
        invoicing.close_period(tenant=tenant, period=period_containing(NOW, "month"), now=NOW)


def test_no_usage_no_invoice_and_zero_usage_is_not_billed(catalogue):
    tenant = TenantFactory()
    assert invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice is None
    assert not Invoice.objects.exists()


def test_usage_of_an_unpriced_model_is_listed_at_zero(catalogue):
    tenant = TenantFactory()
    record(tenant, "no-price-model", OCT.start + timedelta(days=1), 1234, 56)
    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice
    assert [(line.kind, line.tokens, line.amount) for line in invoice.lines.all()] == [
        ("input", 1234, Decimal("0.00")),
        ("output", 56, Decimal("0.00")),
    ]
    assert invoice.status == InvoiceStatus.PAID  # nothing to pay


def test_tenants_are_billed_separately(catalogue):
    a, b = TenantFactory(), TenantFactory()
    record(a, "chat-a", OCT.start + timedelta(days=1), 1_000_000, 0)
    record(b, "chat-a", OCT.start + timedelta(days=1), 3_000_000, 0)
    results = {r.tenant.pk: r.invoice for r in invoicing.close_all(period=OCT, now=NOW)}
    assert results[a.pk].total == Decimal("0.15")
    assert results[b.pk].total == Decimal("0.45")
    assert results[a.pk].number != results[b.pk].number
