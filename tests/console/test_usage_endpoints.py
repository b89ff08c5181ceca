"""The usage CSV names the API surface of each request (issue 19's endpoints included), and the
billing model knows every surface the gateway meters."""

from __future__ import annotations

import csv
import io

import pytest
from django.utils import timezone

from billing.models import UsageEndpoint
from gateway.proxy import ENDPOINTS
from tests.billing.usage import record
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db


def test_every_metered_gateway_endpoint_is_a_billing_choice():
    assert set(ENDPOINTS.values()) == set(UsageEndpoint.values)


def test_the_usage_csv_shows_the_new_surfaces(client):
    tenant = TenantFactory()
    now = timezone.now()
    for endpoint in ("responses", "messages", "rerank", "score"):
        record(tenant, "some-model", now, 10, 0 if endpoint in ("rerank", "score") else 3, endpoint=endpoint)
    client.force_login(member(tenant, "owner"))
    client.post("/switch/", {"tenant": str(tenant.pk)})
    day = now.date().isoformat()
    response = client.get("/usage.csv", {"start": day, "end": day})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(r["endpoint"] for r in rows) == ["messages", "rerank", "responses", "score"]
