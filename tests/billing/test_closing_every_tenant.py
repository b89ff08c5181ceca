"""Closing every tenant: invoice numbers never collide, and one tenant's failure stops no other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse

from billing import invoicing
from billing.models import BillingAccount, Invoice
from billing.periods import parse_period
from tests.billing.usage import record
from tests.factories import TenantFactory, UserFactory
from tests.registry.factories import PriceFactory, priced_model

pytestmark = pytest.mark.django_db

SEP = parse_period("2026-09", "month")
OCT = parse_period("2026-10", "month")
NOV_3 = datetime(2026, 11, 3, 12, tzinfo=UTC)
DEC_2 = datetime(2026, 12, 2, 12, tzinfo=UTC)


def test_tenants_whose_slugs_share_20_characters_get_distinct_invoices():
    priced_model("m-close", "1", "2")
    berkeley = TenantFactory(
        name="University of California Berkeley", slug="university-of-california-berkeley"
    )
    davis = TenantFactory(name="University of California Davis", slug="university-of-california-davis")
    for tenant in (berkeley, davis):
        record(tenant, "m-close", OCT.start + timedelta(days=3), 1_000_000, 0)

    results = invoicing.close_all(period=OCT, now=NOV_3)

    assert [r.error for r in results] == ["", ""]
    numbers = {r.tenant.slug: r.invoice.number for r in results}
    assert numbers["university-of-california-berkeley"] != numbers["university-of-california-davis"]
    assert all(n.startswith("UNIVERSIT") and "-20261001-" in n for n in numbers.values())
    assert Invoice.objects.count() == 2
    # Closing again finds the same invoices and draws no new numbers.
    again = invoicing.close_all(period=OCT, now=NOV_3)
    assert {r.invoice.number for r in again} == set(numbers.values())
    assert not any(r.created for r in again)


def test_an_existing_invoice_keeps_its_number():
    priced_model("m-keep", "1", "0")
    tenant = TenantFactory(slug="kept")
    old = Invoice.objects.create(
        tenant=tenant, number="KEPT-20260901", period_start=SEP.start, period_end=SEP.end, currency="USD"
    )
    record(tenant, "m-keep", OCT.start + timedelta(days=1), 1_000_000, 0)
    (result,) = invoicing.close_all(period=OCT, tenant=tenant, now=NOV_3)
    assert result.created and result.invoice.number != old.number
    old.refresh_from_db()
    assert old.number == "KEPT-20260901"


def _failing_tenant():
    """A tenant whose usage is priced in EUR while bills are in USD: its close raises."""
    model = priced_model("m-usd", "1", "0")
    eur = priced_model("m-eur", "1", "0", since=datetime(2026, 1, 1, tzinfo=UTC))
    eur.prices.update(currency="EUR")
    broken = TenantFactory(name="Aardvark", slug="aardvark")
    record(broken, "m-usd", OCT.start + timedelta(days=1), 1_000_000, 0)
    record(broken, "m-eur", OCT.start + timedelta(days=2), 1_000_000, 0)
    later = TenantFactory(name="Zebra", slug="zebra")
    record(later, model.name, OCT.start + timedelta(days=1), 2_000_000, 0)
    return broken, later, eur


def test_a_failing_tenant_does_not_stop_the_ones_after_it_and_is_recorded():
    broken, later, _ = _failing_tenant()

    results = {r.tenant.slug: r for r in invoicing.close_all(period=OCT, now=NOV_3)}

    assert results["zebra"].created and results["zebra"].invoice.total == Decimal("2.00")
    assert results["aardvark"].invoice is None and "priced in EUR" in results["aardvark"].error
    account = BillingAccount.objects.get(tenant=broken)
    assert account.close_failed_at == NOV_3 and account.close_failed_period_start == OCT.start
    assert "CurrencyMismatch" in account.close_error
    assert not Invoice.objects.filter(tenant=broken).exists()
    assert not BillingAccount.objects.filter(tenant=later, close_failed_at__isnull=False).exists()


def test_the_next_run_retries_the_failed_period_even_after_a_later_one_ended():
    broken, _, eur = _failing_tenant()
    invoicing.close_all(period=OCT, now=NOV_3)
    # Still broken a month later: October is tried first and November waits behind it.
    record(broken, "m-usd", datetime(2026, 11, 10, tzinfo=UTC), 1_000_000, 0)
    nov = parse_period("2026-11", "month")
    failed = [r for r in invoicing.close_all(period=nov, now=DEC_2) if r.tenant == broken]
    assert [(r.period, bool(r.error)) for r in failed] == [(OCT, True)]
    assert BillingAccount.objects.get(tenant=broken).close_failed_period_start == OCT.start

    # Fixed: a USD price for the EUR model from before its usage.
    PriceFactory(model=eur, input_per_million=Decimal("3"), effective_from=OCT.start)
    results = [r for r in invoicing.close_all(period=nov, now=DEC_2) if r.tenant == broken]

    assert [(r.period, r.created, r.error) for r in results] == [(OCT, True, ""), (nov, True, "")]
    assert results[0].invoice.total == Decimal("4.00")  # 1M at $1 + 1M at $3
    assert results[1].invoice.total == Decimal("1.00") and results[1].invoice.lines.get().late_requests == 0
    account = BillingAccount.objects.get(tenant=broken)
    assert account.close_failed_at is None and account.close_error == ""


def test_the_command_reports_failures_and_closes_the_rest(capsys):
    _failing_tenant()
    call_command("close_billing_period", "--period", "2026-10", "--no-stripe")
    out, err = capsys.readouterr()
    assert "zebra" in out and "1 invoice(s) created" in out
    assert "aardvark" in err and "failed" in err


def test_staff_see_a_failed_close_in_the_tenants_page_and_the_admin(client):
    broken, later, _ = _failing_tenant()
    invoicing.close_all(period=OCT, now=NOV_3)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    html = client.get(reverse("staff:tenants")).content.decode()
    row = html.split(f'id="tenant-{broken.pk}"')[1].split("</tr>")[0]
    assert "Invoicing failed" in row and "2026-10-01" in row and "priced in EUR" in row
    assert "Invoicing failed" not in html.split(f'id="tenant-{later.pk}"')[1].split("</tr>")[0]

    listing = client.get("/admin/billing/billingaccount/?close_failed_at__isempty=0").content.decode()
    assert "Aardvark" in listing and "Zebra" not in listing
    page = client.get(f"/admin/billing/billingaccount/{broken.pk}/change/").content.decode()
    assert "CurrencyMismatch" in page


def test_tenants_without_usage_draw_no_invoice_number():
    priced_model("m-idle", "1", "0")
    busy = TenantFactory(slug="busy")
    for i in range(5):
        TenantFactory(slug=f"idle-{i}")
    record(busy, "m-idle", SEP.start + timedelta(days=1), 1_000_000, 0)
    record(busy, "m-idle", OCT.start + timedelta(days=1), 1_000_000, 0)
    (sep,) = [r.invoice for r in invoicing.close_all(period=SEP, now=NOV_3) if r.invoice]
    (oct_,) = [r.invoice for r in invoicing.close_all(period=OCT, now=NOV_3) if r.invoice]
    assert int(oct_.number.rsplit("-", 1)[1]) == int(sep.number.rsplit("-", 1)[1]) + 1
