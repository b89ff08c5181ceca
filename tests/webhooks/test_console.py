"""The console's Webhooks page: create (secret once), edit, test event, delivery log, isolation."""

from __future__ import annotations

import pytest

from audit.models import AuditEntry
from tenants.constants import Role
from tests.factories import TenantFactory, member
from webhooks import delivery
from webhooks.models import WebhookEndpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def org():
    tenant = TenantFactory(name="Alpha")
    return {"tenant": tenant, "owner": member(tenant, Role.OWNER), "dev": member(tenant, Role.MEMBER)}


def form(url, *events, enabled=True):
    data = {"url": url, "events": list(events or ["invoice.created"]), "description": "books"}
    if enabled:
        data["enabled"] = "on"
    return data


def test_an_owner_adds_an_endpoint_and_sees_its_secret_once(org, client, receiver, allow_private):
    client.force_login(org["owner"])
    response = client.post("/webhooks/", form(receiver.url, "invoice.created", "usage.daily"))
    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.get(tenant=org["tenant"])
    assert endpoint.events == ["invoice.created", "usage.daily"] and endpoint.enabled
    assert endpoint.secret in response.content.decode()
    listing = client.get("/webhooks/").content.decode()
    assert receiver.url in listing and endpoint.secret not in listing
    assert AuditEntry.objects.filter(action="webhook.created", tenant=org["tenant"]).exists()


def test_bad_input_is_a_form_error(org, client, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    client.force_login(org["owner"])
    response = client.post("/webhooks/", form("http://127.0.0.1:8000/x"))
    assert response.status_code == 400 and "private or reserved address" in response.content.decode()
    response = client.post("/webhooks/", {"url": "https://example.com/x"})
    assert response.status_code == 400 and "This field is required" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_test_button_and_the_delivery_log(
    org, client, receiver, allow_private, queued, django_capture_on_commit_callbacks
):
    client.force_login(org["owner"])
    client.post("/webhooks/", form(receiver.url))
    endpoint = WebhookEndpoint.objects.get()
    receiver.statuses = [500]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/webhooks/{endpoint.pk}/test/")
    assert response.status_code == 302
    delivery.attempt(delivery_id=queued[0])
    page = client.get(f"/webhooks/{endpoint.pk}/").content.decode()
    assert "webhook.test" in page and "HTTP 500" in page and "upstream broke" in page and "Pending" in page


def test_editing_disabling_rotating_and_deleting(org, client, receiver, allow_private):
    client.force_login(org["owner"])
    client.post("/webhooks/", form(receiver.url))
    endpoint = WebhookEndpoint.objects.get()
    old_secret = endpoint.secret
    response = client.post(f"/webhooks/{endpoint.pk}/", form(receiver.url, "invoice.paid", enabled=False))
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.events == ["invoice.paid"] and not endpoint.enabled
    page = client.post(f"/webhooks/{endpoint.pk}/rotate/").content.decode()
    endpoint.refresh_from_db()
    assert endpoint.secret != old_secret and endpoint.secret in page
    assert client.post(f"/webhooks/{endpoint.pk}/delete/").status_code == 302
    assert not WebhookEndpoint.objects.exists()
    assert {"webhook.updated", "webhook.secret_rotated", "webhook.deleted"} <= set(
        AuditEntry.objects.values_list("action", flat=True)
    )


def test_members_and_other_tenants_are_kept_out(org, client, receiver, allow_private):
    endpoint = WebhookEndpoint.objects.create(tenant=org["tenant"], url=receiver.url, events=["invoice.paid"])
    client.force_login(org["dev"])
    assert client.get("/webhooks/").status_code == 403
    assert "/webhooks/" not in client.get("/").content.decode()  # no menu entry
    outsider = member(TenantFactory(), Role.OWNER)
    client.force_login(outsider)
    assert client.get(f"/webhooks/{endpoint.pk}/").status_code == 404
    assert client.post(f"/webhooks/{endpoint.pk}/delete/").status_code == 404
    assert client.post(f"/webhooks/{endpoint.pk}/", form("https://evil.example/")).status_code == 404
    assert receiver.url not in client.get("/webhooks/").content.decode()
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk, url=receiver.url).exists()
