"""Staff can mark an invoice paid (offline payment) or void it; invoices cannot be deleted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing import invoicing
from billing.models import Invoice, InvoiceStatus
from billing.periods import parse_period
from tests.billing.usage import record
from tests.factories import TenantFactory, UserFactory
from tests.registry.factories import priced_model

pytestmark = pytest.mark.django_db


def test_mark_paid_from_the_admin(client):
    staff = UserFactory(is_staff=True, is_superuser=True)
    priced_model("m-admin", "1", "0")
    tenant = TenantFactory()
    period = parse_period("2026-10", "month")
    record(tenant, "m-admin", period.start + timedelta(days=1), 5_000_000, 0)
    invoice = invoicing.close_period(tenant=tenant, period=period, now=period.end).invoice
    client.force_login(staff)
    url = "/admin/billing/invoice/"
    assert client.get(f"{url}{invoice.pk}/change/").status_code == 200
    response = client.post(url, {"action": "mark_paid", "_selected_action": [str(invoice.pk)]})
    assert response.status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID and invoice.paid_at is not None
    assert client.post(f"{url}{invoice.pk}/delete/").status_code == 403
    assert Invoice.objects.filter(pk=invoice.pk).exists()
