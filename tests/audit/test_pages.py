"""Tenants read their own trail: the console's Audit log page, its CSV and /api/v1/audit."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEntry
from tenants import keys
from tenants.constants import KeyKind, Role
from tests.factories import PASSWORD, TenantFactory, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme():
    tenant = TenantFactory(name="Acme", slug="acme")
    owner = member(tenant, Role.OWNER, email="owner@acme.test", email_verified=True)
    admin = member(tenant, Role.ADMIN, email="admin@acme.test", email_verified=True)
    plain = member(tenant, Role.MEMBER, email="dev@acme.test", email_verified=True)
    return tenant, owner, admin, plain


def client_for(user) -> Client:
    client = Client(HTTP_USER_AGENT="pytest-browser/1.0", REMOTE_ADDR="203.0.113.7")
    assert client.login(email=user.email, password=PASSWORD)
    return client


def test_an_owner_sees_who_created_and_revoked_each_key(acme):
    tenant, owner, admin, plain = acme
    dev = client_for(plain)
    assert dev.post("/keys/", {"name": "laptop", "nonce": "n-1"}).status_code == 200
    laptop = tenant.api_keys.get(name="laptop")
    assert client_for(admin).post(f"/keys/{laptop.pk}/revoke/").status_code == 302

    page = client_for(owner).get("/audit/")
    assert page.status_code == 200
    rows = [row for row in page.content.decode().split("<tr>") if "api_key." in row]
    revoked = next(row for row in rows if "api_key.revoked" in row)
    created = next(row for row in rows if "api_key.created" in row)
    assert "admin@acme.test" in revoked and "laptop" in revoked and "203.0.113.7" in revoked
    assert "dev@acme.test" in created and laptop.display_prefix in created
    entry = AuditEntry.objects.get(action="api_key.created", target_id=str(laptop.pk))
    assert (entry.actor_id, entry.user_agent, entry.tenant_id) == (plain.pk, "pytest-browser/1.0", tenant.pk)


def test_the_filter_narrows_by_action_prefix_and_actor(acme):
    tenant, owner, admin, plain = acme
    keys.create_api_key(tenant=tenant, name="by-admin", created_by=admin)
    keys.create_api_key(tenant=tenant, name="by-dev", created_by=plain)
    page = client_for(owner).get("/audit/", {"action": "api_key", "actor": "dev@"}).content.decode()
    assert "by-dev" in page and "by-admin" not in page and "member.added" not in page
    bad = client_for(owner).get("/audit/", {"start": "2026-11-02", "end": "2026-11-01"})
    assert bad.status_code == 400 and "after the end date" in bad.content.decode()


def test_the_csv_has_every_matching_entry(acme):
    tenant, owner, admin, plain = acme
    for n in range(3):
        keys.create_api_key(tenant=tenant, name=f"k{n}", created_by=admin)
    response = client_for(owner).get("/audit.csv", {"action": "api_key.created"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert sorted(row["summary"].split("'")[1] for row in rows) == ["k0", "k1", "k2"]
    assert {row["actor"] for row in rows} == {"admin@acme.test"}


def test_members_may_not_read_it(acme):
    _, _, _, plain = acme
    assert client_for(plain).get("/audit/").status_code == 403
    assert client_for(plain).get("/audit.csv").status_code == 403
    assert "Audit log" not in client_for(plain).get("/").content.decode()


def test_another_tenant_never_sees_the_entries(acme):
    tenant, owner, admin, _ = acme
    keys.create_api_key(tenant=tenant, name="secret-project", created_by=admin)
    other = TenantFactory(name="Globex", slug="globex")
    outsider = member(other, Role.OWNER, email="boss@globex.test", email_verified=True)
    client = client_for(outsider)
    assert "secret-project" not in client.get("/audit/").content.decode()
    assert "secret-project" not in client.get("/audit.csv").content.decode()
    api = APIClient()
    api.force_login(outsider)
    body = api.get("/api/v1/audit").json()
    assert body["results"] and all(r["summary"].find("secret-project") < 0 for r in body["results"])
    assert "member.added" in {r["action"] for r in body["results"]}


def test_the_api_lists_pages_and_filters_for_a_management_key(acme):
    tenant, owner, admin, _ = acme
    created = keys.create_api_key(tenant=tenant, name="ops", created_by=owner, kind=KeyKind.MANAGEMENT)
    api = APIClient(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    response = api.get("/api/v1/audit", {"action": "api_key.created"})
    assert response.status_code == 200
    (entry,) = response.json()["results"]
    assert entry["actor"] == {"kind": "user", "label": "owner@acme.test"}
    assert entry["target"]["id"] == str(created.api_key.pk)
    # What the key itself does is recorded as the key.
    revoked = api.post(f"/api/v1/keys/{created.api_key.pk}/revoke")
    assert revoked.status_code == 200
    entry = AuditEntry.objects.get(action="api_key.revoked")
    assert entry.actor_kind == "api_key" and entry.actor_label.startswith(created.api_key.display_prefix)
    bad = APIClient()
    bad.force_login(owner)
    answer = bad.get("/api/v1/audit", {"actor_kind": "robot"})
    assert answer.status_code == 400 and "actor_kind" in answer.json()


def test_the_api_refuses_members(acme):
    _, _, _, plain = acme
    api = APIClient()
    api.force_login(plain)
    assert api.get("/api/v1/audit").status_code == 403
    assert APIClient().get("/api/v1/audit").status_code == 401
