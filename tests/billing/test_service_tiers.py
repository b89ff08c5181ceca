"""Billing by service tier: default, flex, priority and batch records priced at their percent.

One price row bills a record in tier T at the row's prices × ``Price.tier_percent(T)`` / 100
(input, cached input and output alike), exact until the line's amount is rounded once. The
gateway's spend counter (``contract.spend``) must agree with billing's spend on the same records.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from pypdf import PdfReader
from rest_framework.test import APIClient

from billing import invoicing, money, pdf, pricing, reports, spend, stripe_sync
from billing.models import InvoiceLine, UsageRecord
from billing.periods import parse_period
from contract import spend as contract_spend
from contract import tiers
from tests.billing.usage import record
from tests.factories import TenantFactory, member
from tests.registry.factories import ModelFactory, PriceFactory

pytestmark = pytest.mark.django_db

OCT = parse_period("2026-10", "month")
NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
# Prices with six decimals, so a tier's percent gives a unit price with more than six.
INPUT, CACHED, OUTPUT = Decimal("0.123457"), Decimal("0.061729"), Decimal("0.987651")


def cents(exact: Decimal) -> Decimal:
    return exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def priced(name="tier-chat", **percents):
    model = ModelFactory(name=name)
    price = PriceFactory(
        model=model,
        input_per_million=INPUT,
        cached_input_per_million=CACHED,
        output_per_million=OUTPUT,
        effective_from=SINCE,
        **percents,
    )
    return model, price


def four_tiers(tenant, model="tier-chat", at=None):
    """The same traffic in every tier: 3,000,001 prompt tokens (1,000,003 cached), 777,777 output."""
    at = at or OCT.start + timedelta(days=3)
    for tier in tiers.BILLED_TIERS:
        batch = "batch_abc" if tier == tiers.BATCH else ""
        record(
            tenant,
            model,
            at,
            3_000_001,
            777_777,
            cached_tokens=1_000_003,
            service_tier=tier,
            batch_id=batch,
            queue_ms=250 if tier == tiers.FLEX else 0,
        )


def expected_lines(percents: dict[str, Decimal]) -> dict[tuple, tuple]:
    out = {}
    for tier in tiers.BILLED_TIERS:
        factor = percents[tier] / 100
        for kind, tokens, base in (
            ("input", 1_999_998, INPUT),
            ("cached", 1_000_003, CACHED),
            ("output", 777_777, OUTPUT),
        ):
            unit = base * factor
            out[(tier, kind)] = (tokens, unit, cents(Decimal(tokens) * unit / 1_000_000))
    return out


DEFAULTS = {tier: Decimal(pct) for tier, pct in tiers.DEFAULT_PRICE_PERCENT.items()}


def lines_by_tier(invoice) -> dict[tuple, tuple]:
    return {
        (line.service_tier, line.kind): (line.tokens, line.unit_price_per_million, line.amount)
        for line in invoice.lines.all()
    }


def test_an_invoice_bills_each_tier_at_its_default_percent_exactly():
    priced()
    tenant = TenantFactory()
    four_tiers(tenant)

    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice

    want = expected_lines(DEFAULTS)
    assert lines_by_tier(invoice) == want
    # 100 / 50 / 200 / 50 %: flex's unit price has more decimals than the price row's six.
    assert want[("flex", "input")][1] == Decimal("0.0617285")
    assert invoice.total == sum(amount for _, _, amount in want.values())
    # Lines of one model and price: default, flex, priority, batch; input, cached, output in each.
    order = [(line.service_tier, line.kind) for line in invoice.lines.order_by("position")]
    assert order == [(t, k) for t in tiers.BILLED_TIERS for k in ("input", "cached", "output")]


def test_a_price_rows_own_percents_replace_the_defaults():
    priced(flex_percent=Decimal("37.5"), priority_percent=Decimal("150.25"), batch_percent=Decimal("0"))
    tenant = TenantFactory()
    four_tiers(tenant)

    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice

    percents = {
        "default": Decimal(100),
        "flex": Decimal("37.5"),
        "priority": Decimal("150.25"),
        "batch": Decimal(0),
    }
    assert lines_by_tier(invoice) == expected_lines(percents)
    assert all(line.amount == 0 for line in invoice.lines.filter(service_tier="batch"))


def test_the_operator_default_percents_come_from_settings(settings):
    settings.TIER_PRICE_PERCENT = {"flex": Decimal(60), "priority": Decimal(300), "batch": Decimal(25)}
    priced()
    tenant = TenantFactory()
    four_tiers(tenant)

    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice

    percents = {"default": Decimal(100), "flex": Decimal(60), "priority": Decimal(300), "batch": Decimal(25)}
    assert lines_by_tier(invoice) == expected_lines(percents)


def test_a_price_change_mid_period_splits_every_tier_exactly():
    model, _ = priced()
    change = datetime(2026, 10, 15, 9, 30, 17, tzinfo=UTC)
    PriceFactory(
        model=model,
        input_per_million=Decimal("0.2"),
        output_per_million=Decimal("0.8"),
        flex_percent=Decimal("40"),
        effective_from=change,
    )
    tenant = TenantFactory()
    for tier in tiers.BILLED_TIERS:
        record(tenant, "tier-chat", change - timedelta(seconds=1), 1_000_000, 333_333, service_tier=tier)
        record(tenant, "tier-chat", change, 1_000_000, 333_333, service_tier=tier)

    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice

    got = {
        (line.price.effective_from == change, line.service_tier, line.kind): (
            line.unit_price_per_million,
            line.amount,
        )
        for line in invoice.lines.all()
    }
    old = {"default": 100, "flex": 50, "priority": 200, "batch": 50}
    new = {"default": 100, "flex": 40, "priority": 200, "batch": 50}
    want = {}
    for after, percents, prices in (
        (False, old, (INPUT, OUTPUT)),
        (True, new, (Decimal("0.2"), Decimal("0.8"))),
    ):
        for tier, pct in percents.items():
            for kind, tokens, base in (("input", 1_000_000, prices[0]), ("output", 333_333, prices[1])):
                unit = base * Decimal(pct) / 100
                want[(after, tier, kind)] = (unit, cents(Decimal(tokens) * unit / 1_000_000))
    assert got == want
    assert sum(line.tokens for line in invoice.lines.all()) == 8 * 1_333_333


def test_records_without_a_tier_bill_as_default():
    priced()
    tenant = TenantFactory()
    old = record(tenant, "tier-chat", OCT.start + timedelta(days=1), 1_000_000, 1_000_000)
    assert old.service_tier == "default"  # the column's default for rows written before tiers
    blank = record(tenant, "tier-chat", OCT.start + timedelta(days=2), 1_000_000, 0)
    UsageRecord.objects.filter(pk=blank.pk).update(service_tier="")

    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice

    assert [
        (line.service_tier, line.kind, line.tokens, line.unit_price_per_million)
        for line in invoice.lines.all()
    ] == [
        ("default", "input", 2_000_000, INPUT),
        ("default", "output", 1_000_000, OUTPUT),
    ]


def test_descriptions_the_pdf_and_stripe_items_name_the_tier():
    priced()
    tenant = TenantFactory()
    four_tiers(tenant)
    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice
    flex_out = invoice.lines.get(service_tier="flex", kind="output")
    batch_in = invoice.lines.get(service_tier="batch", kind="input")
    default_in = invoice.lines.get(service_tier="default", kind="input")

    assert flex_out.description == "tier-chat — output tokens, flex"
    assert batch_in.description == "tier-chat — input tokens, batch"
    assert default_in.description == "tier-chat — input tokens"
    # Stripe gets the exact unit price with all its decimals, and the tier in text and metadata.
    assert stripe_sync.line_description(flex_out, "USD") == (
        "tier-chat — output tokens, flex: 777,777 × $0.4938255/M"
    )
    params = stripe_sync.item_params(flex_out, invoice, "cus_1", "in_1")
    assert params["metadata"]["service_tier"] == "flex"
    assert params["amount"] == money.to_minor_units(flex_out.amount, "USD")
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.render(invoice))).pages)
    assert "output tokens, flex" in text and "input tokens, batch" in text and "priority" in text


def test_spend_and_the_gateway_counter_agree_on_the_same_records(settings):
    """Billing's exact spend (micro-units) equals the sum of the gateway's per-request costs at the
    mirrored prices when every request's cost is a whole number of micro-units, and is never above
    it otherwise (the gateway rounds each request up)."""
    from models_registry import mirror

    model, price = priced(priority_percent=Decimal("133.33"))
    tenant = TenantFactory()
    now = datetime.now(UTC)
    requests = [
        (tiers.DEFAULT, 1_000, 500, 0),
        (tiers.FLEX, 2_345, 678, 1_000),
        (tiers.PRIORITY, 999_999, 1, 7),
        (tiers.BATCH, 10, 10, 0),
        (tiers.FLEX, 1, 0, 0),
    ]
    for tier, prompt, completion, cached in requests:
        record(tenant, model.name, now, prompt, completion, cached_tokens=cached, service_tier=tier)
    fields = mirror.price_fields(model)

    def gateway_cost(tier, prompt, completion, cached):
        return contract_spend.tier_cost_micros(
            prompt,
            completion,
            int(fields["price_input_micros"]),
            int(fields["price_output_micros"]),
            tier=tier,
            mirrored=fields,
            cached_tokens=cached,
            cached_micros=int(fields["price_cached_input_micros"]),
        )

    each = [gateway_cost(*r) for r in requests]
    # One request alone: exactly billing's exact cost rounded up to a micro-unit.
    for (tier, prompt, completion, cached), micros in zip(requests, each, strict=True):
        unit = {k: getattr(price, k) for k in ("input_per_million", "output_per_million")}
        exact = (
            (
                (prompt - cached) * unit["input_per_million"]
                + cached * CACHED
                + completion * unit["output_per_million"]
            )
            * price.tier_percent(tier)
            / 100
        )
        assert micros == contract_spend.to_micros(exact / 1_000_000)
    status = spend.check_tenant(tenant=tenant, now=now)
    lines = reports.priced(tenant, now - timedelta(days=40), now + timedelta(days=1))
    exact_total = sum((line.exact_cost() for line in lines), Decimal(0))
    assert status.spend_micros == contract_spend.to_micros(exact_total)
    assert status.spend_micros <= sum(each) < status.spend_micros + len(requests)
    assert {line.tier for line in lines} == set(tiers.BILLED_TIERS)


def test_usage_reports_split_by_tier_and_the_api_shows_it():
    priced()
    tenant = TenantFactory()
    four_tiers(tenant)
    rows = reports.usage_by_day(tenant, OCT.start, OCT.end, split_tiers=True)
    assert [r.service_tier for r in rows] == list(tiers.BILLED_TIERS)
    want = expected_lines(DEFAULTS)
    for row in rows:
        exact = sum(
            Decimal(want[(row.service_tier, k)][0]) * want[(row.service_tier, k)][1]
            for k in ("input", "cached", "output")
        )
        assert row.cost == exact / 1_000_000
    # Without the split: one row per day and model, the same cost.
    (whole,) = reports.usage_by_day(tenant, OCT.start, OCT.end)
    assert whole.service_tier == "" and whole.cost == sum(r.cost for r in rows)

    client = APIClient()
    client.force_login(member(tenant, "owner"))
    body = client.get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"}).json()
    assert [(r["service_tier"], r["requests"]) for r in body["data"]] == [(t, 1) for t in tiers.BILLED_TIERS]
    assert len(body["models"]) == 1 and body["models"][0]["requests"] == 4


def test_the_invoice_api_shows_the_tier_and_the_exact_unit_price():
    priced()
    tenant = TenantFactory()
    four_tiers(tenant)
    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice
    client = APIClient()
    client.force_login(member(tenant, "billing"))
    lines = client.get(f"/api/v1/invoices/{invoice.pk}").json()["lines"]
    got = {(line["service_tier"], line["kind"]): line["unit_price_per_million"] for line in lines}
    assert got[("default", "input")] == "0.123457"
    assert got[("flex", "input")] == "0.0617285"
    assert got[("priority", "output")] == "1.975302"
    assert got[("batch", "cached")] == "0.0308645"
    # Another tenant's members do not see it.
    other = APIClient()
    other.force_login(member(TenantFactory(), "owner"))
    assert other.get(f"/api/v1/invoices/{invoice.pk}").status_code == 404
    usage = other.get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"}).json()
    assert usage["data"] == []


def console_login(client, tenant, role="owner"):
    client.force_login(member(tenant, role))
    client.post("/switch/", {"tenant": str(tenant.pk)})


def test_the_console_usage_page_csv_and_invoice_page_show_the_tier(client):
    priced()
    tenant, other = TenantFactory(), TenantFactory()
    today = datetime.now(UTC)
    four_tiers(tenant, at=today - timedelta(hours=1))
    record(other, "tier-chat", today - timedelta(hours=1), 5, 5, service_tier="priority")
    console_login(client, tenant)

    html = client.get("/usage/").content.decode()
    assert '<th scope="col">Tier</th>' in html
    for tier in tiers.BILLED_TIERS:
        assert f'class="tier tier-{tier}">{tier}</td>' in html

    day = today.date().isoformat()
    response = client.get("/usage.csv", {"start": day, "end": day})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted((r["service_tier"], r["queue_ms"], r["batch_id"]) for r in rows) == [
        ("batch", "0", "batch_abc"),
        ("default", "0", ""),
        ("flex", "250", ""),
        ("priority", "0", ""),
    ]
    daily = client.get("/usage.csv", {"start": day, "end": day, "granularity": "day"})
    rows = list(csv.DictReader(io.StringIO(b"".join(daily.streaming_content).decode())))
    assert [r["service_tier"] for r in rows] == list(tiers.BILLED_TIERS)

    UsageRecord.objects.filter(tenant=tenant).update(occurred_at=OCT.start + timedelta(days=1))
    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice
    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert page.count('class="tier tier-batch">batch</td>') == 3
    assert page.count('class="tier tier-flex">flex</td>') == 3
    # The other tenant's invoice stays out of reach.
    UsageRecord.objects.filter(tenant=other).update(occurred_at=OCT.start + timedelta(days=1))
    theirs = invoicing.close_period(tenant=other, period=OCT, now=NOW).invoice
    assert client.get(f"/billing/invoices/{theirs.pk}/").status_code == 404


def test_priced_lines_carry_the_tier_and_keep_exact_cost_semantics():
    priced()
    tenant = TenantFactory()
    record(tenant, "tier-chat", OCT.start + timedelta(days=1), 3, 0, service_tier="flex")
    (line,) = pricing.priced_lines(UsageRecord.objects.filter(tenant=tenant), currency="USD")
    assert (line.tier, line.tier_percent, line.base_unit_price) == ("flex", Decimal(50), INPUT)
    assert line.exact_cost() == Decimal(3) * INPUT / 2 / 1_000_000
    assert line.amount("USD") == Decimal("0.00")
    assert isinstance(InvoiceLine._meta.get_field("service_tier").default, str)


def test_the_usage_records_api_lists_requests_with_tier_queue_and_batch():
    priced()
    tenant, other = TenantFactory(), TenantFactory()
    at = datetime(2026, 10, 5, 12, tzinfo=UTC)
    four_tiers(tenant, at=at)
    record(other, "tier-chat", at, 5, 5, service_tier="batch", batch_id="batch_theirs")
    client = APIClient()
    client.force_login(member(tenant, "member"))

    body = client.get("/api/v1/usage/requests", {"start": "2026-10-01", "end": "2026-10-31"}).json()
    assert body["count"] == 4
    got = sorted(
        (r["service_tier"], r["queue_ms"], r["batch_id"], r["total_tokens"]) for r in body["results"]
    )
    assert got == [
        ("batch", 0, "batch_abc", 3_777_778),
        ("default", 0, "", 3_777_778),
        ("flex", 250, "", 3_777_778),
        ("priority", 0, "", 3_777_778),
    ]
    only = client.get("/api/v1/usage/requests", {"start": "2026-10-01", "batch_id": "batch_abc"}).json()
    assert [r["service_tier"] for r in only["results"]] == ["batch"]
    flex = client.get("/api/v1/usage/requests", {"start": "2026-10-01", "service_tier": "flex"}).json()
    assert [r["queue_ms"] for r in flex["results"]] == [250]
    # Another tenant's batch is not visible, even by its id.
    theirs = client.get("/api/v1/usage/requests", {"start": "2026-10-01", "batch_id": "batch_theirs"}).json()
    assert theirs["count"] == 0
    # Bad filters are DRF errors naming them.
    bad = client.get("/api/v1/usage/requests", {"service_tier": "gold", "start": ""})
    assert bad.status_code == 400 and "start" in bad.json()
    bad = client.get("/api/v1/usage/requests", {"service_tier": "gold"})
    assert bad.status_code == 400 and "service_tier" in bad.json()
    assert (
        client.get("/api/v1/usage/requests", {"start": "2026-10-05", "end": "2026-10-01"}).status_code == 400
    )
