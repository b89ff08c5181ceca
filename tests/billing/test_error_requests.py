"""An "error" request is counted the same way on the console, in the API and on the staff page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.models import User
from tests.billing.usage import record
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db

# (usage status, HTTP status, counts as an error)
RECORDS = [
    ("ok", 200, False),
    ("ok", 200, False),
    ("client_disconnected", 200, False),  # the client left; it was billed for what it got
    ("upstream_error", 502, True),
    ("upstream_timeout", 504, True),
    ("gateway_stopped", 503, True),
    ("gateway_lost", 0, True),
    ("error", 429, True),
    ("ok", 503, True),  # the client was sent a server error, whatever the record's status says
]
EXPECTED_ERRORS = sum(is_error for *_, is_error in RECORDS)


def test_the_console_the_api_and_the_staff_page_count_the_same_errors():
    tenant = TenantFactory()
    now = timezone.now()
    at = now - timedelta(minutes=2)
    for status, http_status, _ in RECORDS:
        record(tenant, "chat", at, 10, 5, status=status, http_status=http_status)
    days = {"start": (at - timedelta(days=1)).date().isoformat(), "end": now.date().isoformat()}
    owner = member(tenant, "owner")

    console = Client()
    console.force_login(owner)
    console.post("/switch/", {"tenant": str(tenant.pk)})
    page = console.get("/usage/", days)
    assert page.status_code == 200
    console_errors = page.context["totals"]["errors"]

    api = APIClient()
    api.force_login(owner)
    answer = api.get("/api/v1/usage", days)
    assert answer.status_code == 200
    api_errors = answer.json()["totals"]["errors"]

    staff = Client()
    staff.force_login(
        User.objects.create_user(email="ops@berth.test", password="x-Long-pass-1", is_staff=True)
    )
    traffic = staff.get("/staff/traffic/")
    assert traffic.status_code == 200
    staff_errors = traffic.context["totals"]["errors"]
    assert traffic.context["totals"]["requests"] == len(RECORDS)

    assert (console_errors, api_errors, staff_errors) == (EXPECTED_ERRORS,) * 3
