"""An adapter's usage is a line of its own everywhere usage shows: API, CSV, invoice page and PDF."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pypdf import PdfReader
from rest_framework.test import APIClient

from billing import invoicing
from billing.periods import parse_period
from models_registry import adapters, catalog
from models_registry.models import Price
from tests.billing.usage import record
from tests.factories import TenantFactory, member
from tests.registry.adapter_files import write_adapter
from tests.registry.factories import priced_model

pytestmark = pytest.mark.django_db

OCT = parse_period("2026-10", "month")


@pytest.fixture
def billed(settings, tmp_path):
    settings.ADAPTER_ALLOWED_SOURCES = [f"{tmp_path}/"]
    priced_model("tiny-chat", "0.10", "0.40")
    acme = TenantFactory(slug="acme", name="Acme")
    adapter = adapters.create_adapter(
        tenant=acme, name="support-v2", base_model="tiny-chat", source=str(write_adapter(tmp_path / "a"))
    )
    # Staff price the adapter for the whole year (the initial price starts at its creation).
    catalog.add_price(
        price=Price(
            adapter=adapter,
            input_per_million=Decimal("0.30"),
            output_per_million=Decimal("0.90"),
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    record(acme, "acme/support-v2", OCT.start + timedelta(days=1), 1_000_000, 1_000_000)
    record(acme, "tiny-chat", OCT.start + timedelta(days=1), 1_000_000, 0)
    invoice = invoicing.close_period(tenant=acme, period=OCT, now=datetime(2026, 11, 3, tzinfo=UTC)).invoice
    client = APIClient()
    client.force_login(member(acme, "owner"))
    client.get("/")
    return client, invoice


def test_the_usage_api_has_the_adapters_line_and_cost(billed):
    client, _ = billed
    body = client.get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"}).json()
    rows = {row["model"]: row for row in body["data"]}
    assert Decimal(rows["acme/support-v2"]["cost"]) == Decimal("1.20")
    assert Decimal(rows["tiny-chat"]["cost"]) == Decimal("0.10")


def test_the_usage_csv_has_the_adapters_line(billed):
    client, _ = billed
    response = client.get("/usage.csv", {"start": "2026-10-01", "end": "2026-10-31"})
    body = b"".join(response.streaming_content).decode() if response.streaming else response.content.decode()
    assert "acme/support-v2" in body


def test_the_invoice_page_and_pdf_show_the_adapter_at_its_price(billed):
    client, invoice = billed
    assert invoice.total == Decimal("1.30")
    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert 'acme/support-v2 <span class="help">(adapter on tiny-chat)</span>' in page
    pdf = client.get(f"/billing/invoices/{invoice.pk}/pdf/").content
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "acme/support-v2 (adapter on tiny-chat)" in text and "$0.90" in text
