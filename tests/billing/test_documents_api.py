"""Invoice PDF, the usage and invoice API, and tenant isolation of both."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pypdf import PdfReader
from rest_framework.test import APIClient

from billing import invoicing, pdf
from billing.periods import parse_period
from tests.billing.usage import record
from tests.factories import TenantFactory, member
from tests.registry.factories import priced_model

pytestmark = pytest.mark.django_db

OCT = parse_period("2026-10", "month")
NOW = datetime(2026, 11, 3, tzinfo=UTC)


@pytest.fixture
def billed():
    priced_model("chat-doc", "0.10", "0.20")
    tenant = TenantFactory(name="Acme <Labs> & Co")
    record(tenant, "chat-doc", OCT.start + timedelta(days=1), 3_000_000, 1_500_000)
    record(
        tenant,
        "chat-doc",
        OCT.start + timedelta(days=2),
        1_000_000,
        500_000,
        status="upstream_error",
        http_status=502,
    )
    invoice = invoicing.close_period(tenant=tenant, period=OCT, now=NOW).invoice
    return tenant, invoice


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_the_pdf_opens_and_shows_the_lines_and_total(billed):
    tenant, invoice = billed
    data = pdf.render(invoice)
    assert data.startswith(b"%PDF-")
    text = pdf_text(data)
    assert invoice.number in text
    assert "Acme <Labs> & Co" in text  # escaped for ReportLab's markup, printed as written
    assert "4,000,000" in text and "2,000,000" in text
    assert "$0.40" in text and "$0.80" in text
    assert invoice.total == Decimal("0.80")
    assert "Total" in text
    assert "01 Oct 2026 – 31 Oct 2026" in text


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_invoices_api_for_the_billing_role(billed):
    tenant, invoice = billed
    accountant = member(tenant, "billing")
    client = client_for(accountant)
    listing = client.get("/api/v1/invoices")
    assert listing.status_code == 200
    (item,) = listing.json()["results"] if "results" in listing.json() else listing.json()
    assert (item["number"], item["total"], item["currency"], item["status"]) == (
        invoice.number,
        "0.80",
        "USD",
        "open",
    )
    detail = client.get(f"/api/v1/invoices/{invoice.pk}").json()
    assert [(line["kind"], line["tokens"], line["amount"]) for line in detail["lines"]] == [
        ("input", 4_000_000, "0.40"),
        ("output", 2_000_000, "0.40"),
    ]
    response = client.get(f"/api/v1/invoices/{invoice.pk}/pdf", HTTP_ACCEPT="application/pdf")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert invoice.number in pdf_text(response.content)


def test_a_plain_member_cannot_see_invoices_or_costs(billed):
    tenant, invoice = billed
    developer = member(tenant, "member")
    client = client_for(developer)
    assert client.get("/api/v1/invoices").status_code == 403
    assert client.get(f"/api/v1/invoices/{invoice.pk}/pdf").status_code == 403
    usage = client.get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"}).json()
    assert usage["totals"]["total_tokens"] == 6_000_000
    assert "cost" not in usage["totals"] and all("cost" not in row for row in usage["data"])


def test_other_tenants_invoices_are_not_found(billed):
    _, invoice = billed
    other = TenantFactory()
    owner = member(other, "owner")
    client = client_for(owner)
    assert client.get("/api/v1/invoices").json() in (
        [],
        {"count": 0, "next": None, "previous": None, "results": []},
    )
    assert client.get(f"/api/v1/invoices/{invoice.pk}").status_code == 404
    assert client.get(f"/api/v1/invoices/{invoice.pk}/pdf").status_code == 404
    usage = client.get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"}).json()
    assert usage["data"] == [] and usage["totals"]["requests"] == 0
    # The console pages too.
    page = client.get(f"/billing/invoices/{invoice.pk}/")
    assert page.status_code == 404
    assert client.get(f"/billing/invoices/{invoice.pk}/pdf/").status_code == 404


def test_usage_api_aggregates_by_day_and_model_with_cost(billed):
    tenant, _ = billed
    owner = member(tenant, "owner")
    body = client_for(owner).get("/api/v1/usage", {"start": "2026-10-01", "end": "2026-10-31"}).json()
    assert [
        (r["date"], r["model"], r["requests"], r["errors"], r["prompt_tokens"]) for r in body["data"]
    ] == [
        ("2026-10-02", "chat-doc", 1, 0, 3_000_000),
        ("2026-10-03", "chat-doc", 1, 1, 1_000_000),
    ]
    assert Decimal(body["data"][0]["cost"]) == Decimal("0.60")
    assert Decimal(body["totals"]["cost"]) == Decimal("0.80")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"start": "2026-10-05", "end": "2026-10-01"}, "end"),
        ({"start": "2024-01-01", "end": "2026-10-01"}, "start"),
        ({"start": "yesterday"}, "start"),
    ],
)
def test_usage_api_rejects_bad_ranges_with_drf_errors(billed, query, field):
    tenant, _ = billed
    response = client_for(member(tenant, "owner")).get("/api/v1/usage", query)
    assert response.status_code == 400
    assert field in response.json()


def test_console_invoice_pages_for_billing_and_not_for_members(billed):
    tenant, invoice = billed
    accountant = client_for(member(tenant, "billing"))
    accountant.get("/")  # picks the current tenant
    listing = accountant.get("/billing/")
    assert listing.status_code == 200 and invoice.number in listing.content.decode()
    detail = accountant.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert "$0.40" in detail and "$0.80" in detail
    download = accountant.get(f"/billing/invoices/{invoice.pk}/pdf/")
    assert download["Content-Disposition"].startswith("attachment;")
    assert pdf_text(download.content).count(invoice.number) >= 1

    developer = client_for(member(tenant, "member"))
    assert developer.get("/billing/").status_code == 403
    assert developer.get(f"/billing/invoices/{invoice.pk}/pdf/").status_code == 403
