"""Cached input tokens from the usage record to every place a tenant or an operator reads them:
the cached-input price (its own, or the configured fraction of the input price), invoice lines,
the usage API and console pages with the cache hit rate, the CSVs, the mirror, the spend counter's
arithmetic, and the registry's API. Amounts are computed by hand."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from berth.redis import names
from billing import invoicing, reports
from billing.models import TokenKind
from billing.periods import parse_period
from contract.spend import cost_micros
from models_registry import mirror
from models_registry.models import Price
from tests.billing.usage import record
from tests.factories import TenantFactory, member
from tests.registry.factories import ModelFactory, PriceFactory, priced_model

pytestmark = pytest.mark.django_db

OCT = parse_period("2026-10", "month")
NOW = datetime(2026, 11, 3, tzinfo=UTC)
DAY1, DAY2 = OCT.start + timedelta(days=1), OCT.start + timedelta(days=2)


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def usage(settings):
    """Two models: one with its own cached price, one falling back to 25 % of its input price."""
    settings.CACHED_INPUT_FRACTION = Decimal("0.25")
    own = ModelFactory(name="chat-own")
    PriceFactory(
        model=own,
        input_per_million=Decimal("2.00"),
        output_per_million=Decimal("8.00"),
        cached_input_per_million=Decimal("0.50"),
        effective_from=datetime(2025, 1, 1, tzinfo=UTC),
    )
    priced_model("chat-default", "1.20", "4.00")
    tenant = TenantFactory()
    record(tenant, "chat-own", DAY1, 3_000_000, 1_000_000, cached_tokens=2_000_000)
    record(tenant, "chat-own", DAY2, 1_000_000, 500_000, cached_tokens=0)
    record(tenant, "chat-default", DAY1, 2_000_000, 100_000, cached_tokens=1_500_000)
    return tenant


def test_the_cached_price_is_its_own_or_the_configured_fraction_of_input(settings):
    settings.CACHED_INPUT_FRACTION = Decimal("0.5")
    assert Price(input_per_million=Decimal("0.15")).cached_input_price == Decimal("0.075")
    assert (
        Price(input_per_million=Decimal("0.15"), cached_input_per_million=Decimal("0")).cached_input_price
        == 0
    )
    settings.CACHED_INPUT_FRACTION = Decimal("0.1")
    assert Price(input_per_million=Decimal("0.125")).cached_input_price == Decimal("0.012500")


def test_invoices_bill_cached_input_on_its_own_line_at_the_cached_price(usage):
    invoice = invoicing.close_period(tenant=usage, period=OCT, now=NOW).invoice
    lines = [
        (line.model, line.kind, line.tokens, line.unit_price_per_million, line.amount)
        for line in invoice.lines.all()
    ]
    assert lines == [
        # 2.0M uncached + 0 → input; cached 1.5M at 0.30 (25 % of 1.20)
        ("chat-default", TokenKind.INPUT, 500_000, Decimal("1.200000"), Decimal("0.60")),
        ("chat-default", TokenKind.CACHED, 1_500_000, Decimal("0.300000"), Decimal("0.45")),
        ("chat-default", TokenKind.OUTPUT, 100_000, Decimal("4.000000"), Decimal("0.40")),
        # (3M − 2M) + 1M uncached at 2.00; 2M cached at its own 0.50
        ("chat-own", TokenKind.INPUT, 2_000_000, Decimal("2.000000"), Decimal("4.00")),
        ("chat-own", TokenKind.CACHED, 2_000_000, Decimal("0.500000"), Decimal("1.00")),
        ("chat-own", TokenKind.OUTPUT, 1_500_000, Decimal("8.000000"), Decimal("12.00")),
    ]
    assert invoice.total == Decimal("18.45")
    cached_line = invoice.lines.get(model="chat-own", kind=TokenKind.CACHED)
    assert cached_line.description == "chat-own — cached input tokens"


def test_spend_estimates_match_the_invoice(usage):
    assert reports.spend(usage, OCT.start, OCT.end) == Decimal("18.45")


def test_the_spend_counter_prices_cached_tokens_at_the_cached_price():
    # 1,000 prompt tokens of which 600 cached, 10 completion; micro-units per million tokens
    assert (
        cost_micros(1000, 10, 2_000_000, 8_000_000, cached_tokens=600, cached_micros=500_000)
        == 400 * 2 + 600 // 2 + 80
    )
    # no cached price mirrored (an older mirror entry): cached tokens cost the input price
    assert cost_micros(1000, 10, 2_000_000, 8_000_000, cached_tokens=600) == 2000 + 80
    # a confused count above the prompt is capped at the prompt
    assert cost_micros(100, 0, 1_000_000, 0, cached_tokens=500, cached_micros=0) == 0
    assert cost_micros(3, 0, 1, 0, cached_tokens=1, cached_micros=0) == 1  # rounded up


def test_the_mirror_carries_the_cached_price(settings, redis_client):
    settings.CACHED_INPUT_FRACTION = Decimal("0.5")
    own = ModelFactory(name="mirror-own")
    PriceFactory(
        model=own,
        input_per_million=Decimal("3"),
        output_per_million=Decimal("9"),
        cached_input_per_million=Decimal("0.3"),
    )
    fallback = priced_model("mirror-default", "0.15", "0.60")
    assert mirror.price_fields(own)["price_cached_input_micros"] == "300000"
    assert mirror.price_fields(fallback)["price_cached_input_micros"] == "75000"
    assert mirror.publish_model(own)
    assert redis_client.hget(names().model("mirror-own"), "price_cached_input_micros") == "300000"


def test_the_usage_api_shows_cached_tokens_and_the_hit_rate_per_model_and_in_total(usage):
    body = (
        client_for(member(usage, "owner"))
        .get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"})
        .json()
    )
    day_rows = {(row["date"], row["model"]): row for row in body["data"]}
    assert day_rows[("2026-10-02", "chat-own")]["cached_tokens"] == 2_000_000
    assert day_rows[("2026-10-02", "chat-own")]["cache_hit_rate"] == pytest.approx(2 / 3)
    assert day_rows[("2026-10-03", "chat-own")]["cache_hit_rate"] == 0
    per_model = {row["model"]: row for row in body["models"]}
    assert per_model["chat-own"]["cached_tokens"] == 2_000_000
    assert per_model["chat-own"]["cache_hit_rate"] == pytest.approx(0.5)  # 2M of 4M
    assert per_model["chat-default"]["cache_hit_rate"] == pytest.approx(0.75)
    assert per_model["chat-own"]["cost"] == "17.000000"
    assert body["totals"]["cached_tokens"] == 3_500_000
    assert body["totals"]["cache_hit_rate"] == pytest.approx(3.5 / 6)

    plain = (
        client_for(member(usage, "member"))
        .get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"})
        .json()
    )
    assert plain["totals"]["cached_tokens"] == 3_500_000
    assert all("cost" not in row for row in plain["models"])

    other = client_for(member(TenantFactory(), "owner")).get(
        "/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"}
    )
    assert other.json()["totals"]["cached_tokens"] == 0 and other.json()["models"] == []


def test_the_console_usage_page_and_csvs_show_cached_tokens(usage, client):
    client.force_login(member(usage, "owner"))
    client.post("/switch/", {"tenant": str(usage.pk)})
    page = client.get("/usage/", {"start": "2026-10-01", "end": "2026-10-31"}).content.decode()
    assert "Cache hit rate" in page
    assert '<td class="num" id="usage-cache-hit-rate">58%</td>' in page  # 3.5M of 6M
    assert "2,000,000" in page

    days = client.get("/usage.csv", {"start": "2026-10-01", "end": "2026-10-31", "granularity": "day"})
    rows = list(csv.DictReader(io.StringIO(b"".join(days.streaming_content).decode())))
    own = next(r for r in rows if r["model"] == "chat-own" and r["date"] == "2026-10-02")
    assert (own["cached_tokens"], own["cache_hit_rate"]) == ("2000000", "0.6667")

    each = client.get("/usage.csv", {"start": "2026-10-01", "end": "2026-10-31"})
    rows = list(csv.DictReader(io.StringIO(b"".join(each.streaming_content).decode())))
    assert sorted(int(r["cached_tokens"]) for r in rows) == [0, 1_500_000, 2_000_000]


def test_the_console_invoice_page_shows_the_cached_line(usage, client):
    invoice = invoicing.close_period(tenant=usage, period=OCT, now=NOW).invoice
    client.force_login(member(usage, "owner"))
    client.post("/switch/", {"tenant": str(usage.pk)})
    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert "Cached input tokens" in page and "$1.00" in page and "$0.45" in page


def test_the_models_api_and_page_show_the_cached_price(usage, client, settings):
    owner = member(usage, "owner")
    body = client_for(owner).get("/api/v1/models").json()
    models = body["results"] if isinstance(body, dict) else body
    prices = {m["name"]: m["price"] for m in models if m["name"].startswith("chat-")}
    assert prices["chat-own"]["cached_input_per_million"] == "0.500000"
    assert prices["chat-default"]["cached_input_per_million"] == "0.300000"
    client.force_login(owner)
    client.post("/switch/", {"tenant": str(usage.pk)})
    assert "Cached input / 1M" in client.get("/models/").content.decode()
