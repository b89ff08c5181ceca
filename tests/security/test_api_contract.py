"""What schemathesis found in the management API, pinned as plain tests.

Each of these failed before its fix: a 500 for a limit beyond PostgreSQL's bigint, bad paging
values silently ignored, blank dates read as absent, the usage answer's schema describing a list
it is not, an invoice PDF's 404 sent as ``application/pdf``, and no management-key scheme or
error answers in the schema.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.security.world import World

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {World().home.management_key}")
    return client


@pytest.mark.parametrize("path", ["/api/v1/keys/", "/api/v1/members/", "/api/v1/invoices", "/api/v1/models"])
def test_a_limit_beyond_a_bigint_is_a_400_not_a_500(client, path):
    response = client.get(path, {"limit": "99999999999999999999"})
    assert response.status_code == 400
    assert response.json() == {"limit": ["At most 1000."]}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "ten"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"offset": "x"}, "offset"),
    ],
)
def test_bad_paging_values_are_refused(client, query, field):
    response = client.get("/api/v1/keys/", query)
    assert response.status_code == 400 and field in response.json()


def test_good_paging_values_page(client):
    body = client.get("/api/v1/keys/", {"limit": "1", "offset": "0"}).json()
    assert len(body["results"]) == 1 and body["count"] >= 2 and body["next"]


def test_a_blank_date_is_refused_not_read_as_absent(client):
    response = client.get("/api/v1/usage", {"start": "", "end": "2026-10-31"})
    assert response.status_code == 400 and "start" in response.json()


def test_an_invoice_pdf_error_is_json_even_when_the_pdf_was_asked_for(client):
    missing = "00000000-0000-0000-0000-000000000000"
    response = client.get(f"/api/v1/invoices/{missing}/pdf", {"format": "pdf"})
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "No Invoice matches the given query."}


def test_the_schema_states_the_management_key_errors_and_the_usage_answer():
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    assert schema["components"]["securitySchemes"]["managementKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A management key, `mk-berth-<lookup id>_<secret>`, acting as its creator.",
    }
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert {"401", "403"} <= set(operation["responses"]), (method, route)
            assert {"managementKey": []} in operation["security"], (method, route)
            if "{" in route:
                assert "404" in operation["responses"], (method, route)
    usage = schema["paths"]["/api/v1/usage"]["get"]["responses"]["200"]["content"]["application/json"]
    assert usage["schema"] == {"$ref": "#/components/schemas/UsageReport"}
    assert set(schema["components"]["schemas"]["UsageReport"]["properties"]) == {
        "start",
        "end",
        "group_by",  # present when the rows are per key or per member
        "data",
        "models",  # per model over the range, with its cache hit rate (absent with group_by)
        "totals",
    }
    limit = next(p for p in schema["paths"]["/api/v1/keys/"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 0, "maximum": 1000}
