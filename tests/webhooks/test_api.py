"""``/api/v1/webhooks``: owners and admins only, secret shown once, audited, tenant-isolated."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEntry
from tenants.constants import Role
from tests.factories import TenantFactory, member
from webhooks.constants import DeliveryState
from webhooks.models import WebhookEndpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    a, b = TenantFactory(name="Alpha"), TenantFactory(name="Beta")
    return {
        "a": a,
        "owner": member(a, Role.OWNER),
        "admin": member(a, Role.ADMIN),
        "member": member(a, Role.MEMBER),
        "billing": member(a, Role.BILLING),
        "outsider": member(b, Role.OWNER),
    }


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def create(client, url, events=("invoice.created", "invoice.paid")):
    return client.post("/api/v1/webhooks/", {"url": url, "events": list(events)}, format="json")


def test_an_owner_creates_an_endpoint_and_sees_the_secret_once(world, receiver, allow_private):
    client = client_for(world["owner"])
    response = create(client, receiver.url)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["secret"].startswith("whsec_") and body["events"] == ["invoice.created", "invoice.paid"]
    endpoint = WebhookEndpoint.objects.get(pk=body["id"])
    assert endpoint.tenant == world["a"] and endpoint.secret == body["secret"]
    listed = client.get("/api/v1/webhooks/").json()["results"]
    assert "secret" not in listed[0] and listed[0]["secret_hint"] == "…" + body["secret"][-4:]
    assert "secret" not in client.get(f"/api/v1/webhooks/{endpoint.pk}/").json()
    entry = AuditEntry.objects.get(action="webhook.created")
    assert entry.tenant_id == world["a"].pk and entry.target_id == str(endpoint.pk)
    assert body["secret"] not in str(entry.after)
    rotated = client.post(f"/api/v1/webhooks/{endpoint.pk}/rotate-secret/").json()
    assert rotated["secret"] != body["secret"]
    assert AuditEntry.objects.filter(action="webhook.secret_rotated").exists()


def test_changes_and_deletion_are_audited(world, receiver, allow_private):
    client = client_for(world["admin"])
    endpoint_id = create(client, receiver.url).json()["id"]
    response = client.patch(f"/api/v1/webhooks/{endpoint_id}/", {"enabled": False}, format="json")
    assert response.status_code == 200 and response.json()["enabled"] is False
    entry = AuditEntry.objects.get(action="webhook.updated")
    assert entry.before == {"enabled": True} and entry.after == {"enabled": False}
    assert client.delete(f"/api/v1/webhooks/{endpoint_id}/").status_code == 204
    assert AuditEntry.objects.filter(action="webhook.deleted").exists()
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"url": "ftp://example.com/x", "events": ["invoice.paid"]}, "url"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        ({"url": "https://example.com/x", "events": ["invoice.voided"]}, "events"),
        ({"url": "https://example.com/x", "events": ["webhook.test"]}, "events"),
        ({"url": "http://127.0.0.1:9/x", "events": ["invoice.paid"]}, "url"),
    ],
)
def test_bad_input_is_a_400_on_the_field(world, payload, field, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    response = client_for(world["owner"]).post("/api/v1/webhooks/", payload, format="json")
    assert response.status_code == 400 and field in response.json(), response.json()


@pytest.mark.parametrize("role", ["member", "billing"])
def test_members_without_manage_settings_are_refused(world, role, receiver, allow_private):
    endpoint_id = create(client_for(world["owner"]), receiver.url).json()["id"]
    client = client_for(world[role])
    assert client.get("/api/v1/webhooks/").status_code == 403
    assert create(client, receiver.url).status_code == 403
    assert client.delete(f"/api/v1/webhooks/{endpoint_id}/").status_code == 403


def test_another_tenant_cannot_see_or_change_endpoints(world, receiver, allow_private, queued):
    endpoint_id = create(client_for(world["owner"]), receiver.url).json()["id"]
    outsider = client_for(world["outsider"])
    assert outsider.get("/api/v1/webhooks/").json()["results"] == []
    base = f"/api/v1/webhooks/{endpoint_id}/"
    assert outsider.get(base).status_code == 404
    assert outsider.patch(base, {"url": "https://evil.example/"}, format="json").status_code == 404
    assert outsider.delete(base).status_code == 404
    assert outsider.post(base + "test/").status_code == 404
    assert outsider.post(base + "rotate-secret/").status_code == 404
    assert outsider.get(base + "deliveries/").status_code == 404
    assert WebhookEndpoint.objects.get(pk=endpoint_id).url == receiver.url


def test_the_test_event_and_the_delivery_log(
    world, receiver, allow_private, queued, django_capture_on_commit_callbacks
):
    from webhooks import delivery

    client = client_for(world["owner"])
    endpoint_id = create(client, receiver.url).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/webhooks/{endpoint_id}/test/")
    assert response.status_code == 202 and response.json()["event_type"] == "webhook.test"
    delivery.attempt(delivery_id=queued[0])
    log = client.get(f"/api/v1/webhooks/{endpoint_id}/deliveries/").json()
    (row,) = log["results"]
    assert row["state"] == DeliveryState.SUCCEEDED and row["event_id"].startswith("evt_")
    assert row["attempt_log"][0]["status_code"] == 200
    client.patch(f"/api/v1/webhooks/{endpoint_id}/", {"enabled": False}, format="json")
    assert client.post(f"/api/v1/webhooks/{endpoint_id}/test/").status_code == 400
